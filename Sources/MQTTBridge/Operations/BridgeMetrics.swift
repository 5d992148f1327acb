import MQTTOutbox
import MosquittoPOSIX
import Prometheus
import Synchronization

/// A counter kept both as an atomic (readable in-process, for tests and progress logs) and in the Prometheus registry.
public final class Stat: Sendable {
    private let atomic = Atomic<Int>(0)
    let counter: Counter

    init(_ counter: Counter) { self.counter = counter }

    /// Adds `n`.
    public func add(_ n: Int = 1) {
        guard n != 0 else { return }
        atomic.add(n, ordering: .relaxed)
        counter.increment(by: Int64(n))
    }

    /// The current value.
    public var value: Int { atomic.load(ordering: .relaxed) }
}

/// Why a frame or message was not forwarded.
public enum DropReason: String, Sendable, CaseIterable {
    /// Feed → MQTT: a frame longer than `max_frame` (policy discard).
    case oversize
    /// Feed → MQTT: an incomplete frame at connection close (policy drop).
    case partial
    /// Feed → MQTT: the spool was full and its policy is drop_newest.
    case spoolFull = "spool_full"
    /// Feed → MQTT: the spool could not be written.
    case spoolError = "spool_error"
    /// MQTT → feed: the connection's queue was full (slow reader).
    case slowReader = "slow_reader"
    /// MQTT → feed: no feed connection to write to.
    case noConnection = "no_connection"
    /// Feed → MQTT: the broker refused a dead-letter record (reason code 0x80 or above), so it has nowhere to go.
    case refused
    /// MQTT → feed: the payload cannot be framed (holds the delimiter, wrong fixed length …).
    case unencodable
}

/// Counters of one route. Frames and bytes in are read from the feed; out are written to the feed.
public final class RouteMetrics: Sendable {
    /// The route name.
    public let route: String
    /// Frames read from the feed and spooled.
    public let framesIn: Stat
    /// Bytes of those frames' payloads.
    public let bytesIn: Stat
    /// Frames the broker acknowledged (feed → MQTT).
    public let framesPublished: Stat
    /// Messages written to feed connections (one per connection).
    public let framesOut: Stat
    /// Payload bytes written to feed connections.
    public let bytesOut: Stat
    /// Messages received from MQTT for this route.
    public let messagesReceived: Stat
    /// Frames sent to the dead-letter topic because their topic could not be built.
    public let deadLettered: Stat
    /// Frames cut at `max_frame` (policy truncate) and published marked as truncated.
    public let truncated: Stat
    /// Incomplete frames published at close (policy emit or deadletter).
    public let partialEmitted: Stat
    /// Records the broker refused (reason code 0x80 or above) or the client refused up front; each is re-spooled
    /// on the dead-letter topic (or, if it already was a dead-letter record, dropped as `refused`).
    public let refused: Stat
    /// Feed connections closed by the idle timeout.
    public let idleTimeouts: Stat
    /// UDP datagrams discarded because the sender is not in the route's allowlist.
    public let datagramsRejected: Stat
    /// Feed connections accepted or established.
    public let connections: Stat
    /// Feed connections refused (allowlist or connection limit).
    public let connectionsRejected: Stat
    /// TCP client redials after the first connection attempt.
    public let reconnects: Stat
    /// Drops, by reason.
    public let drops: [DropReason: Stat]
    /// Spool depth, set when metrics are read.
    let spoolRecords: Gauge
    let spoolBytes: Gauge
    let openConnections: Gauge
    let queuedBytes: Gauge
    /// 1 while the route's spool is stalled (see ``BridgeConfiguration/spoolStallTimeout``).
    let spoolStalledGauge: Gauge
    let stalled = Atomic<Bool>(false)
    /// Live connection count.
    let open = Atomic<Int>(0)
    /// Bytes queued for feed connections that have not been written yet.
    let queued = Atomic<Int>(0)
    /// The most bytes ever queued for one connection.
    let maxQueuedPerConnection = Atomic<Int>(0)
    /// Set once the broker acknowledged the route's subscriptions.
    let subscribed = Atomic<Bool>(false)

    init(route: String, registry: PrometheusCollectorRegistry) {
        self.route = route
        let l = [("route", route)]
        func c(_ name: String, _ help: String) -> Stat {
            Stat(registry.makeCounter(descriptor: metricName("mqtt_bridge_" + name, help: help), labels: l))
        }
        framesIn = c("frames_in_total", "Frames read from the feed and spooled.")
        bytesIn = c("bytes_in_total", "Payload bytes read from the feed and spooled.")
        framesPublished = c("frames_published_total", "Frames the broker acknowledged.")
        framesOut = c("frames_out_total", "Frames written to feed connections.")
        bytesOut = c("bytes_out_total", "Payload bytes written to feed connections.")
        messagesReceived = c("mqtt_messages_received_total", "MQTT messages received for the route.")
        deadLettered = c("dead_lettered_total", "Frames sent to the dead-letter topic.")
        truncated = c("truncated_total", "Frames cut at max_frame and published as truncated.")
        partialEmitted = c("partial_emitted_total", "Incomplete frames published at close.")
        refused = c("refused_total", "Records the broker refused (re-spooled on the dead-letter topic).")
        idleTimeouts = c("idle_timeouts_total", "Feed connections closed by the idle timeout.")
        datagramsRejected = c("datagrams_rejected_total", "UDP datagrams from peers not in the allowlist.")
        connections = c("connections_total", "Feed connections accepted or established.")
        connectionsRejected = c("connections_rejected_total", "Feed connections refused.")
        reconnects = c("feed_reconnects_total", "Feed redials.")
        var d: [DropReason: Stat] = [:]
        for reason in DropReason.allCases {
            d[reason] = Stat(registry.makeCounter(descriptor: metricName("mqtt_bridge_drops_total", help: "Frames or messages not forwarded, by reason."),
                                                  labels: l + [("reason", reason.rawValue)]))
        }
        drops = d
        spoolRecords = registry.makeGauge(descriptor: metricName("mqtt_bridge_spool_records", help: "Unacknowledged records in the spool."), labels: l)
        spoolBytes = registry.makeGauge(descriptor: metricName("mqtt_bridge_spool_bytes", help: "Unacknowledged bytes in the spool."), labels: l)
        openConnections = registry.makeGauge(descriptor: metricName("mqtt_bridge_open_connections", help: "Open feed connections."), labels: l)
        queuedBytes = registry.makeGauge(descriptor: metricName("mqtt_bridge_out_queued_bytes", help: "Bytes queued for feed connections."), labels: l)
        spoolStalledGauge = registry.makeGauge(descriptor: metricName(
            "mqtt_bridge_spool_stalled",
            help: "1 when the oldest unacknowledged spool record is older than spool_stall_timeout while the broker is connected."),
            labels: l)
        spoolStalledGauge.set(to: 0)
    }

    /// Whether the route's spool is stalled: its oldest unacknowledged record has waited longer than
    /// ``BridgeConfiguration/spoolStallTimeout`` while the broker was connected (updated about once a second).
    public var isSpoolStalled: Bool { stalled.load(ordering: .relaxed) }

    /// Sets the stall flag and gauge; returns the previous flag.
    func exchangeSpoolStalled(_ value: Bool) -> Bool {
        let old = stalled.exchange(value, ordering: .relaxed)
        spoolStalledGauge.set(to: value ? 1 : 0)
        return old
    }

    /// Drops for `reason`.
    public func dropped(_ reason: DropReason) -> Int { drops[reason]!.value }

    /// Every drop, all reasons.
    public var totalDropped: Int { drops.values.reduce(0) { $0 + $1.value } }

    /// Open feed connections.
    public var openConnectionCount: Int { open.load(ordering: .relaxed) }

    /// For a route that writes to its feed: whether the broker has acknowledged the route's subscriptions (the
    /// client keeps them across reconnects). Until then, messages published for the route do not reach it.
    public var isSubscribed: Bool { subscribed.load(ordering: .acquiring) }

    /// Bytes queued for feed connections right now.
    public var queuedByteCount: Int { queued.load(ordering: .relaxed) }

    /// The most bytes that were ever queued for a single connection.
    public var maxQueuedBytesPerConnection: Int { maxQueuedPerConnection.load(ordering: .relaxed) }
}

/// Per-connection counters, registered while the connection is open.
final class ConnectionMetrics: Sendable {
    let framesIn: Counter
    let bytesIn: Counter
    let framesOut: Counter
    let bytesOut: Counter
    let dropped: Counter
    private let registry: PrometheusCollectorRegistry

    init(route: String, connection: UInt64, registry: PrometheusCollectorRegistry) {
        self.registry = registry
        let l = [("route", route), ("conn", String(connection))]
        framesIn = registry.makeCounter(descriptor: metricName("mqtt_bridge_connection_frames_in_total", help: "Frames read on a feed connection."), labels: l)
        bytesIn = registry.makeCounter(descriptor: metricName("mqtt_bridge_connection_bytes_in_total", help: "Payload bytes read on a feed connection."), labels: l)
        framesOut = registry.makeCounter(descriptor: metricName("mqtt_bridge_connection_frames_out_total", help: "Frames written to a feed connection."), labels: l)
        bytesOut = registry.makeCounter(descriptor: metricName("mqtt_bridge_connection_bytes_out_total", help: "Payload bytes written to a feed connection."), labels: l)
        dropped = registry.makeCounter(descriptor: metricName("mqtt_bridge_connection_drops_total", help: "Frames dropped on a feed connection."), labels: l)
    }

    func unregister() {
        for c in [framesIn, bytesIn, framesOut, bytesOut, dropped] { registry.unregisterCounter(c) }
    }
}

/// The bridge's metrics: per-route counters, the MQTT connection, and the Prometheus registry behind `/metrics`.
public final class BridgeMetrics: Sendable {
    /// The registry (one per bridge, so several bridges can share a process).
    public let registry: PrometheusCollectorRegistry
    /// MQTT reconnects.
    public let mqttReconnects: Stat
    /// Whether the MQTT connection is up.
    let mqttConnected = Atomic<Bool>(false)
    /// Connection attempts the broker refused (bad credentials, not authorised, banned …).
    public let mqttConnectRefusals: Stat
    /// HTTP connections of `/metrics`, `/healthz` and `/readyz`.
    let http: HealthServer.Counters
    private let routes = LockedValue<[String: RouteMetrics]>([:])
    let connectedGauge: Gauge
    /// The broker of the current (or last) connection, and one `mqtt_bridge_mqtt_broker{broker="host:port"}` gauge
    /// per broker the bridge has been on: 1 for the current one, 0 for the others.
    private let brokers = LockedValue<(current: String?, gauges: [String: Gauge])>((nil, [:]))

    init() {
        registry = PrometheusCollectorRegistry()
        mqttReconnects = Stat(registry.makeCounter(descriptor: metricName("mqtt_bridge_mqtt_reconnects_total", help: "MQTT connections after the first.")))
        mqttConnectRefusals = Stat(registry.makeCounter(descriptor: metricName(
            "mqtt_bridge_mqtt_connect_refusals_total", help: "Connection attempts the broker refused (credentials, authorisation).")))
        connectedGauge = registry.makeGauge(descriptor: metricName("mqtt_bridge_mqtt_connected", help: "1 when the MQTT connection is up."))
        http = HealthServer.Counters(registry: registry)
    }

    /// HTTP connections closed at once because ``HealthServer/Limits/maxConnections`` were open.
    public var httpConnectionsRefused: Int { http.refused.value }

    /// HTTP connections closed because their request (or the reading of the answer) took too long.
    public var httpTimeouts: Int { http.timedOut.value }

    /// The counters of `route` (created on first use, kept across reloads).
    public func route(_ name: String) -> RouteMetrics {
        routes.withLock { r in
            if let m = r[name] { return m }
            let m = RouteMetrics(route: name, registry: registry)
            r[name] = m
            return m
        }
    }

    /// Every route's counters.
    public var allRoutes: [RouteMetrics] { routes.withLock { Array($0.values) } }

    /// Whether the MQTT connection is up now.
    public var isMQTTConnected: Bool { mqttConnected.load(ordering: .relaxed) }

    /// The broker (`host:port`) the bridge is connected to, or was last connected to; nil before the first connection.
    public var mqttBroker: String? { brokers.withLock { $0.current } }

    /// The bridge connected to `broker`.
    func connected(to broker: String) {
        brokers.withLock { b in
            if b.gauges[broker] == nil {
                b.gauges[broker] = registry.makeGauge(descriptor: metricName(
                    "mqtt_bridge_mqtt_broker", help: "1 for the broker the bridge is connected to (or was last), 0 for the others it has used."),
                    labels: [("broker", broker)])
            }
            for (name, gauge) in b.gauges { gauge.set(to: name == broker ? 1 : 0) }
            b.current = broker
        }
    }
}

/// The descriptor of a metric whose full name is given (no separate unit suffix).
func metricName(_ name: String, help: String) -> MetricNameDescriptor {
    MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
}
