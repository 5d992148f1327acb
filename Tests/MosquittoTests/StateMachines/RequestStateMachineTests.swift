@testable import Mosquitto
import Testing

/// The request/response machine driven event by event, without a broker: the orderings that are rare with a
/// real broker (a reply before the caller waits, concurrent first requests) are ordinary cases here.
@Suite("State machine: requests")
struct RequestStateMachineTests {
    typealias Machine = RequestStateMachine<String>
    let corr: [UInt8] = [1, 2, 3]
    let reply = MQTTMessage(topic: "reply", string: "answer")

    @Test("a reply that arrives before the caller waits is kept and handed over at once")
    func replyBeforeWait() {
        var m = Machine()
        #expect(m.register(corr) == .registered)
        guard case .stored = m.replyArrived(corr, reply) else { Issue.record("expected .stored"); return }
        guard case .reply(let got) = m.wait(corr, waiter: "caller") else { Issue.record("expected the stored reply"); return }
        #expect(got.string == "answer")
        #expect(m.pending.isEmpty)
        // A second reply to the same correlation data finds nobody.
        guard case .unknown = m.replyArrived(corr, reply) else { Issue.record("expected .unknown"); return }
    }

    @Test("a reply after the caller waits resumes that caller")
    func replyAfterWait() {
        var m = Machine()
        _ = m.register(corr)
        guard case .suspended = m.wait(corr, waiter: "caller") else { Issue.record("expected .suspended"); return }
        guard case .resume(let w, let got) = m.replyArrived(corr, reply) else { Issue.record("expected .resume"); return }
        #expect(w == "caller")
        #expect(got.string == "answer")
        #expect(m.pending.isEmpty)
    }

    @Test("a timeout (cancel) before and after the caller suspended; a late reply is dropped")
    func cancel() {
        var m = Machine()
        _ = m.register(corr)
        #expect(m.cancel(corr) == nil, "nothing to resume: the caller had not suspended")
        guard case .gone = m.wait(corr, waiter: "caller") else { Issue.record("a cancelled request is gone"); return }
        _ = m.register(corr)
        _ = m.wait(corr, waiter: "caller")
        #expect(m.cancel(corr) == "caller")
        guard case .unknown = m.replyArrived(corr, reply) else { Issue.record("a late reply is dropped"); return }
    }

    @Test("two pending requests cannot share correlation data; after one ends, it can be reused")
    func duplicateCorrelation() {
        var m = Machine()
        #expect(m.register(corr) == .registered)
        #expect(m.register(corr) == .duplicateCorrelation)
        _ = m.cancel(corr)
        #expect(m.register(corr) == .registered)
    }

    @Test("concurrent first requests: one subscribes, the others wait for its SUBACK; nobody publishes ahead of it")
    func concurrentFirstRequests() {
        var m = Machine()
        guard case .subscribe = m.subscriptionNeeded("first") else { Issue.record("the first request subscribes"); return }
        for name in ["second", "third"] {
            guard case .wait = m.subscriptionNeeded(name) else { Issue.record("\(name) must wait"); return }
        }
        #expect(!m.isSubscribed)
        #expect(m.subscriptionSucceeded() == ["second", "third"])
        #expect(m.isSubscribed)
        guard case .ready = m.subscriptionNeeded("later") else { Issue.record("later requests go on"); return }
    }

    @Test("a failed response subscription fails its waiters, and the next request tries again")
    func subscriptionFailure() {
        var m = Machine()
        _ = m.subscriptionNeeded("first")
        _ = m.subscriptionNeeded("second")
        #expect(m.subscriptionFailed() == ["second"])
        guard case .subscribe = m.subscriptionNeeded("retry") else { Issue.record("the next request subscribes again"); return }
    }

    @Test("closing fails every suspended caller, of both kinds, and refuses everything after")
    func close() {
        var m = Machine()
        _ = m.subscriptionNeeded("subscriber")
        _ = m.subscriptionNeeded("subscription waiter")
        _ = m.register([1])
        _ = m.wait([1], waiter: "reply waiter")
        _ = m.register([2])  // registered, not suspended: nothing to resume, its wait finds it gone
        #expect(Set(m.close()) == ["subscription waiter", "reply waiter"])
        #expect(m.register([3]) == .closed)
        guard case .closed = m.subscriptionNeeded("late") else { Issue.record("closed"); return }
        guard case .gone = m.wait([2], waiter: "x") else { Issue.record("gone"); return }
    }
}
