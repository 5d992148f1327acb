import Foundation
import Mosquitto
import MosquittoBroker
import MosquittoTestSupport
import MQTTBridge
import MQTTBridgeCommand
import Testing

@Suite("Bridge transcoding JSON lines <-> MessagePack", .serialized, .timeLimit(.minutes(5 * testTimeScale)))
struct TranscodeTests {
    @Test("transcode in a route block: json_msgpack or none; anything else is reported with its line; --transcode in the flag form")
    func configuration() throws {
        let text = """
        address 127.0.0.1:1883
        route a
        mode tcp_server
        address 127.0.0.1:7001
        topic t/a
        transcode json_msgpack
        route b
        mode tcp_server
        address 127.0.0.1:7002
        topic t/b
        """
        let c = try ConfigParser.parse(text)
        #expect(c.routes.map(\.transcode) == [.jsonMessagePack, PayloadTranscoding.none])
        let issues = ConfigParser.check(text.replacingOccurrences(of: "json_msgpack", with: "cbor"))
        #expect(issues.map(\.line) == [6], "\(issues)")
        #expect(issues.first?.message.contains("transcode must be none or json_msgpack") == true)
        let typo = ConfigParser.check(text.replacingOccurrences(of: "transcode json", with: "transcod json"))
        #expect(typo.first?.message.contains("did you mean 'transcode'") == true, "\(typo)")
        let flags = try BridgeCommand.parse(["--tcp-listen", "127.0.0.1:0", "--topic", "t", "--transcode", "json_msgpack"])
            .makeConfiguration(logger: quietLogger())
        #expect(flags.routes.map(\.transcode) == [.jsonMessagePack])
        #expect(throws: (any Error).self) {
            try BridgeCommand.parse(["--tcp-listen", "127.0.0.1:0", "--topic", "t", "--transcode", "cbor"]).makeConfiguration(logger: quietLogger())
        }
    }

    @Test("transcode json_msgpack: JSON lines become MessagePack with the content type, MessagePack becomes JSON lines toward the feed; what does not convert goes to the dead-letter topic, counted, and the route goes on")
    func bothWays() async throws {
        try await withBroker { broker in
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            var route = try serverRoute("codec", direction: .both, topic: "codec/feed/{json:/device}", subscriptions: ["codec/cmd/#"])
            route.transcode = .jsonMessagePack
            route.deadLetterTopic = "codec/dead"
            let sub = try await connected(broker)
            let recorder = Recorder(try await sub.subscribe("codec/feed/#", "codec/dead", qos: .atLeastOnce, buffer: .recorder))
            try await withBridge(bridgeConfig(broker, spool: dir, routes: [route])) { bridge in
                let peer = try await FeedPeer.connect(port: try #require(bridge.port(ofRoute: "codec")))
                let m = bridge.metrics.route("codec")
                #expect(await eventually { m.isSubscribed && m.openConnectionCount == 1 })

                // Feed → MQTT.
                try await peer.write(Array("{\"device\": \"a\", \"t\": 21.5, \"ok\": true}\nnot json\n{\"device\": \"b\", \"n\": [1, -2]}\n".utf8))
                #expect(await eventually { recorder.count == 3 })
                let got = recorder.messages.value
                let feed = got.filter { $0.topic.hasPrefix("codec/feed/") }
                #expect(feed.map(\.topic) == ["codec/feed/a", "codec/feed/b"])
                #expect(feed.first?.payload == [0x83, 0xa6] + Array("device".utf8) + [0xa1, 0x61, 0xa1, 0x74, 0xcb, 0x40, 0x35, 0x80, 0, 0, 0, 0, 0, 0xa2, 0x6f, 0x6b, 0xc3])
                #expect(feed.last?.payload == [0x82, 0xa6] + Array("device".utf8) + [0xa1, 0x62, 0xa1, 0x6e, 0x92, 0x01, 0xfe])
                #expect(feed.allSatisfy { $0.properties.contentType == "application/msgpack" })
                let dead = got.filter { $0.topic == "codec/dead" }
                #expect(dead.map(\.payload) == [Array("not json".utf8)])
                #expect(dead.first?.properties.userProperties.contains(UserProperty("dead_letter", "codec")) == true)
                #expect(m.deadLettered.value == 1)

                // MQTT → feed.
                let pub = try await connected(broker)
                try await pub.publish(to: "codec/cmd/1", payload: [0x82, 0xa3, 0x63, 0x6d, 0x64, 0xa2, 0x6f, 0x6e, 0xa5, 0x6c, 0x65, 0x76, 0x65, 0x6c, 0x03])
                try await pub.publish(to: "codec/cmd/2", payload: [0xc1, 0x00])
                try await pub.publish(to: "codec/cmd/3", payload: [0x93, 0xc0, 0xc2, 0xa1, 0x78])
                #expect(await eventually { lines(peer.received).count >= 2 })
                #expect(lines(peer.received) == [#"{"cmd":"on","level":3}"#, #"[null,false,"x"]"#])
                #expect(await eventually { recorder.messages.value.filter { $0.topic == "codec/dead" }.count == 2 })
                #expect(recorder.messages.value.filter { $0.topic == "codec/dead" }.last?.payload == [0xc1, 0x00])
                #expect(m.deadLettered.value == 2)
                await pub.shutdown()
                await peer.close()
            }
            recorder.stop()
            await sub.shutdown()
        }
    }

    @Test("a publisher that keeps sending what is not MessagePack to a json_msgpack route gets one warning line, then a count: not one line per message")
    func untranscodableIsRateLimited() async throws {
        try await withBroker { broker in
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            var route = try serverRoute("codec", direction: .both, topic: "codec/feed/x", subscriptions: ["codec/cmd/#"])
            route.transcode = .jsonMessagePack
            route.deadLetterTopic = "codec/dead"
            let capture = OpLogCapture()
            let n = 50
            try await opWithBridge(opConfig(host: broker.host, port: broker.port, spool: dir, routes: [route], capture: capture), capture) { bridge in
                let m = bridge.metrics.route("codec")
                #expect(await eventually { m.isSubscribed })
                let pub = try await connected(broker)
                for i in 0..<n { try await pub.publish(to: "codec/cmd/\(i)", payload: [0xc1, UInt8(i)], qos: .atLeastOnce) }
                #expect(await eventually { m.deadLettered.value == n })
                await pub.shutdown()
            }
            // Stopping the route logs the count of a window still open.
            let firsts = capture.lines(containing: "is not MessagePack; sent to codec/dead").filter { !$0.contains("more message") }
            let summaries = capture.lines(containing: "toward the feed that")
            let counted = summaries.reduce(0) { total, line in
                total + (Int(line.split(separator: ": ", maxSplits: 1).last?.prefix { $0.isNumber } ?? "") ?? 0)
            }
            #expect(firsts.count >= 1 && firsts.count + summaries.count <= 6, "\(capture.all)")
            #expect(firsts.count + counted == n, "every message is logged or counted: \(capture.all)")
        }
    }

}
