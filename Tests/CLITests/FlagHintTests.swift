import Mosquitto
import MosquittoCLI
import MosquittoTestSupport
import Testing

/// The library's errors say what is wrong in library terms; the command line adds the flags to check.
@Suite("Flag hints for library errors", .timeLimit(.minutes(5 * testTimeScale)))
struct FlagHintTests {
    @Test("a library error gets the flags that configured the failing part, once")
    func hints() {
        var tls = MQTTConfiguration(host: "localhost", port: 8883)
        tls.tls = .init()
        let noCA = MQTTError(.tls, "TLS needs trusted CA certificates: a CA file, a CA directory or the system store.")
        #expect(ConnectionOptions.messageWithFlagHint(for: noCA, configuration: tls)
                == "TLS needs trusted CA certificates: a CA file, a CA directory or the system store; check --cafile, --capath or --tls-use-os-certs.")

        let plain = MQTTConfiguration(host: "localhost", port: 1883)
        let refused = MQTTError(.badCredentials, "The broker refused the user name or password.")
        #expect(ConnectionOptions.messageWithFlagHint(for: refused, configuration: plain)
                == "The broker refused the user name or password; check -u, -P, --password-file or --password-env.")

        // A message that already names a flag is left alone, and so is one no option is to blame for.
        let named = MQTTError(.tls, "Mutual TLS needs both a certificate (--cert) and its private key (--key).")
        #expect(ConnectionOptions.messageWithFlagHint(for: named, configuration: tls) == named.message)
        let other = MQTTError(.payloadTooLarge, "The payload is too large.")
        #expect(ConnectionOptions.messageWithFlagHint(for: other, configuration: plain) == other.message)
    }

    @Test("the library's own errors carry no flag; mqtt-bridge's hint names the flags to check")
    func realLibraryErrors() {
        var tls = MQTTConfiguration(host: "localhost", port: 8883)
        tls.tls = .init()
        var persistent = MQTTConfiguration(host: "localhost", port: 1883)
        persistent.session = .persistent(expiry: 60)
        let cases: [(MQTTConfiguration, String)] = [
            (tls, "; check --cafile, --capath or --tls-use-os-certs."),
            (persistent, "; check -i or -c."),
        ]
        for (configuration, hint) in cases {
            do {
                _ = try MQTTClient(configuration: configuration)
                Issue.record("no error for \(configuration)")
            } catch {
                #expect(!ConnectionOptions.namesAFlag(error.message), "the library names a flag: \(error.message)")
                let message = ConnectionOptions.messageWithFlagHint(for: error, configuration: configuration)
                #expect(message.hasSuffix(hint), "\(message)")
            }
        }
    }
}
