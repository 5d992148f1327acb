import CMosquitto
import Foundation
@testable import Mosquitto
import MosquittoBroker
import MosquittoTestSupport
import Synchronization
import Testing

/// The kernel thread id of `client`'s network thread.
private func networkThread(_ client: MQTTClient) -> Int {
    client.core.state.withLock { $0.networkThreadID }
}

/// Whether a task that prefers `client.executor` now runs on the client's network thread. The connected loop
/// switches to polling at its next pass after the executor is first used (within a second), so callers wait
/// for this before they depend on it.
private func runsOnNetworkThread(_ client: MQTTClient) async -> Bool {
    let tid = await Task(executorPreference: client.executor) { cmosquitto_thread_id() }.value
    return tid == networkThread(client)
}

@Suite("Client: tasks on the network thread (client.executor)", .timeLimit(.minutes(2 * testTimeScale)))
struct ExecutorTests {
    @Test("A consumer and a publisher on their clients' network threads exchange every message at QoS 0, 1 and 2")
    func everyMessageOnTheNetworkThread() async throws {
        try await withBroker { broker in
            let sub = try await connected(broker)
            let pub = try await connected(broker)
            #expect(await eventually { await runsOnNetworkThread(sub) })
            #expect(await eventually { await runsOnNetworkThread(pub) })
            let subThread = networkThread(sub)
            for qos in QoS.allCases {
                let topic = "exec/\(qos.rawValue)"
                let count = 3000
                let stream = try await sub.subscribe([Subscription(topic, qos: qos)],
                                                     buffer: .init(capacity: 20_000, overflow: .dropNewest))
                let consumer = Task(executorPreference: sub.executor) { () -> (ids: [Int], offThread: Int) in
                    var ids: [Int] = []
                    var offThread = 0
                    for try await m in stream {
                        if cmosquitto_thread_id() != subThread { offThread += 1 }
                        ids.append(Int(String(decoding: m.payload, as: UTF8.self).dropFirst("message-".count)) ?? -1)
                        if ids.count == count { break }
                    }
                    return (ids, offThread)
                }
                let publisher = Task(executorPreference: pub.executor) {
                    for i in 0..<count {
                        try await pub.publish(MQTTMessage(topic: topic, payload: payload(i), qos: qos), completion: .enqueued)
                    }
                    await pub.waitUntilAllPublished()
                }
                try await publisher.value
                let result = try await consumer.value
                #expect(result.ids == Array(0..<count), "QoS \(qos.rawValue): every message, in order")
                #expect(result.offThread == 0, "QoS \(qos.rawValue): the consumer ran on the network thread")
                #expect(stream.droppedCount == 0)
            }
            await pub.shutdown()
            await sub.shutdown()
        }
    }

    @Test("A full buffer with backpressure lets a consumer on the network thread make room instead of stalling")
    func backpressureWithConsumerOnTheNetworkThread() async throws {
        try await withBroker { broker in
            let sub = try await connected(broker)
            let pub = try await connected(broker)
            #expect(await eventually { await runsOnNetworkThread(sub) })
            let count = 2000
            // The network thread fills the 4-message buffer in one read pass and then waits for room, which only
            // the consumer can make, and the consumer runs on that very thread.
            let stream = try await sub.subscribe([Subscription("bp/x", qos: .atLeastOnce)],
                                                 buffer: .init(capacity: 4, overflow: .backpressure(maxWait: .seconds(60))))
            let consumer = Task(executorPreference: sub.executor) { () -> Int in
                var n = 0
                for try await _ in stream {
                    n += 1
                    if n == count { break }
                }
                return n
            }
            let started = ContinuousClock.now
            for i in 0..<count {
                try await pub.publish(MQTTMessage(topic: "bp/x", payload: payload(i), qos: .atLeastOnce), completion: .enqueued)
            }
            #expect(try await consumer.value == count)
            #expect(stream.droppedCount == 0, "backpressure is lossless for a consumer that keeps up")
            // Stalled, each full buffer would wait out maxWait (60 s) and then drop; room comes at once instead.
            #expect(ContinuousClock.now - started < .seconds(50))
            await pub.shutdown()
            await sub.shutdown()
        }
    }

    @Test("A full buffer still drops after maxWait while another task keeps the network thread's executor busy")
    func backpressureDeadlineWithBusyExecutor() async throws {
        try await withBroker { broker in
            let client = try await connected(broker)
            #expect(await eventually { await runsOnNetworkThread(client) })
            // Nobody reads this stream: after two messages its buffer is full and each further message waits
            // maxWait, then is dropped, as the policy promises.
            let stalled = try await client.subscribe([Subscription("stall/x", qos: .atLeastOnce)],
                                                     buffer: .init(capacity: 2, overflow: .backpressure(maxWait: .milliseconds(300))))
            // A task that always has another job queued on the network thread (a ticker that yields).
            let ticker = Task(executorPreference: client.executor) { () -> Int in
                var ticks = 0
                while !Task.isCancelled {
                    ticks += 1
                    await Task.yield()
                }
                return ticks
            }
            for i in 0..<5 {
                try await client.publish(MQTTMessage(topic: "stall/x", payload: payload(i), qos: .atLeastOnce), completion: .enqueued)
            }
            #expect(await eventually { stalled.droppedCount == 3 }, "the wait for room ends after maxWait although jobs keep coming")
            ticker.cancel()
            #expect(await ticker.value > 0)
            await client.shutdown()
        }
    }

    @Test("Publishing and subscribing from other tasks wakes the polling network thread")
    func otherThreadsWakeThePollingLoop() async throws {
        try await withBroker { broker in
            // The connected loop sleeps in poll() for up to a minute here (instead of a second), and nothing else
            // arrives on this connection to wake it: a publish or subscribe from a pool thread that failed to wake
            // it would take that minute. Done right, each takes milliseconds, but under the thread sanitizer with
            // CPU hogs the whole test process can stall for half a minute, so the sanitizer runs scale both.
            let client = try await connected(broker) { $0.pollIdleTimeoutMilliseconds = Int32(60_000 * testTimeScale) }
            #expect(await eventually { await runsOnNetworkThread(client) })
            let clock = ContinuousClock()
            var slowest = Duration.zero
            var t = clock.now
            let stream = try await client.subscribe("wake/#", qos: .atLeastOnce)
            slowest = max(slowest, clock.now - t)
            for i in 0..<30 {
                t = clock.now
                let receipt = try await client.publish(MQTTMessage(topic: "wake/\(i)", payload: payload(i), qos: .atLeastOnce))
                slowest = max(slowest, clock.now - t)
                #expect(receipt.completed)
            }
            let got = try await collect(stream, count: 30)
            #expect(got.count == 30)
            // Half the poll timeout: a call that did not wake the loop waits out the rest of it. Both scale with the
            // sanitizer runs, where a loaded machine stalls the whole test process for tens of seconds at times.
            #expect(slowest < .seconds(30) * testTimeScale, "every call woke the network thread (slowest: \(slowest))")
            await client.shutdown()
        }
    }

    @Test("Keepalive goes on while the network thread polls: an idle connection outlives 1.5 × keepalive")
    func keepaliveWhilePolling() async throws {
        try await withBroker { broker in
            let client = try await connected(broker) { $0.keepAlive = 5 }
            let events = client.makeEventStream()
            #expect(await eventually { await runsOnNetworkThread(client) })
            // Without PINGREQ the broker closes the connection after 1.5 × 5 s of silence (seen at 9-12 s with mosquitto 2.0.11).
            try await Task.sleep(for: .seconds(12))
            #expect(client.core.state.withLock { $0.isConnected })
            let receipt = try await client.publish(MQTTMessage(topic: "alive", string: "yes", qos: .atLeastOnce))
            #expect(!receipt.reasonCode.isFailure)
            await client.shutdown()
            var disconnects = 0
            for await e in events {
                if case .disconnected(let error) = e, error != nil { disconnects += 1 }  // nil: our own DISCONNECT
                if case .shutDown = e { break }
            }
            #expect(disconnects == 0, "the broker never dropped the idle connection")
        }
    }

    @Test("A task on the executor can shut its own client down; later jobs run on the global executor")
    func shutdownFromTheNetworkThread() async throws {
        try await withBroker { broker in
            let client = try await connected(broker)
            #expect(await eventually { await runsOnNetworkThread(client) })
            let tid = networkThread(client)
            await Task(executorPreference: client.executor) {
                await client.shutdown()
            }.value
            #expect(client.state == .shutDown)
            let after = await Task(executorPreference: client.executor) { cmosquitto_thread_id() }.value
            #expect(after != tid, "a job after shutdown runs elsewhere instead of waiting for a thread that ended")
        }
    }

    @Test("A consumer on the executor goes on after the connection is lost and restored")
    func reconnectWithConsumerOnTheNetworkThread() async throws {
        try await withBroker { broker in
            let sub = try await connected(broker, id: "exec-reconnect") { $0.session = .persistent(expiry: 600) }
            let pub = try await connected(broker)
            #expect(await eventually { await runsOnNetworkThread(sub) })
            let stream = try await sub.subscribe("rc/#", qos: .atLeastOnce)
            let seen = Mutex<[String]>([])
            let consumer = Task(executorPreference: sub.executor) { () -> [String] in
                var topics: [String] = []
                for try await m in stream {
                    topics.append(m.topic)
                    seen.withLock { $0.append(m.topic) }
                    if m.topic == "rc/after" { break }
                }
                return topics
            }
            try await pub.publish(MQTTMessage(topic: "rc/before", string: "1", qos: .atLeastOnce))
            // Cut the connection only once the first message is in: cut earlier, it would come again after the
            // reconnect (QoS 1 is at least once), which is right but not what this test is about.
            #expect(await eventually { seen.withLock { $0.contains("rc/before") } })
            let events = sub.makeEventStream()
            sub._severConnectionForTesting()
            var reconnected = false
            for await e in events {
                if case .connected = e { reconnected = true; break }
            }
            #expect(reconnected)
            try await pub.publish(MQTTMessage(topic: "rc/after", string: "2", qos: .atLeastOnce))
            let topics = try await consumer.value
            #expect(topics == ["rc/before", "rc/after"])
            #expect(await eventually { await runsOnNetworkThread(sub) }, "the new connection polls again")
            await pub.shutdown()
            await sub.shutdown()
        }
    }
}
