#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Logging
import MosquittoPOSIX
import MQTTOutbox

/// A client's durable outbox (``MQTTConfiguration/Outbox``): the spool the messages are stored in, and the pump
/// that sends them through the engine and marks them done when the broker acknowledged them.
final class ClientOutbox: Sendable {
    /// Someone waiting for the broker's acknowledgement of one stored message.
    private enum Waiter {
        case task(CheckedContinuation<Void, any Error>)
        case callback(PublishCallback)
    }

    private struct State {
        var waiters: [UInt64: Waiter] = [:]
        /// Publishers between their append and their waiter's registration. While there are any, outcomes that find
        /// no waiter are kept in `early` (the pump may send a record and see its PUBACK before its publisher
        /// registered), so none is lost; `early` is emptied when the last one registers.
        var registering = 0
        var early: [UInt64: MQTTError?] = [:]
        var emptyWaiters: [CheckedContinuation<Void, Never>] = []
        var pumpTask: Task<Void, Never>?
        var stopped = false
        var refused = 0
    }

    let spool: Spool
    private let pump: OutboxPump
    private let configuration: MQTTConfiguration.Outbox
    private let logger: Logger
    private let state = LockedValue(State())
    /// The engine's network thread, where the pump runs.
    private let executor: any TaskExecutor

    init(_ configuration: MQTTConfiguration.Outbox, core: ClientCore, logger: Logger) throws(MQTTError) {
        self.configuration = configuration
        self.logger = logger
        executor = core.executor
        let fsync: SpoolConfiguration.FsyncPolicy = switch configuration.fsync {
        case .always: .always
        case .interval(let d): .interval(d)
        case .never: .never
        }
        do {
            spool = try Spool(configuration: SpoolConfiguration(directory: configuration.directory, maxBytes: configuration.maximumBytes,
                                                                segmentBytes: configuration.segmentBytes, fsync: fsync, full: .block),
                              logger: logger)
        } catch let error as SpoolError {
            throw MQTTError(error.inUse ? .outboxInUse : .outboxUnavailable, "Outbox: \(error)")
        } catch {
            throw MQTTError(.outboxUnavailable, "Outbox: \(error)")
        }
        pump = OutboxPump(batch: max(1, core.config.maximumQueuedMessages), logger: logger) { [core] message, onComplete in
            _ = try await core.publish(message, completion: .enqueued, onComplete: { onComplete($0.map(MQTTReasonCode.init(rawValue:))) })
        }
        let isV5 = core.config.protocolVersion == .v5
        pump.add(OutboxLane(
            name: "outbox",
            spool: spool,
            message: { r throws(MQTTError) in
                var properties = MessageProperties()
                if isV5 {
                    let stored = OutboxPropertiesCoding.decodeStored(r.properties)
                    properties = stored.properties
                    if let expiry = properties.messageExpiryInterval, let storedAt = stored.storedAt {
                        properties.messageExpiryInterval = try Self.remainingExpiry(expiry, storedAt: storedAt, topic: r.topic)
                    }
                }
                return MQTTMessage(topic: r.topic, payload: r.payload, qos: r.qos, retain: r.flags.contains(.retain),
                                   properties: properties)
            },
            refused: { [weak self] r, error in self?.refused(r, error) },
            settled: { [weak self] sequence, delivered in self?.settled(sequence, delivered: delivered) }))
        let status = self.status
        if status.recoveredMessages > 0 {
            logger.info("Outbox \(configuration.directory): \(status.recoveredMessages) messages a previous run left unacknowledged; they are sent before anything new.")
        }
        if status.corruptBytes > 0 {
            logger.warning("Outbox \(configuration.directory): a torn or corrupt tail of \(status.corruptBytes) bytes (a crash in the middle of a write) was cut off; every whole message before it is kept and sent.")
        }
    }

    /// Starts sending (once; on the first `connect()`).
    func start() {
        state.withLock { s in
            guard s.pumpTask == nil, !s.stopped else { return }
            // On the network thread, where the engine takes the messages: no hop between the pump and the queue.
            s.pumpTask = Task(executorPreference: executor) { [pump] in await pump.run() }
        }
    }

    /// Stops the pump without waiting (the client was dropped without `shutdown()`): the files close when the pump's
    /// task ends, and what was not recorded as acknowledged is sent again by the next client.
    func abandon() {
        let task = state.withLock { s in
            s.stopped = true
            return s.pumpTask
        }
        task?.cancel()
        pump.doorbell.ring()
    }

    /// Stops sending, records the acknowledgements, closes the files and releases the lock. What was not
    /// acknowledged stays for the next client on the directory.
    func stop() async {
        let (task, waiters, empties) = state.withLock { s in
            s.stopped = true
            let w = s.waiters
            s.waiters.removeAll()
            let e = s.emptyWaiters
            s.emptyWaiters.removeAll()
            return (s.pumpTask, w, e)
        }
        task?.cancel()
        pump.doorbell.ring()
        await task?.value
        spool.close()
        let error = MQTTError(.shutDown, "The client shut down before the broker acknowledged the message; it stays in the outbox and is sent by the next client on \(configuration.directory).")
        for (_, w) in waiters {
            switch w {
            case .task(let c): c.resume(throwing: error)
            case .callback(let f): f(.failure(error))
            }
        }
        for c in empties { c.resume() }
    }

    var status: OutboxStatus {
        let depth = spool.depth
        return OutboxStatus(messages: depth.records, bytes: depth.bytes, oldestAge: spool.oldestUnacknowledgedAge,
                            recoveredMessages: spool.recoveredRecords, corruptBytes: spool.corruptBytes,
                            refusedMessages: state.withLock { $0.refused })
    }

    /// Stores a message and returns per `completion` (``PublishCompletion/acknowledged`` waits for the broker).
    func publish(_ message: MQTTMessage, completion: PublishCompletion, onComplete: PublishCallback? = nil) async throws -> PublishReceipt {
        try MQTTTopic.validateName(message.topic)
        if message.payload.count > 268_435_455 {
            throw MQTTError(.payloadTooLarge, "The payload is \(message.payload.count) bytes; MQTT allows at most 268,435,455.")
        }
        let record = SpoolRecord(topic: message.topic, payload: Array(message.payload), qos: message.qos,
                                 flags: message.retain ? .retain : [],
                                 properties: message.properties.isEmpty ? [] : OutboxPropertiesCoding.encode(message.properties, storedAt: Self.wallClockSeconds()))
        let waits = onComplete != nil || completion == .acknowledged
        if waits { state.withLock { $0.registering += 1 } }
        let sequence: UInt64
        do {
            sequence = try await append(record)
        } catch {
            if waits { state.withLock { Self.doneRegistering(&$0) } }
            throw error
        }
        pump.doorbell.ring()
        if let onComplete {
            register(sequence, .callback(onComplete))
            return PublishReceipt(messageID: 0, reasonCode: 0, queuedWhileOffline: false, completed: false)
        }
        guard completion == .acknowledged else {
            return PublishReceipt(messageID: 0, reasonCode: 0, queuedWhileOffline: false, completed: false)
        }
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
            register(sequence, .task(c))
        }
        return PublishReceipt(messageID: 0, reasonCode: 0, queuedWhileOffline: false, completed: true)
    }

    /// Waits until the outbox is empty (everything in it acknowledged), or the client stopped.
    func waitUntilEmpty() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now = state.withLock { s -> Bool in
                if s.stopped || spool.depth.records == 0 { return true }
                s.emptyWaiters.append(c)
                return false
            }
            if now { c.resume() }
        }
    }

    // MARK: Internals

    /// Appends one record per the full policy; returns its sequence number.
    private func append(_ record: SpoolRecord) async throws -> UInt64 {
        while true {
            if state.withLock({ $0.stopped }) {
                throw MQTTError(.shutDown, "The client has shut down; the message was not stored.")
            }
            if spool.isFull {
                if configuration.whenFull == .fail {
                    throw MQTTError(.outboxFull, "The outbox in \(configuration.directory) holds its maximum of \(configuration.maximumBytes) bytes of unacknowledged messages; the message was not stored. Wait for the broker, or raise Outbox.maximumBytes.")
                }
                try await waitForSpace()
                continue
            }
            do {
                return try spool.append(record)
            } catch {
                if configuration.whenFull == .fail {
                    throw MQTTError(.outboxUnavailable, "The message was not stored in the outbox: \(error). Free space in \(configuration.directory), or use FullPolicy.suspendPublisher to wait.")
                }
                logOnce(error)
                try await Task.sleep(for: .milliseconds(100))
            }
        }
    }

    private func waitForSpace() async throws {
        try Task.checkCancellation()
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            spool.whenSpaceAvailable { c.resume() }
        }
    }

    private let lastWriteError = LockedValue<ContinuousClock.Instant?>(nil)

    private func logOnce(_ error: any Error) {
        let now = ContinuousClock.now
        let log = lastWriteError.withLock { last -> Bool in
            if let l = last, now - l < .seconds(30) { return false }
            last = now
            return true
        }
        if log {
            logger.error("Outbox \(configuration.directory): cannot store a message: \(error). The publisher waits and retries every 100 ms (FullPolicy.suspendPublisher); nothing accepted so far is lost.")
        }
    }

    private static func doneRegistering(_ s: inout State) {
        s.registering -= 1
        if s.registering == 0 { s.early.removeAll() }
    }

    /// Registers the waiter of a stored message (after `registering` was counted up for it), or completes it at
    /// once when its outcome came first.
    private func register(_ sequence: UInt64, _ waiter: Waiter) {
        enum Now { case wait, succeed, fail(MQTTError) }
        let now = state.withLock { s -> Now in
            defer { Self.doneRegistering(&s) }
            if let outcome = s.early.removeValue(forKey: sequence) {
                return outcome.map { .fail($0) } ?? .succeed
            }
            if s.stopped {
                return .fail(MQTTError(.shutDown, "The client shut down; the message stays in the outbox for the next client."))
            }
            s.waiters[sequence] = waiter
            return .wait
        }
        switch (now, waiter) {
        case (.wait, _): break
        case (.succeed, .task(let c)): c.resume()
        case (.succeed, .callback(let f)): f(.success(0))
        case (.fail(let e), .task(let c)): c.resume(throwing: e)
        case (.fail(let e), .callback(let f)): f(.failure(e))
        }
    }

    private func refused(_ record: SpoolRecord, _ error: MQTTError) {
        if error.code == .messageExpired {
            logger.warning("Outbox: \(error.message)")
        } else {
            logger.error("Outbox: the message to '\(record.topic)' was refused for good and leaves the outbox: \(error.message)")
        }
        let waiter = state.withLock { s -> Waiter? in
            s.refused += 1
            let w = s.waiters.removeValue(forKey: record.sequence)
            if w == nil && s.registering > 0 { s.early[record.sequence] = .some(error) }
            return w
        }
        switch waiter {
        case .task(let c): c.resume(throwing: error)
        case .callback(let f): f(.failure(error))
        case nil: break
        }
    }

    private func settled(_ sequence: UInt64, delivered: Bool) {
        let (waiter, empties) = state.withLock { s -> (Waiter?, [CheckedContinuation<Void, Never>]) in
            let w = s.waiters.removeValue(forKey: sequence)
            if w == nil && delivered && s.registering > 0 { s.early[sequence] = .some(nil) }
            guard !s.emptyWaiters.isEmpty, spool.depth.records == 0 else { return (w, []) }
            let e = s.emptyWaiters
            s.emptyWaiters.removeAll()
            return (w, e)
        }
        if delivered {
            switch waiter {
            case .task(let c): c.resume()
            case .callback(let f): f(.success(0))
            case nil: break
            }
        }
        for c in empties { c.resume() }
    }
}

/// The outbox's encoding of MQTT 5 publish properties: `[tag u8][length u32 LE][bytes]` per property, in a
/// fixed order. Only what a publisher sets is kept (not topic aliases, which belong to one connection).
extension ClientOutbox {
    /// Now, in wall-clock seconds since 1970: a stored message's age must survive a restart or a reboot.
    static func wallClockSeconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return UInt64(max(0, ts.tv_sec))
    }

    /// What is left of a message expiry interval once the time since the message was stored is taken off, as a broker
    /// does for a message it holds (MQTT 5, 3.3.2.3.3). A clock that went back counts as no time spent.
    /// - Throws: ``MQTTError/Code/messageExpired`` when nothing is left: the message is not sent.
    static func remainingExpiry(_ interval: UInt32, storedAt: UInt64, topic: String,
                                now: UInt64 = wallClockSeconds()) throws(MQTTError) -> UInt32 {
        let waited = now > storedAt ? now - storedAt : 0
        guard waited < UInt64(interval) else {
            throw MQTTError(.messageExpired, "The message to '\(topic)' waited \(waited) s in the outbox, past its message expiry interval of \(interval) s: it was not sent, as a broker would not deliver it.")
        }
        return interval - UInt32(waited)
    }
}

enum OutboxPropertiesCoding {
    private enum Tag: UInt8 {
        case payloadFormat = 1, messageExpiry = 2, contentType = 3, responseTopic = 8, correlationData = 9, userProperty = 38
        /// Not an MQTT property: when the message was stored (wall-clock seconds since 1970, UInt64 LE), written with a
        /// message expiry interval so that the time spent in the outbox counts against it. Older readers skip it.
        case storedAt = 200
    }

    static func encode(_ p: MessageProperties, storedAt: UInt64? = nil) -> [UInt8] {
        var out: [UInt8] = []
        func put(_ tag: Tag, _ bytes: some Collection<UInt8>) {
            out.append(tag.rawValue)
            withUnsafeBytes(of: UInt32(bytes.count).littleEndian) { out.append(contentsOf: $0) }
            out.append(contentsOf: bytes)
        }
        func string(_ s: String) -> [UInt8] {
            var b: [UInt8] = []
            withUnsafeBytes(of: UInt32(s.utf8.count).littleEndian) { b.append(contentsOf: $0) }
            b.append(contentsOf: s.utf8)
            return b
        }
        if let f = p.payloadFormat { put(.payloadFormat, [f.rawValue]) }
        if let e = p.messageExpiryInterval { withUnsafeBytes(of: e.littleEndian) { put(.messageExpiry, Array($0)) } }
        if let c = p.contentType { put(.contentType, Array(c.utf8)) }
        if let r = p.responseTopic { put(.responseTopic, Array(r.utf8)) }
        if let d = p.correlationData { put(.correlationData, d) }
        for u in p.userProperties { put(.userProperty, string(u.name) + string(u.value)) }
        if p.messageExpiryInterval != nil, let storedAt { withUnsafeBytes(of: storedAt.littleEndian) { put(.storedAt, Array($0)) } }
        return out
    }

    static func decode(_ bytes: [UInt8]) -> MessageProperties { decodeStored(bytes).properties }

    /// The properties, and when the message was stored if that was recorded.
    static func decodeStored(_ bytes: [UInt8]) -> (properties: MessageProperties, storedAt: UInt64?) {
        var p = MessageProperties()
        var storedAt: UInt64?
        var i = 0
        func u32(_ at: Int) -> Int? {
            guard at + 4 <= bytes.count else { return nil }
            return Int(bytes[at]) | Int(bytes[at + 1]) << 8 | Int(bytes[at + 2]) << 16 | Int(bytes[at + 3]) << 24
        }
        while i + 5 <= bytes.count, let n = u32(i + 1), i + 5 + n <= bytes.count {
            let value = Array(bytes[(i + 5)..<(i + 5 + n)])
            switch Tag(rawValue: bytes[i]) {
            case .payloadFormat: p.payloadFormat = value.first.flatMap(PayloadFormat.init(rawValue:))
            case .messageExpiry: if let v = u32At(value, 0) { p.messageExpiryInterval = UInt32(truncatingIfNeeded: v) }
            case .contentType: p.contentType = String(decoding: value, as: UTF8.self)
            case .responseTopic: p.responseTopic = String(decoding: value, as: UTF8.self)
            case .correlationData: p.correlationData = value
            case .userProperty:
                if let nl = u32At(value, 0), 4 + nl + 4 <= value.count, let vl = u32At(value, 4 + nl), 8 + nl + vl <= value.count {
                    p.userProperties.append(UserProperty(String(decoding: value[4..<(4 + nl)], as: UTF8.self),
                                                         String(decoding: value[(8 + nl)..<(8 + nl + vl)], as: UTF8.self)))
                }
            case .storedAt:
                if value.count == 8 { storedAt = value.reversed().reduce(0) { $0 << 8 | UInt64($1) } }
            case nil: break
            }
            i += 5 + n
        }
        return (p, storedAt)
    }

    private static func u32At(_ b: [UInt8], _ at: Int) -> Int? {
        guard at + 4 <= b.count else { return nil }
        return Int(b[at]) | Int(b[at + 1]) << 8 | Int(b[at + 2]) << 16 | Int(b[at + 3]) << 24
    }
}
