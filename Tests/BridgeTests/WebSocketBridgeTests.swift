import Foundation
import Mosquitto
import MosquittoBroker
import MosquittoTestSupport
import MQTTBridge
import Testing

/// mqtt-bridge's broker connection over WebSockets (issue #17): `address ws://…`/`wss://…` in the configuration file
/// (mqtt-bridge's `--ws` and `-L ws://` come from the shared broker options, tested with the CLIs).
@Suite("Bridge over WebSockets", .timeLimit(.minutes(5 * testTimeScale)))
struct WebSocketBridgeTests {
    @Test("address ws:// and wss:// choose the WebSockets transport; wss uses bridge_cafile, else the system's CAs")
    func configuration() throws {
        let route = "route a\nmode tcp_server\naddress 7000\ntopic t\n"
        let ws = try ConfigParser.parse("address ws://broker.example:8080/ws\n" + route)
        #expect(ws.mqtt.endpoint == .tcp(host: "broker.example", port: 8080))
        #expect(ws.mqtt.transport == .webSockets(.init(path: "/ws")))
        #expect(ws.mqtt.tls == nil)
        let wss = try ConfigParser.parse("address wss://broker.example:443\nbridge_cafile /etc/ca.pem\n" + route)
        #expect(wss.mqtt.transport == .webSockets(.init(path: "/mqtt")))
        #expect(wss.mqtt.tls?.caFile == "/etc/ca.pem" && wss.mqtt.tls?.useSystemCertificates == false)
        let system = try ConfigParser.parse("address WSS://broker.example\n" + route)
        #expect(system.mqtt.tls?.useSystemCertificates == true)
        #expect(system.mqtt.endpoint == .tcp(host: "broker.example", port: 8883))
        let plain = try ConfigParser.parse("address broker.example:1883\n" + route)
        #expect(plain.mqtt.transport == .tcp)
        #expect(throws: ConfigErrors.self) { try ConfigParser.parse("address ws://\n" + route) }
    }

    @Test("a feed's lines reach a plain subscriber through a bridge whose broker connection is wss")
    func feedOverWebSockets() async throws {
        var bc = MosquittoBroker.Configuration(tls: true)
        bc.webSockets = true
        try await withBroker(bc) { broker in
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let sub = try await connected(broker)
            let stream = try await sub.subscribe("wsfeed/#", qos: .atLeastOnce)
            var config = bridgeConfig(broker, spool: dir, routes: [try serverRoute("lines", topic: "wsfeed/{feed}")])
            config.mqtt.endpoint = .tcp(host: "localhost", port: broker.webSocketsTLSPort ?? 0)
            config.mqtt.transport = .webSockets(.init())
            config.mqtt.tls = .init(caFile: broker.tlsFiles?.caFile)
            try await withBridge(config) { bridge in
                let port = try #require(bridge.port(ofRoute: "lines"))
                let peer = try await FeedPeer.connect(port: port)
                let frames = (0..<100).map { "line \($0)" }
                try await peer.write(Array(frames.map { $0 + "\n" }.joined().utf8))
                // At least once: after a lost connection (a loaded stress run saw one) the bridge sends again what
                // the broker had not acknowledged, so a line may come twice; none may be missing or out of order.
                var got: [String] = []
                var seen = Set<String>()
                for try await m in stream {
                    let line = String(decoding: m.payload, as: UTF8.self)
                    if seen.insert(line).inserted { got.append(line) }
                    if got.count == frames.count { break }
                }
                #expect(got == frames)
                await peer.close()
            }
            await sub.shutdown()
        }
    }
}
