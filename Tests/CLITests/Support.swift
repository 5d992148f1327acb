import Foundation
import Logging
import Mosquitto
import MosquittoBroker
import MosquittoTestSupport
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Path of one of our tools (`mqtt-pub`, `mqtt-sub`, `mqtt-rr`), built next to the test bundle.
func tool(_ name: String) -> String { builtExecutable(name) ?? name }

/// Path of a mosquitto client, or nil when it is not installed.
func mosquittoTool(_ name: String) -> String? {
    for dir in ["/usr/bin", "/usr/local/bin", "/opt/homebrew/bin"] where FileManager.default.isExecutableFile(atPath: dir + "/" + name) {
        return dir + "/" + name
    }
    return nil
}

let hasMosquittoClients = mosquittoTool("mosquitto_sub") != nil && mosquittoTool("mosquitto_pub") != nil

/// `-h host -p port` for a broker.
func at(_ broker: MosquittoBroker) -> [String] { ["-h", broker.host, "-p", String(broker.port)] }

/// A library client connected to the broker (for test set-up and checks).
func libraryClient(_ broker: MosquittoBroker, version: MQTTProtocolVersion = .v5) async throws -> MQTTClient {
    var c = MQTTConfiguration(host: broker.host, port: broker.port, clientID: "t-\(UUID().uuidString.prefix(8))", protocolVersion: version)
    var logger = Logger(label: "test")
    logger.logLevel = .critical
    c.logger = logger
    let client = try MQTTClient(configuration: c)
    try await client.connect()
    return client
}

/// Waits until `child` has printed something on standard output (a subscriber that printed a retained message
/// is surely subscribed).
func printedSomething(_ child: Child, timeout: Duration = .seconds(30)) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while child.currentOutput().isEmpty {
        if ContinuousClock.now > deadline { return false }
        try? await Task.sleep(for: .milliseconds(20))
    }
    return true
}

/// Replaces `"tst":"…"` values (the receive time) so that two outputs can be compared.
func normalisedTimestamps(_ bytes: [UInt8]) -> String {
    let s = String(decoding: bytes, as: UTF8.self)
    // The remaining message expiry (86400 s when published) counts down while a message waits in the session
    // queue: the two subscribers start one after the other, seconds apart under load (86398 against 86400 in a
    // loaded ThreadSanitizer run). Any remaining expiry from 86000 up reads as 86400.
    return s.replacingOccurrences(of: #""tst":\s*"[^"]*""#, with: #""tst":"T""#, options: .regularExpression)
        .replacingOccurrences(of: #"86[0-4][0-9][0-9]"#, with: "86400", options: .regularExpression)
}

/// This process's environment without the user's mosquitto options files (`HOME` is an empty directory, no
/// `XDG_CONFIG_HOME`), and the directory to remove afterwards.
func environmentWithoutOptionsFiles() -> ([String: String], String) {
    let home = temporaryDirectory()
    var env = ProcessInfo.processInfo.environment
    env["HOME"] = home
    env.removeValue(forKey: "XDG_CONFIG_HOME")
    return (env, home)
}
