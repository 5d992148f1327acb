import ArgumentParser
import Foundation
import Logging
import Mosquitto
import MosquittoBroker

/// Throughput of the Swift library against the same workload in raw libmosquitto C, in one run.
@main
struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mosquitto-bench",
        abstract: "Measures the Mosquitto library against raw libmosquitto C on the same broker, in one run.",
        discussion: """
        Starts a private mosquitto, then for each QoS alternates runs of the C reference program
        (mosquitto-bench-c, built by this package) and the Swift library, each in its own process:
        one publisher and one subscriber, N messages of SIZE bytes. Reports the median rate, the ratio
        Swift/C and each process's peak resident memory.

        Example (release build):
          swift build -c release --product mosquitto-bench --product mosquitto-bench-c
          .build/release/mosquitto-bench throughput --messages 100000 --size 64 --repeat 3
        """,
        subcommands: [Throughput.self, Worker.self],
        defaultSubcommand: Throughput.self
    )
}

struct Result: Codable {
    var impl: String
    var qos: Int
    var messages: Int
    var received: Int
    var seconds: Double
    var rate: Double
    var peak_rss_kb: Int
}

struct Throughput: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the comparison and print a Markdown table.")

    @Option(help: "Messages per run.") var messages = 100_000
    @Option(help: "Payload size in bytes.") var size = 64
    @Option(parsing: .upToNextOption, help: "QoS levels to measure.") var qos: [Int] = [0, 1, 2]
    @Option(help: "Runs per implementation and QoS; the median is reported.") var `repeat` = 3
    @Option(help: "Path of the C reference program (default: next to this executable).") var cProgram: String?

    func run() async throws {
        let here = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        let cPath = cProgram ?? here.appendingPathComponent("mosquitto-bench-c").path
        let swiftPath = URL(fileURLWithPath: CommandLine.arguments[0]).path
        guard FileManager.default.isExecutableFile(atPath: cPath) else {
            throw ValidationError("The C reference program is missing at \(cPath); build it with: swift build -c release --product mosquitto-bench-c")
        }
        var config = MosquittoBroker.Configuration()
        config.maxQueuedMessages = 0  // queue for a slow subscriber instead of dropping: both sides are measured equally
        let broker = try MosquittoBroker(configuration: config)
        try await broker.start()
        FileHandle.standardError.write(Data("broker: mosquitto on \(broker.host):\(broker.port); libmosquitto \(MQTTClient.libraryVersion)\n".utf8))
        var rows: [String] = []
        do {
            for q in qos {
                var c: [Result] = []
                var s: [Result] = []
                for i in 1...self.repeat {
                    for (impl, path, args) in [("c", cPath, [broker.host, "\(broker.port)", "\(q)", "\(messages)", "\(size)"]),
                                               ("swift", swiftPath, ["worker", "--port", "\(broker.port)", "--qos", "\(q)", "--messages", "\(messages)", "--size", "\(size)"])] {
                        let out = try await MosquittoBroker.runCommand(path, args, timeout: .seconds(180))
                        guard let line = out.output.split(separator: "\n").last(where: { $0.hasPrefix("{") }),
                              let r = try? JSONDecoder().decode(Result.self, from: Data(line.utf8)) else {
                            throw ValidationError("\(impl) run failed: \(out.output)")
                        }
                        FileHandle.standardError.write(Data("qos \(q) run \(i) \(impl): \(Int(r.rate)) msg/s, \(r.received)/\(r.messages) received, peak RSS \(r.peak_rss_kb) KiB\n".utf8))
                        if impl == "c" { c.append(r) } else { s.append(r) }
                    }
                }
                let mc = median(c.map(\.rate)), ms = median(s.map(\.rate))
                let rc = c.map(\.peak_rss_kb).max() ?? 0, rs = s.map(\.peak_rss_kb).max() ?? 0
                rows.append("| \(q) | \(Int(mc)) | \(Int(ms)) | **\(String(format: "%.2f", ms / mc))** | \(rc / 1024) MiB | \(rs / 1024) MiB | \(c.allSatisfy { $0.received == $0.messages } && s.allSatisfy { $0.received == $0.messages } ? "all" : "LOSS") |")
            }
        } catch {
            await broker.shutdown()
            throw error
        }
        await broker.shutdown()
        print("| QoS | C msg/s (median of \(self.repeat)) | Swift msg/s | Swift/C | C peak RSS | Swift peak RSS | delivered |")
        print("|---|---|---|---|---|---|---|")
        for r in rows { print(r) }
        print("\n\(messages) messages of \(size) bytes, one publisher and one subscriber per process, private mosquitto \(MQTTClient.libraryVersion) on loopback.")
    }

    func median(_ v: [Double]) -> Double {
        let s = v.sorted()
        return s.isEmpty ? 0 : s[s.count / 2]
    }
}

/// One Swift run: the same workload as mosquitto-bench-c, through the library.
struct Worker: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "One Swift run (used by `throughput`).", shouldDisplay: false)

    @Option var host = "127.0.0.1"
    @Option var port: Int
    @Option var qos: Int
    @Option var messages: Int
    @Option var size: Int
    @Option(help: "Messages the publisher may have queued or in flight.") var queue = 1000

    func run() async throws {
        let level = QoS(rawValue: UInt8(qos)) ?? .atMostOnce
        let topic = "bench/swift/\(getpid())/\(qos)"
        let sub = try MQTTClient(configuration: .init(host: host, port: port, clientID: "bench-swift-sub"))
        try await sub.connect()
        let stream = try await sub.subscribe([Subscription(topic, qos: level)],
                                             buffer: .init(capacity: 10_000, overflow: .backpressure(maxWait: .seconds(30))))
        var pc = MQTTConfiguration(host: host, port: port, clientID: "bench-swift-pub")
        pc.maximumQueuedMessages = queue
        let pub = try MQTTClient(configuration: pc)
        try await pub.connect()
        let n = messages
        let clock = ContinuousClock()
        let start = clock.now
        let reader = Task { () -> (Int, Duration) in
            var got = 0
            var last = clock.now
            for try await _ in stream {
                got += 1
                if got == n { last = clock.now; break }
            }
            return (got, last - start)
        }
        let payload = [UInt8](repeating: UInt8(ascii: "x"), count: size)
        for _ in 0..<n {
            try await pub.publish(MQTTMessage(topic: topic, payload: payload, qos: level), completion: .enqueued)
        }
        let timeout = Task {
            try await Task.sleep(for: .seconds(60))
            stream.cancel()
        }
        let (got, elapsed) = try await reader.value
        timeout.cancel()
        let seconds = got == n ? Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
                               : Double((clock.now - start).components.seconds)
        let r = Result(impl: "swift", qos: qos, messages: n, received: got, seconds: seconds, rate: Double(got) / seconds, peak_rss_kb: peakResidentKiB())
        await pub.shutdown()
        await sub.shutdown()
        print(String(decoding: try JSONEncoder().encode(r), as: UTF8.self))
    }
}

/// Peak resident set of this process image (VmHWM); `ru_maxrss` survives `execve` on Linux and would
/// report the parent's peak.
func peakResidentKiB() -> Int {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return -1 }
    for line in status.split(separator: "\n") where line.hasPrefix("VmHWM:") {
        return Int(line.dropFirst(6).trimmingCharacters(in: .whitespaces).split(separator: " ").first ?? "") ?? -1
    }
    return -1
}
