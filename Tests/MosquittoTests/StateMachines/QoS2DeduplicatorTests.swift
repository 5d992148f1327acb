@testable import Mosquitto
import Testing

/// `QoS2Deduplicator` against the broker behaviour it works around: mosquitto 2.0.11 resends a finished QoS 2
/// message with its old packet identifier after each restart (see "QoS 2 duplicates after a broker restart" in
/// the LibmosquittoWorkarounds article).
@Suite("QoS 2 deduplication")
struct QoS2DeduplicatorTests {
    static func delivery(_ id: UInt16, _ text: String, topic: String = "r/q2") -> MQTTMessage {
        var m = MQTTMessage(topic: topic, string: text, qos: .exactlyOnce)
        m.messageID = id
        return m
    }

    @Test("a message resent after every one of several restarts is delivered once")
    func resentAtEveryRestart() {
        var d = QoS2Deduplicator()
        let stream = (1...300).map { Self.delivery(UInt16($0), "m-\($0)") }
        var delivered: [String] = []
        func deliver(_ m: MQTTMessage) { if !d.isDuplicate(m) { delivered.append(m.string!) } }
        for m in stream[0..<100] { deliver(m) }
        // First restart: the broker resends 90...100, whose exchanges had finished.
        for m in stream[89..<100] { deliver(m) }
        for m in stream[100..<200] { deliver(m) }
        // Second restart: the same old messages again, and 190...200 with them.
        for m in stream[89..<100] + stream[189..<200] { deliver(m) }
        for m in stream[200..<300] { deliver(m) }
        #expect(delivered == stream.map { $0.string! })
        #expect(d.suppressed == 11 + 22)
    }

    @Test("the same packet identifier with other content, or outside the window, or in a fresh session, is a new message")
    func newMessages() {
        var d = QoS2Deduplicator()
        do { let dup = d.isDuplicate(Self.delivery(7, "a")); #expect(!dup) }
        do { let dup = d.isDuplicate(Self.delivery(7, "b")); #expect(!dup) }
        do { let dup = d.isDuplicate(Self.delivery(7, "b", topic: "other")); #expect(!dup) }
        do { let dup = d.isDuplicate(Self.delivery(7, "b", topic: "other")); #expect(dup) }
        // Identical content long after: the broker has gone round its 65,535 identifiers.
        for i in 0..<QoS2Deduplicator.window { _ = d.isDuplicate(Self.delivery(UInt16(1000 + i), "x\(i)")) }
        do { let dup = d.isDuplicate(Self.delivery(7, "b", topic: "other")); #expect(!dup) }
        // A fresh session restarts the broker's identifiers.
        d.reset()
        do { let dup = d.isDuplicate(Self.delivery(7, "b", topic: "other")); #expect(!dup) }
        #expect(d.suppressed == 1)
    }
}
