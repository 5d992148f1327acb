import DequeModule

/// Everything `ClientCore` shares between threads, guarded by its `state` mutex.

/// What `publish(_:onComplete:)` calls: the MQTT 5 reason code of the acknowledgement, or the failure.
typealias PublishCallback = @Sendable (Result<UInt8, MQTTError>) -> Void

/// The publish window with the client's continuations (see ``PublishStateMachine``).
typealias PublishWindow = PublishStateMachine<CheckedContinuation<UInt8, any Error>, CheckedContinuation<Void, any Error>,
                                              CheckedContinuation<Void, Never>, PublishCallback>

extension PublishWindow.Release {
    /// Resumes the publishers given a slot and the drain waiters (after the state lock is released).
    func resume() {
        for c in slots { c.resume() }
        for c in drained { c.resume() }
    }
}

extension PublishWindow.Pending {
    /// Reports a failure to whoever waits for this message.
    func fail(_ error: MQTTError) {
        waiter?.resume(throwing: error)
        callback?(.failure(error))
    }
}

/// How a request/response caller is resumed (see ``RequestStateMachine``).
enum RequestWaiter {
    /// A caller waiting for its reply.
    case reply(CheckedContinuation<MQTTMessage, any Error>)
    /// A caller waiting for the response subscription; resumed with `false` (go on), never `true`.
    case subscription(CheckedContinuation<Bool, any Error>)

    func fail(_ error: any Error) {
        switch self {
        case .reply(let c): c.resume(throwing: error)
        case .subscription(let c): c.resume(throwing: error)
        }
    }
}

/// The subscription table with the client's stream buffers and `subscribe` continuations (see
/// ``SubscriptionStateMachine``).
typealias Subscriptions = SubscriptionStateMachine<MessageBuffer, CheckedContinuation<[UInt8]?, any Error>>

struct CoreState {
    struct Teardown {
        var connectWaiters: [CheckedContinuation<ConnAck, any Error>] = []
        var slotWaiters: [CheckedContinuation<Void, any Error>] = []
        var pending: [(UInt16, PublishWindow.Pending)] = []
        var subacks: [Subscriptions.SubackWaiter] = []
        var unsubacks: [CheckedContinuation<Void, any Error>] = []
        var requests: [RequestWaiter] = []
        var buffers: [MessageBuffer] = []
        var drainWaiters: [CheckedContinuation<Void, Never>] = []
        var events: [AsyncStream<ConnectionEvent>.Continuation] = []
        var joinWaiters: [CheckedContinuation<Void, Never>] = []
        /// Released after unlocking: dropping a stream ends it, which takes the lock again.
        var responseStream: MessageStream?
        /// Whether this is the first teardown: it sets ``CoreState/ended`` once it has resolved everything.
        var isFirst = false
    }

    /// The connection lifecycle and the `connect()` waiters (see ``ConnectionStateMachine``).
    var lifecycle: ConnectionStateMachine<CheckedContinuation<ConnAck, any Error>>
    /// Kernel thread id of the network thread (Linux), for tests and diagnostics.
    var networkThreadID: Int = -1
    var handleClosed = false
    var handleDestroyed = false
    /// ``takeEverything(error:)`` ran: the first finisher is resolving what it took, outside the lock.
    var finishing = false
    /// The first finisher has resolved every waiter, called every completion callback and ended every stream
    /// (``endedAfterFinishing()``): `shutdown()` returns. Set only then, not in ``takeEverything(error:)``: a
    /// `shutdown()` that looked in between returned while abandoned messages' callbacks had yet to run.
    var ended = false
    var activeCalls = 0
    var idCounter: UInt64 = 0

    var joinWaiters: [CheckedContinuation<Void, Never>] = []
    var events: [UInt64: AsyncStream<ConnectionEvent>.Continuation] = [:]

    /// The bounded outgoing queue and the messages waited for (see ``PublishStateMachine``).
    var publishes: PublishWindow

    /// The subscription table, its streams and SUBACK waiters (see ``SubscriptionStateMachine``).
    var subscriptions = Subscriptions()
    /// Callers waiting for an UNSUBACK.
    var unsubacks = AcknowledgementStateMachine<Void, CheckedContinuation<Void, any Error>>()
    var messagesReceived = 0

    /// Pending requests and the response subscription (see ``RequestStateMachine``).
    var requests = RequestStateMachine<RequestWaiter>()
    var responseStream: MessageStream?

    init(lifecycle: ConnectionStateMachine<CheckedContinuation<ConnAck, any Error>>, queueLimit: Int) {
        self.lifecycle = lifecycle
        self.publishes = PublishWindow(limit: queueLimit)
    }

    var isConnected: Bool { lifecycle.isConnected }

    /// Shutdown was requested or the client ended: new work is refused with ``closedError``.
    var isClosing: Bool { handleClosed || lifecycle.isClosing }

    mutating func nextID() -> UInt64 {
        idCounter += 1
        return idCounter
    }

    var closedError: MQTTError { lifecycle.closedError }

    /// Ends the client: every waiter and stream, to be resumed or finished after unlocking.
    mutating func takeEverything(error: MQTTError?) -> Teardown {
        var t = Teardown()
        handleClosed = true
        t.isFirst = !finishing
        finishing = true
        t.connectWaiters = lifecycle.ended(error: error)
        (t.slotWaiters, t.pending, t.drainWaiters) = publishes.close()
        (t.subacks, t.buffers) = subscriptions.close()
        t.unsubacks = unsubacks.close()
        t.requests = requests.close()
        t.events = Array(events.values); events.removeAll()
        if t.isFirst { t.joinWaiters = joinWaiters; joinWaiters.removeAll() }
        t.responseStream = responseStream
        responseStream = nil
        return t
    }

    /// The first finisher resolved everything it took: `shutdown()` may return. The joiners that came meanwhile.
    mutating func endedAfterFinishing() -> [CheckedContinuation<Void, Never>] {
        ended = true
        defer { joinWaiters.removeAll() }
        return joinWaiters
    }
}


/// A set of MQTT packet identifiers as a bitmap: no hashing, no allocation per member (8 KiB once used).
struct MessageIDSet {
    private var words: [UInt64] = []
    private(set) var count = 0

    mutating func insert(_ id: UInt16) {
        if words.isEmpty { words = Array(repeating: 0, count: 1024) }
        let w = Int(id >> 6), bit = UInt64(1) << UInt64(id & 63)
        if words[w] & bit == 0 {
            words[w] |= bit
            count += 1
        }
    }

    /// Removes `id`; false when it was not a member.
    mutating func remove(_ id: UInt16) -> Bool {
        guard count > 0 else { return false }
        let w = Int(id >> 6), bit = UInt64(1) << UInt64(id & 63)
        guard words[w] & bit != 0 else { return false }
        words[w] &= ~bit
        count -= 1
        return true
    }

    /// Empties the set; returns how many members it had.
    mutating func removeAll() -> Int {
        let n = count
        if n > 0 { for i in words.indices { words[i] = 0 } }
        count = 0
        return n
    }
}
