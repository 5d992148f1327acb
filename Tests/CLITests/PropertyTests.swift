import Foundation
import Mosquitto
import MosquittoBroker
import MosquittoTestSupport
import Testing

/// `-D` for every packet mosquitto's tools accept it for, `-x` without `-c`, and `-V mqttv31`: checked on the wire
/// (a relay records the packets each tool sends to the real broker) and by what the broker does with them, with
/// mosquitto_sub/mosquitto_pub as the oracle where they are installed.
@Suite(.serialized, .enabled(if: hasMosquittoClients, "mosquitto_sub/mosquitto_pub are not installed"), .timeLimit(.minutes(5 * testTimeScale)))
struct PropertyTests {
    /// Runs `executable` through a fresh recorder and returns the packets it sent on its first connection.
    func packets(_ broker: MosquittoBroker, _ executable: String, _ arguments: [String]) async throws -> ([MQTTPacket], RunResult) {
        let recorder = try PacketRecorder(forwardingTo: broker.port)
        defer { recorder.close() }
        let result = try await run(executable, ["-h", "127.0.0.1", "-p", String(recorder.port)] + arguments)
        // The relay may still be copying the last bytes when the process has exited: wait until it saw the
        // client close its side (on a machine loaded by sanitizer runs that can take a while).
        let deadline = ContinuousClock.now + .seconds(30)
        while ContinuousClock.now < deadline, !recorder.clientClosed(0) {
            try await Task.sleep(for: .milliseconds(20))
        }
        return (recorder.connections.first ?? [], result)
    }

    static let everyPacket = [
        "-D", "connect", "user-property", "ck", "cv",
        "-D", "connect", "maximum-packet-size", "100000",
        "-D", "connect", "topic-alias-maximum", "5",
        "-D", "connect", "request-problem-information", "1",
        "-D", "connect", "request-response-information", "1",
        "-D", "subscribe", "user-property", "sk", "sv",
        "-D", "unsubscribe", "user-property", "uk", "uv",
        "-D", "disconnect", "user-property", "dk", "dv",
        "-D", "disconnect", "reason-string", "bye",
    ]

    /// The properties the test sets, by packet type, as the receiving broker would read them.
    func summary(_ packets: [MQTTPacket]) -> [String] {
        var out: [String] = []
        for p in packets where [1, 8, 10, 14].contains(p.type) {
            var line = "\(p.type): \(p.userProperties.joined(separator: ","))"
            for id: UInt8 in [0x27, 0x22, 0x17, 0x19, 0x1F] {
                if let v = p.property(id) { line += " \(id)=\(v)" }
            }
            out.append(line)
        }
        return out
    }

    @Test("-D reaches CONNECT, SUBSCRIBE, UNSUBSCRIBE and DISCONNECT exactly as mosquitto_sub sends it")
    func everyCommandOnTheWire() async throws {
        try await withBroker { broker in
            let args = ["-V", "mqttv5", "-t", "p/a", "-U", "p/b", "-E"] + Self.everyPacket
            let (ours, ourRun) = try await packets(broker, tool("mqtt-sub"), args + ["-i", "cap-ours"])
            let (theirs, theirRun) = try await packets(broker, mosquittoTool("mosquitto_sub")!, args + ["-i", "cap-theirs"])
            #expect(ourRun.status == 0 && theirRun.status == 0, "ours: \(ourRun)\ntheirs: \(theirRun)")
            #expect(ourRun.stderr.isEmpty, "no 'not sent' warnings any more: \(ourRun.stderr)")
            let expected = [
                "1: ck=cv 39=[0, 1, 134, 160] 34=[0, 5] 23=[1] 25=[1]",
                "8: sk=sv",
                "10: uk=uv",
                "14: dk=dv 31=[0, 3, 98, 121, 101]",
            ]
            #expect(summary(ours) == expected)
            // mosquitto_sub -E sometimes closes the socket without its DISCONNECT (a race in 2.0.11 between the
            // UNSUBACK and the disconnect); compare the packets it did send.
            let theirSummary = summary(theirs)
            #expect(Array(summary(ours).prefix(theirSummary.count)) == theirSummary, "mosquitto_sub sent: \(theirSummary)")
            #expect(theirSummary.count >= 3, "mosquitto_sub sent: \(theirSummary)")
        }
    }

    @Test("mqtt-pub and mqtt-rr send their -D connect, subscribe and disconnect properties too")
    func pubAndRR() async throws {
        try await withBroker { broker in
            let (pub, pubRun) = try await packets(broker, tool("mqtt-pub"), ["-V", "5", "-t", "p/x", "-m", "hi",
                "-D", "connect", "user-property", "a", "b", "-D", "disconnect", "user-property", "c", "d",
                "-D", "publish", "user-property", "e", "f"])
            #expect(pubRun.status == 0, "\(pubRun)")
            #expect(summary(pub) == ["1: a=b", "14: c=d"])
            let (rr, rrRun) = try await packets(broker, tool("mqtt-rr"), ["-t", "svc/none", "-e", "r/x", "-m", "q", "-W", "1",
                "-D", "subscribe", "user-property", "s", "t", "-D", "disconnect", "user-property", "u", "v"])
            #expect(rrRun.status == 27, "nobody answers: timed out. \(rrRun)")
            // (mqtt-rr also unsubscribes from its reply topic when it ends; mosquitto_rr leaves that to the session.)
            #expect(summary(rr).filter { !$0.hasPrefix("10:") } == ["1: ", "8: s=t", "14: u=v"])
        }
    }

    @Test("-D disconnect session-expiry-interval 0 ends a persistent session, as with mosquitto_sub")
    func disconnectEndsSession() async throws {
        try await withBroker { broker in
            for (name, path) in [("ours", tool("mqtt-sub")), ("theirs", mosquittoTool("mosquitto_sub")!)] {
                for discard in [false, true] {
                    let id = "sx-\(name)-\(discard)"
                    let base = at(broker) + ["-V", "5", "-c", "-i", id, "-q", "1", "-t", "sx/\(id)"]
                    let first = try await run(path, base + ["-E"] + (discard ? ["-D", "disconnect", "session-expiry-interval", "0"] : []))
                    #expect(first.status == 0, "\(name): \(first)")
                    let pub = try await libraryClient(broker)
                    try await pub.publish(MQTTMessage(topic: "sx/\(id)", string: "queued", qos: .atLeastOnce))
                    await pub.shutdown()
                    let second = try await run(path, base + ["-C", "1", "-W", "2"])
                    if discard {
                        #expect(second.status == 27 && second.out.isEmpty, "\(name): the session was discarded, nothing queued: \(second)")
                    } else {
                        #expect(second.status == 0 && second.out == "queued\n", "\(name): the session kept the message: \(second)")
                    }
                }
            }
        }
    }

    @Test("-x without -c: a clean start whose session the broker keeps for the expiry, as with mosquitto_sub")
    func expiryWithoutPersistence() async throws {
        try await withBroker { broker in
            for (name, path) in [("ours", tool("mqtt-sub")), ("theirs", mosquittoTool("mosquitto_sub")!)] {
                let id = "cx-\(name)"
                let topic = "cx/\(name)"
                // Clean start, kept for 60 s after the disconnect.
                let first = try await run(path, at(broker) + ["-V", "5", "-i", id, "-x", "60", "-q", "1", "-t", topic, "-E"])
                #expect(first.status == 0, "\(name): \(first)")
                let pub = try await libraryClient(broker)
                try await pub.publish(MQTTMessage(topic: topic, string: "kept", qos: .atLeastOnce))
                await pub.shutdown()
                // Resume it (-c): the message published meanwhile is there.
                let second = try await run(path, at(broker) + ["-V", "5", "-c", "-i", id, "-x", "60", "-q", "1", "-t", topic, "-C", "1", "-W", "5"])
                #expect(second.status == 0 && second.out == "kept\n", "\(name): \(second)")
            }
        }
    }

    @Test("-D connect maximum-packet-size: the broker withholds bigger messages from the client")
    func maximumPacketSize() async throws {
        try await withBroker { broker in
            let sub = try Child(tool("mqtt-sub"), at(broker) + ["-V", "5", "-t", "mp-ready", "-t", "mp/#", "-C", "2", "-W", "30",
                                                              "-D", "connect", "maximum-packet-size", "200"])
            let pub = try await libraryClient(broker)
            // A retained message on the other filter of the same SUBSCRIBE shows when the subscriber is subscribed.
            try await pub.publish(MQTTMessage(topic: "mp-ready", string: "ready", qos: .atLeastOnce, retain: true))
            #expect(await printedSomething(sub))
            // Then the big one, which the broker must withhold, and the small one.
            try await pub.publish(MQTTMessage(topic: "mp/big", payload: [UInt8](repeating: 0x41, count: 1000), qos: .atLeastOnce))
            try await pub.publish(MQTTMessage(topic: "mp/small", string: "fits", qos: .atLeastOnce))
            let r = await sub.wait(timeout: .seconds(60))
            await pub.shutdown()
            #expect(r.status == 0 && r.out == "ready\nfits\n", "\(r)")
        }
    }

    @Test("-D connect authentication-method to a broker without it: the same refusal and exit code as mosquitto_pub")
    func authenticationMethod() async throws {
        try await withBroker { broker in
            let args = at(broker) + ["-V", "5", "-t", "a/x", "-m", "y", "-D", "connect", "authentication-method", "SCRAM-SHA-1",
                                     "-D", "connect", "authentication-data", "abc"]
            let ours = try await run(tool("mqtt-pub"), args)
            let theirs = try await run(mosquittoTool("mosquitto_pub")!, args)
            #expect(ours.status != 0)
            #expect(ours.status == theirs.status, "ours: \(ours)\ntheirs: \(theirs)")
            #expect(ours.stderr.hasPrefix("Connection error: Bad authentication method\n"), "\(ours)")
            #expect(ours.stderr == theirs.stderr, "ours: \(ours)\ntheirs: \(theirs)")
        }
    }

    @Test("-V mqttv31: the MQTT 3.1 protocol name and level on the wire (the output is compared in SubscriberOracleTests)")
    func mqtt31() async throws {
        try await withBroker { broker in
            let (packets, result) = try await packets(broker, tool("mqtt-pub"), ["-V", "mqttv31", "-t", "v31/x", "-m", "old", "-q", "1"])
            #expect(result.status == 0, "\(result)")
            let connect = try #require(packets.first { $0.type == 1 })
            // MQTT 3.1: protocol name "MQIsdp", level 3.
            #expect(Array(connect.body.prefix(9)) == [0, 6] + Array("MQIsdp".utf8) + [3])
        }
    }

    @Test("%j lists MQTT 5 properties in the order they arrived, as mosquitto_sub does (user properties as 2.1 prints them)")
    func jsonPropertyOrder() async throws {
        try await withBroker { broker in
            let tag = UUID().uuidString.prefix(6)
            let base = at(broker) + ["-V", "5", "-q", "1", "-t", "jo/#", "-c"]
            let ids = [(tool("mqtt-sub"), "jo-ours-\(tag)"), (mosquittoTool("mosquitto_sub")!, "jo-theirs-\(tag)")]
            for (path, id) in ids {
                let r = try await run(path, base + ["-i", id, "-E"])
                #expect(r.status == 0, "\(r)")
            }
            // mosquitto_pub sends the properties in command-line order: user property first, format indicator late.
            let pub = try await run(mosquittoTool("mosquitto_pub")!, at(broker) + ["-V", "5", "-q", "1", "-t", "jo/x", "-m", "{}",
                "-D", "publish", "user-property", "a", "b", "-D", "publish", "content-type", "text/plain",
                "-D", "publish", "correlation-data", "cd", "-D", "publish", "response-topic", "r/t",
                "-D", "publish", "payload-format-indicator", "1", "-D", "publish", "user-property", "c", "d"])
            #expect(pub.status == 0, "\(pub)")
            var outs: [String] = []
            for (path, id) in ids {
                let r = try await run(path, base + ["-i", id, "-C", "1", "-W", "10", "-F", "%j"])
                #expect(r.status == 0, "\(r)")
                outs.append(normalisedTimestamps(r.stdout))
            }
            // The same order; the user properties in 2.1's form, an array of one-pair objects (2.0.11 folds them into
            // one object, which loses a repeated name).
            #expect(outs[0].contains(#""properties":{"user-properties":[{"a":"b"},{"c":"d"}],"content-type":"text/plain","correlation-data":"cd","response-topic":"r/t","payload-format-indicator":1}"#), "\(outs[0])")
            #expect(outs[1].contains(#""properties":{"user-properties":{"a":"b","c":"d"},"content-type":"text/plain","correlation-data":"cd","response-topic":"r/t","payload-format-indicator":1}"#), "\(outs[1])")
        }
    }
}
