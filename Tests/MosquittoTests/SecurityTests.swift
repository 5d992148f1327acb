import Foundation
import Mosquitto
import MosquittoBroker
import MosquittoTestSupport
import Testing

@Suite("Authentication, authorisation and TLS", .timeLimit(.minutes(2 * testTimeScale)))
struct SecurityTests {
    static let acl = """
    user alice
    topic readwrite sensors/#
    topic read commands/#
    """

    @Test("Bad credentials and not-authorised give a clear error and do not retry forever", arguments: [MQTTProtocolVersion.v3_1_1, .v5])
    func refusals(version: MQTTProtocolVersion) async throws {
        var bc = MosquittoBroker.Configuration(users: ["alice": "wonderland"])
        bc.aclFileContents = Self.acl
        try await withBroker(bc) { broker in
            for (creds, expected) in [(MQTTConfiguration.Credentials(username: "alice", password: "wrong"), [MQTTError.Code.badCredentials, .notAuthorized]),
                                      (nil, [MQTTError.Code.notAuthorized, .badCredentials])] {
                var c = config(broker, version: version)
                c.credentials = creds
                c.reconnect.retryInitialConnect = true  // even so, fatal refusals must stop the retries
                let client = try MQTTClient(configuration: c)
                let events = client.makeEventStream()
                do {
                    try await client.connect()
                    Issue.record("connect with \(String(describing: creds)) must fail")
                } catch let e as MQTTError {
                    #expect(expected.contains(e.code), "got \(e.code): \(e.message)")
                    #expect(e.message.lowercased().contains("refused") || e.message.lowercased().contains("not authori"))
                }
                var reconnects = 0
                var gaveUp = false
                for await e in events {
                    if case .reconnecting = e { reconnects += 1 }
                    if case .gaveUp = e { gaveUp = true }
                }
                #expect(reconnects == 0, "a fatal refusal must not be retried")
                #expect(gaveUp)
                #expect(client.state == .shutDown)
            }
            // The right password works, and the ACL is enforced with reason codes on MQTT 5.
            let ok = try await connected(broker, version: version) { $0.credentials = .init(username: "alice", password: "wonderland") }
            try await ok.publish(MQTTMessage(topic: "sensors/a", string: "1"))
            if version == .v5 {
                do {
                    try await ok.publish(MQTTMessage(topic: "secret/a", string: "1", qos: .atLeastOnce))
                    Issue.record("publishing outside the ACL must fail on MQTT 5")
                } catch let e as MQTTError {
                    #expect(e.code == .notAuthorized)
                    #expect(e.reasonCode == .notAuthorized)
                }
            }
            // mosquitto's ACL file does not refuse subscriptions (it filters deliveries), so there is no SUBACK
            // failure to provoke here; on MQTT 3.1.1 a refused PUBLISH cannot be reported at all.
            await ok.shutdown()
        }
    }

    @Test("TLS connects with the right CA and fails clearly with a wrong one; mutual TLS works")
    func tls() async throws {
        var bc = MosquittoBroker.Configuration(tls: true)
        bc.requireClientCertificate = false
        try await withBroker(bc) { broker in
            let files = try #require(broker.tlsFiles)
            let port = try #require(broker.tlsPort)
            var good = config(broker)
            good.endpoint = .tcp(host: "localhost", port: port)
            good.tls = .init(caFile: files.caFile)
            let client = try MQTTClient(configuration: good)
            try await client.connect()
            let s = try await client.subscribe("tls/x")
            try await client.publish(MQTTMessage(topic: "tls/x", string: "secret"))
            #expect(try await collect(s, count: 1).first?.string == "secret")
            await client.shutdown()

            var mutual = good
            mutual.tls = .init(caFile: files.caFile, certificateFile: files.clientCertificate, keyFile: files.clientKey)
            let m = try MQTTClient(configuration: mutual)
            try await m.connect()
            await m.shutdown()

            var bad = good
            bad.tls = .init(caFile: files.wrongCAFile)
            bad.reconnect.retryInitialConnect = true
            let badClient = try MQTTClient(configuration: bad)
            do {
                try await badClient.connect()
                Issue.record("a wrong CA must fail")
            } catch let e as MQTTError {
                #expect(e.code == .tls, "\(e.code): \(e.message)")
                #expect(e.message.contains("TLS"))
            }
            // Unreadable files are refused before connecting.
            var missing = good
            missing.tls = .init(caFile: "/nonexistent/ca.pem")
            #expect(throws: MQTTError.self) { _ = try MQTTClient(configuration: missing) }
        }
    }
}
