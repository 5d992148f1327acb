@testable import Mosquitto
import Testing

/// The publish window driven event by event, without a broker.
@Suite("State machine: publish window")
struct PublishStateMachineTests {
    typealias Machine = PublishStateMachine<String, String, String, String>

    @Test("on_publish before the registration: the reason code is kept and the registration completes at once")
    func earlyAcknowledgement() {
        var m = Machine(limit: 10)
        let admission = m.admit(qos: .atLeastOnce, connected: true, holdingSlot: false)
        #expect(admission == .admitted(epoch: 0))
        let (p, _) = m.published(7, reason: 0x10)
        #expect(p == nil)
        guard case .early(0x10) = m.register(7, accepted: true, qos: .atLeastOnce, epoch: 0, enqueued: false, callback: nil) else {
            Issue.record("early"); return
        }
        #expect(m.slotsInUse == 0, "the slot went back with on_publish, once")
        #expect(m.earlyAcks.isEmpty)
    }

    @Test("acknowledged after the caller waits: on_publish hands over the waiter; a cancelled caller is detached, the slot still returns")
    func waitAndDetach() {
        var m = Machine(limit: 10)
        _ = m.admit(qos: .exactlyOnce, connected: true, holdingSlot: false)
        guard case .needsWaiter = m.register(1, accepted: true, qos: .exactlyOnce, epoch: 0, enqueued: false, callback: nil) else { Issue.record("wait"); return }
        guard case .suspended = m.waitForAcknowledgement(1, qos: .exactlyOnce, waiter: "caller") else { Issue.record("suspended"); return }
        let detached = m.detach(1)
        #expect(detached == "caller")
        let (p, _) = m.published(1, reason: 0)
        #expect(p != nil && p?.waiter == nil, "completed with nobody waiting")
        #expect(m.slotsInUse == 0)
    }

    @Test("a QoS 0 publish racing a reconnect: queued on the old connection, registered after it ended, it is reported lost")
    func qos0RacingReconnect() {
        var m = Machine(limit: 10)
        guard case .admitted(let epoch) = m.admit(qos: .atMostOnce, connected: true, holdingSlot: false) else { Issue.record("admitted"); return }
        // on_disconnect runs while mosquitto_publish is returning.
        let (lost, plain, _) = m.connectionLost()
        #expect(lost.isEmpty && plain == 0)
        guard case .lost = m.register(3, accepted: true, qos: .atMostOnce, epoch: epoch, enqueued: true, callback: nil) else {
            Issue.record("a QoS 0 message queued on an ended connection is lost"); return
        }
        #expect(m.slotsInUse == 0)
        // QoS 1 in the same race stays: libmosquitto resends it after the reconnect.
        guard case .admitted(let e1) = m.admit(qos: .atLeastOnce, connected: true, holdingSlot: false) else { Issue.record("admitted"); return }
        _ = m.connectionLost()
        guard case .registered = m.register(4, accepted: true, qos: .atLeastOnce, epoch: e1, enqueued: true, callback: nil) else { Issue.record("kept"); return }
    }

    @Test("the connection ends: waited-for and untracked QoS 0 messages fail and give their slots back; QoS 1 stays")
    func connectionLost() {
        var m = Machine(limit: 10)
        for (id, qos, callback) in [(1, QoS.atMostOnce, "cb"), (2, .atMostOnce, nil), (3, .atLeastOnce, nil)] as [(UInt16, QoS, String?)] {
            _ = m.admit(qos: qos, connected: true, holdingSlot: false)
            _ = m.register(id, accepted: true, qos: qos, epoch: m.epoch, enqueued: true, callback: callback)
        }
        let (lost, plain, _) = m.connectionLost()
        #expect(lost.map(\.0) == [1])
        #expect(plain == 1)
        #expect(m.slotsInUse == 1, "the QoS 1 message keeps its slot until its PUBACK after the reconnect")
        let offline = m.admit(qos: .atMostOnce, connected: false, holdingSlot: false)
        #expect(offline == .offline)
    }

    @Test("a full queue: publishers wait in order, are woken in a batch at three quarters, and a cancelled one leaves the line")
    func slotsAndWaking() {
        var m = Machine(limit: 4)
        for id in 1...4 {
            _ = m.admit(qos: .atLeastOnce, connected: true, holdingSlot: false)
            _ = m.register(UInt16(id), accepted: true, qos: .atLeastOnce, epoch: 0, enqueued: true, callback: nil)
        }
        let full = m.admit(qos: .atLeastOnce, connected: true, holdingSlot: false)
        #expect(full == .mustWait)
        let waits = [m.waitForSlot(1, waiter: "a"), m.waitForSlot(2, waiter: "b"), m.waitForSlot(3, waiter: "c")]
        #expect(waits == [.suspended, .suspended, .suspended])
        let cancelled = m.cancelSlotWait(2)
        #expect(cancelled == "b")
        // Low water for 4 is 3: the first acknowledgement wakes the waiters up to the limit.
        let (_, release) = m.published(1, reason: 0)
        #expect(release.slots == ["a"])
        let (_, release2) = m.published(2, reason: 0)
        #expect(release2.slots == ["c"])
        #expect(m.slotsInUse == 4)
    }

    @Test("waitUntilAllPublished returns when the last slot is given back; close hands back every waiter")
    func drainAndClose() {
        var m = Machine(limit: 4)
        let now = m.waitUntilEmpty("now")
        #expect(now, "nothing queued: at once")
        _ = m.admit(qos: .atLeastOnce, connected: true, holdingSlot: false)
        _ = m.register(1, accepted: true, qos: .atLeastOnce, epoch: 0, enqueued: true, callback: "cb")
        let drainNow = m.waitUntilEmpty("drain")
        #expect(!drainNow)
        let (_, release) = m.published(1, reason: 0)
        #expect(release.drained == ["drain"])
        _ = m.admit(qos: .atLeastOnce, connected: true, holdingSlot: false)
        _ = m.register(2, accepted: true, qos: .atLeastOnce, epoch: 0, enqueued: true, callback: "cb2")
        _ = m.waitUntilEmpty("drain2")
        let closed = m.close()
        #expect(closed.pending.map(\.0) == [2])
        #expect(closed.drainWaiters == ["drain2"])
        #expect(m.slotsInUse == 0)
    }
}
