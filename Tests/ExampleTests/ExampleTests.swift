import Foundation
import MosquittoBroker
import MosquittoTestSupport
import Testing

/// Smoke tests for Examples/: each runs a built example executable, as `swift run example-<name>` would, and
/// checks its exit code and the lines that show its pattern worked. Every example checks its own invariant and
/// prints `OK: …` only when it holds. `swift build --build-tests` (or `swift test`) builds the executables.
@Suite("Examples", .timeLimit(.minutes(5 * testTimeScale)))
struct ExampleTests {
    @Test("example-telemetry: QoS 1 readings, retained last values, a will on SIGKILL")
    func telemetry() async throws {
        let out = try await runExample("example-telemetry")
        #expect(out.contains("Starting 3 devices, one process each"))
        #expect(out.contains("sensors/garage/status        offline   <- its will"))
        #expect(out.contains("A new subscriber to sensors/# gets the retained last values at once:"))
        #expect(out.contains("and all arrived; 9 retained last values; the garage's will marked it offline."))
    }

    @Test("example-wildcard: sensors/+/temperature and sensors/#, with a live summary")
    func wildcard() async throws {
        let out = try await runExample("example-wildcard")
        #expect(out.contains("sensors/attic/door/front     sensors/+/temperature: no    sensors/#: yes"))
        #expect(out.contains("Live summary after 1 s:"))
        #expect(out.contains("Final summary:"))
        #expect(out.contains("OK: sensors/# received all 78 messages; sensors/+/temperature received 12 temperatures per device"))
    }

    @Test("example-broadcast: each subscriber hears only its cats; a topic without subscribers goes nowhere")
    func broadcast() async throws {
        let out = try await runExample("example-broadcast")
        #expect(out.contains("    alice heard: tom wears a top hat\n") && out.contains("    bob heard: tom wears a top hat\n"))
        #expect(out.contains("publisher: oscar wears a sombrero   (nobody listens: it goes nowhere)"))
        #expect(!out.contains("heard: oscar"))
        #expect(out.contains("alice heard 6 announcements, all about felix and tom"))
        #expect(out.contains("bob heard 6 announcements, all about tom and luna"))
        #expect(out.contains("OK: every announcement reached exactly the subscribers of its cat"))
    }

    @Test("example-request-reply: concurrent callers each get their own answers; mqtt-rr does the same")
    func requestReply() async throws {
        let out = try await runExample("example-request-reply")
        for caller in ["alice", "bob", "carol"] {
            for n in 1...5 {
                #expect(out.contains("\(caller.padding(toLength: 6, withPad: " ", startingAt: 0)) sent \"message #\(n)\"   got \"reply to message #\(n)\""))
            }
        }
        #expect(out.contains("-t service/echo -e responses/shell -q 1 -W 5 -m 'message #3'\nreply to message #3\n"))
        #expect(out.contains("OK: the service answered 20 requests"))
    }

    @Test("example-work-queue: every job done exactly once, spread over three workers")
    func workQueue() async throws {
        let out = try await runExample("example-work-queue")
        #expect(out.contains("3 workers subscribed to $share/workers/jobs"))
        #expect(out.contains("Totals per worker:"))
        for w in 1...3 { #expect(out.contains("  worker-\(w): ")) }
        #expect(out.contains("OK: 30 jobs, each done exactly once, spread over 3 workers."))
    }

    @Test("example-fan-in-logger: four processes, one file, each host's lines in order")
    func fanInLogger() async throws {
        let directory = NSTemporaryDirectory() + "example-tests-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let file = directory + "/all.log"
        let out = try await runExample("example-fan-in-logger", ["--output", file])
        #expect(out.contains("Starting 4 processes, one per host: web-1, web-2, db-1, cache-1"))
        #expect(out.contains("OK: 100 lines from 4 processes in one file"))
        let lines = try String(contentsOfFile: file, encoding: .utf8).split(separator: "\n")
        #expect(lines.count == 100)
        #expect(Set(lines.map { $0.split(separator: " ")[0] }) == ["web-1", "web-2", "db-1", "cache-1"])
    }

    @Test("example-tcp-feed: a TCP device bridged both ways by mqtt-bridge")
    func tcpFeed() async throws {
        let out = try await runExample("example-tcp-feed")
        #expect(out.contains("$ mqtt-bridge -h 127.0.0.1"))
        #expect(out.contains("  MQTT devices/plc-1/out: reading seq=1 "))
        #expect(out.contains("  MQTT devices/plc-1/out: echo set valve=open"))
        #expect(out.contains("bridge: stopped with SIGTERM, exit code 0"))
        #expect(out.contains("OK: all 20 readings reached MQTT in order; all 5 commands reached the device once"))
    }

    @Test("example-udp-feed: datagrams into MQTT and back out, configured with a file")
    func udpFeed() async throws {
        let out = try await runExample("example-udp-feed")
        #expect(out.contains("mqtt-bridge.conf: OK"))
        #expect(out.contains("  MQTT udp/in/127.0.0.1: sensor=hall seq=1 lux=307"))
        #expect(out.contains(": display: 22.0 C"))
        #expect(out.contains("OK: 20 datagrams became 20 MQTT messages on udp/in/127.0.0.1; 5 MQTT messages on udp/out became 5 datagrams."))
    }

    @Test("example-store-and-forward: 10,000 QoS 1 readings stored while the broker is away survive SIGKILL and arrive in order")
    func storeAndForward() async throws {
        let out = try await runExample("example-store-and-forward")
        #expect(out.contains("it stored them all; killing it with SIGKILL"))
        #expect(out.contains("gateway: the outbox holds 10000 readings a previous run left; they go first"))
        // Nothing was acknowledged before the kill, so the bound on duplicates is 0.
        #expect(out.contains("OK: all 10001 readings arrived in order, 0 duplicates; the 10000 stored before the SIGKILL came first."))
    }

    @Test("--broker HOST:PORT runs an example against a broker it did not start")
    func externalBroker() async throws {
        let broker = try MosquittoBroker()
        try await broker.start()
        let out = try await runExample("example-work-queue", ["--broker", "\(broker.host):\(broker.port)"])
        #expect(out.contains("Using the broker at \(broker.host):\(broker.port)"))
        #expect(!out.contains("Started a private mosquitto"))
        #expect(out.contains("OK: 30 jobs"))
        await broker.shutdown()
    }

    @Test("an example that cannot do its job says so and exits non-zero")
    func failureIsReported() async throws {
        // Nothing listens on port 1 of the loopback address.
        let result = try await MosquittoBroker.runCommand(try examplePath("example-broadcast"), ["--broker", "127.0.0.1:1"],
                                                          timeout: .seconds(30))
        #expect(!result.succeeded && !result.timedOut, "\(result)")
        #expect(result.output.contains("FAILED: "), "\(result)")
        #expect(result.output.contains("connection refused"), "\(result)")
    }

    @Test("--help describes the example and its options")
    func help() async throws {
        let result = try await MosquittoBroker.runCommand(try examplePath("example-telemetry"), ["--help"], timeout: .seconds(30))
        #expect(result.succeeded)
        #expect(result.output.contains("Usage: swift run example-telemetry [--broker HOST:PORT]"))
    }
}

/// Runs a built example to completion and returns what it printed; fails the test unless it exited with 0.
func runExample(_ name: String, _ arguments: [String] = [], sourceLocation: SourceLocation = #_sourceLocation) async throws -> String {
    // The timeout only catches a hang; how fast an example runs is not a test's business (under ThreadSanitizer
    // with CPU hogs all eight take over 30 s).
    let result = try await MosquittoBroker.runCommand(try examplePath(name), arguments, timeout: .seconds(90) * testTimeScale)
    #expect(result.succeeded, "\(name) \(result)", sourceLocation: sourceLocation)
    #expect(result.output.contains("\nOK: "), "\(name) printed no OK line:\n\(result.output)", sourceLocation: sourceLocation)
    #expect(!result.output.contains("FAILED"), "\(result.output)", sourceLocation: sourceLocation)
    return result.output
}

/// The built example executable, which sits next to the test bundle in the build directory.
func examplePath(_ name: String) throws -> String {
    guard let path = builtExecutable(name) else { throw ExampleNotBuilt(name: name) }
    return path
}

struct ExampleNotBuilt: Error, CustomStringConvertible {
    var name: String
    var description: String {
        "\(name) is not built next to the test bundle; run `swift build --build-tests` first"
    }
}
