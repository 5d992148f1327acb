import Foundation
import Logging
import Mosquitto
import MosquittoBroker
import MosquittoTestSupport
import MQTTBridge
import NIOCore
import NIOPosix
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

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

/// GET over HTTP/1.1 on loopback; returns status and body.
func httpGet(port: Int, path: String) async throws -> (Int, String) {
    let peer = try await FeedPeer.connect(port: port)
    // The server closes after its answer; a server that never answers must not hang the test (callers poll this
    // inside `eventually`, which cannot interrupt a condition that never returns).
    let deadline = peer.channel.eventLoop.scheduleTask(in: .seconds(Int64(30 * testTimeScale))) { peer.channel.close(promise: nil) }
    defer { deadline.cancel() }
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
