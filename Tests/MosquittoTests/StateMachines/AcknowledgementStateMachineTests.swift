@testable import Mosquitto
import Testing

/// SUBACK/UNSUBACK waiters driven event by event, without a broker.
@Suite("State machine: acknowledgements")
struct AcknowledgementStateMachineTests {
    typealias Machine = AcknowledgementStateMachine<[UInt8], String>

    @Test("an acknowledgement before the caller waits is kept for it; after, it resumes the caller")
    func ordering() {
        var m = Machine()
        guard case .stored = m.acknowledged(1, [0]) else { Issue.record("stored"); return }
        guard case .acknowledged(let codes) = m.wait(for: 1, sentIn: m.epoch, waiter: "a") else { Issue.record("kept result"); return }
        #expect(codes == [0])
        guard case .suspended = m.wait(for: 2, sentIn: m.epoch, waiter: "b") else { Issue.record("suspended"); return }
        guard case .resume(let w, let got) = m.acknowledged(2, [1]) else { Issue.record("resume"); return }
        #expect(w == "b" && got == [1])
        #expect(m.waiters.isEmpty && m.early.isEmpty)
    }

    @Test("the connection lost between the send and the wait: the wait returns at once instead of waiting for ever")
    func lostBetweenSendAndWait() {
        var m = Machine()
        let sentIn = m.epoch
        #expect(m.connectionLost().isEmpty)  // on_disconnect ran before the caller registered
        guard case .connectionLost = m.wait(for: 7, sentIn: sentIn, waiter: "late") else { Issue.record("must not suspend"); return }
        #expect(m.waiters.isEmpty)
    }

    @Test("a lost connection releases its waiters and drops kept results, so a reused identifier is not answered by a stale one")
    func lostConnection() {
        var m = Machine()
        _ = m.wait(for: 1, sentIn: m.epoch, waiter: "a")
        m.expect(2, waiter: "resubscribe")
        _ = m.acknowledged(3, [0x80])  // kept, nobody waits yet
        #expect(Set(m.connectionLost()) == ["a", "resubscribe"])
        // Identifier 3 is reused on the new connection: the old result must not answer it.
        guard case .suspended = m.wait(for: 3, sentIn: m.epoch, waiter: "new") else { Issue.record("a fresh wait"); return }
        guard case .resume(_, let codes) = m.acknowledged(3, [1]) else { Issue.record("resume"); return }
        #expect(codes == [1])
    }

    @Test("a result kept on one connection does not answer a wait for a packet sent on an earlier one")
    func keptResultOtherConnection() {
        var m = Machine()
        let old = m.epoch
        _ = m.connectionLost()
        _ = m.acknowledged(5, [0])
        guard case .connectionLost = m.wait(for: 5, sentIn: old, waiter: "x") else { Issue.record("connectionLost"); return }
    }

    @Test("closing releases every waiter and refuses later waits")
    func close() {
        var m = Machine()
        _ = m.wait(for: 1, sentIn: m.epoch, waiter: "a")
        #expect(m.close() == ["a"])
        guard case .closed = m.wait(for: 2, sentIn: m.epoch, waiter: "b") else { Issue.record("closed"); return }
        guard case .stored = m.acknowledged(2, [0]) else { Issue.record("stored"); return }
        #expect(m.early.isEmpty, "a closed table keeps nothing")
    }
}
