import Foundation
import Logging
import MessagePack
import MessagePackCodable
import Mosquitto
import MosquittoBroker
import MosquittoCodable
import MosquittoTestSupport
import Testing

/// A typical telemetry reading: ten numeric and string fields.
struct Reading: Codable, Equatable, Sendable {
    var device: String
    var sequence: Int
    var celsius: Double
    var humidity: Double
    var pressure: Double
    var battery: Int
    var rssi: Int
    var firmware: String
    var status: String
    var timestamp: Int

    static func sample(_ i: Int, device: String = "kitchen") -> Reading {
        Reading(device: device, sequence: i, celsius: 21.5 + Double(i) / 10, humidity: 0.45, pressure: 1013.25,
                battery: 97 - i, rssi: -61, firmware: "1.4.2", status: "ok", timestamp: 1_700_000_000 + i)
    }
}

private func client(_ broker: MosquittoBroker, version: MQTTProtocolVersion = .v5) async throws -> MQTTClient {
    var c = MQTTConfiguration(host: broker.host, port: broker.port, clientID: "codable-\(UUID().uuidString.prefix(8))",
                              protocolVersion: version)
    c.logger = quietLogger()
    let client = try MQTTClient(configuration: c)
    try await client.connect()
    return client
}

/// Reads `count` elements from a typed stream, or fails after `timeout`.
private func take<T>(_ count: Int, from stream: TypedMessageStream<T>, timeout: Duration = .seconds(15)) async throws -> [TypedMessage<T>] {
    try await withThrowingTaskGroup(of: [TypedMessage<T>]?.self) { group in
        group.addTask {
            var got: [TypedMessage<T>] = []
            for try await element in stream {
                got.append(element)
                if got.count == count { break }
            }
            return got
        }
        group.addTask {
            try await Task.sleep(for: timeout * testTimeScale)
            return nil
        }
        let first = try await group.next()!
        group.cancelAll()
        stream.cancel()
        return first ?? []
    }
}

@Suite("Typed messages over a real broker", .timeLimit(.minutes(5 * testTimeScale)))
struct TypedStreamTests {
    @Test("A typed MessagePack stream over a wildcard: values from another client arrive decoded with content type and format indicator; a malformed payload in the middle is reported and skipped, and the stream goes on")
    func wildcardStreamSkipsMalformed() async throws {
        try await withBroker { broker in
            let sub = try await client(broker)
            let pub = try await client(broker)
            let stream = try await sub.subscribe("sensors/+/reading", as: Reading.self, codec: .messagePack)
            for i in 0 ..< 3 { try await pub.publish(Reading.sample(i, device: "d\(i)"), to: "sensors/d\(i)/reading", codec: .messagePack) }
            try await pub.publish(to: "sensors/bad/reading", payload: [0x92, 0x01, 0xc1])         // not MessagePack
            try await pub.publish(MQTTMessage(topic: "sensors/odd/reading", payload: MessagePackValue.map([.init(key: "device", value: 5)]).encoded()))
            for i in 3 ..< 5 { try await pub.publish(Reading.sample(i, device: "d\(i)"), to: "sensors/d\(i)/reading", codec: .messagePack) }
            try await pub.publish(to: "sensors/d9/other", string: "not subscribed")

            let got = try await take(7, from: stream)
            #expect(got.count == 7)
            guard got.count == 7 else { return }
            let values = got.compactMap(\.value)
            #expect(values == (0 ..< 5).map { Reading.sample($0, device: "d\($0)") })
            #expect(got.map(\.topic) == ["sensors/d0/reading", "sensors/d1/reading", "sensors/d2/reading", "sensors/bad/reading",
                                         "sensors/odd/reading", "sensors/d3/reading", "sensors/d4/reading"])
            #expect(got[3].value == nil && got[4].value == nil)
            #expect(got[3].error?.reason.contains("not MessagePack") == true, "\(String(describing: got[3].error))")
            #expect(got[4].error?.reason.contains("device") == true, "\(String(describing: got[4].error))")
            #expect(got[3].message.payload == [0x92, 0x01, 0xc1])
            #expect(throws: MQTTPayloadError.self) { try got[4].get() }
            #expect(got[0].message.properties.contentType == "application/msgpack")
            #expect(got[0].message.properties.payloadFormat == .bytes)
            // The payload is the canonical MessagePack encoding of the value.
            #expect(got[0].message.payload == (try MessagePackEncoder().encode(Reading.sample(0, device: "d0"))))
            await pub.shutdown()
            await sub.shutdown()
        }
    }

    @Test(".auto decodes each message with the codec its content type names, and falls back to the default without one")
    func autoChoosesPerMessage() async throws {
        try await withBroker { broker in
            let sub = try await client(broker)
            let pub = try await client(broker)
            let stream = try await sub.subscribe("mixed/#", as: Reading.self, codec: .auto(default: .messagePack))
            try await pub.publish(Reading.sample(1), to: "mixed/json", codec: .json)
            try await pub.publish(Reading.sample(2), to: "mixed/msgpack", codec: .messagePack)
            // No content type: the default (MessagePack) applies.
            try await pub.publish(to: "mixed/bare", payload: try MessagePackEncoder().encode(Reading.sample(3)))
            // A content type with parameters and another spelling.
            var props = MessageProperties(contentType: "application/vnd.api+json; charset=utf-8")
            try await pub.publish(to: "mixed/param", payload: try JSONEncoder().encode(Reading.sample(4)), properties: props)
            props.contentType = "application/x-msgpack"
            try await pub.publish(to: "mixed/x", payload: try MessagePackEncoder().encode(Reading.sample(5)), properties: props)
            // JSON without a content type: the default (MessagePack) is tried and the failure reported.
            try await pub.publish(to: "mixed/untyped-json", payload: try JSONEncoder().encode(Reading.sample(6)))

            let got = try await take(6, from: stream)
            #expect(got.count == 6)
            guard got.count == 6 else { return }
            #expect(got[0].message.properties.contentType == "application/json")
            #expect(got[0].message.properties.payloadFormat == .utf8)
            #expect(got[0].message.string?.hasPrefix("{") == true)
            #expect(got[1].message.properties.contentType == "application/msgpack")
            #expect(got.prefix(5).map(\.value) == (1 ... 5).map { Reading.sample($0) })
            #expect(got[5].value == nil)
            #expect(got[5].error?.codec == .messagePack)
            await pub.shutdown()
            await sub.shutdown()
        }
    }

    @Test("On MQTT 3.1.1 no properties are sent; typed publishing and receiving still work with an explicit codec")
    func mqtt311() async throws {
        try await withBroker { broker in
            let sub = try await client(broker, version: .v3_1_1)
            let pub = try await client(broker, version: .v3_1_1)
            let stream = try await sub.subscribe("v3/+", as: Reading.self, codec: .messagePack)
            try await pub.publish(Reading.sample(7), to: "v3/a", codec: .messagePack)
            let got = try await take(1, from: stream)
            #expect(got.first?.value == Reading.sample(7))
            #expect(got.first?.message.properties.contentType == nil)
            await pub.shutdown()
            await sub.shutdown()
        }
    }
}
