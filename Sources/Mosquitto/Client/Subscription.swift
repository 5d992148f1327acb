import MosquittoPOSIX
import Dispatch
import DequeModule
import Synchronization

/// One filter to subscribe to, with its QoS and MQTT 5 options.
public struct Subscription: Sendable, Hashable {
    /// What the broker does with retained messages when the subscription is made (MQTT 5).
    public enum RetainHandling: Int32, Sendable, Hashable {
        /// Send retained messages on every subscribe (the default).
        case sendAlways = 0x00
        /// Send them only when the subscription is new.
        case sendIfNew = 0x10
        /// Never send retained messages for this subscription.
        case never = 0x20
    }

    /// The topic filter; may hold `+` and `#` wildcards, or be `$share/<group>/<filter>`.
    public var filter: String
    /// The highest QoS to receive messages with.
    public var qos: QoS
    /// MQTT 5: do not send this client its own publications.
    public var noLocal: Bool
    /// MQTT 5: keep the publisher's retain flag instead of clearing it on live messages.
    public var retainAsPublished: Bool
    /// MQTT 5: retained-message handling.
    public var retainHandling: RetainHandling

    /// Creates a subscription.
    public init(_ filter: String, qos: QoS = .atLeastOnce, noLocal: Bool = false, retainAsPublished: Bool = false,
                retainHandling: RetainHandling = .sendAlways) {
        self.filter = filter
        self.qos = qos
        self.noLocal = noLocal
        self.retainAsPublished = retainAsPublished
        self.retainHandling = retainHandling
    }

    var optionBits: Int32 {
        (noLocal ? 0x04 : 0) | (retainAsPublished ? 0x08 : 0) | retainHandling.rawValue
    }
}

/// How many received messages a stream holds for a slow consumer, and what happens when it is full.
///
/// libmosquitto acknowledges QoS 1 and 2 messages before handing them over, so the only backpressure
/// available towards the broker is to stop reading the socket for a while: ``Overflow/backpressure(maxWait:)``
/// does that (it also stalls this client's publishing while it waits). The other policies never block and count
/// every message they drop in ``MessageStream/droppedCount``.
public struct SubscriptionBuffer: Sendable, Hashable {
    /// What to do with a message that arrives while the buffer is full.
    public enum Overflow: Sendable, Hashable {
        /// Discard the oldest buffered message to make room (good for telemetry: the latest value wins).
        case dropOldest
        /// Discard the arriving message.
        case dropNewest
        /// Stop reading from the broker until the consumer makes room, for at most `maxWait`; then drop the
        /// arriving message. Lossless for consumers that keep up on average.
        case backpressure(maxWait: Duration)
    }

    /// The most messages held.
    public var capacity: Int
    /// The overflow policy.
    public var overflow: Overflow

    /// Creates a buffer policy.
    public init(capacity: Int = 4096, overflow: Overflow = .backpressure(maxWait: .seconds(10))) {
        self.capacity = max(1, capacity)
        self.overflow = overflow
    }

    /// 4,096 messages, with backpressure for up to 10 seconds before a drop.
    public static let `default` = SubscriptionBuffer()
}

/// A bounded single-consumer queue of received messages, fed by the network thread.
///
/// Invariants: `inner` is only locked for queue bookkeeping, never across a continuation resume, a
/// semaphore wait or a call into libmosquitto. At most one consumer waits at a time.
final class MessageBuffer: @unchecked Sendable {
    private struct Inner {
        var queue = Deque<MQTTMessage>()
        var consumer: CheckedContinuation<Result<MQTTMessage?, MQTTError>, Never>?
        var finished = false
        var failure: MQTTError?
        var producerWaiting = false
        var wakeScheduled = false
        var dropped = 0
        var delivered = 0
    }

    private let inner = LockedValue(Inner())
    private let room = DispatchSemaphore(value: 0)
    let policy: SubscriptionBuffer
    /// Called once when the consumer side ends (iteration finished, cancelled or stream dropped).
    private let onTerminate: @Sendable () -> Void
    private let terminated = Atomic<Bool>(false)

    init(policy: SubscriptionBuffer, onTerminate: @escaping @Sendable () -> Void) {
        self.policy = policy
        self.onTerminate = onTerminate
    }

    var droppedCount: Int { inner.withLock { $0.dropped } }
    var receivedCount: Int { inner.withLock { $0.delivered } }

    private enum PushStep {
        case done, dropped, wait, scheduleWake
        case resume(CheckedContinuation<Result<MQTTMessage?, MQTTError>, Never>)
    }

    /// Adds a message. Runs on the network thread; may block it under the backpressure policy.
    /// Returns false when the message was dropped.
    ///
    /// With `deferWake`, a waiting consumer is not resumed here: the message is queued and the caller must
    /// call ``wakeConsumer()`` later (the network thread does so once per pass of its loop, so a burst of
    /// messages costs one task wake-up instead of one per message). Returns `nil` in that case.
    ///
    /// While the buffer is full, `jobs` (the network thread's executor) runs its queued tasks before the thread
    /// waits: a consumer that runs on the network thread can only make room that way.
    @discardableResult
    func push(_ message: MQTTMessage, deferWake: Bool = false, jobs: NetworkExecutor? = nil) -> Bool? {
        var deadline: DispatchTime?
        while true {
            let step: PushStep = inner.withLock { s in
                if s.finished { return .done }
                if let c = s.consumer, !deferWake {
                    s.consumer = nil
                    s.delivered += 1
                    return .resume(c)
                }
                if s.queue.count < policy.capacity {
                    s.queue.append(message)
                    s.delivered += 1
                    if s.consumer != nil && !s.wakeScheduled {
                        s.wakeScheduled = true
                        return .scheduleWake
                    }
                    return .done
                }
                switch policy.overflow {
                case .dropNewest:
                    s.dropped += 1
                    return .dropped
                case .dropOldest:
                    s.queue.removeFirst()
                    s.queue.append(message)
                    s.dropped += 1
                    return .dropped
                case .backpressure:
                    if let deadline, DispatchTime.now() >= deadline {
                        s.dropped += 1
                        return .dropped
                    }
                    s.producerWaiting = true
                    return .wait
                }
            }
            switch step {
            case .done: return true
            case .scheduleWake: return nil
            case .dropped: return false
            case .resume(let c):
                c.resume(returning: .success(message))
                return true
            case .wait:
                // A consumer parked on an earlier deferred message must be woken before we wait for room.
                wakeConsumer()
                if deadline == nil, case .backpressure(let maxWait) = policy.overflow {
                    let ns = UInt64(max(0, maxWait / .nanoseconds(1)))
                    deadline = .now() + .nanoseconds(Int(min(ns, UInt64(Int.max))))
                }
                // Jobs that ran may have made room; try again (the deadline above still bounds the whole wait, even
                // when other tasks on the executor keep queueing jobs).
                if let jobs, jobs.runJobs() { continue }
                _ = room.wait(timeout: min(deadline!, .now() + .milliseconds(100)))
            }
        }
    }

    /// Resumes a waiting consumer with the oldest queued message (after deferred pushes).
    func wakeConsumer() {
        let handoff: (CheckedContinuation<Result<MQTTMessage?, MQTTError>, Never>, MQTTMessage)? = inner.withLock { s in
            s.wakeScheduled = false
            guard let c = s.consumer, let m = s.queue.popFirst() else { return nil }
            s.consumer = nil
            return (c, m)
        }
        if let (c, m) = handoff { c.resume(returning: .success(m)) }
    }

    private enum NextStep {
        case value(MQTTMessage, signalRoom: Bool)
        case end(MQTTError?)
        case waiting
    }

    /// Takes the next message, or nil when the stream ended.
    nonisolated(nonsending) func next() async throws(MQTTError) -> MQTTMessage? {
        // Fast path: a queued message is taken without suspending (no continuation, no cancellation record).
        let queued: (MQTTMessage, Bool)? = inner.withLock { s in
            guard let m = s.queue.popFirst() else { return nil }
            let signal = s.producerWaiting
            s.producerWaiting = false
            return (m, signal)
        }
        if let (m, signal) = queued {
            if signal { room.signal() }
            return m
        }
        let result: Result<MQTTMessage?, MQTTError> = await withTaskCancellationHandler {
            await withCheckedContinuation { (cont: CheckedContinuation<Result<MQTTMessage?, MQTTError>, Never>) in
                let step: NextStep = inner.withLock { s in
                    if let m = s.queue.popFirst() {
                        let signal = s.producerWaiting
                        s.producerWaiting = false
                        return .value(m, signalRoom: signal)
                    }
                    if s.finished { return .end(s.failure) }
                    if Task.isCancelled {
                        s.finished = true
                        return .end(nil)
                    }
                    s.consumer = cont
                    return .waiting
                }
                switch step {
                case .value(let m, let signal):
                    if signal { room.signal() }
                    cont.resume(returning: .success(m))
                case .end(let failure):
                    cont.resume(returning: failure.map { .failure($0) } ?? .success(nil))
                case .waiting:
                    break
                }
            }
        } onCancel: {
            self.terminate()
        }
        switch result {
        case .success(let m):
            if m == nil { terminate() }
            return m
        case .failure(let e):
            terminate()
            throw e
        }
    }

    /// Ends the stream from the client side (shutdown, give-up, rejected subscription). Buffered messages
    /// are still handed out before the end.
    func finish(error: MQTTError? = nil) {
        let (c, next): (CheckedContinuation<Result<MQTTMessage?, MQTTError>, Never>?, MQTTMessage?) = inner.withLock { s in
            if s.finished { return (nil, nil) }
            s.finished = true
            s.failure = error
            s.producerWaiting = false
            let c = s.consumer
            s.consumer = nil
            // A consumer parked while messages were queued for it gets them first.
            return (c, c == nil ? nil : s.queue.popFirst())
        }
        room.signal()
        if let next {
            c?.resume(returning: .success(next))
        } else {
            c?.resume(returning: error.map { .failure($0) } ?? .success(nil))
        }
    }

    /// Ends the stream from the consumer side: stop buffering and unsubscribe (once).
    func terminate() {
        let c: CheckedContinuation<Result<MQTTMessage?, MQTTError>, Never>? = inner.withLock { s in
            s.finished = true
            s.queue.removeAll()
            let c = s.consumer
            s.consumer = nil
            return c
        }
        room.signal()
        c?.resume(returning: .success(nil))
        if !terminated.exchange(true, ordering: .acquiringAndReleasing) {
            onTerminate()
        }
    }
}

/// The messages of one subscription, as an `AsyncSequence`.
///
/// Each call to ``MQTTClient/subscribe(_:buffer:)`` returns its own stream: overlapping filters in different
/// streams each get the messages that match them. Ending the iteration (leaving the `for` loop, cancelling the
/// task, or dropping the stream) unsubscribes the stream's filters that no other stream uses.
///
/// A stream has one consumer; iterate it from one task.
public struct MessageStream: AsyncSequence, Sendable {
    /// A stream delivers messages.
    public typealias Element = MQTTMessage
    /// A stream ends with an ``MQTTError`` when the subscription is refused or the client gives up.
    public typealias Failure = MQTTError

    final class Token: Sendable {
        let buffer: MessageBuffer
        init(_ buffer: MessageBuffer) { self.buffer = buffer }
        deinit { buffer.terminate() }
    }

    let token: Token
    /// The filters of this stream.
    public let filters: [String]
    /// The QoS the broker granted for each filter, in order (nil while the SUBACK is outstanding because
    /// the client was offline; the subscription is sent on reconnect).
    public let grantedQoS: [QoS?]

    init(buffer: MessageBuffer, filters: [String], grantedQoS: [QoS?]) {
        self.token = Token(buffer)
        self.filters = filters
        self.grantedQoS = grantedQoS
    }

    /// Messages discarded because the buffer was full.
    public var droppedCount: Int { token.buffer.droppedCount }
    /// Messages accepted into this stream so far.
    public var receivedCount: Int { token.buffer.receivedCount }

    /// Ends the stream and unsubscribes, as leaving the iteration does.
    public func cancel() { token.buffer.terminate() }

    /// The iterator; iterating ends when the subscription ends.
    public struct AsyncIterator: AsyncIteratorProtocol {
        /// Ends the subscription when the iteration is over (the iterator is dropped).
        final class IterationToken: Sendable {
            let token: Token
            init(_ token: Token) { self.token = token }
            deinit { token.buffer.terminate() }
        }
        let iteration: IterationToken
        var token: Token { iteration.token }
        /// The next message; nil once the stream ended (cancelled, unsubscribed, or the client shut down).
        ///
        /// Runs on the caller's executor (`nonisolated(nonsending)`): taking a queued message costs no hop.
        public nonisolated(nonsending) mutating func next() async throws(MQTTError) -> MQTTMessage? {
            try await token.buffer.next()
        }
        /// The next message, awaited on the caller's actor; see ``next()``. This is what a `for try await` loop
        /// calls.
        ///
        /// `nonisolated(nonsending)` rather than an `isolated` parameter: both run on the caller's actor, but a
        /// function with an `isolated` parameter switches to that actor on entry and the caller switches back on
        /// return. Those two runtime switches per message look up a task's executor preference under a lock,
        /// which cost the network thread about 3% of its time at QoS 0.
        public nonisolated(nonsending) mutating func next(isolation actor: (any Actor)?) async throws(MQTTError) -> MQTTMessage? {
            try await token.buffer.next()
        }
    }

    /// Creates the iterator. Iterate a stream from one task only; when the iterator is dropped, the stream ends.
    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(iteration: .init(token)) }
}
