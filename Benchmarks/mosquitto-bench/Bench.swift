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
        (mosquitto-bench-c) and the same program written with the Swift library (mosquitto-bench-swift),
        both built by this package, each in its own process: one publisher and one subscriber, N messages
        of SIZE bytes. The Swift program runs twice per round: with its publishing and counting tasks on each
        client's network thread (client.executor, where the C program's callbacks run), and with them on
        Swift's global concurrent executor; every other round runs them in the opposite order. Reports the
        median rates, the ratios Swift/C (of the medians, and within each round: median and middle half),
        each process's CPU time and its peak resident memory. Single rounds spread widely on a small machine:
        use 15 rounds or more.

        Example (release build, Swift runtime linked statically as a deployed Linux binary would be):
          swift build -c release --static-swift-stdlib --product mosquitto-bench
          swift build -c release --static-swift-stdlib --product mosquitto-bench-c
          swift build -c release --static-swift-stdlib --product mosquitto-bench-swift
          .build/release/mosquitto-bench throughput --messages 100000 --size 64 --repeat 15
        """,
        subcommands: [Throughput.self, WebSockets.self, Outbox.self],
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
    /// CPU time of the whole process (user + system), absent from older builds of the programs.
    var cpu_ms: Double?
}

/// One variant of a comparison: a program and its arguments.
struct Variant {
    var name: String
    var path: String
    var arguments: [String]
}

/// Runs every variant once per round, `rounds` times, every other round in the opposite order so that no variant
/// always runs right after the same one (the broker may still be freeing the previous run's memory), and returns
/// each variant's results by name. `label` prefixes the progress line of each run on standard error.
func alternatingRounds(_ rounds: Int, _ variants: [Variant], label: String = "", timeout: Duration) async throws -> [String: [Result]] {
    var results: [String: [Result]] = [:]
    for i in 1...rounds {
        for v in i % 2 == 1 ? variants : variants.reversed() {
            let out = try await MosquittoBroker.runCommand(v.path, v.arguments, timeout: timeout)
            guard let line = out.output.split(separator: "\n").last(where: { $0.hasPrefix("{") }),
                  let r = try? JSONDecoder().decode(Result.self, from: Data(line.utf8)) else {
                throw ValidationError("\(v.name) run failed: \(out.output)")
            }
            FileHandle.standardError.write(Data("\(label)run \(i) \(v.name): \(Int(r.rate)) msg/s, \(r.received)/\(r.messages) received, CPU \(Int(r.cpu_ms ?? 0)) ms, peak RSS \(r.peak_rss_kb) KiB\n".utf8))
            results[v.name, default: []].append(r)
        }
    }
    return results
}

struct Throughput: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the comparison and print a Markdown table.")

    @Option(help: "Messages per run.") var messages = 100_000
    @Option(help: "Payload size in bytes.") var size = 64
    @Option(parsing: .upToNextOption, help: "QoS levels to measure.") var qos: [Int] = [0, 1, 2]
    @Option(help: "Runs per implementation and QoS; the median is reported.") var `repeat` = 3
    @Option(help: "Path of the C reference program (default: next to this executable).") var cProgram: String?
    @Option(help: "Path of the Swift program (default: next to this executable).") var swiftProgram: String?
    @Flag(help: "Also run the Swift program with the library's socket batching off (batchesSocketIO = false).")
    var unbatched = false

    func run() async throws {
        let here = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        let cPath = cProgram ?? here.appendingPathComponent("mosquitto-bench-c").path
        let swiftPath = swiftProgram ?? here.appendingPathComponent("mosquitto-bench-swift").path
        for (path, product) in [(cPath, "mosquitto-bench-c"), (swiftPath, "mosquitto-bench-swift")]
        where !FileManager.default.isExecutableFile(atPath: path) {
            throw ValidationError("\(product) is missing at \(path); build it with: swift build -c release --product \(product)")
        }
        var config = MosquittoBroker.Configuration()
        config.maxQueuedMessages = 0  // queue for a slow subscriber instead of dropping: both sides are measured equally
        let broker = try MosquittoBroker(configuration: config)
        try await broker.start()
        FileHandle.standardError.write(Data("broker: mosquitto on \(broker.host):\(broker.port); libmosquitto \(MQTTClient.libraryVersion)\n".utf8))
        var rows: [String] = []
        do {
            for q in qos {
                let args = [broker.host, "\(broker.port)", "\(q)", "\(messages)", "\(size)", "5"]
                let variants = [Variant(name: "c", path: cPath, arguments: args), Variant(name: "swift", path: swiftPath, arguments: args + ["network"]),
                                Variant(name: "swift-pool", path: swiftPath, arguments: args + ["pool"])]
                    + (unbatched ? [Variant(name: "swift-unbatched", path: swiftPath, arguments: args + ["unbatched"])] : [])
                let results = try await alternatingRounds(self.repeat, variants, label: "qos \(q) ", timeout: .seconds(180))
                let c = results["c"]!, s = results["swift"]!, p = results["swift-pool"]!, u = results["swift-unbatched"] ?? []
                let mc = median(c.map(\.rate)), ms = median(s.map(\.rate)), mp = median(p.map(\.rate))
                // The ratio within each round (same minute, same broker state), then its median and middle half.
                let paired = quartiles(zip(s, c).map { $0.rate / $1.rate })
                let cpuC = median(c.compactMap(\.cpu_ms)), cpuS = median(s.compactMap(\.cpu_ms))
                let rc = c.map(\.peak_rss_kb).max() ?? 0, rs = (s + p).map(\.peak_rss_kb).max() ?? 0
                let all = (c + s + p + u).allSatisfy { $0.received == $0.messages }
                let f = { (x: Double) in String(format: "%.2f", x) }
                let mu = median(u.map(\.rate)), cpuU = median(u.compactMap(\.cpu_ms))
                let extra = unbatched ? " \(Int(mu)) | \(f(mu / mc)) | \(Int(cpuU)) |" : ""
                rows.append("| \(q) | \(Int(mc)) | \(Int(ms)) | **\(f(ms / mc))** | \(f(paired.median)) (\(f(paired.low))-\(f(paired.high))) | \(Int(mp)) | \(f(mp / mc)) | \(Int(cpuC)) / \(Int(cpuS)) | \(rc / 1024) / \(rs / 1024) MiB | \(all ? "all" : "LOSS") |" + extra)
            }
        } catch {
            await broker.shutdown()
            throw error
        }
        await broker.shutdown()
        let extraHeader = unbatched ? " Swift msg/s, `client.executor`, socket batching off | Swift/C | its CPU ms |" : ""
        print("| QoS | C msg/s (median of \(self.repeat)) | Swift msg/s, tasks on `client.executor` | Swift/C | Swift/C per round: median (middle half) | Swift msg/s, tasks on the global executor | Swift/C | CPU ms per run, C / Swift | peak RSS, C / Swift | delivered |" + extraHeader)
        print("|---|---|---|---|---|---|---|---|---|---|" + (unbatched ? "---|---|---|" : ""))
        for r in rows { print(r) }
        print("\n\(messages) messages of \(size) bytes, one publisher and one subscriber per process, private mosquitto \(MQTTClient.libraryVersion) on loopback.")
    }

    func median(_ v: [Double]) -> Double { quartiles(v).median }

    /// The median and the quartiles around it (nearest rank), so a reader sees how far single rounds spread.
    func quartiles(_ v: [Double]) -> (low: Double, median: Double, high: Double) {
        let s = v.sorted()
        guard !s.isEmpty else { return (0, 0, 0) }
        return (s[(s.count - 1) / 4], s[s.count / 2], s[(3 * (s.count - 1) + 3) / 4])
    }
}

/// Issue #17: the library over WebSockets against plain TCP, same program, same broker, same run.
struct WebSockets: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "websockets",
        abstract: "Library throughput over WebSockets against plain TCP on the same broker; prints a Markdown table.",
        discussion: """
        Starts a private mosquitto with a websockets listener beside the plain one, then alternates runs of
        mosquitto-bench-swift over plain TCP and over WebSockets (both clients through the library's WebSocket
        tunnel), each in its own process, tasks on the clients' network threads. Every other round runs them in
        the opposite order. Reports median rates, the ratio ws/TCP (of the medians, and per round), CPU time.

          swift build -c release --static-swift-stdlib --product mosquitto-bench
          swift build -c release --static-swift-stdlib --product mosquitto-bench-swift
          .build/release/mosquitto-bench websockets --messages 100000 --size 64 --repeat 9
        """
    )

    @Option(help: "Messages per run.") var messages = 100_000
    @Option(help: "Payload size in bytes.") var size = 64
    @Option(parsing: .upToNextOption, help: "QoS levels to measure.") var qos: [Int] = [0, 1]
    @Option(help: "Rounds per QoS; the median is reported.") var `repeat` = 5
    @Option(help: "Path of the Swift program (default: next to this executable).") var swiftProgram: String?
    @Flag(help: "Also run with only the publisher, then only the subscriber, over WebSockets (where the cost goes).")
    var split = false

    func run() async throws {
        let here = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        let swiftPath = swiftProgram ?? here.appendingPathComponent("mosquitto-bench-swift").path
        guard FileManager.default.isExecutableFile(atPath: swiftPath) else {
            throw ValidationError("mosquitto-bench-swift is missing at \(swiftPath); build it with: swift build -c release --product mosquitto-bench-swift")
        }
        var config = MosquittoBroker.Configuration()
        config.maxQueuedMessages = 0
        config.webSockets = true
        let broker = try MosquittoBroker(configuration: config)
        try await broker.start()
        let wsPort = broker.webSocketsPort ?? 0
        FileHandle.standardError.write(Data("broker: mosquitto on \(broker.host):\(broker.port), websockets on \(wsPort)\n".utf8))
        var rows: [String] = []
        do {
            for q in qos {
                let variants = [("tcp", broker.port, "network"), ("ws", wsPort, "ws")]
                    + (split ? [("ws-pub", wsPort, "ws-pub"), ("ws-sub", wsPort, "ws-sub")] : [])
                let results = try await alternatingRounds(self.repeat, variants.map { name, port, mode in
                    Variant(name: name, path: swiftPath,
                            arguments: [broker.host, "\(port)", "\(q)", "\(messages)", "\(size)", "5", mode, "\(broker.port)"])
                }, label: "qos \(q) ", timeout: .seconds(300))
                let tcp = results["tcp"]!, ws = results["ws"]!, wsPub = results["ws-pub"] ?? [], wsSub = results["ws-sub"] ?? []
                let t = Throughput()
                let mt = t.median(tcp.map(\.rate)), mw = t.median(ws.map(\.rate))
                let paired = t.quartiles(zip(ws, tcp).map { $0.rate / $1.rate })
                let cpuT = t.median(tcp.compactMap(\.cpu_ms)), cpuW = t.median(ws.compactMap(\.cpu_ms))
                let all = (tcp + ws).allSatisfy { $0.received == $0.messages }
                let f = { (x: Double) in String(format: "%.2f", x) }
                let splitCells = split
                    ? " \(f(t.median(wsPub.map(\.rate)) / mt)) | \(f(t.median(wsSub.map(\.rate)) / mt)) |" : ""
                rows.append("| \(q) | \(Int(mt)) | \(Int(mw)) | **\(f(mw / mt))** | \(f(paired.median)) (\(f(paired.low))-\(f(paired.high))) | \(Int(cpuT)) / \(Int(cpuW)) | \(all ? "all" : "LOSS") |" + splitCells)
            }
        } catch {
            await broker.shutdown()
            throw error
        }
        await broker.shutdown()
        print("| QoS | TCP msg/s (median of \(self.repeat)) | WebSockets msg/s | ws/TCP | ws/TCP per round: median (middle half) | CPU ms per run, TCP / ws | delivered |" + (split ? " only the publisher on ws, /TCP | only the subscriber on ws, /TCP |" : ""))
        print("|---|---|---|---|---|---|---|" + (split ? "---|---|" : ""))
        for r in rows { print(r) }
        print("\n\(messages) messages of \(size) bytes, one publisher and one subscriber per process, private mosquitto on loopback.")
    }
}

/// The durable outbox against the in-memory queue, same program, same broker, alternating rounds.
struct Outbox: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure the library's durable outbox (fsync every second, and after every append) against its in-memory queue.")

    @Option(help: "Messages per run.") var messages = 100_000
    @Option(help: "Payload size in bytes.") var size = 64
    @Option(help: "QoS of the messages.") var qos = 1
    @Option(help: "Rounds; the median is reported.") var `repeat` = 5
    @Option(help: "Path of the Swift program (default: next to this executable).") var swiftProgram: String?

    func run() async throws {
        let here = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        let swiftPath = swiftProgram ?? here.appendingPathComponent("mosquitto-bench-swift").path
        guard FileManager.default.isExecutableFile(atPath: swiftPath) else {
            throw ValidationError("mosquitto-bench-swift is missing at \(swiftPath); build it with: swift build -c release --product mosquitto-bench-swift")
        }
        var config = MosquittoBroker.Configuration()
        config.maxQueuedMessages = 0
        let broker = try MosquittoBroker(configuration: config)
        try await broker.start()
        let modes = ["network", "outbox-interval", "outbox-always"]
        let results: [String: [Result]]
        do {
            results = try await alternatingRounds(self.repeat, modes.map { mode in
                Variant(name: mode, path: swiftPath, arguments: [broker.host, "\(broker.port)", "\(qos)", "\(messages)", "\(size)", "5", mode])
            }, timeout: .seconds(600))
        } catch {
            await broker.shutdown()
            throw error
        }
        await broker.shutdown()
        let t = Throughput()
        let memory = t.median(results["network"]!.map(\.rate))
        let f = { (x: Double) in String(format: "%.2f", x) }
        print("| queue | msg/s (median of \(self.repeat)) | / in-memory | per round: median (middle half) | CPU ms per run | delivered |")
        print("|---|---|---|---|---|---|")
        for mode in modes {
            let rs = results[mode]!
            let m = t.median(rs.map(\.rate))
            let paired = t.quartiles(zip(rs, results["network"]!).map { $0.rate / $1.rate })
            let name = mode == "network" ? "in memory (`.enqueued`)" : mode == "outbox-interval" ? "outbox, fsync every 1 s (`.stored`)" : "outbox, fsync always (`.stored`)"
            print("| \(name) | \(Int(m)) | **\(f(m / memory))** | \(f(paired.median)) (\(f(paired.low))-\(f(paired.high))) | \(Int(t.median(rs.compactMap(\.cpu_ms)))) | \(rs.allSatisfy { $0.received == $0.messages } ? "all" : "LOSS") |")
        }
        print("\n\(messages) messages of \(size) bytes at QoS \(qos), one publisher and one subscriber per process, private mosquitto on loopback, outbox on \(FileManager.default.temporaryDirectory.path)'s filesystem.")
    }
}
