import Foundation
import Mosquitto
import MosquittoBroker
import MosquittoTestSupport
import Testing

/// The ways of reaching a broker (TLS, mutual TLS, TLS-PSK, a Unix socket, a bind address, a SOCKS5 proxy) and the
/// subscriber's --random-filter and --remove-retained, end to end with the built tools and the real broker;
/// mosquitto_pub/mosquitto_sub are the oracle for failures and for what a subscriber leaves behind.
@Suite(.serialized, .enabled(if: hasMosquittoClients, "mosquitto_sub/mosquitto_pub are not installed"), .timeLimit(.minutes(5 * testTimeScale)))
struct ConnectionTests {
    /// Publishes through `publishArgs` (our mqtt-pub) and checks that a plain subscriber on the broker's
    /// loopback listener receives the message.
    func delivered(_ broker: MosquittoBroker, _ publishArgs: [String], topic: String, _ comment: Comment) async throws {
        let watcher = try await libraryClient(broker)
        let stream = try await watcher.subscribe(topic, qos: .atLeastOnce)
        let r = try await run(tool("mqtt-pub"), publishArgs + ["-t", topic, "-m", "via \(topic)", "-q", "1"])
        #expect(r.status == 0, "\(comment): \(r)")
        var got: String?
        let reader = Task { () -> String? in
            for try await m in stream { return m.string }
            return nil
        }
        let timer = Task { try await Task.sleep(for: .seconds(10)); stream.cancel() }
        got = try await reader.value
        timer.cancel()
        #expect(got == "via \(topic)", comment)
        await watcher.shutdown()
    }

    @Test("TLS (CA file, client certificate) delivers; an untrusted CA fails, as with mosquitto_pub")
    func tls() async throws {
        var bc = MosquittoBroker.Configuration(tls: true)
        bc.requireClientCertificate = true
        try await withBroker(bc) { broker in
            let files = try #require(broker.tlsFiles)
            let port = String(try #require(broker.tlsPort))
            let tlsArgs = ["-h", "127.0.0.1", "-p", port, "--cafile", files.caFile, "--cert", files.clientCertificate, "--key", files.clientKey]
            try await delivered(broker, tlsArgs, topic: "tls/ok", "mutual TLS")
            // A subscriber over TLS too.
            // Retained, so that it reaches the subscriber whenever its TLS handshake and SUBSCRIBE are done.
            let sub = try Child(tool("mqtt-sub"), tlsArgs + ["-t", "tls/sub", "-C", "1", "-W", "30"])
            let p = try await run(tool("mqtt-pub"), tlsArgs + ["-t", "tls/sub", "-m", "secret", "-q", "1", "-r"])
            #expect(p.status == 0, "\(p)")
            let s = await sub.wait(timeout: .seconds(60))
            #expect(s.status == 0 && s.out == "secret\n", "\(s)")

            let wrong = ["-h", "127.0.0.1", "-p", port, "--cafile", files.wrongCAFile, "--cert", files.clientCertificate,
                         "--key", files.clientKey, "-t", "tls/no", "-m", "x"]
            let ours = try await run(tool("mqtt-pub"), wrong)
            let theirs = try await run(mosquittoTool("mosquitto_pub")!, wrong)
            // mosquitto_pub exits 1 or 8 depending on when OpenSSL reports the failure; ours always exits 8.
            #expect(ours.status == 8 && theirs.status != 0, "ours: \(ours)\ntheirs: \(theirs)")
            #expect(ours.stderr.split(separator: "\n").count == 1, "one line that says what failed: \(ours.stderr)")
            #expect(ours.stderr.contains("--cafile"), "it says what to check: \(ours.stderr)")
        }
    }

    @Test("TLS-PSK delivers with the right key; a wrong key fails, as with mosquitto_pub")
    func psk() async throws {
        let pskPort = try MosquittoBroker.freeLoopbackPort()
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let pskFile = dir + "/psk"
        try "device1:deadbeefcafe0123\n".write(toFile: pskFile, atomically: true, encoding: .utf8)
        var bc = MosquittoBroker.Configuration()
        bc.extraConfiguration = ["listener \(pskPort) 127.0.0.1", "psk_hint toolkit", "psk_file \(pskFile)", "use_identity_as_username true"]
        try await withBroker(bc) { broker in
            let base = ["-h", "127.0.0.1", "-p", String(pskPort), "--psk-identity", "device1"]
            try await delivered(broker, base + ["--psk", "deadbeefcafe0123"], topic: "psk/ok", "PSK")
            let wrong = base + ["--psk", "0000000000000000", "-t", "psk/no", "-m", "x"]
            let ours = try await run(tool("mqtt-pub"), wrong)
            let theirs = try await run(mosquittoTool("mosquitto_pub")!, wrong)
            // As with certificates, mosquitto_pub's exit code depends on timing; both fail, ours with 8.
            #expect(ours.status == 8 && theirs.status != 0, "ours: \(ours)\ntheirs: \(theirs)")
            #expect(ours.stderr.hasPrefix("Error: A TLS error occurred: "), "\(ours)")
        }
    }

    @Test("--unix, -A (bind address) and --proxy (SOCKS5) deliver; a bind address not on this host fails as mosquitto_pub fails")
    func transports() async throws {
        let socketPath = NSTemporaryDirectory() + "cli-\(UUID().uuidString.prefix(8)).sock"
        defer { try? FileManager.default.removeItem(atPath: socketPath) }
        var bc = MosquittoBroker.Configuration()
        bc.extraConfiguration = ["listener 0 \(socketPath)"]
        try await withBroker(bc) { broker in
            try await delivered(broker, ["--unix", socketPath], topic: "tr/unix", "Unix socket")
            try await delivered(broker, at(broker) + ["-A", "127.0.0.1"], topic: "tr/bind", "bind address")

            let proxy = try PacketRecorder(forwardingTo: broker.port, socks5: true)
            defer { proxy.close() }
            try await delivered(broker, at(broker) + ["--proxy", "socks5h://127.0.0.1:\(proxy.port)"], topic: "tr/proxy", "SOCKS5 proxy")
            #expect(proxy.proxiedConnections == 1, "the connection went through the proxy")

            // 192.0.2.1 (TEST-NET-1) is on no interface of this machine.
            let bad = at(broker) + ["-A", "192.0.2.1", "-t", "tr/x", "-m", "x"]
            let ours = try await run(tool("mqtt-pub"), bad)
            let theirs = try await run(mosquittoTool("mosquitto_pub")!, bad)
            #expect(ours.status != 0 && ours.status == theirs.status, "ours: \(ours)\ntheirs: \(theirs)")
        }
    }

    @Test("--random-filter prints about the given share of messages and counts all of them for -C")
    func randomFilter() async throws {
        var bc = MosquittoBroker.Configuration()
        bc.maxQueuedMessages = 0  // the session queues all 2,000 (the default keeps 1,000)
        try await withBroker(bc) { broker in
            let n = 2000
            let base = at(broker) + ["-q", "1", "-t", "rf/#", "-c", "-i", "rf-sub"]
            let create = try await run(tool("mqtt-sub"), base + ["-E"])
            #expect(create.status == 0, "\(create)")
            let pub = try await libraryClient(broker)
            for i in 0..<n { try await pub.publish(MQTTMessage(topic: "rf/x", string: "\(i)", qos: .atLeastOnce), completion: .enqueued) }
            await pub.waitUntilAllPublished()
            await pub.shutdown()
            let r = try await run(tool("mqtt-sub"), base + ["--random-filter", "25", "-C", String(n), "-W", "30"])
            let lines = r.out.split(separator: "\n").count
            #expect(r.status == 0, "-C counts every message, printed or not: \(r.stderr)")
            // Binomial(2000, 0.25): mean 500, standard deviation 19.4; this band is ±7 of them.
            #expect((364...636).contains(lines), "\(lines) of \(n) printed")
        }
    }

    @Test("--remove-retained clears what it receives, as mosquitto_sub does")
    func removeRetained() async throws {
        try await withBroker { broker in
            for (name, path) in [("ours", tool("mqtt-sub")), ("theirs", mosquittoTool("mosquitto_sub")!)] {
                let pub = try await libraryClient(broker)
                for i in 1...3 {
                    try await pub.publish(MQTTMessage(topic: "rr-\(name)/\(i)", string: "keep \(i)", qos: .atLeastOnce, retain: true))
                }
                try await pub.publish(MQTTMessage(topic: "rr-\(name)/live", string: "not retained", qos: .atLeastOnce))
                await pub.shutdown()
                let clear = try await run(path, at(broker) + ["-t", "rr-\(name)/#", "--remove-retained", "-v", "-W", "2"])
                // The retained messages, then (both tools) the empty clearing messages coming back live.
                let expected = (1...3).flatMap { ["rr-\(name)/\($0) keep \($0)", "rr-\(name)/\($0) (null)"] }.sorted()
                #expect(clear.out.split(separator: "\n").map(String.init).sorted() == expected, "\(name): \(clear)")
                #expect(clear.status == 27, "\(name): ends on -W")
                let after = try await run(path, at(broker) + ["-t", "rr-\(name)/#", "-v", "-W", "1"])
                #expect(after.out.isEmpty, "\(name): nothing retained is left: \(after)")
                #expect(after.status == 27)
            }
        }
    }
}
