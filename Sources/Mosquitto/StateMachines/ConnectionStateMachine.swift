/// The client's connection lifecycle and its connect waiters: idle, connecting, connected, disconnected, backing
/// off, draining, shut down.
///
/// A value type with no locks, no I/O and no callbacks. `ClientCore` runs each event under its state lock (the
/// C callbacks and the network thread's loop are events) and performs the returned action after unlocking, so no
/// lock is held across a libmosquitto call by construction. `Waiter` is how a `connect()` caller is resumed.
///
/// The reconnect policy is decided here, from ``MQTTConfiguration/ReconnectPolicy``, and so is which broker each
/// attempt goes to (``MQTTConfiguration/endpoints``, MQTT 5 redirects); the network thread only sleeps and connects
/// as told.
struct ConnectionStateMachine<Waiter> {
    enum Phase {
        /// Created; no network thread yet.
        case idle
        /// A connect attempt is under way (the `attempt`-th since the last successful connection).
        case connecting(attempt: Int)
        /// The broker accepted the connection.
        case connected(ConnAck)
        /// The connection (or attempt) ended; the reconnect decision is next.
        case disconnected
        /// Waiting before the next attempt.
        case backingOff(attempt: Int)
        /// Shutdown was requested while the network thread runs: it sends DISCONNECT and ends. The CONNACK when
        /// the connection is still up.
        case draining(ConnAck?)
        /// Final: the network thread ended (or never started).
        case shutDown
    }

    private(set) var phase: Phase = .idle
    /// What the broker said when this connection was accepted; nil when not connected.
    var connAck: ConnAck? {
        if case .connected(let ack) = phase { return ack }
        return nil
    }
    private(set) var waiters: [UInt64: Waiter] = [:]
    /// Whether any attempt was ever accepted.
    private(set) var everConnected = false
    /// Failed attempts since the last accepted one.
    private(set) var failures = 0
    /// Accepted connections in a row that ended within ``MQTTConfiguration/ReconnectPolicy/backoffResetAfter`` (a
    /// flapping connection): from the second on, each adds a step to the backoff.
    private(set) var shortConnections = 0
    /// When the broker accepted the current connection.
    private(set) var acceptedAt: ContinuousClock.Instant?
    /// Per attempt: the CONNACK's refusal, whether the broker accepted, whether on_disconnect reported the end.
    private(set) var refusal: MQTTError?
    private(set) var acceptedThisAttempt = false
    private(set) var disconnectReported = false
    /// What the DISCONNECT sent at shutdown carries.
    private(set) var disconnectReason: UInt8 = 0
    private(set) var disconnectProperties = DisconnectProperties()
    /// Why the client ended, when it was not a shutdown.
    private(set) var finalError: MQTTError?
    let policy: MQTTConfiguration.ReconnectPolicy
    /// The brokers, in order; an entry that answered "server moved" (0x9D) is replaced by its reference.
    private(set) var endpoints: [MQTTConfiguration.Endpoint]
    /// Which of ``endpoints`` the next (or current) attempt uses.
    private(set) var endpointIndex = 0
    /// A temporary redirect (0x9C) in force: the attempts go there until one fails.
    private(set) var redirect: MQTTConfiguration.Endpoint?
    /// A redirect the broker sent during this attempt, followed when the attempt ends.
    private(set) var pendingRedirect: (target: MQTTConfiguration.Endpoint, permanent: Bool)?
    /// Redirects followed since the last accepted connection.
    private(set) var redirectsInARow = 0
    let maximumRedirects: Int

    init(policy: MQTTConfiguration.ReconnectPolicy, endpoints: [MQTTConfiguration.Endpoint], maximumRedirects: Int = 5) {
        precondition(!endpoints.isEmpty, "validated by MQTTConfiguration")
        self.policy = policy
        self.endpoints = endpoints
        self.maximumRedirects = maximumRedirects
    }

    /// Convenience for one endpoint.
    init(policy: MQTTConfiguration.ReconnectPolicy, endpoint: MQTTConfiguration.Endpoint) {
        self.init(policy: policy, endpoints: [endpoint])
    }

    /// The broker the current (or next) attempt connects to.
    var currentEndpoint: MQTTConfiguration.Endpoint { redirect ?? endpoints[endpointIndex] }

    /// ``currentEndpoint`` for messages.
    var endpoint: String { "\(currentEndpoint)" }

    // MARK: Views

    /// The public view (``MQTTClient/state``).
    var connectionState: ConnectionState {
        switch phase {
        case .idle: return .idle
        case .connected(let ack): return .connected(ack)
        case .draining(let ack?): return .connected(ack)
        case .connecting, .disconnected, .backingOff, .draining(nil): return everConnected ? .disconnected : .idle
        case .shutDown: return .shutDown
        }
    }

    var isConnected: Bool {
        if case .connected = phase { return true }
        return false
    }

    /// Shutdown was requested or done: new work is refused.
    var isClosing: Bool {
        switch phase {
        case .draining, .shutDown: return true
        default: return false
        }
    }

    var isShutDown: Bool {
        if case .shutDown = phase { return true }
        return false
    }

    /// The network thread was started and has not ended.
    var isNetworkThreadRunning: Bool {
        switch phase {
        case .idle, .shutDown: return false
        default: return true
        }
    }

    /// The error new work fails with once the client is closing.
    var closedError: MQTTError {
        finalError ?? MQTTError(.shutDown, "The MQTT client was shut down; create a new client to connect again.")
    }

    // MARK: connect()

    enum ConnectAction {
        /// Start the network thread; the waiter is resumed at CONNACK (or fails when the client ends).
        case startNetworkThread
        /// The waiter was stored: an attempt is under way.
        case wait
        /// Already connected.
        case connected(ConnAck)
        case fail(MQTTError)
    }

    /// A caller of `connect()` waits for the connection.
    mutating func connect(_ id: UInt64, waiter: @autoclosure () -> Waiter) -> ConnectAction {
        switch phase {
        case .connected(let ack):
            return .connected(ack)
        case .draining, .shutDown:
            return .fail(closedError)
        case .idle:
            waiters[id] = waiter()
            phase = .connecting(attempt: 0)
            return .startNetworkThread
        case .connecting, .disconnected, .backingOff:
            waiters[id] = waiter()
            return .wait
        }
    }

    /// A `connect()` caller's task was cancelled: the waiter to resume with the cancellation, if still waiting.
    mutating func cancelConnect(_ id: UInt64) -> Waiter? {
        waiters.removeValue(forKey: id)
    }

    /// The network thread could not be started: the client ends here.
    mutating func networkThreadFailed(_ error: MQTTError) {
        finalError = error
    }

    // MARK: The network thread's attempts

    enum AttemptAction: Equatable {
        /// Connect to this broker.
        case connect(MQTTConfiguration.Endpoint)
        /// Shutdown was requested: leave the loop.
        case stop
    }

    /// The network thread is about to connect.
    mutating func attemptStarting() -> AttemptAction {
        switch phase {
        case .draining, .shutDown:
            return .stop
        case .idle, .connecting, .disconnected, .backingOff, .connected:
            refusal = nil
            acceptedThisAttempt = false
            disconnectReported = false
            pendingRedirect = nil
            phase = .connecting(attempt: failures)
            return .connect(currentEndpoint)
        }
    }

    /// The broker told this client to use another server (MQTT 5 reason 0x9C, or 0x9D when `permanent`), in its
    /// CONNACK or DISCONNECT: the attempt's end follows the redirect (see ``attemptEnded(loopError:)``).
    mutating func redirected(to target: MQTTConfiguration.Endpoint, permanent: Bool) {
        guard !isClosing else { return }
        pendingRedirect = (target, permanent)
    }

    /// CONNACK accepted: the waiters to resume with it (after the re-subscriptions are queued).
    mutating func connAckAccepted(_ ack: ConnAck, now: ContinuousClock.Instant = .now) -> [Waiter] {
        everConnected = true
        acceptedThisAttempt = true
        acceptedAt = now
        switch phase {
        case .draining:
            // Shutdown raced the handshake: DISCONNECT follows, but the connection did come up.
            phase = .draining(ack)
        default:
            phase = .connected(ack)
        }
        defer { waiters.removeAll() }
        return Array(waiters.values)
    }

    /// CONNACK refused: the refusal is why this attempt ends.
    mutating func connAckRefused(_ error: MQTTError) {
        refusal = error
    }

    /// libmosquitto's on_disconnect: returns the CONNACK refusal when it is the reason (libmosquitto 2.0.11 reports
    /// a protocol error or a refused connection after a refusing CONNACK).
    mutating func disconnected() -> MQTTError? {
        disconnectReported = true
        switch phase {
        case .connected: phase = .disconnected
        case .draining(.some): phase = .draining(nil)
        default: break
        }
        return acceptedThisAttempt ? nil : refusal
    }

    enum AttemptEndedAction {
        /// Sleep `delay`, then connect again. `reportDisconnected`: emit `.disconnected(error)` (on_disconnect did
        /// not).
        case reconnect(error: MQTTError, delay: Duration, attempt: Int, reportDisconnected: Bool)
        /// The broker redirected the client: connect to `target` at once. `reportDisconnected` as for `reconnect`.
        case redirect(error: MQTTError, target: MQTTConfiguration.Endpoint, reportDisconnected: Bool)
        /// End the client with `error`.
        case giveUp(error: MQTTError, reportDisconnected: Bool)
        /// Shutdown was requested: end without a reconnect decision.
        case stop
    }

    /// The connection (or the attempt) ended: what comes next, by the reconnect policy, and where.
    ///
    /// A redirect the broker sent is followed at once (no delay, not a failure), up to ``maximumRedirects`` in a row.
    /// Any other end moves the next attempt to the next endpoint (and drops a temporary redirect).
    mutating func attemptEnded(loopError: MQTTError?, now: ContinuousClock.Instant = .now) -> AttemptEndedAction {
        if isClosing { return .stop }
        let error = refusal ?? loopError ?? MQTTError(.connectionLost, "Connection to \(endpoint) closed.")
        refusal = nil
        if acceptedThisAttempt {
            failures = 0
            redirectsInARow = 0
            if let at = acceptedAt, now - at < policy.backoffResetAfter {
                shortConnections += 1
            } else {
                shortConnections = 0
            }
        }
        acceptedAt = nil
        phase = .disconnected
        let report = !disconnectReported
        func giveUp(_ e: MQTTError) -> AttemptEndedAction {
            finalError = e
            return .giveUp(error: e, reportDisconnected: report)
        }
        if let (target, permanent) = pendingRedirect, policy.enabled || !everConnected, redirectsInARow < maximumRedirects {
            pendingRedirect = nil
            redirectsInARow += 1
            // "Server moved" replaces the list's entry; from a redirect target, or "use another server", it is a
            // temporary detour that ends when that broker fails.
            if permanent && redirect == nil { endpoints[endpointIndex] = target } else { redirect = target }
            phase = .backingOff(attempt: failures)
            return .redirect(error: error, target: currentEndpoint, reportDisconnected: report)
        }
        pendingRedirect = nil
        // The next attempt goes to the next broker.
        redirect = nil
        let triedEveryEndpoint = failures + 1 >= endpoints.count
        endpointIndex = (endpointIndex + 1) % endpoints.count
        // The first connection tries each endpoint once, whatever the policy; after that the policy decides.
        if !everConnected && (!policy.retryInitialConnect || !policy.enabled) && triedEveryEndpoint { return giveUp(error) }
        if !policy.enabled && everConnected { return giveUp(error) }
        if policy.giveUpOnFatalErrors && error.isFatalForReconnect { return giveUp(error) }
        failures += 1
        if let max = policy.maximumAttempts, failures > max {
            return giveUp(MQTTError(.gaveUp, "Gave up reconnecting to \(endpointList) after \(max) attempts. Last error: \(error.message)",
                                    reasonCode: error.reasonCode))
        }
        let delay = policy.delay(forAttempt: failures + max(0, shortConnections - 1))
        phase = .backingOff(attempt: failures)
        return .reconnect(error: error, delay: delay, attempt: failures, reportDisconnected: report)
    }

    /// The endpoints for messages: one, or the list.
    private var endpointList: String {
        endpoints.count == 1 ? endpoint : endpoints.map { "\($0)" }.joined(separator: ", ")
    }

    // MARK: Shutdown

    enum ShutdownAction: Equatable {
        /// No network thread: the caller closes the handle and ends the client itself.
        case finishHere
        /// The network thread runs: queue DISCONNECT, wake the thread, and wait for it to end.
        case drain
        /// A shutdown is already under way (or done): wait for it.
        case join
    }

    mutating func shutdownRequested(reason: UInt8, properties: DisconnectProperties) -> ShutdownAction {
        switch phase {
        case .idle:
            phase = .shutDown
            return .finishHere
        case .connecting, .disconnected, .backingOff:
            disconnectReason = reason
            disconnectProperties = properties
            phase = .draining(nil)
            return .drain
        case .connected(let ack):
            disconnectReason = reason
            disconnectProperties = properties
            phase = .draining(ack)
            return .drain
        case .draining, .shutDown:
            return .join
        }
    }

    /// The client ended (the network thread's last act, or `finishHere`): the connect waiters to fail with
    /// `error` (or with the shutdown error when nil).
    mutating func ended(error: MQTTError?) -> [Waiter] {
        if let error { finalError = error }
        phase = .shutDown
        defer { waiters.removeAll() }
        return Array(waiters.values)
    }
}
