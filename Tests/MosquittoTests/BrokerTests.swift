#if canImport(Darwin)
import Darwin
#elseif canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

import Foundation
import MosquittoBroker
import MosquittoTestSupport
import Testing

/// Tests of ``MosquittoBroker`` against the real `mosquitto` binary, checked with raw TCP
/// sockets and the `mosquitto_pub` / `mosquitto_sub` command-line clients.
@Suite("MosquittoBroker", .timeLimit(.minutes(1 * testTimeScale)))
struct BrokerTests {
    // MARK: Lifecycle

    @Test("start, accept TCP and MQTT, stop, shut down")
    func startConnectStop() async throws {
        let broker = try MosquittoBroker()
        #expect(broker.port == 0)
        #expect(!broker.isRunning)
        #expect(broker.tlsPort == nil)
        #expect(broker.tlsFiles == nil)

        try await broker.start()
        #expect(broker.isRunning)
        #expect(broker.host == "127.0.0.1")
        #expect(broker.port > 0)
        #expect(broker.processIdentifier != nil)
        #expect(canConnect(port: broker.port))

        // A real MQTT round trip: a retained message published by one client is read by another.
        let published = try await client(.pub, "-p", "\(broker.port)", "-t", "lifecycle/hello", "-m", "hi", "-r", "-q", "1")
        #expect(published.status == 0, "\(published.output)")
        let received = try await client(.sub, "-p", "\(broker.port)", "-t", "lifecycle/hello", "-C", "1", "-W", "5")
        #expect(received.status == 0)
        #expect(received.output == "hi\n")

        // Starting twice is refused and leaves the running broker alone.
        let error = await #expect(throws: MosquittoBrokerError.self) { try await broker.start() }
        #expect(error?.code == .alreadyRunning)
        #expect(broker.isRunning)

        let configuration = try String(contentsOfFile: broker.configurationFile, encoding: .utf8)
        #expect(configuration.contains("\nlistener \(broker.port) 127.0.0.1\n"))
        #expect(configuration.contains("\nallow_anonymous true\n"))
        #expect(configuration.contains("\nlog_dest file \(broker.logFile)\n"))
        #expect(configuration.contains("\npersistence false\n"))
        #expect(!configuration.contains("password_file"))
        #expect(broker.logContents().contains("mosquitto version"))

        #expect(try permissions(broker.directory) == 0o700)
        #expect(try permissions(broker.dataDirectory) == 0o700)
        #expect(try permissions(broker.configurationFile) == 0o600)
        #expect(try permissions(broker.logFile) == 0o600)
        #expect(try permissions(broker.outputFile) == 0o600)

        let port = broker.port
        let runningPID = try #require(broker.processIdentifier)
        await broker.stop()
        #expect(!broker.isRunning)
        #expect(broker.processIdentifier == nil)
        // The process is gone and reaped (its port is free; in the parallel suite another test's broker may
        // already listen on it, so the port itself says nothing).
        #expect(!processExists(runningPID))
        #expect(broker.port == port, "the port is kept for a later start")
        #expect(broker.logContents().contains("terminating"))

        let directory = broker.directory
        await broker.shutdown()
        #expect(!FileManager.default.fileExists(atPath: directory))
        let afterShutdown = await #expect(throws: MosquittoBrokerError.self) { try await broker.start() }
        #expect(afterShutdown?.code == .shutDown)
    }

    @Test("restart and stop-then-start keep the same port")
    func restartKeepsPort() async throws {
        // A graceful restart must not fall back to waiting out the stop timeout and SIGKILL. With a 60 s timeout,
        // a bound of 30 s tells the two apart however loaded the machine is (a ThreadSanitizer run in the full
        // suite took 5.2 s for a restart that is 0.3 s on a quiet machine).
        var configuration = MosquittoBroker.Configuration()
        configuration.stopTimeout = .seconds(60)
        try await withUnstartedBroker(configuration) { broker in
            try await broker.start()
            let port = broker.port
            let firstPID = try #require(broker.processIdentifier)

            let clock = ContinuousClock()
            let restartTime = try await clock.measure { try await broker.restart() }
            #expect(broker.isRunning)
            #expect(broker.port == port)
            #expect(broker.processIdentifier != firstPID)
            #expect(canConnect(port: port))
            #expect(restartTime < .seconds(30), "restart took \(restartTime)")

            let restartedPID = try #require(broker.processIdentifier)
            await broker.stop()
            #expect(!processExists(restartedPID))
            try await broker.start()
            #expect(broker.port == port)
            #expect(canConnect(port: port))
            let published = try await client(.pub, "-p", "\(port)", "-t", "t", "-m", "after restart")
            #expect(published.status == 0, "\(published.output)")

            // Three launches, three "starting" lines, all appended to the same log file.
            #expect(broker.logContents().components(separatedBy: "starting").count - 1 == 3)
        }
    }

    @Test("kill() and an external kill -9 are detected; the broker restarts on the same port")
    func killNine() async throws {
        try await withUnstartedBroker { broker in
            try await broker.start()
            let port = broker.port
            let pid = try #require(broker.processIdentifier)

            await broker.kill()
            #expect(!broker.isRunning)
            #expect(!processExists(pid), "the killed broker has been reaped")
            #expect(!broker.logContents().contains("terminating"), "SIGKILL gives mosquitto no chance to log")

            try await broker.start()
            #expect(broker.port == port)
            let externalPID = try #require(broker.processIdentifier)
            #expect(externalPID != pid)

            // Somebody else kills the broker: isRunning notices without any call on the broker.
            #expect(kill(externalPID, SIGKILL) == 0)
            #expect(try await pollUntil { !broker.isRunning })
            #expect(!processExists(externalPID), "the externally killed broker has been reaped")

            try await broker.restart()
            #expect(broker.isRunning)
            #expect(broker.port == port)
            #expect(canConnect(port: port))
        }
    }

    @Test("a stopped broker keeps its ports: nothing else can bind them, connections are refused, and it starts on them again", arguments: [false, true])
    func stoppedBrokerKeepsItsPorts(webSockets: Bool) async throws {
        var configuration = MosquittoBroker.Configuration(tls: webSockets)
        configuration.webSockets = webSockets
        try await withUnstartedBroker(configuration) { broker in
            try await broker.start()
            let ports = [broker.port, broker.tlsPort, broker.webSocketsPort, broker.webSocketsTLSPort].compactMap { $0 }
            #expect(ports.count == (webSockets ? 4 : 1))
            for round in 1...2 {
                if round == 1 { await broker.stop() } else { await broker.kill() }
                for port in ports {
                    // What another process (or this one's bind(0) and outgoing connections) would do: a plain bind.
                    #expect(bindWithoutReuse(port) == EADDRINUSE, "port \(port) was free for anyone while the broker was down")
                    #expect(connectErrno(port) == ECONNREFUSED, "port \(port) must refuse, as with nothing listening")
                }
                try await broker.start()
                for port in ports {
                    #expect(connectErrno(port) == 0, "broker not listening on \(port) after start \(round + 1)")
                }
            }
        }
    }

    @Test("a broker dropped while running is killed and its directory removed")
    func deinitKillsBroker() async throws {
        let (directory, pid) = try await startAndForget()
        // kill(pid, 0) succeeds until the child is reaped, so this also checks that Foundation saw the exit.
        // (Not whether the port still answers: in a parallel run another test's broker may take the freed port.)
        #expect(try await pollUntil { !processExists(pid) }, "mosquitto (pid \(pid)) is still running or not reaped")
        #expect(!FileManager.default.fileExists(atPath: directory))
    }

    // MARK: Configuration

    @Test("persistence: retained messages survive stop/start but not changes lost to kill -9")
    func persistence() async throws {
        try await withUnstartedBroker(.init(persistence: true)) { broker in
            try await broker.start()
            let port = "\(broker.port)"
            let configuration = try String(contentsOfFile: broker.configurationFile, encoding: .utf8)
            #expect(configuration.contains("\npersistence true\n"))
            #expect(configuration.contains("\npersistence_location \(broker.dataDirectory)/\n"))

            #expect(try await client(.pub, "-p", port, "-t", "kept", "-m", "saved", "-r", "-q", "1").status == 0)
            await broker.stop()
            let database = broker.dataDirectory + "/mosquitto.db"
            #expect(FileManager.default.fileExists(atPath: database), "mosquitto saves on SIGTERM")
            #expect(try permissions(database) == 0o600)

            try await broker.start()
            let kept = try await client(.sub, "-p", port, "-t", "kept", "-C", "1", "-W", "5")
            #expect(kept.output == "saved\n")

            // Published after the last save (autosave is every 1800 s by default), then SIGKILL: lost.
            #expect(try await client(.pub, "-p", port, "-t", "lost", "-m", "unsaved", "-r", "-q", "1").status == 0)
            await broker.kill()
            try await broker.start()
            let lost = try await client(.sub, "-p", port, "-t", "lost", "-C", "1", "-W", "1")
            #expect(lost.status != 0, "mosquitto_sub should time out")
            #expect(!lost.output.contains("unsaved"))
            let stillKept = try await client(.sub, "-p", port, "-t", "kept", "-C", "1", "-W", "5")
            #expect(stillKept.output == "saved\n")
        }
    }

    @Test("users: password file, wrong password and anonymous clients are refused")
    func passwordAuthentication() async throws {
        let broker = try MosquittoBroker(
            configuration: .init(users: ["alice": "wonderland", "bob": "the builder"])
        )
        defer { Task { await broker.shutdown() } }
        try await broker.start()
        let port = "\(broker.port)"

        let passwordFile = try String(contentsOfFile: broker.passwordFile, encoding: .utf8)
        #expect(passwordFile.hasPrefix("alice:"))
        #expect(passwordFile.contains("\nbob:"))
        #expect(!passwordFile.contains("wonderland"), "passwords are stored hashed")
        #expect(try permissions(broker.passwordFile) == 0o600)
        let configuration = try String(contentsOfFile: broker.configurationFile, encoding: .utf8)
        #expect(configuration.contains("\nallow_anonymous false\n"))
        #expect(configuration.contains("\npassword_file \(broker.passwordFile)\n"))

        let alice = try await client(.pub, "-p", port, "-u", "alice", "-P", "wonderland", "-t", "a", "-m", "1")
        #expect(alice.status == 0, "\(alice.output)")
        let bob = try await client(.pub, "-p", port, "-u", "bob", "-P", "the builder", "-t", "a", "-m", "1")
        #expect(bob.status == 0, "\(bob.output)")

        let wrong = try await client(.pub, "-p", port, "-u", "alice", "-P", "looking-glass", "-t", "a", "-m", "1")
        #expect(wrong.status != 0)
        #expect(wrong.output.contains("not authorised"))
        let anonymous = try await client(.pub, "-p", port, "-t", "a", "-m", "1")
        #expect(anonymous.status != 0)
        #expect(anonymous.output.contains("not authorised"))
        let subscriber = try await client(.sub, "-p", port, "-u", "alice", "-P", "nope", "-t", "a", "-C", "1", "-W", "3")
        #expect(subscriber.status != 0)
    }

    @Test("ACL file: a denied publish never reaches subscribers")
    func accessControlList() async throws {
        var configuration = MosquittoBroker.Configuration(users: ["alice": "a-pass", "bob": "b-pass"])
        configuration.aclFileContents = """
            user alice
            topic readwrite allowed/#

            user bob
            topic read #
            """
        try await withUnstartedBroker(configuration) { broker in
            try await broker.start()
            let port = "\(broker.port)"
            let alice = ["-p", port, "-u", "alice", "-P", "a-pass"]
            let bob = ["-p", port, "-u", "bob", "-P", "b-pass"]

            // Publishing to a denied topic still "succeeds" for the client; the broker drops the message.
            #expect(try await client(.pub, alice + ["-t", "allowed/x", "-m", "yes", "-r", "-q", "1"]).status == 0)
            #expect(try await client(.pub, alice + ["-t", "denied/x", "-m", "no", "-r", "-q", "1"]).status == 0)

            let allowed = try await client(.sub, bob + ["-t", "allowed/x", "-C", "1", "-W", "5"])
            #expect(allowed.output == "yes\n")
            let denied = try await client(.sub, bob + ["-t", "denied/x", "-C", "1", "-W", "1"])
            #expect(denied.status != 0)
            #expect(!denied.output.contains("no\n"))
            #expect(try permissions(broker.directory + "/acl") == 0o600)
        }
    }

    @Test("TLS listener: accepted with the test CA, rejected with the wrong CA")
    func tlsListener() async throws {
        try await withUnstartedBroker(.init(tls: true)) { broker in
            let files = try #require(broker.tlsFiles)
            try await broker.start()
            let tlsPort = try #require(broker.tlsPort)
            #expect(tlsPort != broker.port)
            #expect(canConnect(port: tlsPort))
            for path in [files.caFile, files.caKey, files.serverCertificate, files.serverKey,
                         files.clientCertificate, files.clientKey, files.wrongCAFile] {
                #expect(try permissions(path) == 0o600, "\(path)")
            }

            let viaIP = try await client(.pub, "-p", "\(tlsPort)", "--cafile", files.caFile, "-t", "tls", "-m", "secure", "-r")
            #expect(viaIP.status == 0, "\(viaIP.output)")
            // The server certificate names both 127.0.0.1 and localhost, so hostname checks pass either way.
            let viaName = try await client(
                .sub, "-h", "localhost", "-p", "\(tlsPort)", "--cafile", files.caFile, "-t", "tls", "-C", "1", "-W", "5"
            )
            #expect(viaName.output == "secure\n")

            let wrongCA = try await client(.pub, "-p", "\(tlsPort)", "--cafile", files.wrongCAFile, "-t", "tls", "-m", "x")
            #expect(wrongCA.status != 0)
            #expect(wrongCA.output.contains("TLS") || wrongCA.output.contains("certificate"), "\(wrongCA.output)")

            // Plain MQTT on the TLS port fails; the plain port still works.
            let plainOnTLS = try await client(.pub, "-p", "\(tlsPort)", "-t", "tls", "-m", "x")
            #expect(plainOnTLS.status != 0)
            #expect(try await client(.pub, "-p", "\(broker.port)", "-t", "plain", "-m", "x").status == 0)
        }
    }

    @Test("TLS with require_certificate: only clients presenting the test client certificate get in")
    func tlsClientCertificate() async throws {
        var configuration = MosquittoBroker.Configuration(tls: true)
        configuration.requireClientCertificate = true
        try await withUnstartedBroker(configuration) { broker in
            try await broker.start()
            let files = try #require(broker.tlsFiles)
            let tlsPort = "\(try #require(broker.tlsPort))"
            let configurationText = try String(contentsOfFile: broker.configurationFile, encoding: .utf8)
            #expect(configurationText.contains("\nrequire_certificate true\n"))

            let withCertificate = try await client(
                .pub, "-p", tlsPort, "--cafile", files.caFile,
                "--cert", files.clientCertificate, "--key", files.clientKey, "-t", "t", "-m", "x"
            )
            #expect(withCertificate.status == 0, "\(withCertificate.output)")
            let withoutCertificate = try await client(.pub, "-p", tlsPort, "--cafile", files.caFile, "-t", "t", "-m", "x")
            #expect(withoutCertificate.status != 0)
        }
    }

    @Test("queue, in-flight, autosave and extra lines reach mosquitto.conf and mosquitto accepts them")
    func generatedConfiguration() async throws {
        var configuration = MosquittoBroker.Configuration(persistence: true)
        configuration.autosaveInterval = 5
        configuration.maxInflightMessages = 1
        configuration.maxQueuedMessages = 0
        configuration.extraConfiguration = ["max_keepalive 120", "retain_available true"]
        try await withUnstartedBroker(configuration) { broker in
            try await broker.start()
            #expect(broker.isRunning)

            let text = try String(contentsOfFile: broker.configurationFile, encoding: .utf8)
            for line in [
                "autosave_interval 5", "max_inflight_messages 1", "max_queued_messages 0",
                "max_keepalive 120", "retain_available true", "per_listener_settings false",
            ] {
                #expect(text.contains("\n\(line)\n"), "missing \(line)")
            }
            #expect(!text.contains("listener 0 "))
            #expect(text.components(separatedBy: "\nlistener ").count - 1 == 1, "one listener without TLS")
        }
    }

    // MARK: Failures

    @Test("a configuration mosquitto rejects fails start() with the broker's own error message")
    func rejectedConfiguration() async throws {
        var configuration = MosquittoBroker.Configuration()
        configuration.extraConfiguration = ["no_such_option 42"]
        try await withUnstartedBroker(configuration) { broker in
            let error = await #expect(throws: MosquittoBrokerError.self) { try await broker.start() }
            #expect(error?.code == .exitedDuringStartup)
            #expect(error?.description.contains("no_such_option") == true, "\(String(describing: error))")
            #expect(error?.logTail?.contains("Unknown configuration variable") == true)
            #expect(!broker.isRunning)
            #expect(broker.processIdentifier == nil)
        }
    }

    @Test("a missing mosquitto binary gives an error that says how to install it")
    func missingExecutable() async throws {
        var configuration = MosquittoBroker.Configuration()
        configuration.executablePath = "/nonexistent/sbin/mosquitto"
        try await withUnstartedBroker(configuration) { broker in
            let error = await #expect(throws: MosquittoBrokerError.self) { try await broker.start() }
            #expect(error?.code == .executableNotFound)
            #expect(error?.description.contains("/nonexistent/sbin/mosquitto") == true)
            #expect(error?.description.contains("apt-get install mosquitto") == true)
            #expect(!broker.isRunning)
        }
    }

    @Test("invalid usernames are rejected before anything runs")
    func invalidUsername() throws {
        let error = #expect(throws: MosquittoBrokerError.self) {
            _ = try MosquittoBroker(configuration: .init(users: ["ali:ce": "x"]))
        }
        #expect(error?.code == .invalidConfiguration)
    }

    @Test("two brokers side by side get different ports")
    func twoBrokers() async throws {
        try await withUnstartedBroker { first in
            try await withUnstartedBroker { second in
                try await first.start()
                try await second.start()
                #expect(first.port != second.port)
                #expect(first.directory != second.directory)
                #expect(canConnect(port: first.port) && canConnect(port: second.port))
            }
        }
    }
}

// MARK: - Helpers

/// Runs `body` with a new broker and shuts the broker down afterwards, whether `body` throws or not.
private func withUnstartedBroker(
    _ configuration: MosquittoBroker.Configuration = .init(),
    _ body: (MosquittoBroker) async throws -> Void
) async throws {
    let broker = try MosquittoBroker(configuration: configuration)
    do {
        try await body(broker)
    } catch {
        await broker.shutdown()
        throw error
    }
    await broker.shutdown()
}

/// Starts a broker and drops the last reference to it. Returns where it was.
private func startAndForget() async throws -> (directory: String, pid: Int32) {
    let broker = try MosquittoBroker()
    try await broker.start()
    return (broker.directory, try #require(broker.processIdentifier))
}

private func processExists(_ pid: Int32) -> Bool {
    kill(pid, 0) == 0
}

private func permissions(_ path: String) throws -> Int {
    let attributes = try FileManager.default.attributesOfItem(atPath: path)
    return try #require((attributes[.posixPermissions] as? NSNumber)?.intValue) & 0o777
}

/// Polls `condition` every 20 ms for up to `timeout`.
private func pollUntil(timeout: Duration = .seconds(5), _ condition: () -> Bool) async throws -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if condition() { return true }
        try await Task.sleep(for: .milliseconds(20))
    }
    return condition()
}

/// Whether a TCP connection to 127.0.0.1:`port` succeeds.
private func canConnect(port: Int) -> Bool {
    #if canImport(Darwin)
    let fd = socket(AF_INET, SOCK_STREAM, 0)
    #else
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
    #endif
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var address = sockaddr_in()
    #if canImport(Darwin)
    address.sin_len = UInt8(MemoryLayout<sockaddr_in>.size)
    #endif
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr = in_addr(s_addr: in_addr_t(0x7F00_0001).bigEndian)
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
        }
    }
}

private enum ClientTool: String {
    case pub = "mosquitto_pub"
    case sub = "mosquitto_sub"
}

private struct ClientResult {
    /// The exit code; 128 + the signal number when a signal ended the client.
    var status: Int32
    /// Standard output and standard error together.
    var output: String
}

private func client(_ tool: ClientTool, _ arguments: String...) async throws -> ClientResult {
    try await client(tool, arguments)
}

/// Runs `mosquitto_pub` or `mosquitto_sub` against 127.0.0.1 (unless `-h` is given) and waits for it.
///
/// Goes through ``MosquittoBroker/runCommand(_:_:timeout:)``: a bare `Process` launched from a test
/// (a Swift concurrency thread) would pass on a signal mask blocking `SIGALRM`, and `mosquitto_sub -W`
/// would hang.
private func client(_ tool: ClientTool, _ arguments: [String]) async throws -> ClientResult {
    let result = try await MosquittoBroker.runCommand(
        tool.rawValue,
        (arguments.contains("-h") ? [] : ["-h", "127.0.0.1"]) + arguments,
        timeout: .seconds(15)
    )
    #expect(!result.timedOut, "\(tool.rawValue) \(arguments) ran past its time limit")
    return ClientResult(
        status: result.wasSignalled ? 128 + result.exitCode : result.exitCode,
        output: result.output
    )
}

/// `bind(127.0.0.1:port)` without `SO_REUSEADDR`: 0, or the errno.
private func bindWithoutReuse(_ port: Int) -> Int32 {
    withLoopbackSocket(port) { fd, address in bind(fd, address, socklen_t(MemoryLayout<sockaddr_in>.size)) }
}

/// `connect(127.0.0.1:port)`: 0, or the errno.
private func connectErrno(_ port: Int) -> Int32 {
    withLoopbackSocket(port) { fd, address in connect(fd, address, socklen_t(MemoryLayout<sockaddr_in>.size)) }
}

private func withLoopbackSocket(_ port: Int, _ call: (Int32, UnsafePointer<sockaddr>) -> Int32) -> Int32 {
    #if canImport(Glibc)
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
    #else
    let fd = socket(AF_INET, SOCK_STREAM, 0)
    #endif
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let result = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { call(fd, $0) } }
    return result == 0 ? 0 : errno
}
