import Foundation
import Logging
import Mosquitto
import MosquittoBroker
import MosquittoTestSupport
import Synchronization
import Testing

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
