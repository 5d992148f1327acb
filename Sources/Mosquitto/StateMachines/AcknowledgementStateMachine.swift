/// Callers waiting for the broker's acknowledgement of a packet they sent (SUBACK, UNSUBACK), by packet identifier.
///
/// A value type with no locks, no I/O and no callbacks: `ClientCore` runs each event under its state lock and
/// performs the returned action after unlocking.
///
/// Three orderings make this more than a dictionary, and each one was a way to wait for ever:
/// - **The acknowledgement before the waiter.** libmosquitto calls back on its network thread, which can handle the
///   SUBACK before the caller that sent the SUBSCRIBE registered its wait: the result is kept (`.stored`).
/// - **The connection lost between the send and the wait.** The waiters of a connection are released when it ends,
///   but a caller that registers after that would wait for an acknowledgement the dead connection never brings.
///   Every wait names the connection (`epoch`) its packet was sent on; a wait for an earlier one is answered
///   `.connectionLost` at once.
/// - **A stale result.** Packet identifiers are reused after a reconnect: results kept from an ended connection are
///   dropped with it, so they cannot answer a new packet with the same identifier.
struct AcknowledgementStateMachine<Result, Waiter> {
    private(set) var waiters: [UInt16: Waiter] = [:]
    private(set) var early: [UInt16: Result] = [:]
    /// The connection the table is for; incremented by ``connectionLost()``.
    private(set) var epoch: UInt64 = 0
    private(set) var isClosed = false

    enum WaitAction {
        /// The acknowledgement already arrived.
        case acknowledged(Result)
        /// Suspended until ``acknowledged(_:_:)``, ``connectionLost()`` or ``close()``.
        case suspended
        /// The connection the packet was sent on has ended: no acknowledgement will come.
        case connectionLost
        case closed
    }

    /// A caller waits for the acknowledgement of packet `id`, sent on connection `sentIn` (the ``epoch`` read
    /// before sending).
    mutating func wait(for id: UInt16, sentIn: UInt64, waiter: Waiter) -> WaitAction {
        if isClosed { return .closed }
        if let r = early.removeValue(forKey: id) {
            // Kept results belong to the current connection (dropped with the last one).
            if sentIn == epoch { return .acknowledged(r) }
            return .connectionLost
        }
        if sentIn != epoch { return .connectionLost }
        assert(waiters[id] == nil, "packet identifier \(id) has a waiter already: libmosquitto reused it while in flight")
        waiters[id] = waiter
        return .suspended
    }

    enum AcknowledgedAction {
        case resume(Waiter, Result)
        /// Kept for the caller that has not waited yet.
        case stored
    }

    /// The broker's acknowledgement of packet `id` arrived (on the network thread).
    mutating func acknowledged(_ id: UInt16, _ result: Result) -> AcknowledgedAction {
        if let w = waiters.removeValue(forKey: id) { return .resume(w, result) }
        if !isClosed { early[id] = result }
        return .stored
    }

    /// Registers a waiter that is not a caller (a re-subscription sent by the client itself), on the current
    /// connection.
    mutating func expect(_ id: UInt16, waiter: Waiter) {
        guard !isClosed else { return }
        waiters[id] = waiter
    }

    /// The connection ended: every waiter is released (their packets are gone with it) and kept results dropped.
    mutating func connectionLost() -> [Waiter] {
        epoch &+= 1
        early.removeAll()
        defer { waiters.removeAll() }
        return Array(waiters.values)
    }

    /// The client ended: every waiter is released, and every later wait is refused.
    mutating func close() -> [Waiter] {
        isClosed = true
        early.removeAll()
        defer { waiters.removeAll() }
        return Array(waiters.values)
    }
}
