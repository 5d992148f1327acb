import MosquittoSync
import Foundation
import Logging
import Mosquitto
import MosquittoBroker
import Synchronization
import Testing

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

func config(_ broker: MosquittoBroker, id: String? = nil, version: MQTTProtocolVersion = .v5) -> MQTTConfiguration {
    var c = MQTTConfiguration(host: broker.host, port: broker.port, clientID: id ?? "t-\(UUID().uuidString.prefix(8))", protocolVersion: version)
    c.keepAlive = 10
    var logger = Logger(label: "test")
    logger.logLevel = ProcessInfo.processInfo.environment["MOSQUITTO_TEST_LOG"].flatMap { Logger.Level(rawValue: $0) } ?? .warning
    c.logger = logger
    c.reconnect.initialDelay = .milliseconds(100)
    c.reconnect.maximumDelay = .seconds(1)
    return c
}

func connected(_ broker: MosquittoBroker, id: String? = nil, version: MQTTProtocolVersion = .v5,
               _ adjust: (inout MQTTConfiguration) -> Void = { _ in }) async throws -> MQTTClient {
    var c = config(broker, id: id, version: version)
    adjust(&c)
    let client = try MQTTClient(configuration: c)
    try await client.connect()
    return client
}

/// Reads from `stream` until `count` messages arrived or `timeout` passed; returns what arrived.
/// The stream is finished afterwards when the timeout hit.
func collect(_ stream: MessageStream, count: Int, timeout: Duration = .seconds(10)) async throws -> [MQTTMessage] {
    try await collect(stream, timeout: timeout) { received, _ in received >= count }
}

/// Reads from `stream` up to and including the first message that satisfies `last`, or until `timeout` passed;
/// returns what arrived. Negative checks use it with a sentinel message that is sure to come after any unwanted
/// one, instead of waiting a fixed time.
func collect(_ stream: MessageStream, until last: @escaping @Sendable (MQTTMessage) -> Bool,
             timeout: Duration = .seconds(10)) async throws -> [MQTTMessage] {
    try await collect(stream, timeout: timeout) { _, message in last(message) }
}

/// Reads from `stream` until `done(messages read so far, last message)` holds or `timeout` passed.
private func collect(_ stream: MessageStream, timeout: Duration,
                     done: @escaping @Sendable (Int, MQTTMessage) -> Bool) async throws -> [MQTTMessage] {
    let box = Locked<[MQTTMessage]>([])
    await withTaskGroup(of: Void.self) { group in
        group.addTask {
            var n = 0
            do {
                for try await m in stream {
                    box.withLock { $0.append(m) }
                    n += 1
                    if done(n, m) { break }
                }
            } catch {}
        }
        group.addTask { try? await Task.sleep(for: timeout * testTimeScale) }
        await group.next()
        group.cancelAll()
    }
    return box.value
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
func eventually(timeout: Duration = .seconds(10), _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = ContinuousClock.now + timeout * testTimeScale
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try? await Task.sleep(for: .milliseconds(20))
    }
    return try await condition()
}

/// Resident set size of this process in bytes (Linux /proc).
func residentBytes() -> Int {
    guard let s = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
    let parts = s.split(separator: " ")
    guard parts.count > 1, let pages = Int(parts[1]) else { return 0 }
    return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
}

/// Number of threads of this process (Linux /proc).
func threadCount() -> Int {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task").count) ?? 0
}

/// Threads of this process named `name` (Linux /proc comm).
func threads(named name: String) -> Int {
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
    return tasks.filter { t in
        ((try? String(contentsOfFile: "/proc/self/task/\(t)/comm", encoding: .utf8)) ?? "").hasPrefix(name)
    }.count
}

func payload(_ i: Int) -> [UInt8] { Array("message-\(i)".utf8) }

/// A lock-protected value that closures and tasks can share.
final class Locked<T: Sendable>: Sendable {
    private let m: LockedValue<T>
    init(_ value: T) { m = LockedValue(value) }
    @discardableResult
    func withLock<R: Sendable>(_ body: (inout T) throws -> R) rethrows -> R { try m.withLock(body) }
    var value: T { m.withLock { $0 } }
}

/// A free TCP port on 127.0.0.1 (bound, read back, closed).
func freeLoopbackPort() -> Int {
    (try? MosquittoBroker.freeLoopbackPort()) ?? 0
}

/// Open file descriptors of this process (Linux /proc).
func openFileDescriptors() -> Int {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? 0
}

/// The descriptors of this process's TCP connections to 127.0.0.1:`port` (Linux /proc).
func tcpDescriptors(toPort port: Int) -> [Int32] {
    // /proc/self/net/tcp: "sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...",
    // addresses as hex "0100007F:075B". Established connections (st 01) to the port give socket inodes.
    // Read to the end: String(contentsOfFile:) stops after the first 4 KiB of a /proc file.
    let data = FileHandle(forReadingAtPath: "/proc/self/net/tcp")?.readDataToEndOfFile() ?? Data()
    let table = String(decoding: data, as: UTF8.self)
    let remote = String(format: "0100007F:%04X", port)
    var inodes: Set<String> = []
    for line in table.split(separator: "\n").dropFirst() {
        let fields = line.split(separator: " ")
        if fields.count > 9, fields[2] == remote, fields[3] == "01" { inodes.insert(String(fields[9])) }
    }
    let names = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
    return names.compactMap { name in
        guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/" + name),
              target.hasPrefix("socket:["), inodes.contains(String(target.dropFirst(8).dropLast())) else { return nil }
        return Int32(name)
    }.sorted()
}

/// A log handler that keeps every line, to check what the library logs.
struct CapturingLogHandler: LogHandler {
    let lines: Locked<[String]>
    var logLevel: Logger.Level = .trace
    var metadata: Logger.Metadata = [:]
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }
    func log(event: LogEvent) {
        lines.withLock { $0.append("\(event.level) \(event.message) \(event.metadata ?? [:])") }
    }
}

/// Sanitizer runs are 5-15x slower: scripts/sanitize.sh sets MOSQUITTO_TEST_TIME_SCALE so that waits for
/// something to happen stretch accordingly (the conditions themselves stay as strict).
let testTimeScale: Int = Int(ProcessInfo.processInfo.environment["MOSQUITTO_TEST_TIME_SCALE"] ?? "") ?? 1
