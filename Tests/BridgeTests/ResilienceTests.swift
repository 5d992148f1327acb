import Foundation
import Mosquitto
import MosquittoBroker
import MosquittoTestSupport
import MQTTBridge
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Distinct payloads received, and how many copies arrived in all.
private func unique(_ r: Recorder) -> (Set<String>, Int) {
    let s = r.strings
    return (Set(s), s.count)
}

/// Whether the first arrival of each frame is in production order (duplicates from resends may come later).
private func firstArrivalsInOrder(_ strings: [String], prefix: String) -> Bool {
    var seen = Set<String>()
    var last = -1
    for s in strings where s.hasPrefix(prefix) && !seen.contains(s) {
        seen.insert(s)
        guard let n = Int(s.dropFirst(prefix.count)), n > last else { return false }
        last = n
    }
    return true
}

@Suite("Resilience", .serialized, .timeLimit(.minutes(5 * testTimeScale)))
struct ResilienceTests {
    @Test("the broker is stopped (SIGTERM) and restarted mid-stream: every frame arrives, in order of first arrival")
    func brokerRestart() async throws {
        var brokerConfig = MosquittoBroker.Configuration(persistence: true)
        brokerConfig.autosaveInterval = 1
        brokerConfig.maxQueuedMessages = 0  // the broker must not drop what it queues for the subscriber
        try await withBroker(brokerConfig) { broker in
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            // A persistent QoS 1 subscriber keeps its session across the restart.
            let sub = try await connected(broker, id: "restart-sub", persistent: true)
            let recorder = Recorder(try await sub.subscribe("r/#", qos: .atLeastOnce, buffer: .recorder))
            let config = bridgeConfig(broker, spool: dir, routes: [try serverRoute("r", topic: "r/x")], id: "restart-bridge")
            try await withBridge(config) { bridge in
                let peer = try await FeedPeer.connect(port: try #require(bridge.port(ofRoute: "r")))
                let total = 20000
                let writer = Task {
                    for chunk in stride(from: 0, to: total, by: 200) {
                        try await peer.write(Array((chunk..<chunk + 200).map { "f\($0)\n" }.joined().utf8))
                        try await Task.sleep(for: .milliseconds(5))
                    }
                }
                #expect(await eventually(timeout: .seconds(60)) { recorder.count > 2000 })
                await broker.stop()
                let duringOutage = bridge.metrics.route("r").framesIn.value
                try await Task.sleep(for: .milliseconds(500))
                try await broker.restart()
                try await writer.value
                let m = bridge.metrics.route("r")
                #expect(await eventually(timeout: .seconds(60)) { unique(recorder).0.count >= total })
                let (distinct, copies) = unique(recorder)
                // produced = delivered (distinct) + 0 drops; duplicates only from resends.
                let missing = Set((0..<total).map { "f\($0)" }).subtracting(distinct)
                #expect(missing.isEmpty, "\(missing.count) missing, e.g. \(missing.sorted().prefix(10))")
                #expect(m.totalDropped == 0)
                #expect(firstArrivalsInOrder(recorder.strings, prefix: "f"))
                #expect(bridge.metrics.mqttReconnects.value >= 1)
                print("broker restart: \(total) produced, \(distinct.count) delivered, \(copies - distinct.count) duplicates, \(duringOutage) spooled before the outage")
                await peer.close()
            }
            recorder.stop()
            await sub.shutdown()
        }
    }

    @Test("QoS 0 route while the broker is down: frames are spooled, the failed sends rewind, and every frame is sent once it is back")
    func qos0OutageRewind() async throws {
        var brokerConfig = MosquittoBroker.Configuration(persistence: true)
        brokerConfig.maxQueuedMessages = 0
        // The observer is a persistent QoS 1 session, and the broker delivers at the subscription's QoS: frames the
        // bridge sends after the restart are queued for the observer even when it reconnects later than the bridge
        // (which the reconnect timers alone cannot guarantee on a loaded machine). The bridge still publishes QoS 0.
        brokerConfig.extraConfiguration = ["upgrade_outgoing_qos true"]
        try await withBroker(brokerConfig) { broker in
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let sub = try await connected(broker, id: "q0-sub", persistent: true)
            let recorder = Recorder(try await sub.subscribe("q0/#", qos: .atLeastOnce, buffer: .recorder))
            var config = bridgeConfig(broker, spool: dir, routes: [try serverRoute("q0", topic: "q0/x", qos: .atMostOnce)], id: "q0-bridge")
            config.mqtt.reconnect.initialDelay = .milliseconds(1500)
            config.mqtt.reconnect.maximumDelay = .milliseconds(1500)
            try await withBridge(config) { bridge in
                let m = bridge.metrics.route("q0")
                let peer = try await FeedPeer.connect(port: try #require(bridge.port(ofRoute: "q0")))
                try await peer.write(Array((0..<100).map { "a\($0)\n" }.joined().utf8))
                #expect(await eventually { recorder.count >= 100 })
                await broker.stop()
                #expect(await eventually { !bridge.metrics.isMQTTConnected })
                // Written while the broker is down: QoS 0 cannot be queued by the client, so they stay in the spool.
                let outage = 2000
                try await peer.write(Array((0..<outage).map { "b\($0)\n" }.joined().utf8))
                #expect(await eventually { m.framesIn.value == 100 + outage })
                try await Task.sleep(for: .milliseconds(300))
                #expect(bridge.spoolDepth(ofRoute: "q0") == outage)
                try await broker.restart()
                #expect(await eventually(timeout: .seconds(30)) { bridge.spoolDepth(ofRoute: "q0") == 0 && recorder.count >= 100 + outage })
                try await Task.sleep(for: .milliseconds(300))
                let b = recorder.strings.filter { $0.hasPrefix("b") }
                // produced = delivered + 0 drops; in order; at most a resend's duplicates.
                #expect(Set(b) == Set((0..<outage).map { "b\($0)" }))
                #expect(firstArrivalsInOrder(recorder.strings, prefix: "b"))
                #expect(m.totalDropped == 0)
                #expect(m.framesPublished.value >= 100 + outage)
                await peer.close()
            }
            recorder.stop()
            await sub.shutdown()
        }
    }

    @Test("the bridge is killed with kill -9 mid-stream and restarted: every spooled frame arrives")
    func bridgeKill9() async throws {
        let executable = try #require(builtExecutable("mqtt-bridge"), "build the mqtt-bridge executable first (swift build)")
        var brokerConfig = MosquittoBroker.Configuration(persistence: true)
        brokerConfig.maxInflightMessages = 1  // slow the broker side down so the kill lands mid-publish
        brokerConfig.maxQueuedMessages = 0
        try await withBroker(brokerConfig) { broker in
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let feedPort = freeLoopbackPort()
            let httpPort = freeLoopbackPort()
            let configFile = dir + "/bridge.conf"
            try """
            address \(broker.host):\(broker.port)
            remote_clientid kill9-bridge
            cleansession false
            spool_dir \(dir)/spool
            metrics_listen 127.0.0.1:\(httpPort)
            progress_interval 0
            max_inflight_messages 1

            route k
            direction to_mqtt
            mode tcp_server
            address 127.0.0.1:\(feedPort)
            topic k/{feed}
            qos 1
            """.write(toFile: configFile, atomically: true, encoding: .utf8)
            let sub = try await connected(broker, id: "kill9-sub", persistent: true)
            let recorder = Recorder(try await sub.subscribe("k/#", qos: .atLeastOnce, buffer: .recorder))

            func launch() async throws -> Child {
                let child = try Child(executable, ["--config", configFile, "--log-level", "warning"], output: dir + "/bridge.log")
                let up = await eventually { (try? await httpGet(port: httpPort, path: "/readyz"))?.0 == 200 }
                #expect(up, "bridge did not become ready: \((try? String(contentsOfFile: dir + "/bridge.log", encoding: .utf8)) ?? "")")
                return child
            }

            // Phase 1: 20,000 frames into the first bridge process.
            let first = try await launch()
            let peer1 = try await FeedPeer.connect(port: feedPort)
            let phase1 = 20000
            try await peer1.write(Array((0..<phase1).map { "n\($0)\n" }.joined().utf8))
            let spooled = await eventually {
                guard let (_, body) = try? await httpGet(port: httpPort, path: "/metrics") else { return false }
                return metricValue(body, "mqtt_bridge_frames_in_total", route: "k") == Double(phase1)
            }
            #expect(spooled)
            let deliveredAtKill = Set(recorder.strings).count
            first.signal(SIGKILL)
            _ = await first.exitStatus()
            await peer1.close()
            #expect(deliveredAtKill < phase1, "the kill should land while frames are still being published")

            // Phase 2: a new process resends what was not acknowledged, and takes more frames.
            let second = try await launch()
            let peer2 = try await FeedPeer.connect(port: feedPort)
            let phase2 = 5000
            try await peer2.write(Array((phase1..<phase1 + phase2).map { "n\($0)\n" }.joined().utf8))
            let total = phase1 + phase2
            #expect(await eventually(timeout: .seconds(90)) { Set(recorder.strings).count >= total })
            let distinct = Set(recorder.strings)
            let missing = Set((0..<total).map { "n\($0)" }).subtracting(distinct)
            #expect(missing.isEmpty, "\(missing.count) missing, e.g. \(missing.sorted().prefix(10))")
            #expect(firstArrivalsInOrder(recorder.strings, prefix: "n"))
            print("kill -9: \(total) produced, \(distinct.count) delivered, \(recorder.count - distinct.count) duplicates, \(deliveredAtKill) delivered at the kill")
            await peer2.close()
            second.signal(SIGTERM)
            let status = await second.exitStatus()
            #expect(status != nil, "SIGTERM should stop the bridge")
            recorder.stop()
            await sub.shutdown()
        }
    }
}
