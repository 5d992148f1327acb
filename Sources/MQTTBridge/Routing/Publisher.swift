import MosquittoPOSIX
import NIOCore
import Logging
import Mosquitto
import Synchronization

/// Moves spooled records to the broker, in order, and marks each one done as soon as the broker acknowledged it.
///
/// For every spool it keeps a window of records handed to the client with `publish(_:onComplete:)` (at most
/// ``BridgeConfiguration/publishBatch`` per spool). Each acknowledgement (PUBACK/PUBCOMP, or the socket write at
/// QoS 0) arrives on the client's network thread and moves the spool's done watermark forward over the
/// contiguous acknowledged prefix of the window, in memory; the publisher task writes the watermark to disk every
/// few milliseconds (``Spool/flushDone()``). A crash therefore resends at most what was acknowledged since that
/// write: at-least-once, in order per spool.
///
/// - A record the broker refuses (reason code 0x80 or above, or a topic the client refuses) is not marked
///   delivered silently: it is appended to the spool again on the route's dead-letter topic, flagged, and
///   counted (`refused`). A refused dead-letter record is dropped and counted (drop reason `refused`).
/// - A QoS 0 record lost with the connection (or refused as offline) stops the window: once every record before
///   it is settled, the spool rewinds to the first unacknowledged record and publishing resumes from there.
/// - QoS 1/2 records stay in libmosquitto's queue across reconnects and complete when the broker acknowledges
///   them after the reconnect.
final class Publisher: Sendable {
    struct Entry: Sendable {
        let name: String
        let spool: Spool
        let metrics: RouteMetrics
        let deadLetterTopic: String
        let window: AckWindow
    }

    let client: MQTTClient
    let batch: Int
    let logger: Logger
    let doorbell: Doorbell
    private let entries = LockedValue<[String: Entry]>([:])
    /// Incremented on every disconnect (kept for metrics and tests).
    let disconnects = Atomic<Int>(0)
    /// How often the acknowledged watermark is written to disk.
    let flushInterval: Duration

    init(client: MQTTClient, batch: Int, doorbell: Doorbell, logger: Logger, flushInterval: Duration = .milliseconds(20)) {
        self.client = client
        self.batch = max(1, batch)
        self.doorbell = doorbell
        self.logger = logger
        self.flushInterval = flushInterval
    }

    func add(name: String, spool: Spool, metrics: RouteMetrics, deadLetterTopic: String) {
        let e = Entry(name: name, spool: spool, metrics: metrics, deadLetterTopic: deadLetterTopic,
                      window: AckWindow(base: spool.firstUnacknowledged, lowWater: batch / 2))
        entries.withLock { $0[name] = e }
        doorbell.ring()
    }

    /// A reload changed a route's dead-letter topic.
    func setDeadLetterTopic(_ topic: String, forRoute name: String) {
        entries.withLock { entries in
            guard let e = entries[name] else { return }
            entries[name] = Entry(name: e.name, spool: e.spool, metrics: e.metrics, deadLetterTopic: topic, window: e.window)
        }
    }

    func spool(named name: String) -> Spool? { entries.withLock { $0[name]?.spool } }

    var allSpools: [Spool] { entries.withLock { $0.values.map(\.spool) } }

    /// Whether every spool is empty.
    var isDrained: Bool { entries.withLock { $0.values.allSatisfy { $0.spool.depth.records == 0 } } }

    static func message(for r: SpoolRecord, route: String, isV5: Bool) -> MQTTMessage {
        var properties = MessageProperties()
        if isV5 && !r.flags.isEmpty && r.flags != .retain {
            if r.flags.contains(.partial) { properties.userProperties.append(UserProperty("partial", "true")) }
            if r.flags.contains(.truncated) { properties.userProperties.append(UserProperty("truncated", "true")) }
            if r.flags.contains(.deadLetter) { properties.userProperties.append(UserProperty("dead_letter", route)) }
            if r.flags.contains(.messagePack) { properties.contentType = "application/msgpack" }
        }
        return MQTTMessage(topic: r.topic, payload: r.payload, qos: r.qos, retain: r.flags.contains(.retain), properties: properties)
    }

    func run() async {
        let isV5 = client.configuration.protocolVersion == .v5
        // Wakes the loop now and then to write the watermark and fsync, even when nothing else happens.
        let ticker = Task { [doorbell, flushInterval] in
            while !Task.isCancelled {
                try? await Task.sleep(for: flushInterval)
                doorbell.ring()
            }
        }
        defer { ticker.cancel() }
        var lastFlush = ContinuousClock.now
        // Spool errors repeat every flush while they last: the first is logged, then one line per interval per spool.
        var lastErrorLog: [String: ContinuousClock.Instant] = [:]
        var suppressed: [String: Int] = [:]
        while !Task.isCancelled {
            let current = entries.withLock { Array($0.values) }.sorted { $0.name < $1.name }
            var progressed = false
            for e in current {
                switch await pump(e, isV5: isV5) {
                case .stop: return
                case .progressed: progressed = true
                case .idle: break
                }
            }
            let now = ContinuousClock.now
            if now - lastFlush >= flushInterval {
                lastFlush = now
                for e in current {
                    do {
                        try e.spool.flushDone()
                    } catch {
                        if let last = lastErrorLog[e.name], now - last < Self.errorLogInterval {
                            suppressed[e.name, default: 0] += 1
                        } else {
                            let more = suppressed.removeValue(forKey: e.name).map { " (\($0) more since the last report)" } ?? ""
                            logger.error("Spool \(e.name): cannot record acknowledgements: \(error)\(more). Delivered segments are still freed; after a crash the records acknowledged since the last recorded watermark are sent again.")
                            lastErrorLog[e.name] = now
                        }
                    }
                    e.spool.syncIfDue()
                }
            }
            if !progressed { await doorbell.wait() }
        }
    }

    /// How often a repeating spool error is logged.
    static let errorLogInterval: Duration = .seconds(30)

    enum PumpResult { case stop, progressed, idle }

    /// Hands the next records of one spool to the client, as far as its window allows.
    private func pump(_ e: Entry, isV5: Bool) async -> PumpResult {
        let window = e.window
        if window.needsRewind {
            // Wait until every record handed out is settled, then resend from the first unacknowledged one.
            guard window.isSettled else { return .idle }
            e.spool.rewind()
            window.reset(base: e.spool.firstUnacknowledged)
            try? await Task.sleep(for: .milliseconds(50))
            return .progressed
        }
        let room = batch - window.count
        guard room > 0 else { return .idle }
        let records: [SpoolRecord]
        do {
            records = try e.spool.readBatch(maxRecords: min(room, 4096))
        } catch {
            logger.error("Spool \(e.name): \(error)")
            return .idle
        }
        if records.isEmpty { return .idle }
        let spool = e.spool
        let metrics = e.metrics
        let doorbell = self.doorbell
        let logger = self.logger
        let deadLetter = e.deadLetterTopic
        let name = e.name
        for r in records {
            let seq = r.sequence
            window.push(seq)
            do {
                try await client.publish(Self.message(for: r, route: e.name, isV5: isV5)) { result in
                    switch result {
                    case .success:
                        window.acknowledge(seq, spool: spool, metrics: metrics, doorbell: doorbell)
                    case .failure(let error):
                        if error.code == .publishRejected || error.code == .notAuthorized {
                            Self.refused(r, error: error, route: name, deadLetterTopic: deadLetter, spool: spool,
                                         metrics: metrics, logger: logger)
                            window.acknowledge(seq, spool: spool, metrics: metrics, doorbell: doorbell, delivered: false)
                        } else {
                            window.fail(seq, doorbell: doorbell)
                        }
                    }
                }
            } catch let error as MQTTError {
                switch error.code {
                case .shutDown, .gaveUp:
                    return .stop
                case .invalidTopic, .payloadTooLarge, .invalidArgument:
                    // The client refuses it up front; it would be refused forever.
                    Self.refused(r, error: error, route: name, deadLetterTopic: deadLetter, spool: spool, metrics: metrics, logger: logger)
                    window.acknowledge(seq, spool: spool, metrics: metrics, doorbell: doorbell, delivered: false)
                default:
                    // Offline at QoS 0 or a lost connection: resend from the watermark once settled.
                    window.fail(seq, doorbell: doorbell)
                    if error.code != .notConnected && error.code != .connectionLost {
                        logger.warning("Route \(e.name): publishing to '\(r.topic)' failed: \(error.message)")
                    }
                    return .progressed
                }
            } catch {
                return .stop
            }
        }
        return .progressed
    }

    /// A record the broker (or the client) refused: re-spooled on the dead-letter topic, or dropped if it was
    /// already a dead-letter record.
    static func refused(_ r: SpoolRecord, error: MQTTError, route: String, deadLetterTopic: String, spool: Spool,
                        metrics: RouteMetrics, logger: Logger) {
        metrics.refused.add()
        if r.flags.contains(.deadLetter) || r.topic == deadLetterTopic {
            metrics.drops[.refused]!.add()
            logger.error("Route \(route): the broker refused dead-letter record \(r.sequence) ('\(r.topic)'): \(error.message); dropped")
            return
        }
        var flags = r.flags
        flags.insert(.deadLetter)
        flags.remove(.retain)
        do {
            try spool.append([SpoolRecord(topic: deadLetterTopic, payload: r.payload, qos: r.qos, flags: flags)])
            metrics.deadLettered.add()
            logger.warning("Route \(route): the broker refused '\(r.topic)': \(error.message); sent to \(deadLetterTopic)")
        } catch {
            metrics.drops[.refused]!.add()
            logger.error("Route \(route): refused record \(r.sequence) could not be dead-lettered: \(error)")
        }
    }
}

/// The records of one spool handed to the client and not yet settled, in sequence order.
///
/// `push` comes from the publisher task; `acknowledge` and `fail` from the client's network thread (or the
/// publisher task when a publish throws). The contiguous acknowledged prefix moves the spool's watermark.
final class AckWindow: Sendable {
    private enum Slot: UInt8 { case pending, done, failed }
    private struct State {
        var base: UInt64
        var slots = CircularBuffer<Slot>()
        var pending = 0
        var failed = false
    }
    private let state: LockedValue<State>
    /// The publisher is woken when the window shrinks to this many records (not on every acknowledgement).
    private let lowWater: Int

    init(base: UInt64, lowWater: Int) {
        state = LockedValue(State(base: base))
        self.lowWater = max(0, lowWater)
    }

    var count: Int { state.withLock { $0.slots.count } }
    var needsRewind: Bool { state.withLock { $0.failed } }
    var isSettled: Bool { state.withLock { $0.pending == 0 } }

    func push(_ sequence: UInt64) {
        state.withLock { s in
            if s.slots.isEmpty { s.base = sequence }
            s.slots.append(.pending)
            s.pending += 1
        }
    }

    func reset(base: UInt64) {
        state.withLock { s in
            s.base = base
            s.slots.removeAll()
            s.pending = 0
            s.failed = false
        }
    }

    /// Records the settlement of `sequence` and moves the spool's watermark over the acknowledged prefix.
    func acknowledge(_ sequence: UInt64, spool: Spool, metrics: RouteMetrics, doorbell: Doorbell, delivered: Bool = true) {
        let lowWater = self.lowWater
        let (through, wake) = state.withLock { s -> (UInt64?, Bool) in
            guard sequence >= s.base, sequence - s.base < UInt64(s.slots.count) else { return (nil, false) }
            let i = Int(sequence - s.base)
            guard s.slots[offset: i] == .pending else { return (nil, false) }
            s.slots[offset: i] = .done
            s.pending -= 1
            let before = s.slots.count
            while let first = s.slots.first, first == .done {
                s.slots.removeFirst()
                s.base += 1
            }
            // Wake the publisher when the window drains below the low-water mark (it may be waiting for room),
            // or when a failed window has settled (it waits for that to rewind).
            let wake = (before > lowWater && s.slots.count <= lowWater) || (s.failed && s.pending == 0)
            return (s.slots.count < before ? s.base - 1 : nil, wake)
        }
        if delivered { metrics.framesPublished.add(1) }
        if let through { spool.acknowledge(through: through) }
        if wake { doorbell.ring() }
    }

    /// Records that `sequence` was not delivered (QoS 0 lost with the connection, or not accepted while offline).
    func fail(_ sequence: UInt64, doorbell: Doorbell) {
        state.withLock { s in
            guard sequence >= s.base, sequence - s.base < UInt64(s.slots.count) else { return }
            let i = Int(sequence - s.base)
            guard s.slots[offset: i] == .pending else { return }
            s.slots[offset: i] = .failed
            s.pending -= 1
            s.failed = true
        }
        doorbell.ring()
    }
}
