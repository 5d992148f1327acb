import MosquittoSync
import Logging
import Mosquitto
import NIOCore
import Prometheus
import Synchronization

/// A connection id source shared by every route of a process.
let connectionIDs = Atomic<UInt64>(0)

/// The parts of a route a reload can change without closing its connections: how frames become MQTT messages.
struct LiveSettings: @unchecked Sendable {  // @unchecked: a compiled Regex, immutable once built
    var topic: TopicTemplate?
    var qos: QoS
    var retain: Bool
    var deadLetterTopic: String
    var frameOptions: TopicTemplate.FrameOptions
    var partialOnClose: PartialFramePolicy

    init(_ config: RouteConfiguration, statePrefix: String) {
        topic = config.topic
        qos = config.qos
        retain = config.retain
        deadLetterTopic = config.deadLetterTopic ?? "\(statePrefix)/deadletter/\(config.name)"
        var options = TopicTemplate.FrameOptions(fieldSeparator: config.fieldSeparator)
        if let pattern = config.topicRegex { options.regex = try? Regex(pattern) }
        frameOptions = options
        partialOnClose = config.partialOnClose
    }

    /// Whether `old` can become `new` by swapping the live settings (same feed, framing and subscriptions).
    static func onlyLiveChanges(_ old: RouteConfiguration, _ new: RouteConfiguration) -> Bool {
        var a = old
        var b = new
        b.topic = a.topic
        b.deadLetterTopic = a.deadLetterTopic
        b.fieldSeparator = a.fieldSeparator
        b.topicRegex = a.topicRegex
        b.qos = a.qos
        b.retain = a.retain
        b.partialOnClose = a.partialOnClose
        a.name = b.name
        return a == b && old.direction.readsFeed == new.direction.readsFeed
            && (old.direction.writesFeed ? old.qos == new.qos : true)
    }
}

/// One running route: its feed endpoint, its open connections, its spool, and the MQTT → feed fan-out.
final class RouteRuntime: Sendable {
    let config: RouteConfiguration
    let metrics: RouteMetrics
    let registry: PrometheusCollectorRegistry
    let spool: Spool?
    let spoolFull: SpoolConfiguration.FullPolicy
    let logger: Logger
    let doorbell: Doorbell
    /// Settings a reload swaps in place; readers cache them and refresh when `generation` moves.
    private let live: LockedValue<LiveSettings>
    let generation = Atomic<Int>(0)
    let allowList: IPAllowList
    /// TCP server: connections accepted and not yet closed (the `max_connections` reservation).
    let admitted = Atomic<Int>(0)

    private struct State {
        var connections: [UInt64: FeedConnection] = [:]
        /// `connections.values`, rebuilt on change, so the fan-out does not allocate per message.
        var snapshot: [FeedConnection] = []
        var listener: (any Channel)?
        var clientChannel: (any Channel)?
        var stopping = false
        var clientTask: Task<Void, Never>?
        var fanOutTask: Task<Void, Never>?
        var feedUp = false
    }
    private let state = LockedValue(State())
    private let encoder: FrameEncoder

    init(config: RouteConfiguration, metrics: RouteMetrics, registry: PrometheusCollectorRegistry, spool: Spool?,
         spoolFull: SpoolConfiguration.FullPolicy, statePrefix: String, doorbell: Doorbell, logger: Logger) {
        self.config = config
        self.metrics = metrics
        self.registry = registry
        self.spool = spool
        self.spoolFull = spoolFull
        self.live = LockedValue(LiveSettings(config, statePrefix: statePrefix))
        self.allowList = IPAllowList(config.feed.allow)
        self.doorbell = doorbell
        self.logger = logger
        self.encoder = FrameEncoder(framing: config.framing)
    }

    /// The live settings now.
    var settings: LiveSettings { live.withLock { $0 } }

    /// Applies a reloaded configuration that differs only in live settings; connections stay open and pick the
    /// new settings up at their next read.
    func update(_ new: RouteConfiguration, statePrefix: String) {
        live.withLock { $0 = LiveSettings(new, statePrefix: statePrefix) }
        generation.add(1, ordering: .releasing)
    }

    func nextConnectionID() -> UInt64 { connectionIDs.add(1, ordering: .relaxed).newValue }

    var isStopping: Bool { state.withLock { $0.stopping } }

    /// Whether the feed side is up: listening, or connected (TCP client).
    var isFeedUp: Bool {
        state.withLock { s in
            switch config.feed.mode {
            case .tcpClient: return s.clientChannel != nil
            case .tcpServer, .udp: return s.listener != nil
            }
        }
    }

    /// The bound port of a server or UDP route.
    var localPort: Int? { state.withLock { $0.listener?.localAddress?.port } }

    /// The bound IP address of a server or UDP route.
    var localIP: String? { state.withLock { $0.listener?.localAddress?.ipAddress } }

    func setListener(_ channel: any Channel) { state.withLock { $0.listener = channel } }
    func setClientChannel(_ channel: (any Channel)?) { state.withLock { $0.clientChannel = channel } }

    func register(_ c: FeedConnection) {
        state.withLock { s in
            s.connections[c.id] = c
            s.snapshot = Array(s.connections.values)
        }
        if c.target == nil {
            metrics.connections.add()
            metrics.open.add(1, ordering: .relaxed)
        }
    }

    func unregister(_ id: UInt64) {
        let removed = state.withLock { s -> FeedConnection? in
            let r = s.connections.removeValue(forKey: id)
            if r != nil { s.snapshot = Array(s.connections.values) }
            return r
        }
        if let removed, removed.target == nil { metrics.open.subtract(1, ordering: .relaxed) }
    }

    // MARK: Feed → MQTT

    /// Builds the spool record for one frame: topic from the template, or the dead-letter topic.
    func makeRecord(_ payload: [UInt8], connection: ConnectionContext, fixedTopic: Result<String, TopicTemplate.Failure>?,
                    flags: SpoolRecord.Flags, settings: LiveSettings) -> SpoolRecord {
        var flags = flags
        if settings.retain { flags.insert(.retain) }
        let topic: Result<String, TopicTemplate.Failure>
        if let fixedTopic {
            topic = fixedTopic
        } else if let template = settings.topic {
            topic = template.resolve(connection: connection, frame: payload, options: settings.frameOptions)
        } else {
            topic = .failure(.missing)
        }
        switch topic {
        case .success(let t):
            return SpoolRecord(topic: t, payload: payload, qos: settings.qos, flags: flags)
        case .failure:
            metrics.deadLettered.add()
            flags.insert(.deadLetter)
            flags.remove(.retain)
            return SpoolRecord(topic: settings.deadLetterTopic, payload: payload, qos: settings.qos, flags: flags)
        }
    }

    /// Appends records to the spool. Returns whether the reader should pause (spool full, policy block).
    func ingest(_ records: [SpoolRecord]) -> Bool {
        guard let spool else { return false }
        if spoolFull == .dropNewest && spool.isFull {
            metrics.drops[.spoolFull]!.add(records.count)
            return false
        }
        do {
            let full = try spool.append(records)
            var bytes = 0
            for r in records { bytes += r.payload.count }
            metrics.framesIn.add(records.count)
            metrics.bytesIn.add(bytes)
            doorbell.ring()
            return full && spoolFull == .block
        } catch {
            logger.error("Route \(config.name): spool write failed: \(error)")
            metrics.drops[.spoolError]!.add(records.count)
            return true
        }
    }

    func whenSpaceAvailable(_ body: @escaping @Sendable () -> Void) {
        if let spool { spool.whenSpaceAvailable(body) } else { body() }
    }

    // MARK: MQTT → feed

    /// Writes one MQTT message to every connection of the route.
    func fanOut(_ message: MQTTMessage) {
        metrics.messagesReceived.add()
        let bytes: [UInt8]
        do {
            bytes = try encoder.encode(message.payload)
        } catch {
            metrics.drops[.unencodable]!.add()
            return
        }
        let targets = state.withLock { $0.snapshot }
        if targets.isEmpty {
            metrics.drops[.noConnection]!.add()
            return
        }
        for t in targets { t.send(bytes, payloadCount: message.payload.count) }
    }

    func setFanOutTask(_ t: Task<Void, Never>) { state.withLock { $0.fanOutTask = t } }
    func setClientTask(_ t: Task<Void, Never>) { state.withLock { $0.clientTask = t } }

    /// Stops accepting and reading, closes every connection (their partial frames follow the policy).
    func stop() async {
        let (listener, client, conns, tasks) = state.withLock { s in
            s.stopping = true
            return (s.listener, s.clientChannel, Array(s.connections.values), [s.clientTask, s.fanOutTask])
        }
        for t in tasks { t?.cancel() }
        try? await listener?.close()
        try? await client?.close()
        for c in conns where c.target == nil { try? await c.channel.close() }
        for t in tasks { await t?.value }
        state.withLock { s in
            s.connections.removeAll()
            s.snapshot = []
            s.listener = nil
            s.clientChannel = nil
        }
    }
}

/// Wraps a value that is immutable after creation but not declared `Sendable` (a compiled `Regex`).
struct UncheckedSendableBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

/// A wake-up signal: `ring()` from any thread, `wait()` from one task (a ring before the wait is not lost).
final class Doorbell: Sendable {
    private let state = LockedValue<(rung: Bool, waiter: CheckedContinuation<Void, Never>?)>((false, nil))

    func ring() {
        let w = state.withLock { s -> CheckedContinuation<Void, Never>? in
            if let w = s.waiter {
                s.waiter = nil
                return w
            }
            s.rung = true
            return nil
        }
        w?.resume()
    }

    /// Returns when rung since the last wait (at once if it was).
    func wait() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now = state.withLock { s -> Bool in
                if s.rung {
                    s.rung = false
                    return true
                }
                s.waiter = c
                return false
            }
            if now { c.resume() }
        }
    }
}
