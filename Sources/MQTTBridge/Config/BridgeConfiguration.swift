import Mosquitto
import MQTTOutbox

/// Which way a route forwards.
public enum RouteDirection: String, Sendable, Hashable, CaseIterable {
    /// Feed frames are published to MQTT.
    case toMQTT = "to_mqtt"
    /// MQTT messages are written to the feed.
    case toFeed = "to_feed"
    /// Both; the route's subscriptions use MQTT 5 no-local so its own publications do not come back.
    case both

    package var readsFeed: Bool { self != .toFeed }
    package var writesFeed: Bool { self != .toMQTT }
}

/// A host and port.
public struct SocketAddressSpec: Sendable, Hashable, CustomStringConvertible {
    /// Host name or IP address.
    public var host: String
    /// Port (0 = any free port, for listeners).
    public var port: Int
    /// Creates an address.
    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }
    /// Parses `host:port`, `[v6]:port` or `:port` (loopback); nil when malformed.
    public init?(parsing text: String, defaultHost: String = "127.0.0.1") {
        var host = defaultHost
        var portText = Substring(text)
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            host = String(text[text.index(after: text.startIndex)..<close])
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { return nil }
            portText = rest.dropFirst()
        } else if let colon = text.lastIndex(of: ":") {
            if colon != text.startIndex { host = String(text[..<colon]) }
            portText = text[text.index(after: colon)...]
        }
        guard let port = Int(portText), (0...65535).contains(port) else { return nil }
        self.host = host
        self.port = port
    }
    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// Reconnect delays: decorrelated jitter between `base` and `cap` (mosquitto's `restart_timeout base cap`).
public struct RestartTimeout: Sendable, Hashable {
    /// The smallest delay.
    public var base: Duration
    /// The largest delay.
    public var cap: Duration
    /// Creates delays.
    public init(base: Duration = .seconds(1), cap: Duration = .seconds(30)) {
        self.base = base
        self.cap = max(base, cap)
    }
    /// The next delay after `previous` (decorrelated jitter: random between base and 3 × previous, capped).
    public func next(after previous: Duration) -> Duration {
        let b = base / .milliseconds(1)
        let p = max(b, previous / .milliseconds(1))
        let upper = min(cap / .milliseconds(1), p * 3)
        let ms = upper <= b ? b : Double.random(in: b...upper)
        return .milliseconds(Int64(ms))
    }
}

/// The feed side of a route.
public struct FeedConfiguration: Sendable, Hashable {
    /// How the bridge meets the feed.
    public enum Mode: String, Sendable, Hashable, CaseIterable {
        /// The bridge dials the feed and redials with backoff and jitter.
        case tcpClient = "tcp_client"
        /// The bridge accepts feed connections.
        case tcpServer = "tcp_server"
        /// Datagrams in (on the bound address) and out (to ``FeedConfiguration/udpTargets``).
        case udp
    }
    /// The mode.
    public var mode: Mode
    /// Client: the addresses to dial, in turn. Server and UDP: the address to bind (loopback unless told otherwise).
    public var addresses: [SocketAddressSpec]
    /// UDP: where MQTT messages are sent.
    public var udpTargets: [SocketAddressSpec]
    /// Server: peers allowed to connect (IP addresses or CIDR blocks); empty allows all.
    public var allow: [String]
    /// Server: the most concurrent connections.
    public var maxConnections: Int
    /// Client: redial delays.
    public var restartTimeout: RestartTimeout
    /// TCP (server and client): close a connection that neither sent nor received anything for this long, and
    /// count it (`mqtt_bridge_idle_timeouts_total`). Zero (the default) never closes idle connections. A
    /// connection paused by spool backpressure is not idle.
    public var idleTimeout: Duration

    /// Creates a feed configuration.
    public init(mode: Mode, addresses: [SocketAddressSpec], udpTargets: [SocketAddressSpec] = [], allow: [String] = [],
                maxConnections: Int = 1024, restartTimeout: RestartTimeout = .init(base: .milliseconds(200), cap: .seconds(10)),
                idleTimeout: Duration = .zero) {
        self.idleTimeout = idleTimeout
        self.mode = mode
        self.addresses = addresses
        self.udpTargets = udpTargets
        self.allow = allow
        self.maxConnections = maxConnections
        self.restartTimeout = restartTimeout
    }
}

/// What happens to MQTT → feed messages for a connection whose reader is slow.
public enum SlowReaderPolicy: String, Sendable, Hashable, CaseIterable {
    /// Drop messages that do not fit in the connection's queue, and count them. Other readers are unaffected.
    case drop
    /// Close the connection once its queue is full.
    case disconnect
}

/// One route: a feed, its framing, and its MQTT side.
public struct RouteConfiguration: Sendable, Hashable {
    /// The route (feed) name; used in topics, metrics and the spool directory.
    public var name: String
    /// The direction.
    public var direction: RouteDirection
    /// The feed.
    public var feed: FeedConfiguration
    /// The framing, both ways.
    public var framing: Framing
    /// The largest frame.
    public var maxFrame: Int
    /// Oversize policy.
    public var oversize: OversizePolicy
    /// Partial-frame-at-close policy.
    public var partialOnClose: PartialFramePolicy
    /// Feed → MQTT: the topic template.
    public var topic: TopicTemplate?
    /// Feed → MQTT: where frames whose topic cannot be built go (default `<state prefix>/deadletter/<route>`).
    public var deadLetterTopic: String?
    /// Separator for `{field:N}`.
    public var fieldSeparator: [UInt8]
    /// Pattern for `{regex:N}`.
    public var topicRegex: String?
    /// MQTT → feed: the filters to subscribe to.
    public var subscriptions: [String]
    /// MQTT → feed: share the subscriptions in this group (`$share/<group>/<filter>`) across bridge instances.
    public var shareGroup: String?
    /// QoS for publishing and subscribing.
    public var qos: QoS
    /// Retain flag for published frames.
    public var retain: Bool
    /// MQTT → feed: the most bytes queued per connection.
    public var outQueueBytes: Int
    /// MQTT → feed: slow reader policy.
    public var slowReader: SlowReaderPolicy
    /// Payload transcoding between the feed and MQTT (`transcode`); none by default.
    public var transcode: PayloadTranscoding = .none

    /// Creates a route.
    public init(name: String, direction: RouteDirection, feed: FeedConfiguration, framing: Framing = .lf,
                maxFrame: Int = 65536, oversize: OversizePolicy = .discard, partialOnClose: PartialFramePolicy = .drop,
                topic: TopicTemplate? = nil, deadLetterTopic: String? = nil, fieldSeparator: [UInt8] = [UInt8(ascii: ",")],
                topicRegex: String? = nil, subscriptions: [String] = [], shareGroup: String? = nil, qos: QoS = .atLeastOnce,
                retain: Bool = false, outQueueBytes: Int = 1 << 20, slowReader: SlowReaderPolicy = .drop,
                transcode: PayloadTranscoding = .none) {
        self.name = name
        self.direction = direction
        self.feed = feed
        self.framing = framing
        self.maxFrame = maxFrame
        self.oversize = oversize
        self.partialOnClose = partialOnClose
        self.topic = topic
        self.deadLetterTopic = deadLetterTopic
        self.fieldSeparator = fieldSeparator
        self.topicRegex = topicRegex
        self.subscriptions = subscriptions
        self.shareGroup = shareGroup
        self.qos = qos
        self.retain = retain
        self.outQueueBytes = outQueueBytes
        self.slowReader = slowReader
        self.transcode = transcode
    }
}

/// How a route converts payloads between its feed and MQTT (`transcode` in a route block, `--transcode`).
public enum PayloadTranscoding: String, Sendable, Hashable {
    /// Payloads pass through unchanged.
    case none
    /// The feed speaks JSON (one document per frame, e.g. JSON lines), MQTT carries MessagePack: feed frames are
    /// published as MessagePack (content type `application/msgpack` on MQTT 5), and MQTT messages are written to
    /// the feed as compact JSON. A frame that is not JSON goes to the dead-letter topic unchanged (counted in
    /// `dead_lettered_total`); a message that is not MessagePack goes there too when the route also reads its feed
    /// (it has a spool), and is otherwise dropped and counted as `unencodable`.
    case jsonMessagePack = "json_msgpack"
}

/// Everything one bridge process runs: the broker connection, the spool, operations, and the routes.
public struct BridgeConfiguration: Sendable {
    /// The broker connection (the library's configuration; the client id is required for a persistent session).
    public var mqtt: MQTTConfiguration
    /// Where route spools live (one subdirectory per route).
    public var spoolDirectory: String
    /// Spool limits and fsync policy (the directory is filled in per route).
    public var spoolMaxBytes: Int
    /// Segment size.
    public var spoolSegmentBytes: Int
    /// fsync policy.
    public var spoolFsync: SpoolConfiguration.FsyncPolicy
    /// Full policy.
    public var spoolFull: SpoolConfiguration.FullPolicy
    /// HTTP `/metrics`, `/healthz`, `/readyz` listener; nil for none.
    public var metricsAddress: SocketAddressSpec?
    /// Prefix of the retained state topic (`<prefix>/state` = `1`/`0`, with a will) and dead-letter topics.
    public var statePrefix: String
    /// Whether to publish the retained state topic.
    public var notifications: Bool
    /// How often a progress line is logged (0 = never).
    public var progressInterval: Duration
    /// How long SIGTERM waits for spools to drain.
    public var drainTimeout: Duration
    /// The publisher's window: the most records of one route handed to the client and not yet acknowledged
    /// (`publish_window`, also accepted as `publish_batch`). The spool's watermark moves per acknowledgement.
    public var publishBatch: Int
    /// libmosquitto's `max_inflight_messages` for the bridge's connection (`max_inflight_messages`); nil uses
    /// ``defaultInflightMessages``. The broker's own `max_inflight_messages` (its MQTT 5 Receive Maximum) also applies.
    public var maxInflightMessages: Int?
    /// The bridge's default in-flight limit: much higher than the library's 20, so QoS 1 acknowledgements
    /// overlap instead of costing a round trip per 20 messages.
    public static let defaultInflightMessages = 32
    /// Turn off Nagle's algorithm on the broker connection (`tcp_nodelay`, default true).
    public var tcpNoDelay: Bool
    /// `/readyz` answers not ready (and `mqtt_bridge_spool_stalled` is 1) when the oldest unacknowledged spool
    /// record is older than this while the broker is connected (`spool_stall_timeout`, default 60 s); nil never.
    public var spoolStallTimeout: Duration?
    /// Stop after this many consecutive connection attempts the broker refused for the credentials
    /// (`auth_failure_limit`); nil (the default) retries with backoff for ever, so a bridge outlives a password
    /// rotation.
    public var authFailureLimit: Int?
    /// The routes.
    public var routes: [RouteConfiguration]

    /// Creates a configuration.
    public init(mqtt: MQTTConfiguration, spoolDirectory: String = "mqtt-bridge-spool", routes: [RouteConfiguration] = []) {
        self.mqtt = mqtt
        self.spoolDirectory = spoolDirectory
        self.spoolMaxBytes = 256 << 20
        self.spoolSegmentBytes = 16 << 20
        self.spoolFsync = .interval(.seconds(1))
        self.spoolFull = .block
        self.metricsAddress = nil
        self.statePrefix = "mqtt-bridge/" + (mqtt.clientID ?? "bridge")
        self.notifications = true
        self.progressInterval = .seconds(60)
        self.drainTimeout = .seconds(10)
        self.publishBatch = 10000
        self.maxInflightMessages = nil
        self.tcpNoDelay = true
        self.spoolStallTimeout = .seconds(60)
        self.authFailureLimit = nil
        self.routes = routes
    }
}
