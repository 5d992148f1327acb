import Foundation
import Mosquitto
import MosquittoBroker
import MosquittoCLI
import MosquittoTestSupport
import Testing

/// `--ws` and `-L ws://…`/`wss://…` on mqtt-pub, mqtt-sub and mqtt-rr (issue #17), against a broker's websockets
/// listeners, with mosquitto's own clients on the plain listener as the other end; and the exit codes mosquitto
/// 2.1's clients give when the WebSocket connection fails: 1 when the connection is refused, 8 for TLS, 13
/// (MOSQ_ERR_UNKNOWN) when the server does not upgrade.
@Suite("CLIs over WebSockets", .timeLimit(.minutes(5 * testTimeScale)))
struct WebSocketCLITests {
    static var wsBroker: MosquittoBroker.Configuration {
        var c = MosquittoBroker.Configuration(tls: true)
        c.webSockets = true
        return c
    }

    @Test("mosquitto_sub on the plain listener sees what mqtt-pub --ws and -L ws:// / wss:// send",
          .enabled(if: hasMosquittoClients))
    func pubOverWebSockets() async throws {
        try await withBroker(Self.wsBroker) { broker in
            let ws = String(broker.webSocketsPort ?? 0)
            let wss = String(broker.webSocketsTLSPort ?? 0)
            let ca = broker.tlsFiles?.caFile ?? ""
            let sub = try Child(mosquittoTool("mosquitto_sub")!, at(broker) + ["-t", "wscli/#", "-C", "3", "-v", "-q", "1"])
            defer { sub.killIfRunning() }
            // mosquitto_sub is subscribed once it printed the retained message.
            let retained = try await run(mosquittoTool("mosquitto_pub")!, at(broker) + ["-t", "wscli/0", "-m", "ready", "-r"])
            #expect(retained.status == 0)
            #expect(await printedSomething(sub, timeout: .seconds(30) * testTimeScale))
            let a = try await run(tool("mqtt-pub"), ["--ws", "-h", broker.host, "-p", ws, "-t", "wscli/a", "-m", "over ws", "-q", "1", "-V", "5",
                                                     "-D", "publish", "user-property", "k", "v"])
            #expect(a.status == 0, "\(a)")
            let b = try await run(tool("mqtt-pub"), ["-L", "wss://localhost:\(wss)/wscli/b", "--cafile", ca, "-m", "over wss", "-q", "1"])
            #expect(b.status == 0, "\(b)")
            let result = await sub.wait(timeout: .seconds(30) * testTimeScale)
            #expect(result.status == 0)
            #expect(result.out == "wscli/0 ready\nwscli/a over ws\nwscli/b over wss\n", "\(result)")
            _ = try await run(mosquittoTool("mosquitto_pub")!, at(broker) + ["-t", "wscli/0", "-n", "-r"])
        }
    }

    @Test("mqtt-sub --ws and -L ws:// see what mosquitto_pub sends on the plain listener", .enabled(if: hasMosquittoClients))
    func subOverWebSockets() async throws {
        try await withBroker(Self.wsBroker) { broker in
            let ws = String(broker.webSocketsPort ?? 0)
            let retained = try await run(mosquittoTool("mosquitto_pub")!, at(broker) + ["-t", "wssub/r", "-m", "ready", "-r"])
            #expect(retained.status == 0)
            let viaFlag = try Child(tool("mqtt-sub"), ["--ws", "-h", broker.host, "-p", ws, "-t", "wssub/#", "-C", "2", "-v", "-q", "1"])
            defer { viaFlag.killIfRunning() }
            let viaURL = try Child(tool("mqtt-sub"), ["-L", "ws://\(broker.host):\(ws)/wssub/#", "-C", "2", "-q", "2", "-V", "mqttv5"])
            defer { viaURL.killIfRunning() }
            #expect(await printedSomething(viaFlag, timeout: .seconds(30) * testTimeScale))
            #expect(await printedSomething(viaURL, timeout: .seconds(30) * testTimeScale))
            let payload = String(repeating: "x", count: 300_000)
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            FileManager.default.createFile(atPath: dir + "/payload", contents: Data(payload.utf8))
            let p = try await run(mosquittoTool("mosquitto_pub")!, at(broker) + ["-t", "wssub/big", "-f", dir + "/payload", "-q", "1"])
            #expect(p.status == 0)
            let r1 = await viaFlag.wait(timeout: .seconds(60) * testTimeScale)
            let r2 = await viaURL.wait(timeout: .seconds(60) * testTimeScale)
            #expect(r1.status == 0 && r1.out == "wssub/r ready\nwssub/big \(payload)\n", "\(r1.status) \(r1.stderr)")
            #expect(r2.status == 0 && r2.out == "ready\n\(payload)\n", "\(r2.status) \(r2.stderr)")
            _ = try await run(mosquittoTool("mosquitto_pub")!, at(broker) + ["-t", "wssub/r", "-n", "-r"])
        }
    }

    /// mqtt-sub's reconnect over WebSockets makes a new tunnel (a new upgrade): libmosquitto's own reconnect, which
    /// mqtt-sub used when batching was off or with --message-rate, went back to the Unix socket of the tunnel that
    /// was gone and never came back.
    @Test("mqtt-sub --ws reconnects with a new upgrade after the broker restarts: batched, unbatched, --message-rate",
          arguments: ["batched", "unbatched", "message-rate"])
    func subReconnectsOverWebSockets(mode: String) async throws {
        var bc = MosquittoBroker.Configuration(persistence: true)
        bc.webSockets = true
        try await withBroker(bc) { broker in
            var env = ProcessInfo.processInfo.environment
            env["MOSQUITTO_SWIFT_SOCKET_BATCHING"] = mode == "batched" ? "on" : "off"
            var args = ["--ws", "-h", broker.host, "-p", String(broker.webSocketsPort ?? 0), "-t", "wsrc/#", "-c",
                        "-i", "ws-resumer-\(mode)", "-q", "1"]
            if mode == "message-rate" { args.append("--message-rate") }
            let sub = try Child(tool("mqtt-sub"), args, environment: env)
            defer { sub.killIfRunning() }
            func output() -> String { String(decoding: sub.currentOutput(), as: UTF8.self) }
            // With --message-rate the output is one "N msgs/s" line a second: subscribed once a line counts one.
            func received(after offset: Int = 0) -> Bool {
                let tail = String(decoding: sub.currentOutput().dropFirst(offset), as: UTF8.self)
                if mode != "message-rate" { return !tail.isEmpty }
                return tail.split(separator: "\n").contains { $0.hasSuffix(" msgs/s") && !$0.hasPrefix("0 ") }
            }
            let client = try await libraryClient(broker)
            let deadline = ContinuousClock.now + .seconds(30) * testTimeScale
            while !received() && ContinuousClock.now < deadline {
                try await client.publish(to: "wsrc/a", string: "first", qos: .atMostOnce)
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(received(), "mqtt-sub --ws never received anything: \(output())")
            await client.shutdown()
            try await broker.restart()
            let mark = sub.currentOutput().count
            // Queued for the persistent session while mqtt-sub is away: it arrives once mqtt-sub reconnected.
            let again = try await libraryClient(broker)
            try await again.publish(to: "wsrc/b", string: "after restart", qos: .atLeastOnce)
            #expect(await eventually(timeout: .seconds(30)) {
                mode == "message-rate" ? received(after: mark) : output().contains("after restart")
            }, "no message after the restart: \(output())")
            sub.signal(SIGTERM)
            let result = await sub.wait(timeout: .seconds(30) * testTimeScale)
            await again.shutdown()
            #expect(result.status == 0, "\(result)")
            if mode != "message-rate" { #expect(result.out.hasSuffix("after restart\n"), "\(result)") }
        }
    }

    /// Up to `count` messages from `stream`, or what arrived within `timeout` (the stream ends then).
    static func take(_ stream: MessageStream, _ count: Int, within timeout: Duration) async -> [MQTTMessage] {
        let timer = Task {
            try? await Task.sleep(for: timeout)
            stream.cancel()
        }
        defer { timer.cancel() }
        var got: [MQTTMessage] = []
        do {
            for try await m in stream {
                got.append(m)
                if got.count == count { break }
            }
        } catch {}
        return got
    }

    /// At every QoS, over WebSockets and plain TCP. (mqtt-pub used to leave its loop as soon as it had queued the
    /// DISCONNECT inside the PUBACK callback, before writing it, so at QoS 1 and 2 the broker published the will.)
    @Test("mqtt-pub ends with DISCONNECT at QoS 0, 1 and 2, over ws and TCP: the broker does not publish its will")
    func noWillAfterExit() async throws {
        try await withBroker(Self.wsBroker) { broker in
            let ws = String(broker.webSocketsPort ?? 0)
            let watcher = try await libraryClient(broker)
            let wills = try await watcher.subscribe("wscliwill/#", qos: .atLeastOnce)
            let data = try await watcher.subscribe("wsclidata", qos: .atLeastOnce)
            var runs = 0
            for transport in [["--ws", "-p", ws], ["-p", String(broker.port)]] {
                for qos in 0...2 {
                    let r = try await run(tool("mqtt-pub"), transport + ["-h", broker.host, "-t", "wsclidata", "-m", "\(runs)", "-q", "\(qos)",
                                                                     "--will-topic", "wscliwill/pub\(runs)", "--will-payload", "gone"])
                    #expect(r.status == 0, "\(r)")
                    runs += 1
                }
            }
            let got = await Self.take(data, runs, within: .seconds(15) * testTimeScale)
            #expect(got.count == runs)
            let stray = await Self.take(wills, 1, within: .seconds(2))
            #expect(stray.isEmpty, "wills published: \(stray.map(\.topic))")
            await watcher.shutdown()
        }
    }

    /// mqtt-pub's tunnel helper waits for the broker to close after the close frame (the library tunnel's 10 s); the
    /// tool must not kill it sooner. A stand-in broker takes 5 s to answer, as a loaded mosquitto 2.0.11 can: a tool
    /// that killed its helper after 3 s (as it did) closed the connection first, and mosquitto, seeing it end, drops
    /// the DISCONNECT it had not read yet and publishes the will.
    @Test("mqtt-pub --ws lets its tunnel wait for a slow broker to close, so the DISCONNECT is read before the connection ends")
    func slowBrokerGetsTimeToClose() async throws {
        let broker = try SlowClosingWebSocketBroker(connack: [0x20, 0x02, 0x00, 0x00], closeDelay: 5)
        let started = ContinuousClock.now
        let r = try await run(tool("mqtt-pub"), ["--ws", "-h", "127.0.0.1", "-p", String(broker.port), "-i", "slowclose",
                                                 "-t", "t", "-m", "x", "--will-topic", "w", "--will-payload", "gone"])
        let took = ContinuousClock.now - started
        #expect(r.status == 0, "\(r)")
        _ = await eventually(timeout: .seconds(10)) { broker.report.value != nil }
        let seen = try #require(broker.report.value, "the stand-in broker never saw the close frame")
        #expect(seen.payload.suffix(2).elementsEqual([0xE0, 0x00]), "DISCONNECT went out last: \(seen.payload)")
        #expect(seen.openWhenAnswering, "mqtt-pub ended the connection before the broker answered the close frame")
        #expect(took >= .seconds(4), "mqtt-pub returned after \(took), before the broker closed")
    }

    /// The tunnel runs in mqtt-ws-tunnel, started by the tool for --ws only.
    @Test("the tunnel is a helper process: it ends when its tool is killed with SIGKILL, and a tool without it says what is missing")
    func helperProcess() async throws {
        try await withBroker(Self.wsBroker) { broker in
            let ws = String(broker.webSocketsPort ?? 0)
            let client = try await libraryClient(broker)
            try await client.publish(to: "wshelper/r", string: "ready", qos: .atLeastOnce, retain: true)
            let sub = try Child(tool("mqtt-sub"), ["--ws", "-h", broker.host, "-p", ws, "-t", "wshelper/#", "-q", "1"])
            defer { sub.killIfRunning() }
            #expect(await printedSomething(sub, timeout: .seconds(30) * testTimeScale))
            let children = (try? String(contentsOfFile: "/proc/\(sub.pid)/task/\(sub.pid)/children", encoding: .utf8)) ?? ""
            let helpers = children.split(separator: " ").compactMap { pid_t($0) }.filter { pid in
                ((try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8)) ?? "").hasPrefix("mqtt-ws-tunnel")
            }
            #expect(helpers.count == 1, "children of mqtt-sub: \(children)")
            sub.signal(SIGKILL)
            _ = await sub.wait(timeout: .seconds(10))
            // Gone, or a zombie waiting for a parent that does not reap (as PID 1 in some containers).
            func running(_ pid: pid_t) -> Bool {
                guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
                      let close = stat.lastIndex(of: ")") else { return false }
                return !stat[close...].hasPrefix(") Z")
            }
            for pid in helpers { #expect(await eventually(timeout: .seconds(10)) { !running(pid) }, "mqtt-ws-tunnel \(pid) outlived its tool") }
            try await client.publish(to: "wshelper/r", string: "", qos: .atLeastOnce, retain: true)
            await client.shutdown()

            // mqtt-pub copied alone: --ws says what is missing; plain MQTT does not need the helper.
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            try FileManager.default.copyItem(atPath: tool("mqtt-pub"), toPath: dir + "/mqtt-pub")
            let missing = try await run(dir + "/mqtt-pub", ["--ws", "-h", broker.host, "-p", ws, "-t", "t", "-m", "m"])
            #expect(missing.status != 0, "\(missing)")
            #expect(missing.stderr.contains("mqtt-ws-tunnel"), "\(missing.stderr)")
            let plain = try await run(dir + "/mqtt-pub", at(broker) + ["-t", "t", "-m", "m"])
            #expect(plain.status == 0, "\(plain)")
        }
    }

    /// The helper is started with nothing of the tool's but its standard error: a helper that inherited the tool's
    /// descriptors held an `--outbox` lock after a `kill -9` of the tool, until it noticed its tool was gone.
    @Test("mqtt-ws-tunnel inherits none of its tool's descriptors: mqtt-pub -l --ws --outbox keeps its outbox to itself")
    func helperInheritsNothing() async throws {
        try await withBroker(Self.wsBroker) { broker in
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let fifo = dir + "/lines"
            try #require(mkfifo(fifo, 0o600) == 0)
            let writer = open(fifo, O_RDWR | O_CLOEXEC)  // keeps mqtt-pub's standard input open, and never blocks
            try #require(writer >= 0)
            defer { close(writer) }
            let pub = try Child(tool("mqtt-pub"), ["--ws", "-h", broker.host, "-p", String(broker.webSocketsPort ?? 0), "-t", "wsfd/x",
                                                   "-q", "1", "-l", "--outbox", dir + "/outbox"], stdinPath: fifo)
            defer { pub.killIfRunning() }
            let watcher = try await libraryClient(broker)
            let got = try await watcher.subscribe("wsfd/x", qos: .atLeastOnce)
            _ = write(writer, "ready\n", 6)
            let arrived = await Self.take(got, 1, within: .seconds(30) * testTimeScale)
            #expect(arrived.first?.string == "ready")
            let children = (try? String(contentsOfFile: "/proc/\(pub.pid)/task/\(pub.pid)/children", encoding: .utf8)) ?? ""
            let helper = try #require(children.split(separator: " ").compactMap { pid_t($0) }.first, "mqtt-pub has no helper")
            let fds = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(helper)/fd")
            let targets = fds.compactMap { try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(helper)/fd/\($0)") }
            #expect(!targets.contains { $0.hasPrefix(dir) }, "the helper holds the tool's files: \(targets.sorted())")
            let standardInput = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(helper)/fd/0")
            #expect(standardInput == "/dev/null", "the helper's standard input: \(standardInput ?? "none")")
            await watcher.shutdown()
        }
    }

    @Test("mqtt-rr --ws: request and response over WebSockets")
    func rrOverWebSockets() async throws {
        try await withBroker(Self.wsBroker) { broker in
            let ws = String(broker.webSocketsPort ?? 0)
            let responder = try await libraryClient(broker)
            let requests = try await responder.subscribe("wsrr/req", qos: .atLeastOnce)
            let serve = Task {
                for try await m in requests {
                    try await responder.respond(to: m, payload: Array("pong:".utf8) + m.payload)
                    break
                }
            }
            let r = try await run(tool("mqtt-rr"), ["--ws", "-h", broker.host, "-p", ws, "-t", "wsrr/req", "-e", "wsrr/resp/1", "-m", "ping", "-W", "\(20 * testTimeScale)"])
            #expect(r.status == 0, "\(r)")
            #expect(r.out == "pong:ping\n", "\(r)")
            try await serve.value
            await responder.shutdown()
        }
    }

    @Test("failures give mosquitto 2.1's exit codes and a sentence: refused 1, HTTP refusal 13, untrusted certificate 8")
    func failures() async throws {
        try await withBroker(Self.wsBroker) { broker in
            for name in ["mqtt-pub", "mqtt-sub", "mqtt-rr"] {
                let extra: [String] = name == "mqtt-pub" ? ["-t", "t", "-m", "m"] : name == "mqtt-sub" ? ["-t", "t"] : ["-t", "t", "-e", "r", "-m", "m"]
                let refused = try await run(tool(name), ["--ws", "-h", "127.0.0.1", "-p", String(freeLoopbackPort())] + extra)
                #expect(refused.status == 1, "\(name) \(refused)")
                #expect(refused.stderr.contains("connection refused"), "\(refused.stderr)")

                let http = try CannedHTTPServer(response: "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                defer { http.stop() }
                let notFound = try await run(tool(name), ["--ws", "-h", "127.0.0.1", "-p", String(http.port)] + extra)
                #expect(notFound.status == 13, "\(name) \(notFound)")
                #expect(notFound.stderr.contains("HTTP 404 Not Found"), "\(notFound.stderr)")

                let plainHTTP = try CannedHTTPServer(response: "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
                defer { plainHTTP.stop() }
                let notWS = try await run(tool(name), ["-L", "ws://127.0.0.1:\(plainHTTP.port)/t"] + extra.dropFirst(2))
                #expect(notWS.status == 13, "\(name) \(notWS)")
                #expect(notWS.stderr.contains("plain HTTP server"), "\(notWS.stderr)")

                let untrusted = try await run(tool(name), ["--ws", "-h", "localhost", "-p", String(broker.webSocketsTLSPort ?? 0),
                                                           "--cafile", broker.tlsFiles?.wrongCAFile ?? ""] + extra)
                #expect(untrusted.status == 8, "\(name) \(untrusted)")
                #expect(untrusted.stderr.contains("TLS"), "\(untrusted.stderr)")
            }
        }
    }

    @Test("mqtt-bridge's broker options: --ws and -L ws(s):// make a WebSockets configuration")
    func brokerOptions() throws {
        let a = try ConnectionOptions.parse(["--ws", "-h", "b", "-p", "8080"]).makeConfiguration()
        #expect(a.transport == .webSockets(.init()) && a.endpoint == .tcp(host: "b", port: 8080) && a.tls == nil)
        let b = try ConnectionOptions.parse(["-L", "wss://b/t"]).makeConfiguration()
        #expect(b.transport == .webSockets(.init()) && b.tls?.useSystemCertificates == true)
        #expect(b.endpoint == .tcp(host: "b", port: 8883))
        #expect(try ConnectionOptions.parse(["-L", "mqtt://b/t"]).makeConfiguration().transport == .tcp)
        #expect(throws: (any Error).self) { try ConnectionOptions.parse(["--ws", "--unix", "mqtt.sock"]).makeConfiguration() }
    }
}
