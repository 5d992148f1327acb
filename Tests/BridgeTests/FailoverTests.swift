import ArgumentParser
import Foundation
import Logging
import Mosquitto
import MosquittoBroker
import MosquittoTestSupport
import MQTTBridge
import MQTTBridgeCommand
import Testing

@Suite("Bridge failover across brokers", .serialized, .timeLimit(.minutes(5 * testTimeScale)))
struct BridgeFailoverTests {
    @Test("address takes several brokers, as mosquitto's bridge does; round_robin false, which the bridge cannot honour, is refused with the reason")
    func configKeys() throws {
        let c = try ConfigParser.parse("""
        address 10.0.0.1:1883 10.0.0.2 [::1]:1884
        round_robin true
        route r
        mode tcp_server
        address 127.0.0.1:7000
        topic t
        """)
        #expect(c.mqtt.endpoints == [.tcp(host: "10.0.0.1", port: 1883), .tcp(host: "10.0.0.2", port: 1883), .tcp(host: "::1", port: 1884)])
        let ws = try ConfigParser.parse("address ws://127.0.0.1:8080/mqtt ws://127.0.0.2:8081/mqtt\nroute r\nmode tcp_server\naddress 127.0.0.1:7000\ntopic t\n")
        #expect(ws.mqtt.endpoints == [.tcp(host: "127.0.0.1", port: 8080), .tcp(host: "127.0.0.2", port: 8081)])
        #expect(ws.mqtt.transport == .webSockets(.init(path: "/mqtt")))
        let mixed = Result { () throws(ConfigErrors) in
            try ConfigParser.parse("address ws://127.0.0.1:8080/mqtt 127.0.0.2:1883\nroute r\nmode tcp_server\naddress 127.0.0.1:7000\ntopic t\n")
        }
        guard case .failure(let mixError) = mixed else { Issue.record("a mix of ws:// and plain addresses was accepted"); return }
        #expect(mixError.description.contains("mix of ws://"), "\(mixError.description)")

        let refused = Result { () throws(ConfigErrors) in
            try ConfigParser.parse("address a:1883 b:1883\nround_robin false\nroute r\nmode tcp_server\naddress 127.0.0.1:7000\ntopic t\n")
        }
        guard case .failure(let problems) = refused else { Issue.record("round_robin false was accepted"); return }
        let message = problems.description
        #expect(message.contains("round_robin false"), "\(message)")
        #expect(message.contains(":2:"), "names the line: \(message)")
    }

    @Test("--broker repeated lists the brokers; with -h it is refused, and a bad entry names the flag")
    func brokerFlags() throws {
        let logger = quietLogger()
        let route = ["--tcp-listen", "127.0.0.1:0", "--topic", "t"]
        let c = try BridgeCommand.parse(["--broker", "127.0.0.1:1883", "--broker", "127.0.0.2"] + route).makeConfiguration(logger: logger)
        #expect(c.mqtt.endpoints == [.tcp(host: "127.0.0.1", port: 1883), .tcp(host: "127.0.0.2", port: 1883)])
        #expect(throws: ValidationError.self) {
            _ = try BridgeCommand.parse(["-h", "a", "--broker", "b:1883"] + route).makeConfiguration(logger: logger)
        }
        do {
            _ = try BridgeCommand.parse(["--broker", "b:70000"] + route).makeConfiguration(logger: logger)
            Issue.record("a port out of range was accepted")
        } catch let e as ValidationError {
            #expect(e.message.contains("--broker") && e.message.contains("70000"), "\(e.message)")
        }
    }

    @Test("broker A is killed: the bridge moves to B, says so in its metrics and state topic, and the feed's frames go on to B")
    func killedBroker() async throws {
        try await withBroker(.init(persistence: false)) { a in
            try await withBroker(.init(persistence: false)) { b in
                let dir = temporaryDirectory()
                defer { try? FileManager.default.removeItem(atPath: dir) }
                let watchA = try await connected(a, id: "watch-a")
                let watchB = try await connected(b, id: "watch-b")
                let onA = Recorder(try await watchA.subscribe("fo/#", qos: .atLeastOnce, buffer: .recorder))
                let onB = Recorder(try await watchB.subscribe("fo/#", qos: .atLeastOnce, buffer: .recorder))
                let stateOnB = Recorder(try await watchB.subscribe("mqtt-bridge/fo-bridge/broker", qos: .atLeastOnce))

                var config = bridgeConfig(a, spool: dir, routes: [try serverRoute("r", topic: "fo/x")], id: "fo-bridge")
                config.statePrefix = "mqtt-bridge/fo-bridge"
                config.mqtt.endpoints = [.tcp(host: a.host, port: a.port), .tcp(host: b.host, port: b.port)]
                try await withBridge(config) { bridge in
                    #expect(await eventually { bridge.metrics.mqttBroker == "\(a.host):\(a.port)" })
                    let peer = try await FeedPeer.connect(port: try #require(bridge.port(ofRoute: "r")))
                    try await peer.write(Array((0..<500).map { "a\($0)\n" }.joined().utf8))
                    #expect(await eventually(timeout: .seconds(30)) { onA.count >= 500 })

                    await a.kill()
                    #expect(await eventually(timeout: .seconds(15)) { bridge.metrics.mqttBroker == "\(b.host):\(b.port)" && bridge.metrics.isMQTTConnected })
                    try await peer.write(Array((0..<500).map { "b\($0)\n" }.joined().utf8))
                    // Written after the failover: every frame reaches B.
                    #expect(await eventually(timeout: .seconds(30)) { Set(onB.strings.filter { $0.hasPrefix("b") }).count == 500 })
                    #expect(bridge.metrics.route("r").totalDropped == 0)
                    #expect(await eventually { stateOnB.strings.last == "\(b.host):\(b.port)" })
                    let text = String(decoding: bridge.metrics.registry.emitToBuffer(), as: UTF8.self)
                    #expect(text.contains("mqtt_bridge_mqtt_broker{broker=\"\(b.host):\(b.port)\"} 1"), "\(text.split(separator: "\n").filter { $0.contains("broker") })")
                    #expect(text.contains("mqtt_bridge_mqtt_broker{broker=\"\(a.host):\(a.port)\"} 0"))
                    await peer.close()
                }
                for r in [onA, onB, stateOnB] { r.stop() }
                await watchA.shutdown()
                await watchB.shutdown()
            }
        }
    }
}
