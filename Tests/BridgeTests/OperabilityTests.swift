import Foundation
import Logging
import Mosquitto
import MQTTOutbox
import MosquittoBroker
@testable import MQTTBridge
import MosquittoTestSupport
import NIOCore
import NIOPosix
import ServiceLifecycle
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Every log line of the loggers it made, for checking what an operator would read.
final class OpLogCapture: Sendable {
    struct Entry: Sendable {
        let label: String
        let level: Logger.Level
        let message: String
    }
    let entries = Locked<[Entry]>([])

    func logger(_ label: String, level: Logger.Level = .info) -> Logger {
        var logger = Logger(label: label) { label in OpCaptureHandler(label: label, capture: self) }
        logger.logLevel = level
        return logger
    }

    func lines(containing text: String) -> [String] {
        entries.value.map(\.message).filter { $0.contains(text) }
    }

    func lines(atLeast level: Logger.Level) -> [String] {
        entries.value.filter { $0.level >= level }.map { "\($0.level) \($0.label): \($0.message)" }
    }

    var all: String { entries.value.map { "\($0.level) \($0.label): \($0.message)" }.joined(separator: "\n") }
}

struct OpCaptureHandler: LogHandler {
    let label: String
    let capture: OpLogCapture
    var logLevel: Logger.Level = .trace
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let entry = OpLogCapture.Entry(label: label, level: event.level, message: event.message.description)
        capture.entries.withLock { $0.append(entry) }
    }
}

/// A bridge configuration whose broker connection and bridge log into `capture` at info level (so the test sees
/// what `mqtt-bridge --log-level info` prints).
func opConfig(host: String = "127.0.0.1", port: Int, spool: String, routes: [RouteConfiguration], capture: OpLogCapture,
              credentials: MQTTConfiguration.Credentials? = nil) -> BridgeConfiguration {
    var mqtt = MQTTConfiguration(host: host, port: port, clientID: "op-\(UUID().uuidString.prefix(6))")
    mqtt.keepAlive = 10
    mqtt.session = .persistent(expiry: 3600)
    mqtt.reconnect.initialDelay = .milliseconds(100)
    mqtt.reconnect.maximumDelay = .milliseconds(400)
    mqtt.credentials = credentials
    mqtt.logger = capture.logger("bridge.mqtt")
    var c = BridgeConfiguration(mqtt: mqtt, spoolDirectory: spool, routes: routes)
    c.progressInterval = .zero
    c.drainTimeout = .seconds(5)
    c.spoolFsync = .never
    return c
}

func opServerRoute(_ name: String, host: String = "127.0.0.1", port: Int = 0, topic: String = "op/{feed}",
                   allow: [String] = [], maxConnections: Int = 1024) -> RouteConfiguration {
    RouteConfiguration(name: name, direction: .toMQTT,
                       feed: FeedConfiguration(mode: .tcpServer, addresses: [SocketAddressSpec(host: host, port: port)],
                                               allow: allow, maxConnections: maxConnections),
                       topic: try! TopicTemplate(topic))
}

/// A port nothing listens on (bound and released), for a broker that is down.
func opDeadPort() -> Int { freeLoopbackPort() }

/// A TCP listener that holds `port` for the duration of `body` (as another process would).
func withOccupiedTCPPort<T>(_ body: (Int) async throws -> T) async throws -> T {
    let holder = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton).bind(host: "127.0.0.1", port: 0).get()
    do {
        let r = try await body(holder.localAddress!.port!)
        try? await holder.close()
        return r
    } catch {
        try? await holder.close()
        throw error
    }
}

/// Runs a bridge that logs into `capture` for the duration of `body`; stops it gracefully afterwards.
func opWithBridge<T: Sendable>(_ configuration: BridgeConfiguration, _ capture: OpLogCapture,
                               _ body: (BridgeService) async throws -> T) async throws -> T {
    try await withBridge(configuration, logger: capture.logger("bridge"), body)
}

/// Runs `bridge` until it returns or throws; the error, if any.
func opRunError(_ bridge: BridgeService) async -> (any Error)? {
    do {
        try await bridge.run()
        return nil
    } catch {
        return error
    }
}

@Suite("Operability", .serialized, .timeLimit(.minutes(5 * testTimeScale)))
struct OperabilityTests {
    // MARK: 1. Bind failures name the route and the address

    @Test("A feed or metrics port in use fails the start with the route (or listener) and address named, and what to do")
    func portInUse() async throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let capture = OpLogCapture()
        try await withOccupiedTCPPort { busy in
            // TCP feed.
            let bridge = BridgeService(configuration: opConfig(port: opDeadPort(), spool: dir + "/a",
                                                               routes: [opServerRoute("feed", port: busy)], capture: capture),
                                       logger: capture.logger("bridge"))
            let error = await opRunError(bridge)
            let e = try #require(error as? BridgeError, "\(String(describing: error))")
            #expect(e.kind == .cannotListen)
            #expect(e.systemErrno == EADDRINUSE)
            #expect("\(e)" == "Route 'feed': cannot listen on 127.0.0.1:\(busy): address already in use (another process has this port; pick another port or stop it)")
            await #expect(throws: BridgeError.self) { try await bridge.waitUntilStarted() }

            // The metrics listener.
            var config = opConfig(port: opDeadPort(), spool: dir + "/b", routes: [opServerRoute("feed")], capture: capture)
            config.metricsAddress = SocketAddressSpec(host: "127.0.0.1", port: busy)
            let error2 = await opRunError(BridgeService(configuration: config, logger: capture.logger("bridge")))
            #expect("\(error2.map { "\($0)" } ?? "none")" == "Metrics listener: cannot listen on 127.0.0.1:\(busy): address already in use (another process has this port; pick another port or stop it)")
        }

        // UDP: a socket bound without SO_REUSEADDR holds the port.
        let udpHolder = try await DatagramBootstrap(group: MultiThreadedEventLoopGroup.singleton).bind(host: "127.0.0.1", port: 0).get()
        defer { udpHolder.close(promise: nil) }
        let udpPort = udpHolder.localAddress!.port!
        let udp = RouteConfiguration(name: "sensors", direction: .toMQTT,
                                     feed: FeedConfiguration(mode: .udp, addresses: [SocketAddressSpec(host: "127.0.0.1", port: udpPort)]),
                                     topic: try TopicTemplate("op/udp"))
        let error3 = await opRunError(BridgeService(configuration: opConfig(port: opDeadPort(), spool: dir + "/c", routes: [udp], capture: capture),
                                                    logger: capture.logger("bridge")))
        #expect("\(error3.map { "\($0)" } ?? "none")" == "Route 'sensors': cannot listen on 127.0.0.1:\(udpPort) (UDP): address already in use (another process has this port; pick another port or stop it)")

        // An address of no interface of this machine.
        let error4 = await opRunError(BridgeService(configuration: opConfig(port: opDeadPort(), spool: dir + "/d",
                                                                            routes: [opServerRoute("far", host: "192.0.2.1", port: 7000)], capture: capture),
                                                    logger: capture.logger("bridge")))
        #expect("\(error4.map { "\($0)" } ?? "none")".hasPrefix("Route 'far': cannot listen on 192.0.2.1:7000: address not available"))
        #expect(capture.lines(containing: "bind(descriptor").isEmpty)
    }

    @Test("mqtt-bridge with its feed port in use exits non-zero and prints the route and address, not NIO's bind text")
    func portInUseExecutable() async throws {
        let executable = try #require(builtExecutable("mqtt-bridge"), "build the mqtt-bridge executable first (swift build)")
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try await withOccupiedTCPPort { busy in
            let child = try Child(executable, ["-h", "127.0.0.1", "-p", "\(opDeadPort())", "--tcp-listen", "127.0.0.1:\(busy)",
                                               "--topic", "op/x", "--spool-dir", dir + "/spool"], output: dir + "/out.log")
            let status = try #require(await child.exitStatus())
            let output = (try? String(contentsOfFile: dir + "/out.log", encoding: .utf8)) ?? ""
            #expect(status != 0, "\(output)")
            #expect(output.contains("Error: Route 'feed': cannot listen on 127.0.0.1:\(busy): address already in use (another process has this port; pick another port or stop it)"), "\(output)")
            #expect(!output.contains("bind(descriptor"), "\(output)")
        }
    }

    // MARK: 2. Addresses in logs

    @Test("Log lines write addresses as 127.0.0.1:17010 and [::1]:17010, never NIO's [IPv4]127.0.0.1/127.0.0.1:17010")
    func addressesInLogs() async throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let capture = OpLogCapture()
        var routes = [
            opServerRoute("tcp4"),
            RouteConfiguration(name: "udp4", direction: .toMQTT,
                               feed: FeedConfiguration(mode: .udp, addresses: [SocketAddressSpec(host: "127.0.0.1", port: 0)]),
                               topic: try TopicTemplate("op/udp")),
        ]
        let hasIPv6 = (try? await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton).bind(host: "::1", port: 0).get())
            .map { $0.close(promise: nil); return true } ?? false
        if hasIPv6 { routes.append(opServerRoute("tcp6", host: "::1")) }
        var config = opConfig(port: opDeadPort(), spool: dir, routes: routes, capture: capture)
        config.metricsAddress = SocketAddressSpec(host: "127.0.0.1", port: 0)
        let bridge = BridgeService(configuration: config, logger: capture.logger("bridge"))
        let task = Task { try await bridge.run() }
        defer { bridge.triggerGracefulShutdown() }
        try await bridge.waitUntilStarted()
        let tcp = try #require(bridge.port(ofRoute: "tcp4"))
        let udp = try #require(bridge.port(ofRoute: "udp4"))
        let peer = try await FeedPeer.connect(port: tcp)
        let peerPort = try #require(peer.channel.localAddress?.port)
        #expect(await eventually { !capture.lines(containing: "Feed connection").isEmpty })
        await peer.close()

        #expect(capture.lines(containing: "Route tcp4: listening on 127.0.0.1:\(tcp)").count == 1, "\(capture.all)")
        #expect(capture.lines(containing: "Route udp4: UDP on 127.0.0.1:\(udp)").count == 1, "\(capture.all)")
        #expect(capture.lines(containing: "on route tcp4: 127.0.0.1:\(peerPort)").count == 1, "\(capture.all)")
        #expect(capture.lines(containing: "Metrics and health on http://127.0.0.1:\(try #require(bridge.metricsPort))/metrics").count == 1)
        if hasIPv6 {
            let tcp6 = try #require(bridge.port(ofRoute: "tcp6"))
            #expect(capture.lines(containing: "Route tcp6: listening on [::1]:\(tcp6)").count == 1, "\(capture.all)")
            let v6 = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton).connect(host: "::1", port: tcp6).get()
            let v6Port = try #require(v6.localAddress?.port)
            #expect(await eventually { capture.lines(containing: "on route tcp6: [::1]:\(v6Port)").count == 1 }, "\(capture.all)")
            try? await v6.close()
        }
        #expect(capture.lines(containing: "[IPv4]").isEmpty && capture.lines(containing: "[IPv6]").isEmpty, "\(capture.all)")
        bridge.triggerGracefulShutdown()
        try await task.value
    }

    // MARK: 3. A clean stop before the broker was ever connected

    @Test("A graceful stop while the broker was never connected (down, or refusing) logs no error")
    func cleanStopNeverConnected() async throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // Broker down.
        let capture = OpLogCapture()
        let bridge = BridgeService(configuration: opConfig(port: opDeadPort(), spool: dir + "/a", routes: [opServerRoute("feed")], capture: capture),
                                   logger: capture.logger("bridge"))
        let task = Task { try await bridge.run() }
        try await bridge.waitUntilStarted()
        #expect(await eventually { !capture.lines(containing: "unavailable").isEmpty })
        bridge.triggerGracefulShutdown()
        try await task.value
        #expect(capture.lines(atLeast: .error).isEmpty, "\(capture.all)")
        #expect(capture.lines(containing: "Stopping before the broker").count == 1, "\(capture.all)")

        // Broker refusing the password.
        try await withBroker(.init(users: ["alice": "right"])) { broker in
            let capture = OpLogCapture()
            let bridge = BridgeService(configuration: opConfig(port: broker.port, spool: dir + "/b", routes: [opServerRoute("feed")], capture: capture,
                                                               credentials: .init(username: "alice", password: "wrong")),
                                       logger: capture.logger("bridge"))
            let task = Task { try await bridge.run() }
            try await bridge.waitUntilStarted()
            #expect(await eventually { bridge.metrics.mqttConnectRefusals.value >= 2 })
            bridge.triggerGracefulShutdown()
            try await task.value
            #expect(capture.lines(atLeast: .error).isEmpty, "\(capture.all)")
        }
    }

    @Test("mqtt-bridge stopped with SIGTERM while the broker is down exits 0 and prints no error line")
    func sigtermNeverConnectedExecutable() async throws {
        let executable = try #require(builtExecutable("mqtt-bridge"), "build the mqtt-bridge executable first (swift build)")
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let log = dir + "/out.log"
        let child = try Child(executable, ["-h", "127.0.0.1", "-p", "\(opDeadPort())", "--tcp-listen", "127.0.0.1:0",
                                           "--topic", "op/x", "--spool-dir", dir + "/spool"], output: log)
        defer { child.killIfRunning() }
        func output() -> String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }
        #expect(await eventually { output().contains("unavailable") })
        child.signal(SIGTERM)
        let status = try #require(await child.exitStatus())
        #expect(status == 0, "\(output())")
        #expect(!output().contains(" error "), "\(output())")
        #expect(output().contains("mqtt-bridge stopped"), "\(output())")
    }

    // MARK: 4. A refused password

    @Test("A wrong broker password: one clear line per attempt, repeats rate-limited, no 'protocol error'; fixing the password on the broker (SIGHUP) makes the bridge connect and deliver what it spooled")
    func passwordRotation() async throws {
        var brokerConfig = MosquittoBroker.Configuration(users: ["alice": "old-secret", "watcher": "w"])
        brokerConfig.aclFileContents = nil
        try await withBroker(brokerConfig) { broker in
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            var watcherConfig = clientConfig(broker)
            watcherConfig.credentials = .init(username: "watcher", password: "w")
            let watcher = try MQTTClient(configuration: watcherConfig)
            try await watcher.connect()
            let recorder = Recorder(try await watcher.subscribe("op/rot", qos: .atLeastOnce, buffer: .recorder))

            let capture = OpLogCapture()
            let config = opConfig(port: broker.port, spool: dir, routes: [opServerRoute("feed", topic: "op/rot")], capture: capture,
                                  credentials: .init(username: "alice", password: "new-secret"))
            try await opWithBridge(config, capture) { bridge in
                #expect(await eventually { bridge.metrics.mqttConnectRefusals.value >= 4 })
                let refusals = bridge.metrics.mqttConnectRefusals.value
                let snapshot = capture.entries.value
                let refusalLines = snapshot.map(\.message).filter { $0.contains("refused the connection") }
                // One line for the first attempt; the next ones within 10 s are counted, not logged.
                #expect(refusalLines.count >= 1 && refusalLines.count < refusals, "\(capture.all)")
                #expect(refusalLines.allSatisfy {
                    $0.contains("Broker 127.0.0.1:\(broker.port) refused the connection: not authorized (check username/password); retrying in")
                        || $0.contains("refused the connection: bad user name or password (check username/password)")
                }, "\(capture.all)")
                #expect(snapshot.allSatisfy { !$0.message.contains("protocol error") }, "\(capture.all)")
                // One line per attempt at most: the bridge's. The client's own lines about the refusal (an error,
                // a 'protocol error' warning, a reconnect notice) are gone.
                #expect(snapshot.filter { $0.level >= .notice }.count == refusalLines.count, "\(capture.all)")
                #expect(!bridge.metrics.isMQTTConnected)

                // A frame arrives while the broker refuses us: it waits in the spool.
                let peer = try await FeedPeer.connect(port: try #require(bridge.port(ofRoute: "feed")))
                try await peer.write(Array("before rotation\n".utf8))
                #expect(await eventually { bridge.spoolDepth(ofRoute: "feed") == 1 })

                // The password rotation reaches the broker: its password file changes and it rereads it on SIGHUP.
                let passwd = try await MosquittoBroker.runCommand("mosquitto_passwd", ["-b", broker.passwordFile, "alice", "new-secret"])
                #expect(passwd.succeeded, "\(passwd)")
                kill(try #require(broker.processIdentifier), SIGHUP)

                #expect(await eventually { bridge.metrics.isMQTTConnected }, "\(capture.all)")
                try await peer.write(Array("after rotation\n".utf8))
                #expect(await eventually { recorder.count >= 2 })
                #expect(recorder.strings == ["before rotation", "after rotation"])
                #expect(capture.lines(containing: "Connected to the broker 127.0.0.1:\(broker.port) after").count == 1, "\(capture.all)")
                await peer.close()
            }
            recorder.stop()
            await watcher.shutdown()
        }
    }

    @Test("auth_failure_limit: after that many refusals in a row run() throws, a ServiceGroup rethrows it, and nothing is logged at error level but the reason")
    func authFailureLimit() async throws {
        try await withBroker(.init(users: ["alice": "right"])) { broker in
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let capture = OpLogCapture()
            var config = opConfig(port: broker.port, spool: dir, routes: [opServerRoute("feed")], capture: capture,
                                  credentials: .init(username: "alice", password: "wrong"))
            config.authFailureLimit = 3
            let bridge = BridgeService(configuration: config, logger: capture.logger("bridge"))
            let group = ServiceGroup(configuration: .init(services: [bridge], logger: capture.logger("group", level: .critical)))
            let started = ContinuousClock.now
            var thrown: (any Error)?
            do { try await group.run() } catch { thrown = error }
            let e = try #require(thrown as? BridgeError, "\(String(describing: thrown))")
            #expect(e.kind == .brokerRefused)
            #expect(e.message == "Broker 127.0.0.1:\(broker.port) refused the connection 3 times in a row: not authorized (check username/password); giving up (auth_failure_limit 3)"
                    || e.message.contains("bad user name or password"), "\(e.message)")
            #expect(bridge.metrics.mqttConnectRefusals.value == 3)
            // Three attempts with the default back-off take about 7 s; a bridge that kept retrying would not end.
            #expect(ContinuousClock.now - started < .seconds(20) * testTimeScale)
            #expect(capture.lines(atLeast: .error) == ["error bridge: \(e.message)"], "\(capture.all)")
        }
    }

    @Test("mqtt-bridge with auth_failure_limit exits non-zero after that many refusals, saying why")
    func authFailureLimitExecutable() async throws {
        let executable = try #require(builtExecutable("mqtt-bridge"), "build the mqtt-bridge executable first (swift build)")
        try await withBroker(.init(users: ["alice": "right"])) { broker in
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let configFile = dir + "/bridge.conf"
            try writePrivate("""
            address \(broker.host):\(broker.port)
            remote_clientid op-limit
            remote_username alice
            remote_password wrong
            restart_timeout 0.1 0.2
            auth_failure_limit 2
            spool_dir \(dir)/spool
            progress_interval 0

            route feed
            direction to_mqtt
            mode tcp_server
            address 127.0.0.1:0
            topic op/limit
            """, to: configFile)
            let log = dir + "/out.log"
            let child = try Child(executable, ["--config", configFile], output: log)
            defer { child.killIfRunning() }
            let status = try #require(await child.exitStatus(timeout: .seconds(30)))
            let output = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            #expect(status != 0, "\(output)")
            #expect(output.contains("refused the connection 2 times in a row"), "\(output)")
            #expect(output.contains("giving up (auth_failure_limit 2)"), "\(output)")
        }
    }

    // MARK: 5. Refused feed connections

    @Test("Refused feed connections: the first is logged, the rest summed up in one line per 10 s, all counted")
    func refusedConnectionsRateLimited() async throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let capture = OpLogCapture()
        let routes = [opServerRoute("deny", allow: ["192.0.2.0/24"]), opServerRoute("cap", maxConnections: 1)]
        var config = opConfig(port: opDeadPort(), spool: dir, routes: routes, capture: capture)
        config.metricsAddress = SocketAddressSpec(host: "127.0.0.1", port: 0)
        try await opWithBridge(config, capture) { bridge in
            let deny = try #require(bridge.port(ofRoute: "deny"))
            let cap = try #require(bridge.port(ofRoute: "cap"))
            let holder = try await FeedPeer.connect(port: cap)
            #expect(await eventually { bridge.metrics.route("cap").openConnectionCount == 1 })
            let n = 300
            let loopStarted = ContinuousClock.now
            for _ in 0..<n {
                for port in [deny, cap] {
                    let p = try await FeedPeer.connect(port: port)
                    await p.close()
                }
            }
            #expect(await eventually { bridge.metrics.route("deny").connectionsRejected.value == n && bridge.metrics.route("cap").connectionsRejected.value == n })
            let loopTime = ContinuousClock.now - loopStarted
            // Each refusal is either logged at once (the first of a burst) or counted in a summary, at most one per
            // 10 s window. A burst ends after a window without refusals: on a quiet machine the loop is one burst,
            // but under load the loop stalled for more than a window several times (5 bursts in one run), and each
            // new burst is rightly logged at once again.
            func firsts(_ route: String, _ reason: String) -> Int {
                capture.lines(containing: "Route \(route): refused a connection from 127.0.0.1: \(reason)").count
            }
            func summarized(_ route: String) -> (lines: Int, count: Int) {
                let lines = capture.lines(containing: "more refused connections on route \(route)")
                return (lines.count, lines.reduce(0) { $0 + (Int($1.prefix { $0.isNumber }) ?? 0) })
            }
            let reasons = ["deny": "not in allow", "cap": "max_connections 1 reached"]
            // The last summary comes at the end of its window, 10 s after the last refusal at most on a quiet machine;
            // under ThreadSanitizer with CPU hogs the loop and the timers run several times slower.
            #expect(await eventually(timeout: .seconds(25 * testTimeScale)) {
                reasons.allSatisfy { route, reason in firsts(route, reason) + summarized(route).count == n }
            }, "\(capture.all)")
            // Windows do not overlap and last 10 s each; they cover the loop and at most 10 s after it.
            let windows = Int(loopTime / .seconds(10)) + 2
            for (route, reason) in reasons {
                #expect(firsts(route, reason) >= 1, "\(capture.all)")
                // Rate-limited: a first line opens a window, and each window ends with at most one summary.
                #expect(firsts(route, reason) <= windows && summarized(route).lines <= windows, "\(loopTime): \(capture.all)")
            }
            #expect(capture.lines(containing: "refused a connection").count == firsts("deny", reasons["deny"]!) + firsts("cap", reasons["cap"]!),
                    "\(capture.all)")
            let (_, metrics) = try await httpGet(port: try #require(bridge.metricsPort), path: "/metrics")
            #expect(metricValue(metrics, "mqtt_bridge_connections_rejected_total", route: "deny") == Double(n))
            #expect(metricValue(metrics, "mqtt_bridge_connections_rejected_total", route: "cap") == Double(n))
            await holder.close()
        }
    }

    @Test("BurstLogger: the first event at once, one summary per window, and a quiet window ends the burst")
    func burstLogger() async throws {
        let lines = Locked<[String]>([])
        let burst = BurstLogger(window: .milliseconds(300), eventLoop: MultiThreadedEventLoopGroup.singleton.next(),
                                first: { d in lines.withLock { $0.append("first \(d)") } },
                                summary: { n, d in lines.withLock { $0.append("\(n) more, last \(d)") } })
        for i in 0..<50 { burst.record("e\(i)") }
        #expect(lines.value == ["first e0"])
        #expect(await eventually { lines.value.count == 2 })
        #expect(lines.value == ["first e0", "49 more, last e49"])
        try await Task.sleep(for: .milliseconds(800))  // a quiet window: the burst ends
        burst.record("again")
        #expect(lines.value == ["first e0", "49 more, last e49", "first again"])
    }

    // MARK: 6. The HTTP endpoint's limits

    @Test("/metrics: a half-sent request head (slowloris) is closed after the header timeout; defaults are 10 s and 64 connections")
    func slowloris() async throws {
        #expect(HealthServer.Limits().headerTimeout == .seconds(10))
        #expect(HealthServer.Limits().maxConnections == 64)
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let capture = OpLogCapture()
        var config = opConfig(port: opDeadPort(), spool: dir, routes: [opServerRoute("feed")], capture: capture)
        config.metricsAddress = SocketAddressSpec(host: "127.0.0.1", port: 0)
        let bridge = BridgeService(configuration: config, logger: capture.logger("bridge"))
        bridge.healthLimits = HealthServer.Limits(headerTimeout: .seconds(1), maxConnections: 64)
        let task = Task { try await bridge.run() }
        try await bridge.waitUntilStarted()
        let port = try #require(bridge.metricsPort)
        let slow = try await FeedPeer.connect(port: port)
        let opened = ContinuousClock.now
        try await slow.write(Array("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n".utf8))
        try await Task.sleep(for: .milliseconds(300))
        try await slow.write(Array("X-Slow: 1\r\n".utf8))
        #expect(slow.channel.isActive)
        #expect(await eventually(timeout: .seconds(5)) { !slow.channel.isActive })
        #expect(ContinuousClock.now - opened >= .milliseconds(900))
        #expect(slow.received.isEmpty)
        #expect(bridge.metrics.httpTimeouts == 1)
        // A whole request still gets its answer.
        let (status, body) = try await httpGet(port: port, path: "/metrics")
        #expect(status == 200)
        #expect(body.contains("mqtt_bridge_http_timeouts_total 1"))
        bridge.triggerGracefulShutdown()
        try await task.value
    }

    @Test("/metrics: beyond the connection cap a new connection is closed at once; below it requests are answered")
    func connectionCap() async throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let capture = OpLogCapture()
        var config = opConfig(port: opDeadPort(), spool: dir, routes: [opServerRoute("feed")], capture: capture)
        config.metricsAddress = SocketAddressSpec(host: "127.0.0.1", port: 0)
        let bridge = BridgeService(configuration: config, logger: capture.logger("bridge"))
        bridge.healthLimits = HealthServer.Limits(headerTimeout: .seconds(30), maxConnections: 8)
        let task = Task { try await bridge.run() }
        try await bridge.waitUntilStarted()
        let port = try #require(bridge.metricsPort)
        var idle: [FeedPeer] = []
        for _ in 0..<8 { idle.append(try await FeedPeer.connect(port: port)) }
        try await Task.sleep(for: .milliseconds(200))
        #expect(idle.allSatisfy { $0.channel.isActive })
        let extra = try await FeedPeer.connect(port: port)
        #expect(await eventually(timeout: .seconds(2)) { !extra.channel.isActive })
        #expect(bridge.metrics.httpConnectionsRefused == 1)
        #expect(idle.allSatisfy { $0.channel.isActive })
        for p in idle { await p.close() }
        // The slots are free again.
        #expect(await eventually {
            guard let (status, body) = try? await httpGet(port: port, path: "/metrics") else { return false }
            return status == 200 && body.contains("mqtt_bridge_http_connections_refused_total 1")
        })
        bridge.triggerGracefulShutdown()
        try await task.value
    }

    // MARK: 7. A stalled spool

    @Test("A spool that does not move while the broker is connected turns /readyz to 503 and mqtt_bridge_spool_stalled to 1, and back when it moves")
    func spoolStall() async throws {
        try await withBroker { broker in
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let pid = try #require(broker.processIdentifier)
            let capture = OpLogCapture()
            var subConfig = clientConfig(broker)
            subConfig.keepAlive = 60
            let sub = try MQTTClient(configuration: subConfig)
            try await sub.connect()
            let recorder = Recorder(try await sub.subscribe("op/stall", qos: .atLeastOnce, buffer: .recorder))
            var config = opConfig(port: broker.port, spool: dir, routes: [opServerRoute("stall", topic: "op/stall")], capture: capture)
            // Long enough that the hung broker is not taken for a lost connection during the test.
            config.mqtt.keepAlive = 60
            config.spoolStallTimeout = .seconds(3)
            config.metricsAddress = SocketAddressSpec(host: "127.0.0.1", port: 0)
            try await opWithBridge(config, capture) { bridge in
                let http = try #require(bridge.metricsPort)
                func ready() async -> Int? { try? await httpGet(port: http, path: "/readyz").0 }
                func stalledGauge() async -> Double? {
                    guard let (_, body) = try? await httpGet(port: http, path: "/metrics") else { return nil }
                    return metricValue(body, "mqtt_bridge_spool_stalled", route: "stall")
                }
                #expect(await eventually { await ready() == 200 })
                #expect(await stalledGauge() == 0)
                let peer = try await FeedPeer.connect(port: try #require(bridge.port(ofRoute: "stall")))
                try await peer.write(Array("first\n".utf8))
                #expect(await eventually { recorder.count == 1 })

                // The broker hangs (its connections stay open): what the bridge publishes is never acknowledged.
                kill(pid, SIGSTOP)
                do {
                    try await peer.write(Array("held\n".utf8))
                    #expect(await eventually { bridge.spoolDepth(ofRoute: "stall") == 1 })
                    try await Task.sleep(for: .milliseconds(500))
                    #expect(await ready() == 200, "not stalled before the timeout")
                    #expect(await eventually { await ready() == 503 }, "\(capture.all)")
                    #expect(bridge.metrics.isMQTTConnected, "not ready because stalled, not because disconnected")
                    #expect(bridge.metrics.route("stall").isSpoolStalled)
                    #expect(await stalledGauge() == 1)
                    #expect(capture.lines(containing: "Route stall: spool stalled").count == 1, "\(capture.all)")
                } catch {
                    kill(pid, SIGCONT)
                    throw error
                }
                kill(pid, SIGCONT)
                #expect(await eventually { recorder.count == 2 })
                #expect(await eventually { await ready() == 200 }, "\(capture.all)")
                #expect(await stalledGauge() == 0)
                #expect(!bridge.metrics.route("stall").isSpoolStalled)
                #expect(capture.lines(containing: "Route stall: spool no longer stalled").count == 1, "\(capture.all)")
                await peer.close()
            }
            #expect(recorder.strings == ["first", "held"])
            recorder.stop()
            await sub.shutdown()
        }
    }
}
