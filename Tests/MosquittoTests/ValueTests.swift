import Mosquitto
import MosquittoBroker
import MosquittoTestSupport
import Testing

/// The value types a user builds and compares, and the receive path's shortcuts (shared property storage,
/// the inline subscription identifier, the reused topic string): none of them may change what a user sees.
@Suite("Message values")
struct ValueTests {
    @Test("MessageProperties is a value: a changed copy leaves the original alone, equality and hashing follow the fields")
    func propertiesAreValues() {
        var a = MessageProperties(contentType: "text/plain", userProperties: [UserProperty("k", "v")])
        let original = a
        var b = a
        b.contentType = "application/json"
        b.userProperties.append(UserProperty("k2", "v2"))
        #expect(a.contentType == "text/plain" && a.userProperties.count == 1)
        #expect(b.contentType == "application/json" && b.userProperties.count == 2)
        #expect(a == original && a != b)

        // Built field by field or all at once: the same value, the same hash.
        var c = MessageProperties()
        #expect(c.isEmpty)
        c.userProperties = [UserProperty("k", "v")]
        c.contentType = "text/plain"
        #expect(c == a && c.hashValue == a.hashValue)
        #expect(Set([a, c, b]).count == 2)

        // Clearing every field makes it empty again, and equal to a fresh one.
        a.contentType = nil
        a.userProperties = []
        #expect(a.isEmpty && a == MessageProperties() && a.hashValue == MessageProperties().hashValue)
        #expect(original.contentType == "text/plain")
    }

    @Test("Subscription identifiers: none, one and several read back as set, and compare by value")
    func subscriptionIdentifiers() {
        var p = MessageProperties()
        #expect(p.subscriptionIdentifiers.isEmpty && p.isEmpty)
        p.subscriptionIdentifiers = [7]
        #expect(p.subscriptionIdentifiers == [7] && !p.isEmpty)
        var q = p
        q.subscriptionIdentifiers = [7, 9, 12]
        #expect(p.subscriptionIdentifiers == [7])
        #expect(q.subscriptionIdentifiers == [7, 9, 12])
        #expect(p != q)
        q.subscriptionIdentifiers = [7]
        #expect(p == q && p.hashValue == q.hashValue)
        q.subscriptionIdentifiers = []
        #expect(q.isEmpty && q == MessageProperties())
        let built = MessageProperties(subscriptionIdentifiers: [3, 4])
        #expect(built.subscriptionIdentifiers == [3, 4])
    }

    @Test("A byte array payload is kept as given; any byte sequence is accepted")
    func payloads() {
        let bytes: [UInt8] = [0, 0xFF, 10, 13]
        #expect(MQTTMessage(topic: "t", payload: bytes).payload == bytes)
        #expect(MQTTMessage(topic: "t", payload: bytes[1...]).payload == [0xFF, 10, 13])
        #expect(MQTTMessage(topic: "t", payload: "é".utf8).payload == [0xC3, 0xA9])
        #expect(MQTTMessage(topic: "t", payload: []).payload.isEmpty)
    }

    @Test("Received topics are exact when they repeat, share prefixes, differ in length, or are multi-byte", arguments: [MQTTProtocolVersion.v5, .v3_1_1])
    func receivedTopics(version: MQTTProtocolVersion) async throws {
        try await withBroker { broker in
            let sub = try await connected(broker, version: version)
            let pub = try await connected(broker, version: version)
            let stream = try await sub.subscribe("rt/#", qos: .atLeastOnce)
            let topics = ["rt/a", "rt/a", "rt/ab", "rt/a", "rt/b", "rt/b/c", "rt/b", "rt/ü", "rt/ü", "rt/u", "rt/" + String(repeating: "x", count: 300), "rt/a"]
            for (i, t) in topics.enumerated() {
                try await pub.publish(MQTTMessage(topic: t, string: "\(i)", qos: .atLeastOnce))
            }
            let got = try await collect(stream, count: topics.count)
            #expect(got.map(\.topic) == topics)
            #expect(got.map { $0.string ?? "" } == topics.indices.map { "\($0)" })
            await pub.shutdown()
            await sub.shutdown()
        }
    }
}
