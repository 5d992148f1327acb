// Example 9: store and forward with a durable outbox.
//
// A gateway publishes readings at QoS 1 while its broker is unreachable. With `MQTTConfiguration.outbox`, every
// reading is written to a directory before `publish` returns (`.stored`), so when the gateway is killed with
// SIGKILL before the broker ever came back, nothing is lost: the next gateway process on the same directory sends
// what the previous one left, in order, before anything new.
//
//     swift run example-store-and-forward [--broker HOST:PORT] [--count N]

import ExampleSupport
import Foundation
import Mosquitto

let topic = "gateway/readings"

/// The gateway: stores `count` readings (numbered from `first`) in the outbox at `directory`, then waits until
/// the broker acknowledged everything the outbox holds, and exits.
func runGateway(outbox directory: String, first: Int, count: Int, broker: Example.Broker) async throws {
    var config = broker.configuration(clientID: "store-and-forward-gateway")
    config.outbox = .init(directory: directory)
    // The broker may be unreachable now: keep trying to connect, and store meanwhile.
    config.reconnect.retryInitialConnect = true
    config.reconnect.initialDelay = .milliseconds(100)
    config.reconnect.maximumDelay = .milliseconds(500)
    let client = try MQTTClient(configuration: config)
    let status = client.outboxStatus!
    if status.recoveredMessages > 0 {
        print("gateway: the outbox holds \(status.recoveredMessages) readings a previous run left; they go first")
    }
    let connecting = Task { try await client.connect() }
    for n in first..<(first + count) {
        try await client.publish(to: topic, string: "reading \(n)", qos: .atLeastOnce, completion: .stored)
        if (n - first + 1) % 2500 == 0 { print("gateway: stored \(n - first + 1) readings") }
    }
    print("gateway: stored all \(count) new readings")
    await client.waitUntilAllPublished()
    print("gateway: the broker acknowledged everything in the outbox")
    connecting.cancel()
    await client.shutdown()
}

func freePort() -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
    _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
    return Int(UInt16(bigEndian: address.sin_port))
}

func runDemo(_ broker: Example.Broker, count: Int) async throws {
    let me = try Example.sibling("example-store-and-forward")
    let directory = NSTemporaryDirectory() + "store-and-forward-\(UUID().uuidString.prefix(8))"
    defer { try? FileManager.default.removeItem(atPath: directory) }

    let monitor = try MQTTClient(configuration: broker.configuration(clientID: "store-and-forward-monitor"))
    try await monitor.connect()
    let stream = try await monitor.subscribe(topic, qos: .atLeastOnce, buffer: .init(capacity: count * 2, overflow: .dropNewest))

    // 1. The broker is unreachable (nothing listens on this port): the gateway stores, and is killed.
    let unreachable = "127.0.0.1:\(freePort())"
    print("1. A gateway publishes \(count) QoS 1 readings while its broker (\(unreachable)) is unreachable")
    let first = try ChildProgram(me, ["--broker", unreachable, "--gateway", directory, "--count", String(count)])
    let stored = await eventually(timeout: .seconds(120)) { first.output.contains("stored all \(count) new readings") }
    try check(stored, "the first gateway did not store its readings: \(first.output)")
    print("   it stored them all; killing it with SIGKILL (no shutdown, nothing flushed by hand)")
    kill(first.pid, SIGKILL)
    await first.wait()

    // 2. A new gateway process on the same outbox, with the broker reachable, sends them, then one new reading.
    print("2. A new gateway on the same outbox, with the broker at \(broker.address), and one new reading")
    let second = try ChildProgram(me, ["--broker", broker.address, "--gateway", directory, "--count", "1", "--first", String(count + 1)])
    let code = await second.wait(timeout: .seconds(300))
    print(second.output.split(separator: "\n").map { "   " + $0 }.joined(separator: "\n"))
    try check(code == 0, "the second gateway exited with \(code)")

    // Everything arrived, in order; duplicates are counted (the bound: what the broker acknowledged in the last
    // ~20 ms before a kill; here the broker acknowledged nothing before the kill, so none).
    var seen: [Int] = []
    let timer = Task { try await Task.sleep(for: .seconds(10)); stream.cancel() }
    for try await m in stream {
        if let n = m.string.flatMap({ Int($0.dropFirst("reading ".count)) }) { seen.append(n) }
        if seen.last == count + 1 { break }
    }
    timer.cancel()
    await monitor.shutdown()
    let unique = Set(seen)
    let duplicates = seen.count - unique.count
    try check(unique.count == count + 1 && unique.min() == 1 && unique.max() == count + 1,
              "the monitor got \(unique.count) distinct readings of \(count + 1)")
    // In order: the first arrival of each reading comes after the first arrival of the one before it.
    var firstArrivals: [Int] = []
    var arrived = Set<Int>()
    for n in seen where arrived.insert(n).inserted { firstArrivals.append(n) }
    try check(firstArrivals == Array(1...(count + 1)), "the readings did not arrive in order")
    print("OK: all \(count + 1) readings arrived in order, \(duplicates) duplicates; the \(count) stored before the SIGKILL came first.")
}

await Example.main("example-store-and-forward", summary: """
    a gateway stores QoS 1 readings in a durable outbox while its broker is unreachable, is killed with SIGKILL, \
    and the next gateway process on the same directory delivers every reading, in order. Options: --count N \
    (default 10000).
    """) { broker, args in
    func value(_ flag: String) -> Int? {
        args.firstIndex(of: flag).flatMap { $0 + 1 < args.count ? Int(args[$0 + 1]) : nil }
    }
    if let i = args.firstIndex(of: "--gateway"), i + 1 < args.count {
        try await runGateway(outbox: args[i + 1], first: value("--first") ?? 1, count: value("--count") ?? 10_000, broker: broker)
    } else {
        try await runDemo(broker, count: value("--count") ?? 10_000)
    }
}
