import Foundation
import Mosquitto
import MosquittoBroker
import MosquittoTestSupport
import Testing

@Suite("Client: endpoints, identities, buffers and cancellation", .timeLimit(.minutes(2 * testTimeScale)))
struct ClientFeatureTests {
    @Test("Unix socket, mqtt:// URL, bind address and a broker-assigned client id all connect")
    func endpoints() async throws {
        let socketPath = FileManager.default.temporaryDirectory.appendingPathComponent("mq-\(UUID().uuidString.prefix(8)).sock").path
        var bc = MosquittoBroker.Configuration()
        bc.extraConfiguration = ["listener 0 \(socketPath)"]
        defer { try? FileManager.default.removeItem(atPath: socketPath) }
        try await withBroker(bc) { broker in
            let watcher = try await connected(broker)
            let all = try await watcher.subscribe("ep/#")

            var unix = config(broker)
            unix.endpoint = .unixSocket(path: socketPath)
            let u = try MQTTClient(configuration: unix)
            try await u.connect()
            try await u.publish(MQTTMessage(topic: "ep/unix", string: "via unix socket"))

            var byURL = try MQTTConfiguration(url: "mqtt://\(broker.host):\(broker.port)/ignored/topic")
            byURL.bindAddress = "127.0.0.1"
            let url = try MQTTClient(configuration: byURL)
            let ack = try await url.connect()
            #expect(byURL.clientID == nil)
            #expect(ack.assignedClientID?.isEmpty == false, "MQTT 5 brokers assign an id when none is sent")
            try await url.publish(MQTTMessage(topic: "ep/url", string: "via url"))

            let got = try await collect(all, count: 2)
            #expect(Set(got.map(\.topic)) == ["ep/unix", "ep/url"])
            for c in [u, url, watcher] { await c.shutdown() }
        }
    }

    @Test("Stream buffers: dropNewest keeps the first, dropOldest the latest, both count drops; backpressure loses nothing")
    func overflowPolicies() async throws {
        try await withBroker { broker in
            let sub = try await connected(broker)
            let pub = try await connected(broker)
            let newest = try await sub.subscribe([Subscription("buf/x", qos: .atLeastOnce)], buffer: .init(capacity: 10, overflow: .dropNewest))
            let oldest = try await sub.subscribe([Subscription("buf/x", qos: .atLeastOnce)], buffer: .init(capacity: 10, overflow: .dropOldest))
            for i in 0..<50 { try await pub.publish(MQTTMessage(topic: "buf/x", string: "\(i)")) }
            #expect(await eventually { newest.droppedCount == 40 && oldest.droppedCount == 40 })
            let n = try await collect(newest, count: 10, timeout: .seconds(2))
            let o = try await collect(oldest, count: 10, timeout: .seconds(2))
            #expect(n.map(\.string) == (0..<10).map { "\($0)" })
            #expect(o.map(\.string) == (40..<50).map { "\($0)" })
            // Backpressure: the network thread waits for room instead of dropping. Both waits are generous: with
            // ThreadSanitizer and a loaded machine, 34 of the 40 had arrived after 40 s, none dropped.
            let patient = try await sub.subscribe([Subscription("buf/y", qos: .atLeastOnce)],
                                                  buffer: .init(capacity: 5, overflow: .backpressure(maxWait: .seconds(20) * testTimeScale)))
            let publisher = Task { for i in 0..<40 { try await pub.publish(MQTTMessage(topic: "buf/y", string: "\(i)")) } }
            try await Task.sleep(for: .milliseconds(300))
            let p = try await collect(patient, count: 40, timeout: .seconds(60))
            try await publisher.value
            #expect(p.map(\.string) == (0..<40).map { "\($0)" })
            #expect(patient.droppedCount == 0)
            await pub.shutdown()
            await sub.shutdown()
        }
    }

    @Test("Cancelling a publish that waits for its acknowledgement stops the wait; the message is still delivered")
    func cancelWaitingPublish() async throws {
        try await withBroker(.init(persistence: true)) { broker in
            let sub = try await connected(broker, id: "cancel-sub") { $0.session = .persistent(expiry: 600) }
            let stream = try await sub.subscribe("cw/x", qos: .atLeastOnce)
            let pub = try await connected(broker, id: "cancel-pub") { $0.session = .persistent(expiry: 600) }
            await broker.stop()
            #expect(await eventually { pub.state == .disconnected })
            let waiting = Task { try await pub.publish(MQTTMessage(topic: "cw/x", string: "kept", qos: .atLeastOnce)) }
            try await Task.sleep(for: .milliseconds(200))
            waiting.cancel()
            await #expect(throws: CancellationError.self) { _ = try await waiting.value }
            try await broker.start()
            // Cancelling a subscribe call that is still waiting is safe too.
            let sub2 = Task { try await sub.subscribe("cw/other") }
            sub2.cancel()
            _ = try? await sub2.value
            try await pub.publish(MQTTMessage(topic: "cw/x", string: "after"))
            // (collect ends the stream when it returns, so read both in one go.)
            let got = try await collect(stream, count: 2)
            #expect(got.map(\.string) == ["kept", "after"], "libmosquitto cannot take a queued message back: it is delivered")
            await pub.shutdown()
            await sub.shutdown()
        }
    }

    @Test("MQTT 5 subscription options: no-local, retain-as-published and retain handling")
    func subscriptionOptions() async throws {
        try await withBroker { broker in
            let me = try await connected(broker)
            let other = try await connected(broker)
            try await other.publish(MQTTMessage(topic: "opt/retained", string: "old", retain: true))
            let noLocal = try await me.subscribe([Subscription("opt/chat", noLocal: true)])
            let asPublished = try await me.subscribe([Subscription("opt/flag", retainAsPublished: true)])
            // A different filter: streams that share a filter share one broker subscription and its options.
            let plain = try await me.subscribe([Subscription("opt/+")])
            let noRetained = try await me.subscribe([Subscription("opt/retained", retainHandling: .never)])
            // "mine" is acknowledged before "theirs" is sent, so the broker would deliver it first if no-local failed:
            // each check reads up to a message that is sure to come after the unwanted one, with no fixed wait.
            try await me.publish(MQTTMessage(topic: "opt/chat", string: "mine", qos: .atLeastOnce))
            try await other.publish(MQTTMessage(topic: "opt/chat", string: "theirs", qos: .atLeastOnce))
            try await other.publish(MQTTMessage(topic: "opt/flag", string: "f", qos: .atLeastOnce, retain: true))
            try await other.publish(MQTTMessage(topic: "opt/retained", string: "new", qos: .atLeastOnce))
            #expect(try await collect(noLocal, until: { $0.string == "theirs" }).map(\.string) == ["theirs"])
            #expect(try await collect(asPublished, count: 1).map(\.retain) == [true])
            let plainFlags = try await collect(plain, until: { $0.topic == "opt/flag" }).filter { $0.topic == "opt/flag" }
            #expect(plainFlags.map(\.retain) == [false])
            #expect(try await collect(noRetained, until: { $0.string == "new" }).map(\.string) == ["new"])
            // The same options on MQTT 3.1.1 are refused before anything is sent.
            let old = try await connected(broker, version: .v3_1_1)
            await #expect(throws: MQTTError.self) { _ = try await old.subscribe([Subscription("opt/chat", noLocal: true)]) }
            for c in [me, other, old] { await c.shutdown() }
        }
    }

    @Test("Connection events: connected, disconnected with a reason, reconnecting in N s, connected again")
    func events() async throws {
        try await withBroker { broker in
            let client = try await connected(broker)
            let events = client.makeEventStream()
            await broker.kill()
            try await Task.sleep(for: .milliseconds(300))
            try await broker.start()
            var seen: [String] = []
            for await e in events {
                switch e {
                case .disconnected(let error): seen.append("disconnected:\(error?.code == .connectionLost)")
                case .reconnecting(let after, let attempt): seen.append("reconnecting:\(attempt):\(after < .seconds(2))")
                case .connected: seen.append("connected")
                default: break
                }
                if seen.last == "connected" { break }
            }
            #expect(seen.first == "disconnected:true")
            #expect(seen.contains("reconnecting:1:true"))
            #expect(seen.last == "connected")
            await client.shutdown()
        }
    }

    @Test("MQTT 3.1 connects and delivers; user properties on SUBSCRIBE/UNSUBSCRIBE need MQTT 5 and say so")
    func protocolLevels() async throws {
        try await withBroker { broker in
            let old = try await connected(broker, id: "v31-client", version: .v3_1)
            let stream = try await old.subscribe("lvl/#", qos: .atLeastOnce)
            try await old.publish(MQTTMessage(topic: "lvl/a", string: "3.1", qos: .atLeastOnce))
            let got = try await collect(stream, count: 1)
            #expect(got.map(\.topic) == ["lvl/a"])
            do {
                _ = try await old.subscribe([Subscription("lvl/b")], userProperties: [UserProperty("k", "v")])
                Issue.record("a SUBSCRIBE user property on MQTT 3.1 must be refused")
            } catch let e as MQTTError {
                #expect(e.code == .requiresMQTT5)
                #expect(e.message.contains("MQTT 5"))
            }
            await #expect(throws: MQTTError.self) { try await old.unsubscribe(["lvl/#"], userProperties: [UserProperty("k", "v")]) }
            await old.shutdown(properties: DisconnectProperties(reasonString: "ignored on 3.1"))

            // MQTT 5: the same calls go through.
            let new = try await connected(broker, version: .v5)
            let s5 = try await new.subscribe([Subscription("lvl5/#")], userProperties: [UserProperty("k", "v")])
            try await new.publish(MQTTMessage(topic: "lvl5/x", string: "5", qos: .atLeastOnce))
            #expect(try await collect(s5, count: 1).count == 1)
            try await new.unsubscribe(["lvl5/#"], userProperties: [UserProperty("k", "v")])
            await new.shutdown(properties: DisconnectProperties(reasonString: "done", userProperties: [UserProperty("a", "b")]))
            #expect(new.state == .shutDown)
        }
    }
}
