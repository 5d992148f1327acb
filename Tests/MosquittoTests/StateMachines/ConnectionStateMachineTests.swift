@testable import Mosquitto
import Testing

/// The connection lifecycle driven event by event, without a broker or a network thread.
@Suite("State machine: connection lifecycle")
struct ConnectionStateMachineTests {
    typealias Machine = ConnectionStateMachine<String>
    static let lost = MQTTError(.connectionLost, "lost")

    static let a = MQTTConfiguration.Endpoint.tcp(host: "a", port: 1883)
    static let b = MQTTConfiguration.Endpoint.tcp(host: "b", port: 1883)
    static let c = MQTTConfiguration.Endpoint.tcp(host: "c", port: 1884)

    func machine(endpoints: [MQTTConfiguration.Endpoint] = [.tcp(host: "127.0.0.1", port: 1883)], maximumRedirects: Int = 5,
                 _ adjust: (inout MQTTConfiguration.ReconnectPolicy) -> Void = { _ in }) -> Machine {
        var policy = MQTTConfiguration.ReconnectPolicy(initialDelay: .milliseconds(100), maximumDelay: .seconds(1))
        adjust(&policy)
        return Machine(policy: policy, endpoints: endpoints, maximumRedirects: maximumRedirects)
    }

    @Test("connect from idle starts the network thread once; every caller is resumed by the CONNACK; later callers get it at once")
    func connectAndConnAck() {
        var m = machine()
        #expect(m.connectionState == .idle)
        guard case .startNetworkThread = m.connect(1, waiter: "a") else { Issue.record("the first connect starts the thread"); return }
        guard case .wait = m.connect(2, waiter: "b") else { Issue.record("the second waits"); return }
        #expect(m.attemptStarting() == .connect(.tcp(host: "127.0.0.1", port: 1883)))
        let ack = ConnAck(sessionPresent: true)
        #expect(Set(m.connAckAccepted(ack)) == ["a", "b"])
        #expect(m.connectionState == .connected(ack))
        guard case .connected(let got) = m.connect(3, waiter: "c") else { Issue.record("connected: at once"); return }
        #expect(got == ack)
    }

    @Test("a lost connection backs off and reconnects; failures count from the last success")
    func reconnect() {
        var m = machine()
        _ = m.connect(1, waiter: "a")
        _ = m.attemptStarting()
        _ = m.connAckAccepted(ConnAck())
        #expect(m.disconnected() == nil)
        #expect(m.connectionState == .disconnected)
        guard case .reconnect(_, _, let attempt, let report) = m.attemptEnded(loopError: Self.lost) else { Issue.record("reconnect"); return }
        #expect(attempt == 1)
        #expect(!report, "on_disconnect already reported it")
        // Refused TCP twice: no on_disconnect, so the end is reported by the loop; the attempt count grows.
        _ = m.attemptStarting()
        guard case .reconnect(_, _, 2, true) = m.attemptEnded(loopError: Self.lost) else { Issue.record("attempt 2, reported"); return }
        _ = m.attemptStarting()
        _ = m.connAckAccepted(ConnAck())
        _ = m.disconnected()
        guard case .reconnect(_, _, 1, _) = m.attemptEnded(loopError: Self.lost) else { Issue.record("back to attempt 1 after a success"); return }
    }

    @Test("a flapping connection (accepted, then ended within backoffResetAfter) grows the delay from the second in a row; a stable one resets it; neither counts towards maximumAttempts")
    func flappingConnection() {
        var m = machine {
            $0.jitter = 0
            $0.maximumAttempts = 2
            $0.backoffResetAfter = .seconds(10)
        }
        let t0 = ContinuousClock.now
        _ = m.connect(1, waiter: "a")
        /// One connection accepted at `start` that ends `lasted` later: the delay and the attempt number reported.
        func connection(at start: Duration, lasted: Duration) -> (Duration, Int) {
            _ = m.attemptStarting()
            _ = m.connAckAccepted(ConnAck(), now: t0 + start)
            _ = m.disconnected()
            guard case .reconnect(_, let delay, let attempt, _) = m.attemptEnded(loopError: Self.lost, now: t0 + start + lasted) else {
                Issue.record("a lost connection reconnects")
                return (.zero, -1)
            }
            return (delay, attempt)
        }
        // The first short one in a row changes nothing (one broker restart): the initial delay.
        #expect(connection(at: .zero, lasted: .seconds(1)) == (.milliseconds(100), 1))
        // From the second on, each adds a step, as failed attempts do; the attempt count (and the limit) is untouched.
        #expect(connection(at: .seconds(2), lasted: .milliseconds(500)) == (.milliseconds(200), 1))
        #expect(connection(at: .seconds(3), lasted: .milliseconds(10)) == (.milliseconds(400), 1))
        #expect(m.shortConnections == 3)
        // A refused TCP connect in between counts as a failure and keeps the streak.
        _ = m.attemptStarting()
        guard case .reconnect(_, let refusedDelay, 2, _) = m.attemptEnded(loopError: Self.lost, now: t0 + .seconds(4)) else {
            Issue.record("a failed attempt after a short connection reconnects, as attempt 2"); return
        }
        #expect(refusedDelay == .milliseconds(800), "attempt 2 plus two short connections beyond the first: step 4")
        #expect(connection(at: .seconds(5), lasted: .seconds(1)) == (.milliseconds(800), 1))
        // A connection that lasted backoffResetAfter starts again from the initial delay.
        #expect(connection(at: .seconds(10), lasted: .seconds(10)) == (.milliseconds(100), 1))
        #expect(m.shortConnections == 0)
        #expect(connection(at: .seconds(30), lasted: .seconds(1)) == (.milliseconds(100), 1))
    }

    @Test("a refused CONNACK is the reason the attempt ends, not libmosquitto's protocol error; the first refusal ends a client that does not retry")
    func refusal() {
        var m = machine()
        _ = m.connect(1, waiter: "a")
        _ = m.attemptStarting()
        let refused = MQTTError(.notAuthorized, "not authorized")
        m.connAckRefused(refused)
        #expect(m.disconnected()?.code == .notAuthorized)
        guard case .giveUp(let error, _) = m.attemptEnded(loopError: MQTTError(.protocolError, "protocol error")) else {
            Issue.record("no retry of the initial connect: give up"); return
        }
        #expect(error.code == .notAuthorized)
        #expect(m.ended(error: error) == ["a"])
        #expect(m.closedError.code == .notAuthorized)
        guard case .fail(let e) = m.connect(2, waiter: "b") else { Issue.record("an ended client refuses"); return }
        #expect(e.code == .notAuthorized)
    }

    @Test("the reconnect policy: fatal errors, disabled reconnects and the attempt limit give up")
    func policy() {
        var m = machine { $0.retryInitialConnect = true; $0.maximumAttempts = 2 }
        _ = m.connect(1, waiter: "a")
        for expected in 1...2 {
            _ = m.attemptStarting()
            guard case .reconnect(_, _, expected, _) = m.attemptEnded(loopError: Self.lost) else { Issue.record("attempt \(expected)"); return }
        }
        _ = m.attemptStarting()
        guard case .giveUp(let e, _) = m.attemptEnded(loopError: Self.lost) else { Issue.record("the limit gives up"); return }
        #expect(e.code == .gaveUp)

        var fatal = machine { $0.retryInitialConnect = true }
        _ = fatal.connect(1, waiter: "a")
        _ = fatal.attemptStarting()
        guard case .giveUp = fatal.attemptEnded(loopError: MQTTError(.badCredentials, "bad")) else { Issue.record("fatal gives up"); return }

        var keepTrying = machine { $0.retryInitialConnect = true; $0.giveUpOnFatalErrors = false }
        _ = keepTrying.connect(1, waiter: "a")
        _ = keepTrying.attemptStarting()
        guard case .reconnect = keepTrying.attemptEnded(loopError: MQTTError(.badCredentials, "bad")) else { Issue.record("a bridge outlives a password rotation"); return }
    }

    @Test("endpoints: every failure moves the next attempt to the next broker, wrapping around; a working broker is kept")
    func endpointRotation() {
        var m = machine(endpoints: [Self.a, Self.b, Self.c]) { $0.retryInitialConnect = true }
        _ = m.connect(1, waiter: "w")
        #expect(m.attemptStarting() == .connect(Self.a))
        _ = m.connAckAccepted(ConnAck())
        _ = m.disconnected()
        guard case .reconnect(_, _, 1, _) = m.attemptEnded(loopError: Self.lost) else { Issue.record("lost A: reconnect"); return }
        #expect(m.attemptStarting() == .connect(Self.b))
        _ = m.attemptEnded(loopError: Self.lost)
        #expect(m.attemptStarting() == .connect(Self.c))
        _ = m.attemptEnded(loopError: Self.lost)
        #expect(m.attemptStarting() == .connect(Self.a), "wraps around")
        _ = m.attemptEnded(loopError: Self.lost)
        // B accepts and later fails: the next one is C, not A.
        #expect(m.attemptStarting() == .connect(Self.b))
        _ = m.connAckAccepted(ConnAck())
        #expect(m.attemptStarting() == .connect(Self.b), "a new attempt on a live connection does not move")
        _ = m.disconnected()
        _ = m.attemptEnded(loopError: Self.lost)
        #expect(m.attemptStarting() == .connect(Self.c))
    }

    @Test("endpoints: a client that does not retry its first connection still tries each broker once, then gives up")
    func initialConnectTriesEachEndpoint() {
        var m = machine(endpoints: [Self.a, Self.b])
        _ = m.connect(1, waiter: "w")
        #expect(m.attemptStarting() == .connect(Self.a))
        guard case .reconnect = m.attemptEnded(loopError: Self.lost) else { Issue.record("B is still to try"); return }
        #expect(m.attemptStarting() == .connect(Self.b))
        guard case .giveUp = m.attemptEnded(loopError: Self.lost) else { Issue.record("both failed: give up"); return }

        // Reconnecting off (.never) still tries the list once at start-up, and ends a lost connection at once.
        var never = machine(endpoints: [Self.a, Self.b]) { $0.enabled = false }
        _ = never.connect(1, waiter: "w")
        _ = never.attemptStarting()
        guard case .reconnect = never.attemptEnded(loopError: Self.lost) else { Issue.record("B is still to try"); return }
        #expect(never.attemptStarting() == .connect(Self.b))
        _ = never.connAckAccepted(ConnAck())
        _ = never.disconnected()
        guard case .giveUp = never.attemptEnded(loopError: Self.lost) else { Issue.record("no reconnect after a lost connection"); return }
    }

    @Test("redirects: 0x9C detours until the target fails, 0x9D replaces the entry, loops are bounded, a redirect is not a failure")
    func redirects() {
        var m = machine(endpoints: [Self.a, Self.b], maximumRedirects: 3)
        _ = m.connect(1, waiter: "w")
        // A refuses with 0x9C → C, at once, even though the initial connect is not retried.
        #expect(m.attemptStarting() == .connect(Self.a))
        m.connAckRefused(MQTTError(.connectionRefused, "use another server", reasonCode: 0x9C))
        m.redirected(to: Self.c, permanent: false)
        guard case .redirect(_, Self.c, _) = m.attemptEnded(loopError: nil) else { Issue.record("redirect to C"); return }
        #expect(m.attemptStarting() == .connect(Self.c))
        _ = m.connAckAccepted(ConnAck())
        // C fails: the detour ends and the list goes on after A.
        _ = m.disconnected()
        guard case .reconnect(_, _, 1, _) = m.attemptEnded(loopError: Self.lost) else { Issue.record("lost C: reconnect"); return }
        #expect(m.attemptStarting() == .connect(Self.b))
        // B says it moved to C for good: the list becomes [A, C].
        _ = m.connAckAccepted(ConnAck())
        m.redirected(to: Self.c, permanent: true)
        _ = m.disconnected()
        guard case .redirect(_, Self.c, _) = m.attemptEnded(loopError: nil) else { Issue.record("moved to C"); return }
        #expect(m.endpoints == [Self.a, Self.c])
        #expect(m.attemptStarting() == .connect(Self.c))
        // C and A keep pointing at each other: with the move, three redirects in a row are followed, the fourth is
        // a failure.
        m.redirected(to: Self.a, permanent: false)
        guard case .redirect = m.attemptEnded(loopError: MQTTError(.connectionRefused, "r", reasonCode: 0x9C)) else { Issue.record("1st"); return }
        _ = m.attemptStarting()
        m.redirected(to: Self.c, permanent: false)
        guard case .redirect = m.attemptEnded(loopError: MQTTError(.connectionRefused, "r", reasonCode: 0x9C)) else { Issue.record("2nd"); return }
        _ = m.attemptStarting()
        m.redirected(to: Self.a, permanent: false)
        guard case .reconnect = m.attemptEnded(loopError: MQTTError(.connectionRefused, "r", reasonCode: 0x9C)) else { Issue.record("3rd: a failure"); return }
    }

    @Test("shutdown while connecting, while connected, during backoff and before any thread")
    func shutdown() {
        // Before the network thread exists: finished by the caller.
        var idle = machine()
        #expect(idle.shutdownRequested(reason: 0, properties: .init()) == .finishHere)
        #expect(idle.isShutDown)

        // During a connect attempt: drained; a CONNACK that still arrives resumes the waiters, and the loop stops.
        var connecting = machine()
        _ = connecting.connect(1, waiter: "a")
        _ = connecting.attemptStarting()
        #expect(connecting.shutdownRequested(reason: 4, properties: .init()) == .drain)
        #expect(connecting.shutdownRequested(reason: 0, properties: .init()) == .join)
        #expect(connecting.disconnectReason == 4, "the first request's reason is kept")
        #expect(connecting.connAckAccepted(ConnAck()) == ["a"])
        #expect(connecting.isClosing)
        guard case .stop = connecting.attemptEnded(loopError: nil) else { Issue.record("stop"); return }

        // During backoff: the next attempt does not start.
        var backingOff = machine()
        _ = backingOff.connect(1, waiter: "a")
        _ = backingOff.attemptStarting()
        _ = backingOff.connAckAccepted(ConnAck())
        _ = backingOff.disconnected()
        _ = backingOff.attemptEnded(loopError: Self.lost)
        #expect(backingOff.shutdownRequested(reason: 0, properties: .init()) == .drain)
        #expect(backingOff.attemptStarting() == .stop)
        #expect(backingOff.ended(error: nil).isEmpty)
        #expect(backingOff.closedError.code == .shutDown)

        // Connected: the public state stays connected until the DISCONNECT is out.
        var connected = machine()
        _ = connected.connect(1, waiter: "a")
        _ = connected.attemptStarting()
        _ = connected.connAckAccepted(ConnAck())
        #expect(connected.shutdownRequested(reason: 0, properties: .init()) == .drain)
        #expect(connected.connectionState == .connected(ConnAck()))
        _ = connected.disconnected()
        #expect(connected.connectionState == .disconnected)
        _ = connected.ended(error: nil)
        #expect(connected.connectionState == .shutDown)
    }

    @Test("a cancelled connect() gives its waiter back; the others stay")
    func cancel() {
        var m = machine()
        _ = m.connect(1, waiter: "a")
        _ = m.connect(2, waiter: "b")
        #expect(m.cancelConnect(1) == "a")
        #expect(m.cancelConnect(1) == nil)
        _ = m.attemptStarting()
        #expect(m.connAckAccepted(ConnAck()) == ["b"])
    }
}
