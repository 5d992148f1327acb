import Foundation
import Mosquitto
import MosquittoBroker
import MosquittoTestSupport
import MQTTBridge
import NIOCore
import Testing

func serverRoute(_ name: String, direction: RouteDirection = .toMQTT, topic: String? = nil, framing: Framing = .lf,
                 maxFrame: Int = 65536, subscriptions: [String] = [], qos: QoS = .atLeastOnce) throws -> RouteConfiguration {
    RouteConfiguration(name: name, direction: direction,
                       feed: FeedConfiguration(mode: .tcpServer, addresses: [SocketAddressSpec(host: "127.0.0.1", port: 0)]),
                       framing: framing, maxFrame: maxFrame, topic: try topic.map { try TopicTemplate($0) },
                       subscriptions: subscriptions, qos: qos)
}

@Suite("Feed to MQTT", .serialized, .timeLimit(.minutes(5 * testTimeScale)))
struct FeedToMQTTTests {
    @Test("1-byte writes and thousands of coalesced frames all arrive, byte-exact and in order per feed")
    func slicedAndCoalesced() async throws {
        try await withBroker { broker in
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let sub = try await connected(broker)
            let recorder = Recorder(try await sub.subscribe("feeds/#", qos: .atLeastOnce, buffer: .recorder))
            let config = bridgeConfig(broker, spool: dir, routes: [try serverRoute("lines", topic: "feeds/{feed}/{field:0}")])
            try await withBridge(config) { bridge in
                let port = try #require(bridge.port(ofRoute: "lines"))
                let sliced = try await FeedPeer.connect(port: port)
                let coalesced = try await FeedPeer.connect(port: port)
                let slicedFrames = (0..<200).map { "s,\($0)" }
                let coalescedFrames = (0..<10000).map { "c,\($0),\(String(repeating: "x", count: $0 % 50))" }
                async let a: Void = {
                    for f in slicedFrames { for b in Array((f + "\n").utf8) { try await sliced.write([b]) } }
                }()
                try await coalesced.write(Array(coalescedFrames.map { $0 + "\n" }.joined().utf8))
                try await a
                let produced = slicedFrames.count + coalescedFrames.count
                #expect(await eventually { recorder.count >= produced })
                let m = bridge.metrics.route("lines")
                let messages = recorder.messages.value
                let s = messages.filter { $0.topic == "feeds/lines/s" }.map { String(decoding: $0.payload, as: UTF8.self) }
                let c = messages.filter { $0.topic == "feeds/lines/c" }.map { String(decoding: $0.payload, as: UTF8.self) }
                // Accounting: produced = delivered + allowed drops (none here).
                #expect(m.totalDropped == 0)
                #expect(s.count + c.count + m.totalDropped == produced)
                #expect(s == slicedFrames)
                #expect(c == coalescedFrames)
                #expect(await eventually { m.framesPublished.value == produced })
                await sliced.close()
                await coalesced.close()
            }
            recorder.stop()
            await sub.shutdown()
        }
    }

    @Test("binary length-prefixed payloads with NUL, 0xFF and newlines arrive byte-exact; a 10x oversize frame is dropped and counted, the next is intact")
    func binaryAndOversize() async throws {
        try await withBroker { broker in
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let sub = try await connected(broker)
            let recorder = Recorder(try await sub.subscribe("bin/#", qos: .atLeastOnce, buffer: .recorder))
            let routes = [try serverRoute("bin", topic: "bin/{feed}", framing: .lengthPrefixed(width: 2, byteOrder: .bigEndian), maxFrame: 512),
                          try serverRoute("txt", topic: "bin/{feed}", maxFrame: 100)]
            try await withBridge(bridgeConfig(broker, spool: dir, routes: routes)) { bridge in
                var payloads: [[UInt8]] = [[0x00], [0xFF, 0xFF], [0x0A, 0x00, 0x0A], Array(0...255), Array(repeating: 0x0D, count: 300)]
                payloads += (0..<100).map { i in (0..<(i % 40 + 1)).map { UInt8(truncatingIfNeeded: $0 * 7 + i) } }
                let encoder = FrameEncoder(framing: .lengthPrefixed(width: 2, byteOrder: .bigEndian))
                var wire: [UInt8] = []
                for p in payloads { try encoder.encode(p, into: &wire) }
                // An oversize frame (10 × 512) in the middle, then a normal one.
                try encoder.encode([UInt8](repeating: 0xAB, count: 5120), into: &wire)
                try encoder.encode([0x00, 0x01], into: &wire)
                let peer = try await FeedPeer.connect(port: try #require(bridge.port(ofRoute: "bin")))
                for chunk in stride(from: 0, to: wire.count, by: 333) {
                    try await peer.write(Array(wire[chunk..<min(wire.count, chunk + 333)]))
                }
                let text = try await FeedPeer.connect(port: try #require(bridge.port(ofRoute: "txt")))
                try await text.write(Array((String(repeating: "L", count: 1000) + "\nafter\n").utf8))
                let produced = payloads.count + 1 + 1 + 2
                let mb = bridge.metrics.route("bin")
                let mt = bridge.metrics.route("txt")
                #expect(await eventually { recorder.count + mb.dropped(.oversize) + mt.dropped(.oversize) >= produced })
                try await Task.sleep(for: .milliseconds(200))
                let bin = recorder.messages.value.filter { $0.topic == "bin/bin" }.map(\.payload)
                let txt = recorder.messages.value.filter { $0.topic == "bin/txt" }.map(\.payload)
                #expect(bin == payloads + [[0x00, 0x01]])
                #expect(txt == [Array("after".utf8)])
                #expect(mb.dropped(.oversize) == 1)
                #expect(mt.dropped(.oversize) == 1)
                #expect(bin.count + txt.count + mb.totalDropped + mt.totalDropped == produced)
                await peer.close()
                await text.close()
            }
            recorder.stop()
            await sub.shutdown()
        }
    }

    @Test("a feed that drops in the middle of a line: the partial line is dropped and counted, the next connection starts clean")
    func partialLineAtClose() async throws {
        try await withBroker { broker in
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let sub = try await connected(broker)
            let recorder = Recorder(try await sub.subscribe("p/#", qos: .atLeastOnce, buffer: .recorder))
            try await withBridge(bridgeConfig(broker, spool: dir, routes: [try serverRoute("p", topic: "p/x")])) { bridge in
                let port = try #require(bridge.port(ofRoute: "p"))
                let first = try await FeedPeer.connect(port: port)
                try await first.write(Array("one\ntwo\nthree\nhalf-a-li".utf8))
                await first.close()
                let m = bridge.metrics.route("p")
                #expect(await eventually { m.dropped(.partial) == 1 })
                let second = try await FeedPeer.connect(port: port)
                try await second.write(Array("four\n".utf8))
                #expect(await eventually { recorder.count >= 4 })
                try await Task.sleep(for: .milliseconds(200))
                #expect(recorder.strings == ["one", "two", "three", "four"])
                // 5 frames produced (one incomplete) = 4 delivered + 1 partial drop allowed by policy.
                #expect(recorder.count + m.dropped(.partial) == 5)
                await second.close()
            }
            recorder.stop()
            await sub.shutdown()
        }
    }

    @Test("hostile data in a topic template (+, #, NUL, invalid UTF-8, a 70,000-byte field) goes to the dead-letter topic, counted")
    func hostileTopics() async throws {
        try await withBroker { broker in
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let sub = try await connected(broker)
            let recorder = Recorder(try await sub.subscribe("h/#", "dlq/#", qos: .atLeastOnce, buffer: .recorder))
            var route = try serverRoute("h", topic: "h/{field:0}", maxFrame: 100_000)
            route.deadLetterTopic = "dlq/h"
            try await withBridge(bridgeConfig(broker, spool: dir, routes: [route])) { bridge in
                let hostile: [[UInt8]] = [
                    Array("+,x".utf8), Array("a/#,x".utf8), [0x61, 0x00, 0x62, 0x2C, 0x78], [0xC3, 0x28, 0x2C, 0x78],
                    Array(repeating: 0x61, count: 70_000) + [0x2C, 0x78], Array(",empty".utf8),
                ]
                let good: [[UInt8]] = [Array("ok1,x".utf8), Array("ok2,y".utf8)]
                var wire: [UInt8] = []
                for f in [good[0]] + hostile + [good[1]] { wire += f + [0x0A] }
                let peer = try await FeedPeer.connect(port: try #require(bridge.port(ofRoute: "h")))
                try await peer.write(wire)
                let produced = hostile.count + good.count
                #expect(await eventually { recorder.count >= produced })
                let messages = recorder.messages.value
                #expect(messages.filter { $0.topic.hasPrefix("h/") }.map(\.topic) == ["h/ok1", "h/ok2"])
                let dead = messages.filter { $0.topic == "dlq/h" }
                #expect(dead.map(\.payload) == hostile)
                #expect(dead.allSatisfy { $0.properties.userProperties.contains(UserProperty("dead_letter", "h")) })
                #expect(bridge.metrics.route("h").deadLettered.value == hostile.count)
                #expect(messages.count == produced)
                await peer.close()
            }
            recorder.stop()
            await sub.shutdown()
        }
    }
}
