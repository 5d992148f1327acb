import CMosquitto
import Foundation
@testable import Mosquitto
import MosquittoBroker
import MosquittoTestSupport
import Synchronization
import Testing

@Suite("Client: publish and subscribe against a real mosquitto", .timeLimit(.minutes(2 * testTimeScale)))
struct ClientTests {
    @Test("QoS 0/1/2 round trips on MQTT 3.1.1 and 5", arguments: [MQTTProtocolVersion.v3_1_1, .v5])
    func roundTrips(version: MQTTProtocolVersion) async throws {
        try await withBroker { broker in
            let sub = try await connected(broker, version: version)
            let pub = try await connected(broker, version: version)
            for qos in QoS.allCases {
                let topic = "rt/\(version)/\(qos.rawValue)"
                let stream = try await sub.subscribe(topic, qos: qos)
                #expect(stream.grantedQoS == [qos])
                var sent: [[UInt8]] = []
                for i in 0..<50 {
                    let p: [UInt8] = [0, 0xFF, UInt8(i), 10, 13] + payload(i)
                    sent.append(p)
                    let receipt = try await pub.publish(MQTTMessage(topic: topic, payload: p, qos: qos))
                    #expect(receipt.completed)
                    #expect(!receipt.queuedWhileOffline)
                }
                let got = try await collect(stream, count: 50)
                #expect(got.map(\.payload) == sent, "QoS \(qos) payloads must arrive byte-exact and in order")
                #expect(got.allSatisfy { $0.qos == qos && $0.topic == topic && !$0.retain })
            }
            await pub.shutdown()
            await sub.shutdown()
        }
    }

    @Test("Retained messages are delivered to late subscribers with the retain flag, and can be cleared")
    func retained() async throws {
        try await withBroker { broker in
            let pub = try await connected(broker)
            try await pub.publish(MQTTMessage(topic: "status/door", string: "open", qos: .atLeastOnce, retain: true))
            let sub = try await connected(broker)
            let stream = try await sub.subscribe("status/#")
            let got = try await collect(stream, count: 1)
            #expect(got.first?.string == "open")
            #expect(got.first?.retain == true)
            // Live messages are not flagged retained.
            try await pub.publish(MQTTMessage(topic: "status/door", string: "closed", retain: false))
            let live = try await sub.subscribe("status/door")
            try await pub.publish(MQTTMessage(topic: "status/door", string: "ajar"))
            let l = try await collect(live, count: 2)
            #expect(l.map(\.string) == ["open", "ajar"])
            #expect(l.map(\.retain) == [true, false])
            // An empty retained message clears it.
            try await pub.publish(MQTTMessage(topic: "status/door", payload: [], retain: true))
            let late = try await connected(broker)
            let after = try await late.subscribe("status/door")
            let none = try await collect(after, count: 1, timeout: .milliseconds(500))
            #expect(none.isEmpty)
            for c in [pub, sub, late] { await c.shutdown() }
        }
    }

    @Test("A will is published when the client dies without DISCONNECT, and not on a clean shutdown")
    func will() async throws {
        try await withBroker { broker in
            let watcher = try await connected(broker)
            let wills = try await watcher.subscribe("devices/+/status")
            var willProps = MessageProperties()
            willProps.userProperties = [UserProperty("reason", "crash"), UserProperty("reason", "second")]
            let dying = try await connected(broker, id: "dying") { c in
                c.will = .init(MQTTMessage(topic: "devices/dying/status", string: "offline", qos: .atLeastOnce, properties: willProps))
            }
            // A real abrupt death: another process holding a will, killed with SIGKILL.
            // It is killed once it has printed a retained message: then it is surely connected, will and all.
            try await watcher.publish(MQTTMessage(topic: "will-test/ready", string: "ready", qos: .atLeastOnce, retain: true))
            let proc = Process()
            proc.executableURL = URL(fileURLWithPath: "/usr/bin/mosquitto_sub")
            proc.arguments = ["-h", broker.host, "-p", "\(broker.port)", "-t", "will-test/ready", "-i", "killed",
                              "--will-topic", "devices/killed/status", "--will-payload", "gone", "--will-qos", "1"]
            let output = Pipe()
            proc.standardOutput = output
            let printed = Locked(false)
            output.fileHandleForReading.readabilityHandler = { handle in
                if !handle.availableData.isEmpty { printed.withLock { $0 = true } }
            }
            try proc.run()
            #expect(await eventually(timeout: .seconds(30)) { printed.value }, "mosquitto_sub did not print the retained message")
            output.fileHandleForReading.readabilityHandler = nil
            kill(proc.processIdentifier, SIGKILL)
            proc.waitUntilExit()
            // Our own client, its TCP connection severed without DISCONNECT.
            dying._severConnectionForTesting()
            let got = try await collect(wills, count: 2)
            let byTopic = Dictionary(uniqueKeysWithValues: got.map { ($0.topic, $0) })
            #expect(byTopic["devices/killed/status"]?.string == "gone")
            #expect(byTopic["devices/dying/status"]?.string == "offline")
            #expect(byTopic["devices/dying/status"]?.properties.userProperties == willProps.userProperties)
            // A clean shutdown sends DISCONNECT: no will. (A new stream: collect ended the first one.)
            let laterWills = try await watcher.subscribe("devices/+/status")
            let polite = try await connected(broker, id: "polite") { c in
                c.will = .init(MQTTMessage(topic: "devices/polite/status", string: "offline"))
            }
            await polite.shutdown()
            // MQTT 5 reason 4, "disconnect with will message": a clean goodbye that still publishes the will.
            let leaving = try await connected(broker, id: "leaving") { c in
                c.will = .init(MQTTMessage(topic: "devices/leaving/status", string: "gone on purpose"))
            }
            await leaving.shutdown(disconnectReason: .disconnectWithWillMessage)
            // The polite client left before the leaving one connected, so its will (if it had one) would come first.
            let more = try await collect(laterWills, until: { $0.topic == "devices/leaving/status" })
            #expect(!more.contains { $0.topic == "devices/polite/status" })
            #expect(more.map(\.topic) == ["devices/leaving/status"])
            await dying.shutdown()
            await watcher.shutdown()
        }
    }

    @Test("MQTT 5 properties round-trip intact, every user property included")
    func properties() async throws {
        try await withBroker { broker in
            let sub = try await connected(broker)
            let pub = try await connected(broker)
            let stream = try await sub.subscribe("props/x", qos: .exactlyOnce)
            let props = MessageProperties(
                payloadFormat: .utf8, messageExpiryInterval: 3600, contentType: "application/json",
                responseTopic: "props/reply", correlationData: [0, 1, 2, 0xFF],
                userProperties: (0..<10).map { UserProperty("k\($0 % 3)", "v\($0) ü") })
            try await pub.publish(MQTTMessage(topic: "props/x", string: "{}", qos: .exactlyOnce, properties: props))
            let got = try #require(try await collect(stream, count: 1).first)
            #expect(got.properties.payloadFormat == .utf8)
            #expect(got.properties.contentType == "application/json")
            #expect(got.properties.responseTopic == "props/reply")
            #expect(got.properties.correlationData == [0, 1, 2, 0xFF])
            #expect(got.properties.userProperties == props.userProperties)
            #expect(got.properties.userProperties.count == 10)
            #expect((got.properties.messageExpiryInterval ?? 0) > 3590)
            #expect(got.properties.subscriptionIdentifiers.count == 1)
            await pub.shutdown()
            await sub.shutdown()
        }
    }

    @Test("Request/response: concurrent requests each get their own reply")
    func requestResponse() async throws {
        try await withBroker { broker in
            let service = try await connected(broker)
            let server = Task {
                try await service.serveRequests(on: "svc/echo") { request in
                    Array("reply to \(request.string ?? "")".utf8)
                }
            }
            // Wait for the service's subscription.
            let caller = try await connected(broker)
            #expect(await eventually {
                let r = try? await caller.publish(MQTTMessage(topic: "svc/echo", string: "probe"))
                return r?.reasonCode == .success
            })
            try await withThrowingTaskGroup(of: (Int, String?).self) { group in
                for i in 1...20 {
                    group.addTask {
                        // The service answers one request after another, so the last reply waits for the 19 before
                        // it: 0.5 s for all 20 on a quiet machine, 34 s in CI's loaded normal stage, and more than the
                        // unscaled 60 s under ThreadSanitizer there. Scaled like every other wait.
                        let reply = try await caller.request(MQTTMessage(topic: "svc/echo", string: "message #\(i)"), timeout: .seconds(60) * testTimeScale)
                        return (i, reply.string)
                    }
                }
                var seen = 0
                for try await (i, text) in group {
                    #expect(text == "reply to message #\(i)")
                    seen += 1
                }
                #expect(seen == 20)
            }
            // No responder: a clear timeout.
            await #expect(throws: MQTTError.self) {
                _ = try await caller.request(MQTTMessage(topic: "svc/nobody", string: "?"), timeout: .milliseconds(300))
            }
            server.cancel()
            await caller.shutdown()
            await service.shutdown()
        }
    }

    @Test("Overlapping wildcard subscriptions: each stream gets exactly the messages its filters match", arguments: [MQTTProtocolVersion.v5])
    func overlappingRouting(version: MQTTProtocolVersion) async throws {
        try await withBroker { broker in
            let sub = try await connected(broker, version: version)
            let pub = try await connected(broker, version: version)
            let all = try await sub.subscribe("home/#")
            let temps = try await sub.subscribe("home/+/temperature")
            let kitchen = try await sub.subscribe("home/kitchen/+")
            let sys = try await sub.subscribe("#")
            let topics = ["home/kitchen/temperature", "home/kitchen/humidity", "home/hall/temperature", "home", "garden/temperature", "other/x"]
            for t in topics { try await pub.publish(MQTTMessage(topic: t, string: t)) }
            let a = try await collect(all, count: 4, timeout: .seconds(3))
            let b = try await collect(temps, count: 2, timeout: .seconds(3))
            let c = try await collect(kitchen, count: 2, timeout: .seconds(3))
            let d = try await collect(sys, count: 6, timeout: .seconds(3))
            #expect(Set(a.map(\.topic)) == ["home/kitchen/temperature", "home/kitchen/humidity", "home/hall/temperature", "home"])
            #expect(a.count == 4)
            #expect(Set(b.map(\.topic)) == ["home/kitchen/temperature", "home/hall/temperature"])
            #expect(b.count == 2)
            #expect(Set(c.map(\.topic)) == ["home/kitchen/temperature", "home/kitchen/humidity"])
            #expect(d.count == 6)
            await pub.shutdown()
            await sub.shutdown()
        }
    }

    @Test("$-topics are not matched by '#' or '+' but by an explicit filter")
    func dollarTopics() async throws {
        try await withBroker { broker in
            let sub = try await connected(broker)
            let hash = try await sub.subscribe("#")
            let sys = try await sub.subscribe("$SYS/broker/version")
            let s = try await collect(sys, count: 1)
            #expect(s.first?.string?.contains("mosquitto") == true)
            let h = try await collect(hash, count: 1, timeout: .milliseconds(800))
            #expect(!h.contains { $0.topic.hasPrefix("$") })
            await sub.shutdown()
        }
    }

    @Test("An invalid topic or filter is refused before anything is sent")
    func invalidTopicRefused() async throws {
        try await withBroker { broker in
            let watcher = try await connected(broker)
            let everything = try await watcher.subscribe("#")
            let pub = try await connected(broker)
            for bad in ["a/+/b", "a/#", "", "nul\u{0}byte", "ctl\u{1}x", String(repeating: "x", count: 65536)] {
                await #expect(throws: MQTTError.self) { try await pub.publish(MQTTMessage(topic: bad, string: "never")) }
                do {
                    try await pub.publish(MQTTMessage(topic: bad, string: "never"))
                } catch let e as MQTTError {
                    #expect(e.code == .invalidTopic)
                    #expect(!e.message.isEmpty)
                }
            }
            for bad in ["a/#/b", "a+", "#a", "$share/g", "$share//x", "$share/g+/x", ""] {
                do {
                    _ = try await pub.subscribe(bad)
                    Issue.record("filter \(bad) was accepted")
                } catch let e as MQTTError {
                    #expect(e.code == .invalidFilter)
                }
            }
            try await pub.publish(MQTTMessage(topic: "ok/after", string: "fine"))
            let got = try await collect(everything, count: 1)
            #expect(got.map(\.topic) == ["ok/after"], "nothing of the invalid publishes may reach the broker")
            await pub.shutdown()
            await watcher.shutdown()
        }
    }

    @Test("Ending an iteration or cancelling its task unsubscribes")
    func cancellationUnsubscribes() async throws {
        try await withBroker { broker in
            let sub = try await connected(broker)
            let pub = try await connected(broker)
            // MQTT 5 PUBACK says 0x10 "no matching subscribers" when nobody is subscribed.
            #expect(try await pub.publish(MQTTMessage(topic: "cancel/x", string: "1")).reasonCode == .noMatchingSubscribers)
            let stream = try await sub.subscribe("cancel/x")
            #expect(try await pub.publish(MQTTMessage(topic: "cancel/x", string: "2")).reasonCode == .success)
            let received = Locked(0)
            let reader = Task {
                for try await _ in stream { received.withLock { $0 += 1 } }
                return received.value
            }
            #expect(await eventually { received.value == 1 })
            reader.cancel()
            #expect(try await reader.value == 1)
            #expect(await eventually {
                (try? await pub.publish(MQTTMessage(topic: "cancel/x", string: "3")).reasonCode) == .noMatchingSubscribers
            }, "the broker must have dropped the subscription")
            // Leaving a for-loop with break ends it too.
            do {
                let s2 = try await sub.subscribe("cancel/y")
                try await pub.publish(MQTTMessage(topic: "cancel/y", string: "a"))
                for try await _ in s2 { break }
            }
            #expect(await eventually {
                (try? await pub.publish(MQTTMessage(topic: "cancel/y", string: "b")).reasonCode) == .noMatchingSubscribers
            })
            await pub.shutdown()
            await sub.shutdown()
        }
    }

    @Test("Shutdown joins the network thread and ends streams and waiters")
    func shutdownJoins() async throws {
        try await withBroker { broker in
            let clients = try await withThrowingTaskGroup(of: MQTTClient.self) { g in
                for _ in 0..<5 { g.addTask { try await connected(broker) } }
                return try await g.reduce(into: []) { $0.append($1) }
            }
            let tids = clients.map { c in c.core.state.withLock { $0.networkThreadID } }
            for tid in tids {
                #expect(tid > 0)
                let comm = try String(contentsOfFile: "/proc/self/task/\(tid)/comm", encoding: .utf8)
                #expect(comm.hasPrefix("mosquitto-net"))
            }
            let stream = try await clients[0].subscribe("x/#")
            let reader = Task { () -> Int in
                var n = 0
                for try await _ in stream { n += 1 }
                return n
            }
            for c in clients { await c.shutdown() }
            #expect(clients.allSatisfy { c in c.core.state.withLock { $0.ended && !$0.lifecycle.isNetworkThreadRunning } })
            #expect(await eventually(timeout: .seconds(2)) {
                tids.allSatisfy { !FileManager.default.fileExists(atPath: "/proc/self/task/\($0)") }
            }, "every network thread has exited after shutdown")
            #expect(try await reader.value == 0, "the stream ends when the client shuts down")
            #expect(clients[0].state == .shutDown)
            await #expect(throws: MQTTError.self) { try await clients[1].publish(MQTTMessage(topic: "a", string: "b")) }
        }
    }

    @Test("The outgoing queue is bounded: publish suspends while it is full and goes on when the broker returns")
    func boundedQueue() async throws {
        try await withBroker(.init(persistence: true)) { broker in
            let pub = try await connected(broker, id: "bounded") { c in
                c.maximumQueuedMessages = 10
                c.session = .persistent(expiry: 600)
            }
            await broker.stop()
            #expect(await eventually { pub.state == .disconnected })
            let done = Locked(0)
            let publisher = Task {
                for i in 0..<15 {
                    let r = try await pub.publish(MQTTMessage(topic: "q/x", payload: payload(i), qos: .atLeastOnce), completion: .enqueued)
                    if i < 10 { #expect(r.queuedWhileOffline) }
                    done.withLock { $0 += 1 }
                }
            }
            #expect(await eventually { done.value == 10 })
            try await Task.sleep(for: .milliseconds(300))
            #expect(done.value == 10, "the 11th publish must wait for room in the queue")
            // QoS 0 while offline is refused, not silently dropped.
            do {
                try await pub.publish(MQTTMessage(topic: "q/x", string: "lost", qos: .atMostOnce), completion: .enqueued)
                Issue.record("QoS 0 publish while offline must throw")
            } catch let e as MQTTError {
                #expect(e.code == .notConnected)
            }
            try await broker.start()
            try await publisher.value
            #expect(done.value == 15)
            await pub.waitUntilAllPublished()
            await pub.shutdown()
        }
    }
}

extension MQTTClient {
    /// Closes the TCP connection under libmosquitto's feet, as a network failure would.
    func _severConnectionForTesting() {
        core.severConnectionForTesting()
    }
}

@Suite("Client: per-message completion callbacks", .timeLimit(.minutes(2 * testTimeScale)))
struct CompletionCallbackTests {
    @Test("onComplete reports every acknowledgement, every broker refusal, and messages a shutdown abandoned")
    func callbacks() async throws {
        var bc = MosquittoBroker.Configuration(users: ["alice": "pw"])
        bc.aclFileContents = "user alice\ntopic readwrite ok/#\n"
        try await withBroker(bc) { broker in
            let pub = try await connected(broker) { $0.credentials = .init(username: "alice", password: "pw") }
            let results = Locked<[Int: Result<MQTTReasonCode, MQTTError>]>([:])
            for i in 0..<500 {
                let topic = i % 100 == 99 ? "denied/\(i)" : "ok/\(i)"
                try await pub.publish(MQTTMessage(topic: topic, string: "\(i)", qos: .atLeastOnce)) { r in
                    results.withLock { $0[i] = r }
                }
            }
            #expect(await eventually { results.value.count == 500 })
            let r = results.value
            let refused = r.filter { if case .failure = $0.value { return true }; return false }.keys.sorted()
            #expect(refused == [99, 199, 299, 399, 499], "exactly the ACL-denied messages fail")
            if case .failure(let e) = r[99] { #expect(e.code == .notAuthorized && e.reasonCode == .notAuthorized) }
            // Queued while the broker is away, then abandoned by shutdown: each callback says so. The port stays
            // taken meanwhile: a freed port can go to another test's broker, which would acknowledge these.
            await broker.stop()
            let holder = try PortHolder(port: broker.port)
            defer { holder.release() }
            #expect(await eventually { pub.state == .disconnected })
            let abandoned = Locked<[MQTTError]>([])
            for i in 0..<10 {
                try await pub.publish(MQTTMessage(topic: "ok/late", string: "\(i)", qos: .atLeastOnce)) { r in
                    if case .failure(let e) = r { abandoned.withLock { $0.append(e) } }
                }
            }
            await pub.shutdown()
            #expect(abandoned.value.count == 10)
            #expect(abandoned.value.allSatisfy { $0.code == .shutDown })
        }
    }

    @Test("A second shutdown() returns only after every abandoned message's callback ran, however slow they are")
    func joinWaitsForCallbacks() async throws {
        try await withBroker { broker in
            let pub = try await connected(broker)
            await broker.stop()
            let holder = try PortHolder(port: broker.port)
            defer { holder.release() }
            #expect(await eventually { pub.state == .disconnected })
            let called = Locked(0)
            for i in 0..<10 {
                try await pub.publish(MQTTMessage(topic: "late", string: "\(i)", qos: .atLeastOnce)) { _ in
                    usleep(50_000)  // on the network thread, inside the teardown
                    called.withLock { $0 += 1 }
                }
            }
            let first = Task { await pub.shutdown() }
            // The teardown is under way (it runs the callbacks, 0.5 s in all) when the second caller joins it.
            #expect(await eventually { called.value > 0 })
            await pub.shutdown()
            #expect(called.value == 10, "shutdown() returned before the callbacks it abandoned had run")
            await first.value
        }
    }
}
