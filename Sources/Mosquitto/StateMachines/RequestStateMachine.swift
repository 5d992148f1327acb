/// Request/response: the pending requests, keyed by correlation data, and the one response subscription they share.
///
/// A value type with no locks, no I/O and no callbacks: `ClientCore` runs each event under its state lock and
/// performs the returned action after unlocking. `Waiter` is what a suspended caller is resumed through (a
/// continuation in the client; a plain value in the unit tests).
///
/// The two lost wake-ups this machine exists to rule out:
/// - **A reply before its waiter.** A request is registered *before* its PUBLISH is queued. A reply that arrives
///   before the caller suspends is kept (`replyArrived` → `.stored`), and the caller's `wait` takes it at once.
/// - **A request before the response subscription.** Every request waits until the broker acknowledged the
///   response topic's SUBSCRIBE (`subscriptionNeeded`): concurrent first requests do not publish ahead of it,
///   where the broker would route their replies to nobody.
struct RequestStateMachine<Waiter> {
    enum Pending {
        /// Registered; the caller has not suspended yet and no reply came.
        case registered
        /// A reply arrived before the caller suspended.
        case replied(MQTTMessage)
        /// The caller waits.
        case waiting(Waiter)
    }

    enum Subscription {
        case none
        /// One caller sends the SUBSCRIBE; the others wait here.
        case subscribing(waiters: [Waiter])
        case subscribed
    }

    private(set) var pending: [[UInt8]: Pending] = [:]
    private(set) var subscription: Subscription = .none
    private(set) var isClosed = false

    // MARK: The response subscription

    enum SubscriptionAction {
        /// The caller sends the SUBSCRIBE, then reports ``subscriptionSucceeded()`` or ``subscriptionFailed()``.
        case subscribe
        /// Suspend; resumed with the outcome of the subscription in progress.
        case wait
        /// Go on: the broker acknowledged the subscription.
        case ready
        /// The client ended.
        case closed
    }

    /// A request needs the response subscription. `waiter` is stored when the answer is `.wait`.
    mutating func subscriptionNeeded(_ waiter: @autoclosure () -> Waiter) -> SubscriptionAction {
        if isClosed { return .closed }
        switch subscription {
        case .none:
            subscription = .subscribing(waiters: [])
            return .subscribe
        case .subscribing(var waiters):
            waiters.append(waiter())
            subscription = .subscribing(waiters: waiters)
            return .wait
        case .subscribed:
            return .ready
        }
    }

    /// Whether a call to ``subscriptionNeeded(_:)`` would answer `.ready` at once (no waiter needed).
    var isSubscribed: Bool {
        if case .subscribed = subscription { return !isClosed }
        return false
    }

    /// The SUBSCRIBE was acknowledged: resume the waiters (they go on).
    mutating func subscriptionSucceeded() -> [Waiter] {
        guard case .subscribing(let waiters) = subscription else { return [] }
        subscription = .subscribed
        return waiters
    }

    /// The SUBSCRIBE failed: the waiters fail with the same error, and the next request tries again.
    mutating func subscriptionFailed() -> [Waiter] {
        guard case .subscribing(let waiters) = subscription else { return [] }
        subscription = .none
        return waiters
    }

    // MARK: Requests

    enum RegisterAction: Equatable {
        /// Registered: queue the PUBLISH, then ``wait(_:waiter:)``.
        case registered
        /// A request with the same correlation data is pending: its reply could not be told apart.
        case duplicateCorrelation
        case closed
    }

    /// Registers a request before its PUBLISH is queued.
    mutating func register(_ correlation: [UInt8]) -> RegisterAction {
        if isClosed { return .closed }
        if pending[correlation] != nil { return .duplicateCorrelation }
        pending[correlation] = .registered
        return .registered
    }

    enum ReplyAction {
        /// Resume this waiter with the reply.
        case resume(Waiter, MQTTMessage)
        /// Kept until the caller waits.
        case stored
        /// No such request (a late reply after a timeout, a second reply, or someone else's message): dropped.
        case unknown
    }

    /// A message arrived on the response topic with this correlation data.
    mutating func replyArrived(_ correlation: [UInt8], _ message: MQTTMessage) -> ReplyAction {
        switch pending[correlation] {
        case .registered?:
            pending[correlation] = .replied(message)
            return .stored
        case .waiting(let w)?:
            pending[correlation] = nil
            return .resume(w, message)
        case .replied?, nil:
            return .unknown
        }
    }

    enum WaitAction {
        /// The reply is already here.
        case reply(MQTTMessage)
        /// Suspended: resumed by ``replyArrived(_:_:)``, ``cancel(_:)`` or ``close()``.
        case suspended
        /// The request is gone (cancelled or the client closed before the caller suspended).
        case gone
    }

    /// The caller suspends for the reply of a registered request.
    mutating func wait(_ correlation: [UInt8], waiter: Waiter) -> WaitAction {
        switch pending[correlation] {
        case .registered?:
            pending[correlation] = .waiting(waiter)
            return .suspended
        case .replied(let m)?:
            pending[correlation] = nil
            return .reply(m)
        case .waiting?:
            preconditionFailure("a request waits once: correlation data \(correlation) already has a waiter")
        case nil:
            return .gone
        }
    }

    /// The caller stopped waiting (timeout, task cancellation, or its PUBLISH failed). Returns the waiter to
    /// resume with that error, if it had suspended. A reply arriving later is dropped.
    mutating func cancel(_ correlation: [UInt8]) -> Waiter? {
        guard let p = pending.removeValue(forKey: correlation) else { return nil }
        if case .waiting(let w) = p { return w }
        return nil
    }

    /// The client ended: every suspended caller fails, and every later event is refused.
    mutating func close() -> [Waiter] {
        isClosed = true
        var out: [Waiter] = []
        for p in pending.values { if case .waiting(let w) = p { out.append(w) } }
        pending.removeAll()
        if case .subscribing(let waiters) = subscription { out += waiters }
        subscription = .none
        return out
    }
}
