import DequeModule
import Logging
import MosquittoPOSIX
import MQTTOutbox

/// One spool that an ``OutboxPump`` drains, and what its owner does with the outcome of each record.
package struct OutboxLane: Sendable {
    /// The lane's name (a bridge route's name; "outbox" for a client's own outbox), for logs.
    package var name: String
    /// The spool the records come from.
    package var spool: Spool
    /// Turns a record into the message to publish, or refuses it for good (a message that expired while it waited):
    /// the record then goes to `refused`, as one the broker refused.
    package var message: @Sendable (SpoolRecord) throws(MQTTError) -> MQTTMessage
    /// A record refused for good, by the broker (a reason code of 0x80 or above) or by the client (a topic or
    /// payload it will never send): it is marked done after this returns. The owner may append it again elsewhere.
    package var refused: @Sendable (SpoolRecord, MQTTError) -> Void
    /// A record settled: `delivered` when the broker acknowledged it (PUBACK/PUBCOMP, or the socket write at QoS 0),
    /// false when it was refused. Runs on the client's network thread: keep it short.
    package var settled: @Sendable (_ sequence: UInt64, _ delivered: Bool) -> Void

    package init(name: String, spool: Spool, message: @escaping @Sendable (SpoolRecord) throws(MQTTError) -> MQTTMessage,
                 refused: @escaping @Sendable (SpoolRecord, MQTTError) -> Void,
                 settled: @escaping @Sendable (_ sequence: UInt64, _ delivered: Bool) -> Void) {
        self.name = name
        self.spool = spool
        self.message = message
        self.refused = refused
        self.settled = settled
    }
}

/// Moves spooled records to the broker, in order, and marks each one done as soon as the broker acknowledged it:
/// the engine behind a client's durable outbox (``MQTTConfiguration/outbox``) and behind mqtt-bridge's spools.
///
/// For every lane it keeps a window of records handed to the client with `publish(_:onComplete:)` (at most
/// `batch` per lane). Each acknowledgement (PUBACK/PUBCOMP, or the socket write at QoS 0) arrives on the client's
/// network thread and moves the spool's done watermark forward over the contiguous acknowledged prefix of the
/// window, in memory; the pump writes the watermark to disk every `flushInterval` (``Spool/flushDone()``). A crash
/// therefore resends at most what was acknowledged since that write: at least once, in order per lane.
///
/// - A record refused for good goes to the lane's `refused` and is then marked done: it would be refused forever.
/// - A QoS 0 record lost with the connection (or refused as offline) stops the window: once every record before it
///   is settled, the spool rewinds to the first unacknowledged record and publishing resumes from there.
/// - QoS 1/2 records stay in libmosquitto's queue across reconnects and complete when the broker acknowledges them
///   after the reconnect.
package final class OutboxPump: Sendable {
    /// Hands one message to the client with a completion callback (`MQTTClient.publish(_:onComplete:)`, or the
    /// engine's own publish for a client's outbox).
    package typealias Send = @Sendable (MQTTMessage, @escaping @Sendable (Result<MQTTReasonCode, MQTTError>) -> Void) async throws -> Void

    private struct Entry: Sendable {
        var lane: OutboxLane
        let window: AckWindow
    }

    private let send: Send
    private let batch: Int
    private let logger: Logger
    /// Rung when a lane has new records, room in its window, or a failure to rewind.
    package let doorbell: Doorbell
    private let entries = LockedValue<[String: Entry]>([:])
    /// How often the acknowledged watermark is written to disk.
    private let flushInterval: Duration

    package init(batch: Int, doorbell: Doorbell = Doorbell(), logger: Logger, flushInterval: Duration = .milliseconds(20),
                 send: @escaping Send) {
        self.batch = max(1, batch)
        self.doorbell = doorbell
        self.logger = logger
        self.flushInterval = flushInterval
        self.send = send
    }

    /// Starts draining a lane (replacing one of the same name).
    package func add(_ lane: OutboxLane) {
        let e = Entry(lane: lane, window: AckWindow(base: lane.spool.firstUnacknowledged, lowWater: batch / 2))
        entries.withLock { $0[lane.name] = e }
        doorbell.ring()
    }

    /// Changes a lane's hooks (a bridge reload changed a route's dead-letter topic, say); the spool stays.
    package func updateLane(named name: String, _ change: (inout OutboxLane) -> Void) {
        entries.withLock { entries in
            guard var e = entries[name] else { return }
            let spool = e.lane.spool
            change(&e.lane)
            e.lane.spool = spool
            entries[name] = e
        }
    }

    /// The spool of a lane.
    package func spool(named name: String) -> Spool? { entries.withLock { $0[name]?.lane.spool } }

    /// Every lane's spool.
    package var allSpools: [Spool] { entries.withLock { $0.values.map(\.lane.spool) } }

    /// Whether every spool is empty.
    package var isDrained: Bool { entries.withLock { $0.values.allSatisfy { $0.lane.spool.depth.records == 0 } } }

    /// Drains the lanes until the task is cancelled or the client ends.
    package func run() async {
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
            let current = entries.withLock { Array($0.values) }.sorted { $0.lane.name < $1.lane.name }
            var progressed = false
            for e in current {
                switch await pump(e) {
                case .stop: return
                case .progressed: progressed = true
                case .idle: break
                }
            }
            let now = ContinuousClock.now
            if now - lastFlush >= flushInterval {
                lastFlush = now
                for e in current {
                    let name = e.lane.name
                    do {
                        try e.lane.spool.flushDone()
                    } catch {
                        if let last = lastErrorLog[name], now - last < Self.errorLogInterval {
                            suppressed[name, default: 0] += 1
                        } else {
                            let more = suppressed.removeValue(forKey: name).map { " (\($0) more since the last report)" } ?? ""
                            logger.error("Spool \(name): cannot record acknowledgements: \(error)\(more). Delivered segments are still freed; after a crash the records acknowledged since the last recorded watermark are sent again.")
                            lastErrorLog[name] = now
                        }
                    }
                    e.lane.spool.syncIfDue()
                }
            }
            if !progressed { await doorbell.wait() }
        }
    }

    /// How often a repeating spool error is logged.
    static let errorLogInterval: Duration = .seconds(30)

    private enum PumpResult { case stop, progressed, idle }

    /// Hands the next records of one lane to the client, as far as its window allows.
    private func pump(_ e: Entry) async -> PumpResult {
        let window = e.window
        let lane = e.lane
        let spool = lane.spool
        if window.needsRewind {
            // Wait until every record handed out is settled, then resend from the first unacknowledged one.
            guard window.isSettled else { return .idle }
            spool.rewind()
            window.reset(base: spool.firstUnacknowledged)
            try? await Task.sleep(for: .milliseconds(50))
            return .progressed
        }
        let room = batch - window.count
        guard room > 0 else { return .idle }
        let records: [SpoolRecord]
        do {
            records = try spool.readBatch(maxRecords: min(room, 4096))
        } catch {
            logger.error("Spool \(lane.name): \(error)")
            return .idle
        }
        if records.isEmpty { return .idle }
        let doorbell = self.doorbell
        for r in records {
            let seq = r.sequence
            window.push(seq)
            let message: MQTTMessage
            do {
                message = try lane.message(r)
            } catch {
                lane.refused(r, error)
                window.acknowledge(seq, spool: spool, doorbell: doorbell)
                lane.settled(seq, false)
                continue
            }
            do {
                try await send(message) { result in
                    switch result {
                    case .success:
                        window.acknowledge(seq, spool: spool, doorbell: doorbell)
                        lane.settled(seq, true)
                    case .failure(let error):
                        if error.code == .publishRejected || error.code == .notAuthorized {
                            lane.refused(r, error)
                            window.acknowledge(seq, spool: spool, doorbell: doorbell)
                            lane.settled(seq, false)
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
                    lane.refused(r, error)
                    window.acknowledge(seq, spool: spool, doorbell: doorbell)
                    lane.settled(seq, false)
                default:
                    // Offline at QoS 0 or a lost connection: resend from the watermark once settled.
                    window.fail(seq, doorbell: doorbell)
                    if error.code != .notConnected && error.code != .connectionLost {
                        logger.warning("Spool \(lane.name): publishing to '\(r.topic)' failed: \(error.message)")
                    }
                    return .progressed
                }
            } catch {
                return .stop
            }
        }
        return .progressed
    }
}

/// The records of one spool handed to the client and not yet settled, in sequence order.
///
/// `push` comes from the pump's task; `acknowledge` and `fail` from the client's network thread (or the pump's task
/// when a publish throws). The contiguous acknowledged prefix moves the spool's watermark.
final class AckWindow: Sendable {
    private enum Slot: UInt8 { case pending, done, failed }
    private struct State {
        var base: UInt64
        var slots = Deque<Slot>()
        var pending = 0
        var failed = false
    }
    private let state: LockedValue<State>
    /// The pump is woken when the window shrinks to this many records (not on every acknowledgement).
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

    /// Records the settlement of `sequence` and moves the spool's watermark over the settled prefix.
    func acknowledge(_ sequence: UInt64, spool: Spool, doorbell: Doorbell) {
        let lowWater = self.lowWater
        let (through, wake) = state.withLock { s -> (UInt64?, Bool) in
            guard sequence >= s.base, sequence - s.base < UInt64(s.slots.count) else { return (nil, false) }
            let i = Int(sequence - s.base)
            guard s.slots[i] == .pending else { return (nil, false) }
            s.slots[i] = .done
            s.pending -= 1
            let before = s.slots.count
            while let first = s.slots.first, first == .done {
                s.slots.removeFirst()
                s.base += 1
            }
            // Wake the pump when the window drains below the low-water mark (it may be waiting for room), or when
            // a failed window has settled (it waits for that to rewind).
            let wake = (before > lowWater && s.slots.count <= lowWater) || (s.failed && s.pending == 0)
            return (s.slots.count < before ? s.base - 1 : nil, wake)
        }
        if let through { spool.acknowledge(through: through) }
        if wake { doorbell.ring() }
    }

    /// Records that `sequence` was not delivered (QoS 0 lost with the connection, or not accepted while offline).
    func fail(_ sequence: UInt64, doorbell: Doorbell) {
        state.withLock { s in
            guard sequence >= s.base, sequence - s.base < UInt64(s.slots.count) else { return }
            let i = Int(sequence - s.base)
            guard s.slots[i] == .pending else { return }
            s.slots[i] = .failed
            s.pending -= 1
            s.failed = true
        }
        doorbell.ring()
    }
}
