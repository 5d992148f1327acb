import MosquittoPOSIX
import Logging
import MessagePack
import Mosquitto
import MQTTOutbox
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
    /// Messages toward the feed that are not MessagePack (a `json_msgpack` route): a publisher sending something
    /// else sends it again and again, so one line for the first, then a count at most every 10 s.
    private let untranscodableLog: BurstLogger
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

    /// Frames read from the feed that the spool could not store yet (a full disk, most often), oldest first.
    ///
    /// While it is not empty the route's readers stay paused, new frames queue behind it (so order holds), and a
    /// retry task stores it as soon as the spool takes writes again. Nothing read from a feed is dropped for a
    /// spool write error; each reader holds at most one read's frames here before it pauses.
    private struct Backlog {
        var records: [SpoolRecord] = []
        var waiters: [@Sendable () -> Void] = []
        var retrying: Task<Void, Never>?
        var since: ContinuousClock.Instant?
        var lastLog: ContinuousClock.Instant?
        var failures = 0
        /// Episodes (the spool refusing writes, then taking them again) are logged at most once per interval:
        /// a disk that fills again as soon as the broker frees it would otherwise log twice per cycle.
        var lastEpisodeLog: ContinuousClock.Instant?
        var episodesNotLogged = 0

        /// Clears the backlog after it was stored, keeping the log's rate limit.
        mutating func reset() {
            let last = lastEpisodeLog
            let notLogged = episodesNotLogged
            self = Backlog()
            lastEpisodeLog = last
            episodesNotLogged = notLogged
        }
    }
    private let backlog = LockedValue(Backlog())
    /// How often a blocked spool write is retried.
    static let spoolRetryInterval: Duration = .milliseconds(250)
    /// Records stored per append when the backlog is retried.
    static let backlogChunk = 256
    /// How often the "still cannot write" line repeats.
    static let spoolErrorLogInterval: Duration = .seconds(30)

    init(config: RouteConfiguration, metrics: RouteMetrics, registry: PrometheusCollectorRegistry, spool: Spool?,
         spoolFull: SpoolConfiguration.FullPolicy, statePrefix: String, doorbell: Doorbell, eventLoop: any EventLoop,
         logger: Logger) {
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
        let name = config.name
        untranscodableLog = BurstLogger(eventLoop: eventLoop, first: { detail in
            logger.warning("Route \(name): \(detail)")
        }, summary: { count, detail in
            logger.warning("Route \(name): \(count) more message\(count == 1 ? "" : "s") toward the feed that \(count == 1 ? "was" : "were") not MessagePack (the last: \(detail))")
        })
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
            guard config.transcode == .jsonMessagePack else {
                return SpoolRecord(topic: t, payload: payload, qos: settings.qos, flags: flags)
            }
            // JSON frame → MessagePack; a frame that is not JSON goes to the dead-letter topic as it came.
            if let value = try? MessagePackValue(jsonUTF8: payload) {
                flags.insert(.messagePack)
                return SpoolRecord(topic: t, payload: value.encoded(), qos: settings.qos, flags: flags)
            }
            metrics.deadLettered.add()
            flags.insert(.deadLetter)
            flags.remove(.retain)
            return SpoolRecord(topic: settings.deadLetterTopic, payload: payload, qos: settings.qos, flags: flags)
        case .failure:
            metrics.deadLettered.add()
            flags.insert(.deadLetter)
            flags.remove(.retain)
            return SpoolRecord(topic: settings.deadLetterTopic, payload: payload, qos: settings.qos, flags: flags)
        }
    }

    /// Appends records to the spool. Returns whether the reader should pause (spool full with policy block, or
    /// a spool that cannot be written: the records then wait in memory and the reader stays paused until they are
    /// stored).
    ///
    /// The backlog lock is held across the spool write, so records of concurrent readers reach the spool in the
    /// order they were taken in, and none overtakes the backlog.
    func ingest(_ records: [SpoolRecord]) -> Bool {
        guard let spool, !records.isEmpty else { return false }
        if spoolFull == .dropNewest && spool.isFull {
            metrics.drops[.spoolFull]!.add(records.count)
            return false
        }
        enum Outcome { case stored(full: Bool), queued, startRetry(any Error, log: Bool, episodes: Int), closed(any Error) }
        let outcome = backlog.withLock { b -> Outcome in
            if !b.records.isEmpty {
                b.records.append(contentsOf: records)
                return .queued
            }
            do {
                return .stored(full: try spool.append(records))
            } catch {
                if spool.isClosed { return .closed(error) }
                let now = ContinuousClock.now
                b.records = records
                b.since = now
                b.lastLog = now
                b.failures = 1
                let log = b.lastEpisodeLog.map { now - $0 >= Self.spoolErrorLogInterval } ?? true
                let episodes = b.episodesNotLogged
                if log {
                    b.lastEpisodeLog = now
                    b.episodesNotLogged = 0
                } else {
                    b.episodesNotLogged += 1
                }
                return .startRetry(error, log: log, episodes: episodes)
            }
        }
        switch outcome {
        case .stored(let full):
            countIn(records)
            doorbell.ring()
            return full && spoolFull == .block
        case .queued:
            return true
        case .startRetry(let error, let log, let episodes):
            let earlier = episodes > 0 ? " (\(episodes) more times since the last report)" : ""
            if log {
                logger.error("Route \(config.name): the spool cannot store frames: \(error)\(earlier). Reading from the feed is paused; nothing read is dropped, and storing is retried until the spool takes writes again (free space in \(spool.configuration.directory)).")
            }
            let task = Task { [weak self] in _ = await self?.retryBacklog() }
            backlog.withLock { $0.retrying = task }
            return true
        case .closed(let error):
            logger.error("Route \(config.name): \(records.count) frames arrived after the spool closed and are dropped: \(error)")
            metrics.drops[.spoolError]!.add(records.count)
            return false
        }
    }

    private func countIn(_ records: [SpoolRecord]) {
        var bytes = 0
        for r in records { bytes += r.payload.count }
        metrics.framesIn.add(records.count)
        metrics.bytesIn.add(bytes)
    }

    /// Whether frames are waiting for the spool to take writes again.
    var isSpoolBlocked: Bool { backlog.withLock { !$0.records.isEmpty } }

    /// Retries the backlog until the spool stores it, then lets the paused readers go on.
    ///
    /// The backlog is stored in chunks, oldest first, so that a backlog larger than the space the spool has at
    /// the moment still makes progress as the broker's acknowledgements free segments.
    private func retryBacklog() async {
        guard let spool else { return }
        while true {
            try? await Task.sleep(for: Self.spoolRetryInterval)
            enum Step { case stored([SpoolRecord], [@Sendable () -> Void], Duration, log: Bool), failed([SpoolRecord], any Error, log: Bool, waiting: Int), gone([SpoolRecord]) }
            let step = backlog.withLock { b -> Step in
                var stored: [SpoolRecord] = []
                var failure: (any Error)?
                while !b.records.isEmpty {
                    let chunk = Array(b.records.prefix(Self.backlogChunk))
                    do {
                        _ = try spool.append(chunk)
                        b.records.removeFirst(chunk.count)
                        stored += chunk
                    } catch {
                        failure = error
                        break
                    }
                }
                if let failure {
                    if spool.isClosed || isStopping {
                        // Stopping: the paused readers are being closed, so their waiters are dropped.
                        let lost = b.records
                        b.reset()
                        return .gone(lost)
                    }
                    b.failures += 1
                    let now = ContinuousClock.now
                    let log = now - (b.lastLog ?? now) >= Self.spoolErrorLogInterval
                    if log { b.lastLog = now }
                    return .failed(stored, failure, log: log, waiting: b.records.count)
                }
                let waiters = b.waiters
                let blocked = ContinuousClock.now - (b.since ?? .now)
                let log = b.episodesNotLogged == 0
                b.reset()
                return .stored(stored, waiters, blocked, log: log)
            }
            switch step {
            case .stored(let records, let waiters, let blocked, let log):
                countIn(records)
                doorbell.ring()
                if log { logger.notice("Route \(config.name): the spool takes writes again after \(blocked); \(records.count) waiting frames stored, reading resumes.") }
                for w in waiters { spool.whenSpaceAvailable(w) }
                return
            case .failed(let records, let error, let log, let waiting):
                if !records.isEmpty {
                    countIn(records)
                    doorbell.ring()
                }
                if log {
                    logger.error("Route \(config.name): the spool still cannot store frames (\(waiting) waiting, reading paused): \(error)")
                }
            case .gone(let lost):
                if !lost.isEmpty {
                    logger.error("Route \(config.name): stopping while the spool cannot be written: \(lost.count) frames read from the feed could not be stored and are lost.")
                    metrics.drops[.spoolError]!.add(lost.count)
                }
                return
            }
        }
    }

    func whenSpaceAvailable(_ body: @escaping @Sendable () -> Void) {
        guard let spool else { return body() }
        let queued = backlog.withLock { b -> Bool in
            guard !b.records.isEmpty else { return false }
            b.waiters.append(body)
            return true
        }
        if !queued { spool.whenSpaceAvailable(body) }
    }

    // MARK: MQTT → feed

    /// Writes one MQTT message to every connection of the route.
    func fanOut(_ message: MQTTMessage) {
        metrics.messagesReceived.add()
        var payload = message.payload
        if config.transcode == .jsonMessagePack {
            // MessagePack → JSON text toward the feed; a message that is not MessagePack is dead-lettered.
            guard let value = try? MessagePackValue(decoding: payload) else {
                untranscodable(message)
                return
            }
            payload = Array(value.jsonText(style: .compact).utf8)
        }
        let bytes: [UInt8]
        do {
            bytes = try encoder.encode(payload)
        } catch {
            metrics.drops[.unencodable]!.add()
            return
        }
        let targets = state.withLock { $0.snapshot }
        if targets.isEmpty {
            metrics.drops[.noConnection]!.add()
            return
        }
        for t in targets { t.send(bytes, payloadCount: payload.count) }
    }

    /// A message toward the feed that is not MessagePack: to the dead-letter topic through the spool when the
    /// route has one (it also reads its feed), otherwise dropped as unencodable; logged either way.
    private func untranscodable(_ message: MQTTMessage) {
        let settings = live.withLock { $0 }
        if spool != nil {
            metrics.deadLettered.add()
            _ = ingest([SpoolRecord(topic: settings.deadLetterTopic, payload: message.payload, qos: settings.qos, flags: .deadLetter)])
            untranscodableLog.record("the message on '\(message.topic)' is not MessagePack; sent to \(settings.deadLetterTopic)")
        } else {
            metrics.drops[.unencodable]!.add()
            untranscodableLog.record("the message on '\(message.topic)' is not MessagePack; dropped (the route has no spool for a dead-letter topic)")
        }
    }

    func setFanOutTask(_ t: Task<Void, Never>) { state.withLock { $0.fanOutTask = t } }
    func setClientTask(_ t: Task<Void, Never>) { state.withLock { $0.clientTask = t } }

    /// How long a stopping route goes on reading what its feed connections' kernel queues already hold: a quarter
    /// of `drain_timeout` (2.5 s by default), leaving the rest of the stop's budget to publishing the spool.
    static func feedDrainLimit(drainTimeout: Duration) -> Duration { drainTimeout / 4 }

    /// Stops accepting; reads and spools what the kernel already holds for each feed connection (until it is
    /// quiet for 100 ms, at most `feedDrainLimit`), then closes every connection (their partial frames follow the
    /// policy).
    func stop(feedDrainLimit: Duration) async {
        let (listener, client, conns, tasks) = state.withLock { s in
            s.stopping = true
            return (s.listener, s.clientChannel, Array(s.connections.values), [s.clientTask, s.fanOutTask])
        }
        for t in tasks { t?.cancel() }
        defer { backlog.withLock { $0.retrying }?.cancel() }
        try? await listener?.close()
        let deadline = NIODeadline.now() + TimeAmount(feedDrainLimit)
        await withTaskGroup(of: Void.self) { group in
            for c in conns where c.target == nil {
                group.addTask {
                    c.channel.pipeline.fireUserInboundEventTriggered(DrainFeed(deadline: deadline))
                    // The handler closes by the deadline; this is the backstop should it be gone.
                    let backstop = c.channel.eventLoop.scheduleTask(deadline: deadline + .milliseconds(500)) { c.channel.close(promise: nil) }
                    try? await c.channel.closeFuture.get()
                    backstop.cancel()
                }
            }
        }
        try? await client?.close()
        for t in tasks { await t?.value }
        untranscodableLog.flush()
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

