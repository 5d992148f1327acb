// Example 6: fan-in logger.
//
// Many processes (here: four copies of this program, one per simulated host) publish log lines to logs/<host>.
// One subscriber to logs/+ writes every line, in the order it arrives, to one file. MQTT keeps each publisher's
// lines in order on its topic, so the file interleaves the hosts but never reorders one host's lines.
// This is ZeroMQ PUSH/PULL fan-in, or many `logger` processes feeding one syslog collector.
//
//     swift run example-fan-in-logger [--broker HOST:PORT] [--output FILE]

import ExampleSupport
import Foundation
import Mosquitto

let hosts = ["web-1", "web-2", "db-1", "cache-1"]
let linesPerHost = 25

/// One process's part: publish `linesPerHost` lines to logs/<host>, at QoS 1, with small random pauses.
func emit(host: String, broker: Example.Broker) async throws {
    let client = try MQTTClient(configuration: broker.configuration(clientID: "fan-in-\(host)-\(getpid())"))
    try await client.connect()
    let levels = ["INFO", "INFO", "INFO", "WARN", "DEBUG"]
    for seq in 1...linesPerHost {
        let line = "pid=\(getpid()) seq=\(seq) \(levels[seq % levels.count]) request handled in \(Int.random(in: 2...90)) ms"
        try await client.publish(to: "logs/\(host)", string: line, qos: .atLeastOnce)
        try await Task.sleep(for: .milliseconds(Int.random(in: 5...40)))
    }
    await client.shutdown()
}

/// The collector, and the processes it collects from.
func collect(broker: Example.Broker, output: String?) async throws {
    let path = output ?? NSTemporaryDirectory() + "fan-in-\(getpid()).log"
    _ = FileManager.default.createFile(atPath: path, contents: nil)
    guard let file = FileHandle(forWritingAtPath: path) else { throw CheckFailed("cannot write \(path)") }

    let collector = try MQTTClient(configuration: broker.configuration(clientID: "fan-in-collector"))
    try await collector.connect()
    let logs = try await collector.subscribe("logs/+", qos: .atLeastOnce)
    print("collector: subscribed to logs/+, writing to \(output ?? "a temporary file")")
    let expected = hosts.count * linesPerHost
    let writing = Task { () -> Int in
        var written = 0
        for try await m in logs {
            written += 1
            // One write per line, in arrival order: the topic says which host, the payload is the line.
            let host = m.topic.dropFirst("logs/".count)
            file.write(Data("\(host) \(m.string ?? "")\n".utf8))
            if written == expected { break }
        }
        return written
    }

    let me = try Example.sibling("example-fan-in-logger")
    print("Starting \(hosts.count) processes, one per host: \(hosts.joined(separator: ", "))")
    let children = try hosts.map { try ChildProgram(me, ["--broker", broker.address, "--emit", $0]) }
    for child in children {
        let code = await child.wait(timeout: .seconds(20))
        try check(code == 0, "the process for \(child.name) exited with \(code): \(child.output)")
    }
    let timeout = Task { try await Task.sleep(for: .seconds(5)); logs.cancel() }
    let written = try await writing.value
    timeout.cancel()
    await collector.shutdown()
    try file.close()

    let lines = try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map(String.init)
    print("The file has \(lines.count) lines. The first 8:")
    for l in lines.prefix(8) { print("  \(l)") }
    print("  …")
    for l in lines.suffix(3) { print("  \(l)") }
    if output == nil { try? FileManager.default.removeItem(atPath: path) }

    try check(written == expected && lines.count == expected, "\(lines.count) lines were written, expected \(expected)")
    var switches = 0
    for host in hosts {
        let seqs = lines.filter { $0.hasPrefix("\(host) ") }.compactMap { l in
            l.split(separator: " ").first { $0.hasPrefix("seq=") }.flatMap { Int($0.dropFirst(4)) }
        }
        try check(seqs == Array(1...linesPerHost), "\(host)'s lines are missing or out of order: \(seqs)")
    }
    for (a, b) in zip(lines, lines.dropFirst()) where a.split(separator: " ").first != b.split(separator: " ").first { switches += 1 }
    print("OK: \(expected) lines from \(hosts.count) processes in one file; each host's lines in the order it sent them; "
          + "the hosts interleave (\(switches) switches between hosts).")
}

await Example.main("example-fan-in-logger", summary: """
    several processes publish log lines to logs/<host>; one subscriber writes them, in arrival order, to one file.
    Options: --output FILE keeps the file (default: a temporary file, removed at the end).
    """) { broker, args in
    func value(_ flag: String) -> String? { args.firstIndex(of: flag).flatMap { $0 + 1 < args.count ? args[$0 + 1] : nil } }
    if let host = value("--emit") {
        try await emit(host: host, broker: broker)
    } else {
        try await collect(broker: broker, output: value("--output"))
    }
}
