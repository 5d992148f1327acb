import Testing
import Mosquitto
import MQTTURLParser

/// The one `-L` URL parser, used by the library (`MQTTURL`, `MQTTConfiguration(url:)`) and the CLIs. The cases are
/// those where the library's and the CLIs' parsers used to disagree.
@Suite("MQTT URLs: one parser for the library and the CLIs")
struct MQTTURLTests {
    private func parse(_ url: String, requireTopic: Bool = false) throws(MQTTURLComponents.Failure) -> MQTTURLComponents {
        try MQTTURLComponents(parsing: url, requireTopic: requireTopic)
    }

    private func failure(_ url: String, requireTopic: Bool = false) -> MQTTURLComponents.Failure? {
        do {
            _ = try parse(url, requireTopic: requireTopic)
            return nil
        } catch {
            return error
        }
    }

    @Test("the plain forms, with the default ports")
    func plain() throws {
        let u = try parse("mqtt://broker.example/a/b/#")
        #expect(u.scheme == .mqtt && u.hostString == "broker.example" && u.port == 1883 && !u.portGiven)
        #expect(u.topic == Array("a/b/#".utf8) && u.username == nil && u.password == nil)
        let s = try parse("mqtts://user:pw@broker.example:8884/t")
        #expect(s.scheme.isTLS && s.port == 8884 && s.portGiven)
        #expect(s.username == Array("user".utf8) && s.password == Array("pw".utf8))
        #expect(try parse("mqtts://h").port == 8883)
        #expect(try parse("mqtt://h/").topic == [])
        #expect(try parse("mqtt://h").topic == nil)
    }

    @Test("the scheme is matched in any case (the library used to require lower case; mosquitto does not)")
    func schemeCase() throws {
        #expect(try parse("MQTT://h/t").scheme == .mqtt)
        #expect(try parse("Mqtts://h/t").scheme == .mqtts)
        #expect(try MQTTURL("MQTTS://h").isTLS)
        #expect(failure("http://h/t") == .unsupportedScheme)
        #expect(failure("mqtt:/h/t") == .unsupportedScheme)
    }

    @Test("ws:// and wss:// parse; the library reads the rest of the URL as the WebSocket path")
    func webSockets() throws {
        #expect(try parse("ws://h/t").scheme == .ws)
        #expect(try parse("wss://h/t").scheme.isTLS)
        #expect(try parse("wss://h/t").port == 8883)
        #expect(try MQTTURL("ws://h/t").isWebSockets)
        let plain = try MQTTConfiguration(url: "ws://u:p@h:8080")
        #expect(plain.transport == .webSockets(.init(path: "/mqtt")) && plain.tls == nil && plain.endpoint == .tcp(host: "h", port: 8080))
        #expect(plain.credentials == .init(username: "u", password: "p"))
        let secure = try MQTTConfiguration(url: "WSS://h/ws/mqtt")
        #expect(secure.transport == .webSockets(.init(path: "/ws/mqtt")) && secure.tls?.useSystemCertificates == true)
        #expect(secure.endpoint == .tcp(host: "h", port: 8883))
        #expect(try MQTTConfiguration(url: "mqtt://h/t").transport == .tcp)
    }

    @Test("a missing topic is reported first when the CLI requires one, as mosquitto_pub does")
    func topicRequired() {
        #expect(failure("mqtt://localhost", requireTopic: true) == .missingTopic)
        #expect(failure("mqtt://", requireTopic: true) == .missingTopic)
        #expect(failure("mqtt://") == .missingHost)
    }

    @Test("user information ends at the last '@' (the CLI split at the first), the user name at the first ':'")
    func userinfo() throws {
        let u = try parse("mqtt://us:p@ss:w@host:1884/t")
        #expect(u.username == Array("us".utf8) && u.password == Array("p@ss:w".utf8))
        #expect(u.hostString == "host" && u.port == 1884)
        let empty = try parse("mqtt://:@host/t")
        #expect(empty.username == [] && empty.password == [])
        #expect(try parse("mqtt://only@host/t").password == nil)
        // No percent-decoding, as in mosquitto.
        #expect(try MQTTURL("mqtt://u:p%40s@h/t").password == "p%40s")
    }

    @Test("the host ends at its only ':' or is a bracketed IPv6 literal (the library split at the last ':', the CLI at the first)")
    func hostAndIPv6() throws {
        let v6 = try parse("mqtt://[::1]:1999/t")
        #expect(v6.hostString == "::1" && v6.port == 1999)
        #expect(try parse("mqtts://[fe80::1]/t").port == 8883)
        #expect(failure("mqtt://::1/t") == .invalidIPv6Literal)  // was host ":" port 1 (library), host "" port 0 (CLI)
        #expect(failure("mqtt://[::1/t") == .invalidIPv6Literal)
        #expect(failure("mqtt://[::1]x/t") == .invalidIPv6Literal)
        #expect(failure("mqtt://a:b:1883/t") == .invalidIPv6Literal)
        #expect(failure("mqtt://u:p@h:x:1/t") == .invalidIPv6Literal)
    }

    @Test("the port is 1 to 65535 in digits (the CLI took atoi's value: junk, 0 and out-of-range ports)")
    func port() {
        #expect(failure("mqtt://h:abc/t") == .invalidPort)
        #expect(failure("mqtt://h:1883x/t") == .invalidPort)
        #expect(failure("mqtt://h:/t") == .invalidPort)
        #expect(failure("mqtt://h:0/t") == .invalidPort)
        #expect(failure("mqtt://h:65536/t") == .invalidPort)
        #expect(failure("mqtt://h:-1/t") == .invalidPort)
        #expect((try? parse("mqtt://h:65535/t"))?.port == 65535)
        #expect((try? parse("mqtt://h:00001/t"))?.port == 1)
    }

    @Test("an empty host is refused (the CLI passed it on to libmosquitto)")
    func emptyHost() {
        #expect(failure("mqtt://u:p@/t") == .missingHost)
        #expect(failure("mqtt://:1883/t") == .missingHost)
        #expect(throws: MQTTError.self) { try MQTTURL("mqtt://u@") }
    }

    @Test("MQTTConfiguration(url:) takes host, port, credentials and TLS from the URL")
    func configuration() throws {
        let c = try MQTTConfiguration(url: "mqtts://alice:s3cret@broker.example:8884/ignored")
        #expect(c.endpoint == .tcp(host: "broker.example", port: 8884))
        #expect(c.credentials?.username == "alice" && c.credentials?.password == "s3cret")
        #expect(c.tls != nil)
        #expect(try MQTTConfiguration(url: "mqtt://[::1]").endpoint == .tcp(host: "::1", port: 1883))
    }
}
