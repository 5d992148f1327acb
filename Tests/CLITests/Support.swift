import MosquittoSync
import Foundation
import Logging
import Mosquitto
import MosquittoBroker
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Starts a private broker for the duration of `body`, and always shuts it down.
func withBroker<T>(_ configuration: MosquittoBroker.Configuration = .init(),
                   _ body: (MosquittoBroker) async throws -> T) async throws -> T {
    // mosquitto drops QoS 1/2 messages beyond max_queued_messages (1000 by default) for a subscriber that falls
    // behind, which a test process starved of CPU can. A million unless a test sets it, so that a count that
    // comes up short is the toolkit's loss, not the broker's policy. (Not 0, "no limit": with 0, mosquitto 2.0.11
    // disconnects every client whose publish its ACL refuses.)
    var configuration = configuration
    if configuration.maxQueuedMessages == nil { configuration.maxQueuedMessages = 1_000_000 }
    return try await MosquittoBroker.with(configuration, body)
}

/// The directory holding the built `mqtt-pub`, `mqtt-sub` and `mqtt-rr`.
let productsDirectory: String = {
    var candidates: [URL] = [Bundle.main.bundleURL, Bundle.main.bundleURL.deletingLastPathComponent()]
    for b in Bundle.allBundles { candidates += [b.bundleURL, b.bundleURL.deletingLastPathComponent()] }
    candidates.append(URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent())
    candidates.append(URL(fileURLWithPath: FileManager.default.currentDirectoryPath).appendingPathComponent(".build/debug"))
    for c in candidates where FileManager.default.isExecutableFile(atPath: c.appendingPathComponent("mqtt-pub").path) {
        return c.path
    }
    return candidates[0].path
}()

/// Path of one of our tools.
func tool(_ name: String) -> String { productsDirectory + "/" + name }

/// Path of a mosquitto client, or nil when it is not installed.
func mosquittoTool(_ name: String) -> String? {
    for dir in ["/usr/bin", "/usr/local/bin", "/opt/homebrew/bin"] where FileManager.default.isExecutableFile(atPath: dir + "/" + name) {
        return dir + "/" + name
    }
    return nil
}

let hasMosquittoClients = mosquittoTool("mosquitto_sub") != nil && mosquittoTool("mosquitto_pub") != nil

/// A private temporary directory, removed by the caller.
func temporaryDirectory() -> String {
    let path = NSTemporaryDirectory() + "cli-test-" + UUID().uuidString.prefix(8)
    try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// What a finished program produced.
struct RunResult: CustomStringConvertible {
    var status: Int32
    var signalled: Bool
    var stdout: [UInt8]
    var stderr: String
    var out: String { String(decoding: stdout, as: UTF8.self) }
    var description: String { "status \(status)\(signalled ? " (signal)" : ""), stdout: \(out.prefix(500)), stderr: \(stderr.prefix(500))" }
}

/// A running child process, started with `spawnChild`: an empty signal mask, default signal actions and no inherited
/// descriptors (unlike `Process` started from a Swift concurrency thread, whose blocked SIGTERM/SIGINT/SIGALRM the
/// child would inherit).
final class Child: @unchecked Sendable {
    let pid: pid_t
    let directory: String
    private let lock = LockedValue<Int32?>(nil)

    /// With `combined`, standard output and standard error go to one file (read as `stdout`), as with `2>&1`.
    init(_ executable: String, _ arguments: [String], stdinPath: String? = nil, environment: [String: String]? = nil,
         combined: Bool = false) throws {
        directory = temporaryDirectory()
        var env = environment ?? ProcessInfo.processInfo.environment
        env["TZ"] = env["TZ"] ?? "UTC"
        pid = try spawnChild(
            executable, arguments, environment: env, standardInput: stdinPath ?? "/dev/null",
            standardOutput: directory + "/stdout", standardError: combined ? nil : directory + "/stderr"
        )
    }

    /// Sends a signal.
    func signal(_ sig: Int32) { kill(pid, sig) }

    /// Waits for the exit (killing the child after `timeout`) and returns what it printed.
    func wait(timeout: Duration = .seconds(60)) async -> RunResult {
        let deadline = ContinuousClock.now + timeout
        var status: Int32 = 0
        while true {
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid { break }
            if ContinuousClock.now > deadline {
                kill(pid, SIGKILL)
                _ = waitpid(pid, &status, 0)
                break
            }
            try? await Task.sleep(for: .milliseconds(5))
        }
        let signalled = (status & 0x7f) != 0
        let code = signalled ? (status & 0x7f) : ((status >> 8) & 0xff)
        let out = FileManager.default.contents(atPath: directory + "/stdout").map { Array($0) } ?? []
        let err = FileManager.default.contents(atPath: directory + "/stderr").map { String(decoding: $0, as: UTF8.self) } ?? ""
        try? FileManager.default.removeItem(atPath: directory)
        return RunResult(status: code, signalled: signalled, stdout: out, stderr: err)
    }

    /// What the child wrote to standard output so far.
    func currentOutput() -> [UInt8] {
        FileManager.default.contents(atPath: directory + "/stdout").map { Array($0) } ?? []
    }
}

/// Runs a program to completion.
func run(_ executable: String, _ arguments: [String], stdin: [UInt8]? = nil, stdinPath: String? = nil,
         environment: [String: String]? = nil, timeout: Duration = .seconds(60)) async throws -> RunResult {
    var path = stdinPath
    var cleanup: String?
    if let stdin {
        let dir = temporaryDirectory()
        path = dir + "/stdin"
        try Data(stdin).write(to: URL(fileURLWithPath: path!))
        cleanup = dir
    }
    defer { if let cleanup { try? FileManager.default.removeItem(atPath: cleanup) } }
    let child = try Child(executable, arguments, stdinPath: path, environment: environment)
    return await child.wait(timeout: timeout)
}

/// `-h host -p port` for a broker.
func at(_ broker: MosquittoBroker) -> [String] { ["-h", broker.host, "-p", String(broker.port)] }

/// A library client connected to the broker (for test set-up and checks).
func libraryClient(_ broker: MosquittoBroker, version: MQTTProtocolVersion = .v5) async throws -> MQTTClient {
    var c = MQTTConfiguration(host: broker.host, port: broker.port, clientID: "t-\(UUID().uuidString.prefix(8))", protocolVersion: version)
    var logger = Logger(label: "test")
    logger.logLevel = .critical
    c.logger = logger
    let client = try MQTTClient(configuration: c)
    try await client.connect()
    return client
}

/// Waits until `child` has printed something on standard output (a subscriber that printed a retained message
/// is surely subscribed).
func printedSomething(_ child: Child, timeout: Duration = .seconds(30)) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while child.currentOutput().isEmpty {
        if ContinuousClock.now > deadline { return false }
        try? await Task.sleep(for: .milliseconds(20))
    }
    return true
}

/// Replaces `"tst":"…"` values (the receive time) so that two outputs can be compared.
func normalisedTimestamps(_ bytes: [UInt8]) -> String {
    let s = String(decoding: bytes, as: UTF8.self)
    // The remaining message expiry (86400 s when published) may have lost a second on the way to one of them.
    return s.replacingOccurrences(of: #""tst":\s*"[^"]*""#, with: #""tst":"T""#, options: .regularExpression)
        .replacingOccurrences(of: "86399", with: "86400")
}

/// This process's environment without the user's mosquitto options files (`HOME` is an empty directory, no
/// `XDG_CONFIG_HOME`), and the directory to remove afterwards.
func environmentWithoutOptionsFiles() -> ([String: String], String) {
    let home = temporaryDirectory()
    var env = ProcessInfo.processInfo.environment
    env["HOME"] = home
    env.removeValue(forKey: "XDG_CONFIG_HOME")
    return (env, home)
}
