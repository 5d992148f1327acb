@testable import Mosquitto
import Testing

/// The subscription table driven event by event, without a broker: plain objects for the stream buffers and
/// strings for the `subscribe` callers.
@Suite("State machine: subscriptions")
struct SubscriptionStateMachineTests {
    final class Buffer: CustomStringConvertible {
        let name: String
        init(_ name: String) { self.name = name }
        var description: String { name }
    }
    typealias Machine = SubscriptionStateMachine<Buffer, String>

    /// The names of `buffers`, in order.
    static func names(_ buffers: [Buffer]) -> [String] { buffers.map(\.name) }

    static func properties(ids: [UInt32]) -> MessageProperties {
        var p = MessageProperties()
        p.subscriptionIdentifiers = ids
        return p
    }

    // MARK: Subscribing

    @Test("new filters are sent with fresh identifiers; a known filter is re-sent only when its QoS, options or properties change")
    func subscribeRequested() {
        var m = Machine()
        let a = Buffer("a"), b = Buffer("b")
        let first = m.subscribeRequested(streamID: 1, buffer: a, [Subscription("x", qos: .atMostOnce), Subscription("y")], userProperties: [])
        #expect(first.map(\.filter) == ["x", "y"])
        #expect(first.map(\.id) == [1, 2])
        // Same filter, same QoS and options: the stream joins, nothing is sent.
        #expect(m.subscribeRequested(streamID: 2, buffer: b, [Subscription("x", qos: .atMostOnce)], userProperties: []).isEmpty)
        #expect(m.filters["x"]?.streams == [1, 2])
        // A higher QoS re-sends the filter under its identifier, with the higher QoS.
        let upgraded = m.subscribeRequested(streamID: 3, buffer: Buffer("c"), [Subscription("x", qos: .exactlyOnce)], userProperties: [])
        #expect(upgraded.map(\.id) == [1] && upgraded.first?.qos == .exactlyOnce)
        // A lower QoS keeps the higher one and sends nothing.
        #expect(m.subscribeRequested(streamID: 4, buffer: Buffer("d"), [Subscription("x", qos: .atMostOnce)], userProperties: []).isEmpty)
        #expect(m.filters["x"]?.qos == .exactlyOnce)
        // Options changed: re-sent.
        #expect(m.subscribeRequested(streamID: 5, buffer: Buffer("e"), [Subscription("y", noLocal: true)], userProperties: []).map(\.filter) == ["y"])
        // User properties: re-sent, and kept for a re-subscription.
        let withProps = m.subscribeRequested(streamID: 6, buffer: Buffer("f"), [Subscription("y", noLocal: true)], userProperties: [UserProperty("k", "v")])
        #expect(withProps.first?.userProperties == [UserProperty("k", "v")])
        #expect(m.filters["y"]?.userProperties == [UserProperty("k", "v")])
    }

    @Test("a SUBACK confirms the filter and resumes its caller, whether it comes before or after the caller waits")
    func subackBothOrders() {
        var m = Machine()
        let e = m.subscribeRequested(streamID: 1, buffer: Buffer("a"), [Subscription("x"), Subscription("y", qos: .exactlyOnce)], userProperties: [])
        #expect(m.grantedQoS("x") == nil, "not confirmed before its SUBACK")
        // x: the caller waits first.
        guard case .suspended = m.waitForSuback(1, sentIn: m.epoch, entry: e[0], waiter: "x-caller") else { Issue.record("suspended"); return }
        guard case .resume(let w, let codes) = m.subackReceived(1, codes: [1]) else { Issue.record("resume"); return }
        #expect(w == "x-caller" && codes == [1])
        #expect(m.grantedQoS("x") == .atLeastOnce)
        // y: the SUBACK is handled before the caller registers its wait.
        guard case .none = m.subackReceived(2, codes: [2]) else { Issue.record("stored"); return }
        #expect(m.grantedQoS("y") == nil, "confirmed only when its caller collects it")
        guard case .acknowledged(let kept) = m.waitForSuback(2, sentIn: m.epoch, entry: e[1], waiter: "y-caller") else { Issue.record("kept"); return }
        #expect(kept == [2])
        #expect(m.grantedQoS("y") == .exactlyOnce)
    }

    @Test("SUBACK failure (0x80) for one filter of several: the others are granted; the failed caller's stream then takes all its filters with it")
    func subackFailureForOneOfSeveral() {
        var m = Machine()
        let other = Buffer("other")
        _ = m.subscribeRequested(streamID: 9, buffer: other, [Subscription("c")], userProperties: [])
        let e = m.subscribeRequested(streamID: 1, buffer: Buffer("a"), [Subscription("a"), Subscription("b"), Subscription("c")], userProperties: [])
        #expect(e.map(\.filter) == ["a", "b"], "c is known and unchanged: not sent again")
        _ = m.waitForSuback(1, sentIn: m.epoch, entry: e[0], waiter: "a")
        _ = m.waitForSuback(2, sentIn: m.epoch, entry: e[1], waiter: "b")
        guard case .resume("a", [1]) = m.subackReceived(1, codes: [1]) else { Issue.record("a granted"); return }
        guard case .resume("b", [0x80]) = m.subackReceived(2, codes: [0x80]) else { Issue.record("b refused, to its caller"); return }
        #expect(m.grantedQoS("a") == .atLeastOnce)
        #expect(m.grantedQoS("b") == nil, "a refusal does not confirm")
        // The caller throws and ends its stream: a and b are unsubscribed, c stays for the other stream.
        #expect(m.streamEnded(1) == ["a", "b"])
        #expect(m.filters.keys.sorted() == ["c"])
        #expect(m.filters["c"]?.streams == [9])
    }

    // MARK: The nasty orderings

    @Test("a stream cancelled while its re-subscription's SUBACK is in flight: the late SUBACK touches neither the gone filter nor its successor")
    func cancelledWhileSubackInFlight() {
        var m = Machine()
        let old = m.subscribeRequested(streamID: 1, buffer: Buffer("old"), [Subscription("f")], userProperties: [])[0]
        _ = m.connectionLost()
        let resend = m.connected(sessionPresent: false)
        #expect(resend.map(\.id) == [old.id])
        m.resubscribeSent(7, entry: resend[0])
        m.resubscribeSent(8, entry: resend[0])  // a second attempt, to show a granted late SUBACK too
        // The consumer stops: the filter is unsubscribed while SUBACK 7 is on its way.
        #expect(m.streamEnded(1) == ["f"])
        #expect(m.filters["f"] == nil)
        // A new subscriber to the same filter gets a new entry with its own identifier.
        let successor = Buffer("new")
        let fresh = m.subscribeRequested(streamID: 2, buffer: successor, [Subscription("f")], userProperties: [])
        #expect(fresh.count == 1 && fresh[0].id != old.id)
        // The refusal of the old SUBSCRIBE must not end the new subscriber's stream...
        guard case .none = m.subackReceived(7, codes: [0x80]) else { Issue.record("the old refusal must not fail the successor"); return }
        #expect(m.filters["f"]?.id == fresh[0].id)
        // ...and a grant of the old SUBSCRIBE must not confirm the new one, whose SUBACK is still due.
        _ = m.subackReceived(8, codes: [1])
        #expect(m.grantedQoS("f") == nil)
        #expect(Self.names(m.messageArrived(topic: "f", properties: Self.properties(ids: [fresh[0].id]))) == ["new"])
    }

    @Test("reconnect without a session while a user SUBSCRIBE is in flight: the caller goes on offline and every filter is re-sent, the confirmed ones too")
    func resubscribeWhileUserSubscribeInFlight() {
        var m = Machine()
        let kept = m.subscribeRequested(streamID: 1, buffer: Buffer("kept"), [Subscription("kept")], userProperties: [])[0]
        _ = m.waitForSuback(1, sentIn: m.epoch, entry: kept, waiter: "kept-caller")
        _ = m.subackReceived(1, codes: [1])
        #expect(m.grantedQoS("kept") == .atLeastOnce)
        // A user SUBSCRIBE goes out on connection 0...
        let sentIn = m.epoch
        let pending = m.subscribeRequested(streamID: 2, buffer: Buffer("pending"), [Subscription("pending", qos: .exactlyOnce)], userProperties: [])[0]
        guard case .suspended = m.waitForSuback(2, sentIn: sentIn, entry: pending, waiter: "pending-caller") else { Issue.record("suspended"); return }
        // ...and the connection drops before its SUBACK: the caller is released (to return offline).
        #expect(m.connectionLost() == ["pending-caller"])
        // CONNACK without a session: both filters are re-sent, in identifier order.
        let resend = m.connected(sessionPresent: false)
        #expect(resend.map(\.filter) == ["kept", "pending"])
        #expect(m.grantedQoS("kept") == nil, "the broker forgot it with the session")
        // Packet identifiers restart on the new connection: 1 is reused and must answer the re-subscription.
        m.resubscribeSent(1, entry: resend[0])
        m.resubscribeSent(2, entry: resend[1])
        guard case .none = m.subackReceived(1, codes: [1]) else { Issue.record("a re-subscription resumes nobody"); return }
        guard case .none = m.subackReceived(2, codes: [2]) else { Issue.record("a re-subscription resumes nobody"); return }
        #expect(m.grantedQoS("kept") == .atLeastOnce && m.grantedQoS("pending") == .exactlyOnce)
        // Another drop, now with the session kept: nothing to re-send.
        #expect(m.connectionLost().isEmpty, "re-subscriptions are not callers")
        #expect(m.connected(sessionPresent: true).isEmpty)
    }

    @Test("a caller that registers its wait after the connection of its SUBSCRIBE ended goes on offline at once; its filter is re-sent")
    func waitAfterConnectionLost() {
        var m = Machine()
        let sentIn = m.epoch
        let e = m.subscribeRequested(streamID: 1, buffer: Buffer("a"), [Subscription("f")], userProperties: [])[0]
        #expect(m.connectionLost().isEmpty)
        guard case .offline = m.waitForSuback(3, sentIn: sentIn, entry: e, waiter: "late") else { Issue.record("must not wait for ever"); return }
        #expect(m.connected(sessionPresent: true).map(\.filter) == ["f"], "never acknowledged: re-sent even with a session")
    }

    @Test("a refused re-subscription ends that filter's streams and keeps the others")
    func resubscriptionRefused() {
        var m = Machine()
        let a = Buffer("a"), b = Buffer("b")
        let ea = m.subscribeRequested(streamID: 1, buffer: a, [Subscription("a")], userProperties: [])[0]
        let eb = m.subscribeRequested(streamID: 2, buffer: b, [Subscription("b")], userProperties: [])[0]
        _ = m.connectionLost()
        let resend = m.connected(sessionPresent: false)
        #expect(resend.map(\.id) == [ea.id, eb.id])
        m.resubscribeSent(1, entry: resend[0])
        m.resubscribeSent(2, entry: resend[1])
        _ = m.subackReceived(1, codes: [1])
        guard case .resubscriptionRefused(let filter, let code, let finish) = m.subackReceived(2, codes: [0x87]) else {
            Issue.record("refused"); return
        }
        #expect(filter == "b" && code == 0x87 && Self.names(finish) == ["b"])
        #expect(m.filters.keys.sorted() == ["a"])
        #expect(m.grantedQoS("a") == .atLeastOnce)
        #expect(Self.names(m.messageArrived(topic: "b", properties: Self.properties(ids: [eb.id]))).isEmpty)
        #expect(Self.names(m.messageArrived(topic: "a", properties: Self.properties(ids: [ea.id]))) == ["a"])
    }

    @Test("a broker without shared subscriptions: the $share filters are dropped before the re-subscription, their streams end, the rest is re-sent")
    func sharedSubscriptionsUnavailable() {
        var m = Machine()
        let shared = Buffer("shared"), plain = Buffer("plain")
        let es = m.subscribeRequested(streamID: 1, buffer: shared, [Subscription("$share/g/cmd/#")], userProperties: [])[0]
        let ep = m.subscribeRequested(streamID: 2, buffer: plain, [Subscription("cmd/#")], userProperties: [])[0]
        _ = m.connectionLost()
        let dropped = m.sharedSubscriptionsUnavailable()
        #expect(dropped.map(\.filter) == ["$share/g/cmd/#"])
        #expect(dropped.map { Self.names($0.finish) } == [["shared"]])
        #expect(m.connected(sessionPresent: false).map(\.id) == [ep.id])
        #expect(m.filters.keys.sorted() == ["cmd/#"])
        #expect(Self.names(m.messageArrived(topic: "cmd/x", properties: Self.properties(ids: [es.id]))).isEmpty)
        #expect(Self.names(m.messageArrived(topic: "cmd/x", properties: Self.properties(ids: [ep.id]))) == ["plain"])
        #expect(m.sharedSubscriptionsUnavailable().isEmpty)
    }

    // MARK: Streams ending

    @Test("two streams on one filter: the first to end leaves the filter subscribed, the last one unsubscribes it")
    func twoStreamsOneEnds() {
        var m = Machine()
        let e = m.subscribeRequested(streamID: 1, buffer: Buffer("one"), [Subscription("f")], userProperties: [])[0]
        _ = m.subscribeRequested(streamID: 2, buffer: Buffer("two"), [Subscription("f")], userProperties: [])
        let props = Self.properties(ids: [e.id])
        #expect(Self.names(m.messageArrived(topic: "f", properties: props)) == ["one", "two"])
        #expect(m.streamEnded(1).isEmpty)
        #expect(Self.names(m.messageArrived(topic: "f", properties: props)) == ["two"], "the ended stream gets nothing more")
        #expect(m.streamEnded(1).isEmpty, "ending twice is harmless")
        #expect(m.streamEnded(2) == ["f"])
        #expect(m.filters.isEmpty && m.streams.isEmpty && m.filtersByID.isEmpty)
    }

    @Test("an internal filter (the request/response topic) outlives its last stream")
    func internalFilter() {
        var m = Machine()
        _ = m.subscribeRequested(streamID: 1, buffer: Buffer("responses"), [Subscription("replies/x")], userProperties: [])
        m.markInternal("replies/x")
        #expect(m.streamEnded(1).isEmpty)
        #expect(m.filters["replies/x"] != nil)
        // Still re-sent after a lost session.
        _ = m.connectionLost()
        #expect(m.connected(sessionPresent: false).map(\.filter) == ["replies/x"])
    }

    @Test("unsubscribe drops the filters at once; a stream ends only when none of its filters is left")
    func unsubscribeAndOrphans() {
        var m = Machine()
        let both = Buffer("both"), onlyA = Buffer("onlyA")
        let ids = m.subscribeRequested(streamID: 1, buffer: both, [Subscription("a"), Subscription("b")], userProperties: []).map(\.id)
        _ = m.subscribeRequested(streamID: 2, buffer: onlyA, [Subscription("a")], userProperties: [])
        let fed = m.unsubscribeRequested(["a", "never-subscribed"])
        #expect(Self.names(fed) == ["both", "onlyA"])
        #expect(Self.names(m.orphans(fed)) == ["onlyA"], "'both' still has b")
        #expect(Self.names(m.messageArrived(topic: "a", properties: Self.properties(ids: [ids[0]]))).isEmpty)
        let rest = m.unsubscribeRequested(["b"])
        #expect(Self.names(m.orphans(rest)) == ["both"])
    }

    // MARK: Routing

    @Test("message routing by subscription identifier follows every change of the table")
    func routingAfterChange() {
        var m = Machine()
        let one = Buffer("one"), two = Buffer("two"), hose = Buffer("hose")
        let a = m.subscribeRequested(streamID: 1, buffer: one, [Subscription("a/#")], userProperties: [])[0].id
        let b = m.subscribeRequested(streamID: 2, buffer: two, [Subscription("b/+")], userProperties: [])[0].id
        #expect(Self.names(m.messageArrived(topic: "a/1", properties: Self.properties(ids: [a]))) == ["one"])
        // Stream one joins b: the cached route of b must include it now.
        _ = m.subscribeRequested(streamID: 1, buffer: one, [Subscription("b/+")], userProperties: [])
        #expect(Self.names(m.messageArrived(topic: "b/1", properties: Self.properties(ids: [b]))) == ["one", "two"])
        // Overlapping subscriptions: each stream once.
        #expect(Self.names(m.messageArrived(topic: "x", properties: Self.properties(ids: [a, b]))) == ["one", "two"])
        // A firehose gets everything, last.
        let added = m.firehoseAdded(10, buffer: hose)
        #expect(added)
        #expect(Self.names(m.messageArrived(topic: "a/1", properties: Self.properties(ids: [a]))) == ["one", "hose"])
        m.firehoseEnded(10)
        // Stream two ends: b routes to one only; an unknown identifier routes nowhere.
        _ = m.streamEnded(2)
        #expect(Self.names(m.messageArrived(topic: "b/1", properties: Self.properties(ids: [b]))) == ["one"])
        #expect(Self.names(m.messageArrived(topic: "b/1", properties: Self.properties(ids: [999]))).isEmpty)
        // Without identifiers (MQTT 3.1.1): by topic match.
        #expect(Self.names(m.messageArrived(topic: "b/1", properties: MessageProperties())) == ["one"])
        #expect(Self.names(m.messageArrived(topic: "a/x/y", properties: MessageProperties())) == ["one"])
        #expect(Self.names(m.messageArrived(topic: "c", properties: MessageProperties())).isEmpty)
    }

    @Test("a filter dropped and subscribed again gets a new identifier; the old one routes nowhere")
    func identifierNotReused() {
        var m = Machine()
        let old = m.subscribeRequested(streamID: 1, buffer: Buffer("old"), [Subscription("f")], userProperties: [])[0].id
        _ = m.streamEnded(1)
        let new = m.subscribeRequested(streamID: 2, buffer: Buffer("new"), [Subscription("f")], userProperties: [])[0].id
        #expect(new != old)
        #expect(m.filtersByID == [new: "f"])
        #expect(Self.names(m.messageArrived(topic: "f", properties: Self.properties(ids: [old]))).isEmpty)
        #expect(Self.names(m.messageArrived(topic: "f", properties: Self.properties(ids: [new]))) == ["new"])
    }

    // MARK: The end

    @Test("shutdown with waiters pending: callers and re-subscriptions are released, every stream and firehose ends, later work is refused")
    func shutdownWithWaitersPending() {
        var m = Machine()
        let e = m.subscribeRequested(streamID: 1, buffer: Buffer("s1"), [Subscription("a")], userProperties: [])[0]
        _ = m.subscribeRequested(streamID: 2, buffer: Buffer("s2"), [Subscription("b")], userProperties: [])
        let added = m.firehoseAdded(3, buffer: Buffer("hose"))
        #expect(added)
        _ = m.waitForSuback(1, sentIn: m.epoch, entry: e, waiter: "caller")
        m.resubscribeSent(2, entry: m.filters["b"]!)
        let (waiters, buffers) = m.close()
        #expect(waiters.compactMap(\.userWaiter) == ["caller"])
        #expect(waiters.count == 2, "the re-subscription is released too")
        #expect(Self.names(buffers) == ["s1", "s2", "hose"])
        #expect(m.filters.isEmpty && m.streams.isEmpty && m.firehoses.isEmpty)
        // After the end: nothing is sent, nothing waits, nothing is delivered.
        #expect(m.subscribeRequested(streamID: 4, buffer: Buffer("late"), [Subscription("c")], userProperties: []).isEmpty)
        #expect(m.streams.isEmpty)
        let lateAdded = m.firehoseAdded(5, buffer: Buffer("late-hose"))
        #expect(!lateAdded)
        guard case .offline = m.waitForSuback(3, sentIn: m.epoch, entry: e, waiter: "late") else { Issue.record("refused"); return }
        guard case .none = m.subackReceived(1, codes: [0]) else { Issue.record("nothing to resume"); return }
        #expect(m.messageArrived(topic: "a", properties: MessageProperties()).isEmpty)
        #expect(m.close().waiters.isEmpty)
    }
}
