import Foundation
import Mosquitto
import MQTTOutbox
import MosquittoBroker
import MosquittoTestSupport
import MQTTBridge
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Partial frames and reload", .serialized, .timeLimit(.minutes(5 * testTimeScale)))
struct ReloadAndPartialTests {
    @Test("partial_on_close emit: the incomplete last frame is published on the route's topic, marked partial=true")
    func partialEmit() async throws {
        try await withBroker { broker in
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let sub = try await connected(broker)
            let recorder = Recorder(try await sub.subscribe("pe/#", qos: .atLeastOnce, buffer: .recorder))
            var route = try serverRoute("pe", topic: "pe/x")
            route.partialOnClose = .emit
            try await withBridge(bridgeConfig(broker, spool: dir, routes: [route])) { bridge in
                let peer = try await FeedPeer.connect(port: try #require(bridge.port(ofRoute: "pe")))
                try await peer.write(Array("one\ntwo\nhalf-a-li".utf8))
                await peer.close()
                let m = bridge.metrics.route("pe")
                #expect(await eventually { recorder.count >= 3 })
                try await Task.sleep(for: .milliseconds(200))
                #expect(recorder.strings == ["one", "two", "half-a-li"])
                let messages = recorder.messages.value
                #expect(messages.allSatisfy { $0.topic == "pe/x" })
                #expect(messages[2].properties.userProperties.contains(UserProperty("partial", "true")))
                #expect(!messages[0].properties.userProperties.contains(UserProperty("partial", "true")))
                #expect(m.partialEmitted.value == 1)
                #expect(m.dropped(.partial) == 0)
                // 3 frames produced (one incomplete) = 3 delivered + 0 drops.
                #expect(recorder.count + m.totalDropped == 3)
            }
            recorder.stop()
            await sub.shutdown()
        }
    }

    @Test("partial_on_close deadletter: the incomplete last frame goes to the dead-letter topic, marked partial and dead_letter")
    func partialDeadLetter() async throws {
        try await withBroker { broker in
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let sub = try await connected(broker)
            let recorder = Recorder(try await sub.subscribe("pd/#", "dlq/#", qos: .atLeastOnce, buffer: .recorder))
            var route = try serverRoute("pd", topic: "pd/x")
            route.partialOnClose = .deadletter
            route.deadLetterTopic = "dlq/pd"
            try await withBridge(bridgeConfig(broker, spool: dir, routes: [route])) { bridge in
                let peer = try await FeedPeer.connect(port: try #require(bridge.port(ofRoute: "pd")))
                try await peer.write(Array("a\nb\nc\ntrunc".utf8))
                await peer.close()
                let m = bridge.metrics.route("pd")
                #expect(await eventually { recorder.count >= 4 })
                try await Task.sleep(for: .milliseconds(200))
                let messages = recorder.messages.value
                #expect(messages.filter { $0.topic == "pd/x" }.map { String(decoding: $0.payload, as: UTF8.self) } == ["a", "b", "c"])
                let dead = messages.filter { $0.topic == "dlq/pd" }
                #expect(dead.map { String(decoding: $0.payload, as: UTF8.self) } == ["trunc"])
                #expect(dead.first?.properties.userProperties.contains(UserProperty("partial", "true")) == true)
                #expect(dead.first?.properties.userProperties.contains(UserProperty("dead_letter", "pd")) == true)
                #expect(m.deadLettered.value == 1)
                #expect(m.partialEmitted.value == 1)
                // 4 produced = 3 delivered + 1 dead-lettered + 0 drops.
                #expect(messages.count + m.totalDropped == 4)
            }
            recorder.stop()
            await sub.shutdown()
        }
    }

    @Test("A reload that restarts a route (new framing, topic and port) while its frames wait in the spool loses none")
    func reloadRestartKeepsSpool() async throws {
        var brokerConfig = MosquittoBroker.Configuration(persistence: true)
        brokerConfig.maxQueuedMessages = 0
        try await withBroker(brokerConfig) { broker in
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let sub = try await connected(broker, id: "rl-sub", persistent: true)
            let recorder = Recorder(try await sub.subscribe("rl/#", qos: .atLeastOnce, buffer: .recorder))
            let before = try serverRoute("r", topic: "rl/x", framing: .lf)
            let config = bridgeConfig(broker, spool: dir, routes: [before], id: "rl-bridge")
            try await withBridge(config) { bridge in
                let m = bridge.metrics.route("r")
                let oldPort = try #require(bridge.port(ofRoute: "r"))
                let peer = try await FeedPeer.connect(port: oldPort)
                try await peer.write(Array((0..<500).map { "a\($0)\n" }.joined().utf8))
                #expect(await eventually { recorder.count >= 500 })
                // The broker goes away: the next frames can only wait in the spool.
                await broker.stop()
                #expect(await eventually { !bridge.metrics.isMQTTConnected })
                try await peer.write(Array((0..<500).map { "b\($0)\n" }.joined().utf8))
                #expect(await eventually { m.framesIn.value == 1000 && bridge.spoolDepth(ofRoute: "r") == 500 })
                // Framing and topic change: the route restarts (its listener and connections are new).
                var after = try serverRoute("r", topic: "rl/y", framing: .crlf)
                after.qos = .exactlyOnce
                var changed = config
                changed.routes = [after]
                try await bridge.reload(changed)
                #expect(await eventually { !peer.channel.isActive }, "the restarted route closed the old connection")
                #expect(bridge.spoolDepth(ofRoute: "r") == 500, "the spooled frames survived the restart")
                try await broker.restart()
                #expect(await eventually(timeout: .seconds(30)) { bridge.spoolDepth(ofRoute: "r") == 0 && Set(recorder.strings).count >= 1000 })
                // The new framing and topic apply to what arrives now.
                let newPeer = try await FeedPeer.connect(port: try #require(bridge.port(ofRoute: "r")))
                try await newPeer.write(Array((0..<100).map { "c\($0)\r\n" }.joined().utf8))
                #expect(await eventually { Set(recorder.strings).count >= 1100 })
                let messages = recorder.messages.value
                let distinct = Set(messages.map { String(decoding: $0.payload, as: UTF8.self) })
                let expected = Set((0..<500).map { "a\($0)" } + (0..<500).map { "b\($0)" } + (0..<100).map { "c\($0)" })
                #expect(expected.subtracting(distinct).isEmpty, "missing: \(expected.subtracting(distinct).sorted().prefix(10))")
                #expect(distinct.subtracting(expected).isEmpty, "unexpected payloads (framing): \(distinct.subtracting(expected).sorted().prefix(5))")
                #expect(messages.filter { String(decoding: $0.payload, as: UTF8.self).hasPrefix("b") }.allSatisfy { $0.topic == "rl/x" },
                        "spooled frames keep the topic they were given when they arrived")
                #expect(messages.filter { String(decoding: $0.payload, as: UTF8.self).hasPrefix("c") }.allSatisfy { $0.topic == "rl/y" })
                #expect(m.totalDropped == 0)
                await newPeer.close()
            }
            recorder.stop()
            await sub.shutdown()
        }
    }

    @Test("SIGHUP: a running mqtt-bridge picks up a route's new topic from its file, keeps the feed connection, loses no frame")
    func sighupReload() async throws {
        let executable = try #require(builtExecutable("mqtt-bridge"), "build the mqtt-bridge executable first (swift build)")
        try await withBroker { broker in
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let feedPort = freeLoopbackPort()
            let httpPort = freeLoopbackPort()
            let configFile = dir + "/bridge.conf"
            func config(topic: String) -> String {
                """
                address \(broker.host):\(broker.port)
                remote_clientid hup-bridge
                cleansession false
                spool_dir \(dir)/spool
                metrics_listen 127.0.0.1:\(httpPort)
                progress_interval 0

                route h
                direction to_mqtt
                mode tcp_server
                address 127.0.0.1:\(feedPort)
                topic \(topic)
                qos 1
                """
            }
            try writePrivate(config(topic: "hup/old"), to: configFile)
            let sub = try await connected(broker, id: "hup-sub", persistent: true)
            let recorder = Recorder(try await sub.subscribe("hup/#", qos: .atLeastOnce, buffer: .recorder))
            let child = try Child(executable, ["--config", configFile, "--log-level", "info"], output: dir + "/bridge.log")
            let up = await eventually { (try? await httpGet(port: httpPort, path: "/readyz"))?.0 == 200 }
            #expect(up, "bridge did not become ready: \((try? String(contentsOfFile: dir + "/bridge.log", encoding: .utf8)) ?? "")")
            let peer = try await FeedPeer.connect(port: feedPort)
            let total = 3000
            var sent = 0
            var reloadedAt = -1
            while sent < total {
                try await peer.write(Array((sent..<sent + 50).map { "h\($0)\n" }.joined().utf8))
                sent += 50
                if sent == 1500 {
                    try writePrivate(config(topic: "hup/new"), to: configFile)
                    child.signal(SIGHUP)
                    reloadedAt = sent
                }
                try await Task.sleep(for: .milliseconds(10))
            }
            #expect(await eventually(timeout: .seconds(30)) { Set(recorder.strings).count >= total })
            let messages = recorder.messages.value
            let distinct = Set(messages.map { String(decoding: $0.payload, as: UTF8.self) })
            let missing = Set((0..<total).map { "h\($0)" }).subtracting(distinct)
            #expect(missing.isEmpty, "\(missing.count) missing, e.g. \(missing.sorted().prefix(5))")
            #expect(messages.first?.topic == "hup/old")
            #expect(messages.last?.topic == "hup/new", "the new topic was not used after SIGHUP")
            // Once the new topic appears, the old one is not used again (frames are in order per feed).
            if let firstNew = messages.firstIndex(where: { $0.topic == "hup/new" }) {
                #expect(!messages[firstNew...].contains { $0.topic == "hup/old" })
                print("SIGHUP after frame \(reloadedAt): first frame on the new topic \(String(decoding: messages[firstNew].payload, as: UTF8.self))")
            }
            #expect(peer.channel.isActive, "the feed connection should survive a topic-only reload")
            let log = (try? String(contentsOfFile: dir + "/bridge.log", encoding: .utf8)) ?? ""
            #expect(log.contains("Reloaded"), "\(log.suffix(2000))")
            // produced = delivered (distinct) + 0 drops
            if let (_, body) = try? await httpGet(port: httpPort, path: "/metrics") {
                #expect(metricValue(body, "mqtt_bridge_frames_in_total", route: "h") == Double(total))
                #expect((body.split(separator: "\n").filter { $0.hasPrefix("mqtt_bridge_drops_total{") && !$0.hasSuffix(" 0") }).isEmpty)
            }
            await peer.close()
            child.signal(SIGTERM)
            #expect(await child.exitStatus() != nil)
            recorder.stop()
            await sub.shutdown()
        }
    }
}
