import Foundation
import Mosquitto
import MosquittoBroker
import MosquittoTestSupport
import Testing

/// mqtt-sub against mosquitto_sub: the same messages through both must print the same bytes.
///
/// Both subscribers first create a persistent session (`-c -i … -E`), the messages are published while they are
/// away, then both reconnect at the same time and print the queued messages (`-C`). No sleeps, no races.
@Suite(.serialized, .enabled(if: hasMosquittoClients, "mosquitto_sub/mosquitto_pub are not installed"), .timeLimit(.minutes(5 * testTimeScale)))
struct SubscriberOracleTests {
    static let messages: [MQTTMessage] = {
        var list: [MQTTMessage] = [
            MQTTMessage(topic: "o/text", string: "hello world", qos: .atLeastOnce),
            MQTTMessage(topic: "o/empty", payload: [], qos: .atLeastOnce),
            MQTTMessage(topic: "o/binary", payload: [0, 1, 2, 0xFF, 0xFE, 10, 13, 0x7F, 0x80], qos: .atLeastOnce),
            MQTTMessage(topic: "o/json", string: #"{"a":1,"b":[1,2.5,"x",true,null],"c":{"d":"é\u00e9\n"},"e":1e3,"f":-0.125}"#, qos: .exactlyOnce),
            MQTTMessage(topic: "o/unicode/ünï", string: "héllo ☃ 𝄞", qos: .atLeastOnce),
            MQTTMessage(topic: "o/quote", string: "a \"quoted\" \\ back\tslash", qos: .atLeastOnce),
            MQTTMessage(topic: "o/long", string: String(repeating: "0123456789", count: 50), qos: .atLeastOnce),
            MQTTMessage(topic: "o/lines", string: "line1\nline2\n", qos: .atLeastOnce),
        ]
        var props = MessageProperties()
        props.payloadFormat = .utf8
        props.contentType = "text/plain"
        props.responseTopic = "o/reply"
        props.correlationData = Array("corr-1".utf8)
        props.userProperties = [UserProperty("k1", "v1"), UserProperty("k2", "v 2"), UserProperty("k1", "again")]
        props.messageExpiryInterval = 86400
        list.append(MQTTMessage(topic: "o/props", string: "with properties", qos: .atLeastOnce, properties: props))
        var only = MessageProperties()
        only.contentType = "application/json"
        list.append(MQTTMessage(topic: "o/props2", string: #"[1,2,3]"#, qos: .atLeastOnce, properties: only))
        return list
    }()

    /// Runs both subscribers with `extra` arguments over ``messages`` and returns (ours, theirs).
    func outputs(_ broker: MosquittoBroker, _ extra: [String], version: String = "mqttv5",
                 messages: [MQTTMessage] = SubscriberOracleTests.messages, printed: Int? = nil) async throws -> (RunResult, RunResult) {
        let tag = UUID().uuidString.prefix(6)
        let base = at(broker) + ["-V", version, "-q", "2", "-t", "o/#", "-c"]
        let ours = ["-i", "ours-\(tag)"], theirs = ["-i", "theirs-\(tag)"]
        let a = try await run(tool("mqtt-sub"), base + ours + ["-E"])
        let b = try await run(mosquittoTool("mosquitto_sub")!, base + theirs + ["-E"])
        #expect(a.status == 0, "\(a)")
        #expect(b.status == 0, "\(b)")
        let client = try await libraryClient(broker, version: version == "mqttv5" ? .v5 : .v3_1_1)
        for m in messages { try await client.publish(m) }
        await client.shutdown()
        // -C counts printed messages only (filtered-out ones do not count), so both exit as soon as the last one
        // is printed; -W is only the safety net and a run that needs it fails the status comparison.
        let count = ["-C", String(printed ?? messages.count), "-W", "60"]
        let c1 = try Child(tool("mqtt-sub"), base + ours + count + extra)
        let c2 = try Child(mosquittoTool("mosquitto_sub")!, base + theirs + count + extra)
        let r1 = await c1.wait(timeout: .seconds(90))
        let r2 = await c2.wait(timeout: .seconds(90))
        return (r1, r2)
    }

    /// Output modes; the `-T` mode leaves out two of the ``messages`` topics.
    static let modes: [[String]] = [
        [],
        ["-v"],
        ["-N"],
        ["-v", "-N"],
        ["-F", "%t|%q|%r|%l|%m|%p"],
        ["-F", "%x %X %%  @@ \\t\\\\ %-20t| %20t| %.3t| %-8.2t| %05l %-5l| %5q"],
        ["-F", "%C|%R|%D|%P|%F|%E|%S|%A"],
        ["-F", "%10C|%-12C|%.4C|%03F|%-3F|%5E|%5A|%5S|"],
        // (%x and %X with a width narrower than the payload follow 2.1, not 2.0.11: DropInTests pins them.)
        ["-F", "%10p|%-10p|%010p|"],
        ["-F", "%j"],
        ["-F", "%J"],
        ["-F", "%j", "--pretty"],
        ["-F", "%J", "--pretty"],
        ["-F", "\\e[1m%t\\e[0m \\a\\v\\r\\0 end", "-N"],
        ["-v", "-T", "o/json", "-T", "o/+/ünï"],
    ]

    /// ``messages`` without user properties, for the JSON modes: 2.1 prints them as an array of pairs, 2.0.11 as one
    /// object (DropInTests and PropertyTests pin 2.1's form).
    static let messagesWithoutUserProperties: [MQTTMessage] = messages.map {
        var m = $0
        m.properties.userProperties = []
        return m
    }

    /// mosquitto_sub 2.0.11's `%j`/`%J` with 2.1's `"retain"` (true/false where 2.0.11 prints 1/0).
    static func as21(_ json: String) -> String {
        var s = json
        for (old, new) in [(#""retain":0"#, #""retain":false"#), (#""retain":1"#, #""retain":true"#),
                           ("\"retain\":\t0", "\"retain\":\tfalse"), ("\"retain\":\t1", "\"retain\":\ttrue")] {
            s = s.replacingOccurrences(of: old, with: new)
        }
        return s
    }

    @Test("mqtt-sub prints byte-identical output to mosquitto_sub, every mode", arguments: modes.indices)
    func sameBytes(_ index: Int) async throws {
        let mode = Self.modes[index]
        let json = mode.contains { $0.contains("%j") || $0.contains("%J") }
        try await withBroker { broker in
            let printed = mode.contains("-T") ? Self.messages.count - 2 : Self.messages.count
            let (ours, theirs) = try await outputs(broker, mode, messages: json ? Self.messagesWithoutUserProperties : Self.messages,
                                                   printed: printed)
            #expect(ours.status == 0 && theirs.status == 0, "ours: \(ours)\ntheirs: \(theirs)")
            #expect(normalisedTimestamps(ours.stdout) == Self.as21(normalisedTimestamps(theirs.stdout)),
                    "mode \(mode)\nours:   \(ours.out.debugDescription)\ntheirs: \(theirs.out.debugDescription)")
            #expect(ours.stderr == theirs.stderr, "mode \(mode)")
        }
    }

    @Test("MQTT 3.1.1 and 3.1: -v and %j match mosquitto_sub", arguments: ["mqttv311", "mqttv31"])
    func v311(version: String) async throws {
        try await withBroker { broker in
            for mode in [["-v"], ["-F", "%j"], ["-F", "%t %l %x"]] {
                let (ours, theirs) = try await outputs(broker, mode, version: version)
                #expect(normalisedTimestamps(ours.stdout) == Self.as21(normalisedTimestamps(theirs.stdout)),
                        "mode \(mode)\nours:   \(ours.out.debugDescription)\ntheirs: \(theirs.out.debugDescription)")
                #expect(ours.status == 0 && theirs.status == 0)
            }
        }
    }

    @Test("Retained messages: -R, --retained-only and the retain flag print as mosquitto_sub does")
    func retained() async throws {
        try await withBroker { broker in
            let client = try await libraryClient(broker)
            try await client.publish(MQTTMessage(topic: "r/1", string: "one", qos: .atLeastOnce, retain: true))
            try await client.publish(MQTTMessage(topic: "r/2", string: "two", qos: .atLeastOnce, retain: true))
            for mode in [["-F", "%t %r %p", "-C", "2"], ["--retained-only", "-v", "-W", "2"], ["-R", "-v", "-W", "1"]] {
                let args = at(broker) + ["-t", "r/#"] + mode
                async let a = run(tool("mqtt-sub"), args)
                async let b = run(mosquittoTool("mosquitto_sub")!, args)
                let (ours, theirs) = try await (a, b)
                #expect(ours.out == theirs.out, "mode \(mode): ours \(ours) theirs \(theirs)")
                #expect(ours.status == theirs.status, "mode \(mode): ours \(ours) theirs \(theirs)")
            }
            await client.shutdown()
        }
    }
}
