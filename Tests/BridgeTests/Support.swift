import MosquittoSync
import Foundation
import Logging
import Mosquitto
import MosquittoBroker
import MQTTBridge
import NIOCore
import NIOPosix
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
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
    let broker = try MosquittoBroker(configuration: configuration)
    try await broker.start()
    do {
        let r = try await body(broker)
        await broker.shutdown()
        return r
    } catch {
        await broker.shutdown()
        throw error
    }
}

func quietLogger(_ label: String = "test") -> Logger {
    var logger = Logger(label: label)
    logger.logLevel = .warning
    return logger
}

func clientConfig(_ broker: MosquittoBroker, id: String? = nil, persistent: Bool = false) -> MQTTConfiguration {
    var c = MQTTConfiguration(host: broker.host, port: broker.port, clientID: id ?? "t-\(UUID().uuidString.prefix(8))")
    c.keepAlive = 10
    c.logger = quietLogger()
    c.reconnect.initialDelay = .milliseconds(100)
    c.reconnect.maximumDelay = .milliseconds(500)
    c.reconnect.retryInitialConnect = true
    c.reconnect.giveUpOnFatalErrors = false
    if persistent { c.session = .persistent(expiry: 3600) }
    return c
}

func connected(_ broker: MosquittoBroker, id: String? = nil, persistent: Bool = false) async throws -> MQTTClient {
    let client = try MQTTClient(configuration: clientConfig(broker, id: id, persistent: persistent))
    try await client.connect()
    return client
}

/// A temporary directory, removed by `cleanup()`.
func temporaryDirectory() -> String {
    let path = NSTemporaryDirectory() + "bridge-test-" + UUID().uuidString.prefix(8)
    try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// A bridge configuration for one route, against `broker`.
func bridgeConfig(_ broker: MosquittoBroker, spool: String, routes: [RouteConfiguration], id: String? = nil) -> BridgeConfiguration {
    var mqtt = clientConfig(broker, id: id ?? "bridge-\(UUID().uuidString.prefix(6))", persistent: true)
    mqtt.logger = quietLogger("bridge.mqtt")
    var c = BridgeConfiguration(mqtt: mqtt, spoolDirectory: spool, routes: routes)
    c.progressInterval = .zero
    c.drainTimeout = .seconds(5)
    c.spoolFsync = .never
    return c
}

/// Runs a bridge for the duration of `body`; stops it gracefully afterwards.
func withBridge<T: Sendable>(_ configuration: BridgeConfiguration, logger: Logger = quietLogger("bridge"),
                             _ body: (BridgeService) async throws -> T) async throws -> T {
    let bridge = BridgeService(configuration: configuration, logger: logger)
    let task = Task { try await bridge.run() }
    do {
        try await bridge.waitUntilStarted()
        let r = try await body(bridge)
        bridge.triggerGracefulShutdown()
        try await task.value
        return r
    } catch {
        bridge.triggerGracefulShutdown()
        _ = try? await task.value
        throw error
    }
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
func eventually(timeout: Duration = .seconds(15), _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = ContinuousClock.now + timeout * testTimeScale
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try? await Task.sleep(for: .milliseconds(20))
    }
    return try await condition()
}

/// A lock-protected value that closures and tasks can share.
final class Locked<T: Sendable>: Sendable {
    private let m: LockedValue<T>
    init(_ value: T) { m = LockedValue(value) }
    @discardableResult
    func withLock<R: Sendable>(_ body: (inout T) throws -> R) rethrows -> R { try m.withLock(body) }
    var value: T { m.withLock { $0 } }
}

extension SubscriptionBuffer {
    /// Room for every message a test sends: the recorders count what the bridge delivered, and with the default
    /// buffer (4,096, then backpressure for at most 10 s, then a drop) a recorder starved of CPU under
    /// ThreadSanitizer and load dropped message 4,097 by that documented policy, which the test then counted as
    /// the bridge's loss.
    static let recorder = SubscriptionBuffer(capacity: 1_000_000)
}

/// Collects every message of a subscription in the background.
final class Recorder: Sendable {
    let messages = Locked<[MQTTMessage]>([])
    let task: Task<Void, Never>

    init(_ stream: MessageStream) {
        let messages = self.messages
        task = Task {
            do {
                for try await m in stream { messages.withLock { $0.append(m) } }
            } catch {}
        }
    }

    var count: Int { messages.withLock { $0.count } }
    var payloads: [[UInt8]] { messages.value.map(\.payload) }
    var strings: [String] { messages.value.map { String(decoding: $0.payload, as: UTF8.self) } }
    func stop() { task.cancel() }
}

/// Appends everything a TCP connection receives.
final class ByteCollector: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    let bytes = Locked<[UInt8]>([])
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var b = unwrapInboundIn(data)
        let got = b.readBytes(length: b.readableBytes) ?? []
        bytes.withLock { $0.append(contentsOf: got) }
    }
}

/// A TCP feed peer: connects to the bridge, writes, and records what it receives.
struct FeedPeer {
    let channel: any Channel
    let collector: ByteCollector

    static func connect(port: Int, autoRead: Bool = true, receiveBuffer: Int? = nil) async throws -> FeedPeer {
        let collector = ByteCollector()
        var bootstrap = ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(.autoRead, value: autoRead)
        if let receiveBuffer {
            bootstrap = bootstrap.channelOption(.socketOption(.so_rcvbuf), value: SocketOptionValue(receiveBuffer))
        }
        let channel = try await bootstrap
            .channelInitializer { ch in ch.eventLoop.makeCompletedFuture { try ch.pipeline.syncOperations.addHandler(collector) } }
            .connect(host: "127.0.0.1", port: port).get()
        return FeedPeer(channel: channel, collector: collector)
    }

    func write(_ bytes: [UInt8]) async throws {
        try await channel.writeAndFlush(channel.allocator.buffer(bytes: bytes)).get()
    }

    func close() async { try? await channel.close() }
    var received: [UInt8] { collector.bytes.value }
}

/// Splits LF-terminated bytes into lines (drops an unterminated tail).
func lines(_ bytes: [UInt8]) -> [String] {
    var out: [String] = []
    var start = 0
    // An index loop, not enumerated(): under ThreadSanitizer a cooperative thread spun for minutes in the Swift
    // runtime's generic metadata cache (getOrInsert) instantiating EnumeratedSequence's iterator here, and the
    // suite stalled behind it (seen twice, once for 9 minutes).
    for i in bytes.indices where bytes[i] == 0x0A {
        out.append(String(decoding: bytes[start..<i], as: UTF8.self))
        start = i + 1
    }
    return out
}

/// A free TCP port on loopback (bound then released).
func freePort() -> Int {
    (try? MosquittoBroker.freeLoopbackPort()) ?? 0
}

/// GET over HTTP/1.1 on loopback; returns status and body.
func httpGet(port: Int, path: String) async throws -> (Int, String) {
    let peer = try await FeedPeer.connect(port: port)
    try await peer.write(Array("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".utf8))
    try? await peer.channel.closeFuture.get()
    let text = String(decoding: peer.received, as: UTF8.self)
    let status = Int(text.split(separator: " ").dropFirst().first ?? "") ?? 0
    let body = text.components(separatedBy: "\r\n\r\n").dropFirst().joined(separator: "\r\n\r\n")
    return (status, body)
}

/// Reads one sample from Prometheus text, e.g. `mqtt_bridge_frames_in_total{route="a"}`.
func metricValue(_ text: String, _ name: String, route: String) -> Double? {
    for line in text.split(separator: "\n") where line.hasPrefix(name + "{") && line.contains("route=\"\(route)\"") {
        if let v = line.split(separator: " ").last, let d = Double(v) { return d }
    }
    return nil
}

/// A child process started with `spawnChild`: an empty signal mask (Foundation's Process inherits the async thread's
/// blocked SIGTERM) and no inherited descriptors, so that SIGTERM and SIGKILL behave as they would from a shell.
final class Child: Sendable {
    let pid: pid_t

    init(_ path: String, _ arguments: [String], output: String) throws {
        pid = try spawnChild(path, arguments, standardOutput: output, appendOutput: true)
    }

    func signal(_ s: Int32) { kill(pid, s) }

    /// Waits for the exit (polling, so no thread blocks); returns the raw wait status or nil on timeout.
    func wait(timeout: Duration = .seconds(15)) async -> Int32? {
        let deadline = ContinuousClock.now + timeout
        while ContinuousClock.now < deadline {
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid { return status }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return nil
    }
}

/// The built `mqtt-bridge` executable next to the test bundle, if it was built.
func bridgeExecutable() -> String? {
    let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    var dir = URL(fileURLWithPath: exe).deletingLastPathComponent()
    for _ in 0..<4 {
        let candidate = dir.appendingPathComponent("mqtt-bridge").path
        if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        dir = dir.deletingLastPathComponent()
    }
    return nil
}

/// Sanitizer runs are 5-15x slower: scripts/sanitize.sh sets MOSQUITTO_TEST_TIME_SCALE so that waits for
/// something to happen stretch accordingly (the conditions themselves stay as strict).
let testTimeScale: Int = Int(ProcessInfo.processInfo.environment["MOSQUITTO_TEST_TIME_SCALE"] ?? "") ?? 1

/// Set by scripts/test.sh and scripts/sanitize.sh for the tests that need a `swift test` process of their own.
let processAlone = ProcessInfo.processInfo.environment["MOSQUITTO_PROCESS_ALONE"] == "1"
