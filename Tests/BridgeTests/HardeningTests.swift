import Foundation
import Mosquitto
import MosquittoBroker
import MosquittoTestSupport
import MQTTBridge
import NIOCore
import NIOPosix
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Whether the peer's connection is closed by the other side within `timeout`.
func closedByBridge(_ peer: FeedPeer, within timeout: Duration = .seconds(5)) async -> Bool {
    await eventually(timeout: timeout) { !peer.channel.isActive }
}

/// Sends datagrams from an ephemeral loopback socket.
func sendDatagrams(_ datagrams: [[UInt8]], to port: Int) async throws {
    let sender = try await DatagramBootstrap(group: MultiThreadedEventLoopGroup.singleton).bind(host: "127.0.0.1", port: 0).get()
    let target = try SocketAddress(ipAddress: "127.0.0.1", port: port)
    for d in datagrams {
        try await sender.writeAndFlush(AddressedEnvelope(remoteAddress: target, data: sender.allocator.buffer(bytes: d))).get()
    }
    try await sender.close()
}

/// A non-loopback IPv4 address of this machine, if it has one.
func nonLoopbackIPv4() -> String? {
    var list: UnsafeMutablePointer<ifaddrs>?
    guard getifaddrs(&list) == 0, let first = list else { return nil }
    defer { freeifaddrs(list) }
    var p: UnsafeMutablePointer<ifaddrs>? = first
    while let i = p {
        if let a = i.pointee.ifa_addr, a.pointee.sa_family == sa_family_t(AF_INET) {
            var sin = sockaddr_in()
            memcpy(&sin, a, MemoryLayout<sockaddr_in>.size)
            var buf = [CChar](repeating: 0, count: 64)
            inet_ntop(AF_INET, &sin.sin_addr, &buf, 64)
            let s = String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            if !s.hasPrefix("127.") { return s }
        }
        p = i.pointee.ifa_next
    }
    return nil
}

/// Open file descriptors of this process.
func openFileDescriptors() -> Int {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? -1
}

/// Resident memory of this process in KiB.
func residentKiB() -> Int {
    guard let text = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return -1 }
    for line in text.split(separator: "\n") where line.hasPrefix("VmRSS:") {
        return Int(line.split(separator: " ", omittingEmptySubsequences: true)[1]) ?? -1
    }
    return -1
}

func mode(_ path: String) -> Int? {
    (try? FileManager.default.attributesOfItem(atPath: path))?[.posixPermissions] as? Int
}

/// Writes a configuration file readable by the owner only (it may hold a broker password).
func writePrivate(_ text: String, to path: String) throws {
    guard FileManager.default.createFile(atPath: path, contents: Data(text.utf8), attributes: [.posixPermissions: 0o600]) else {
        throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: path])
    }
    _ = chmod(path, 0o600)
}

@Suite("Hardening", .serialized, .timeLimit(.minutes(5 * testTimeScale)))
struct HardeningTests {
    @Test("TCP and UDP feeds bind to loopback unless told otherwise, and are unreachable on other interfaces")
    func loopbackByDefault() async throws {
        #expect(SocketAddressSpec(parsing: ":7000") == SocketAddressSpec(host: "127.0.0.1", port: 7000))
        try await withBroker { broker in
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let text = """
            address \(broker.host):\(broker.port)
            route t
            mode tcp_server
            topic lb/t
            route u
            mode udp
            topic lb/u
            """
            var config = try ConfigParser.parse(text, base: bridgeConfig(broker, spool: dir, routes: []))
            config.spoolDirectory = dir
            let sub = try await connected(broker)
            let recorder = Recorder(try await sub.subscribe("lb/#", qos: .atLeastOnce, buffer: .recorder))
            try await withBridge(config) { bridge in
                #expect(bridge.address(ofRoute: "t") == "127.0.0.1")
                #expect(bridge.address(ofRoute: "u") == "127.0.0.1")
                let port = try #require(bridge.port(ofRoute: "t"))
                if let other = nonLoopbackIPv4() {
                    let reached = try? await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                        .connectTimeout(.seconds(2)).connect(host: other, port: port).get()
                    #expect(reached == nil, "the loopback listener was reachable on \(other)")
                    try? await reached?.close()
                }
                // And it works on loopback: 1 frame produced, 1 delivered.
                let peer = try await FeedPeer.connect(port: port)
                try await peer.write(Array("here\n".utf8))
                #expect(await eventually { recorder.count == 1 })
                #expect(recorder.strings == ["here"])
                await peer.close()
            }
            recorder.stop()
            await sub.shutdown()
        }
    }

    @Test("allowlist: TCP connections and UDP datagrams from peers not listed are refused and counted; listed peers get through")
    func allowList() async throws {
        try await withBroker { broker in
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            func route(_ name: String, _ mode: FeedConfiguration.Mode, allow: [String]) throws -> RouteConfiguration {
                RouteConfiguration(name: name, direction: .toMQTT,
                                   feed: FeedConfiguration(mode: mode, addresses: [SocketAddressSpec(host: "127.0.0.1", port: 0)], allow: allow),
                                   framing: .lf, topic: try TopicTemplate("al/{feed}"))
            }
            let routes = [try route("tdeny", .tcpServer, allow: ["10.0.0.0/8"]), try route("tok", .tcpServer, allow: ["127.0.0.1/32", "::1"]),
                          try route("udeny", .udp, allow: ["192.168.0.0/16"]), try route("uok", .udp, allow: ["127.0.0.0/8"])]
            let sub = try await connected(broker)
            let recorder = Recorder(try await sub.subscribe("al/#", qos: .atLeastOnce, buffer: .recorder))
            try await withBridge(bridgeConfig(broker, spool: dir, routes: routes)) { bridge in
                let denied = try await FeedPeer.connect(port: try #require(bridge.port(ofRoute: "tdeny")))
                try? await denied.write(Array("never\n".utf8))
                #expect(await closedByBridge(denied))
                #expect(bridge.metrics.route("tdeny").connectionsRejected.value == 1)
                let ok = try await FeedPeer.connect(port: try #require(bridge.port(ofRoute: "tok")))
                try await ok.write(Array("a\nb\n".utf8))
                try await sendDatagrams([Array("x\n".utf8), Array("y\n".utf8), Array("z\n".utf8)], to: try #require(bridge.port(ofRoute: "udeny")))
                try await sendDatagrams([Array("u1\n".utf8), Array("u2\n".utf8)], to: try #require(bridge.port(ofRoute: "uok")))
                #expect(await eventually { recorder.count >= 4 && bridge.metrics.route("udeny").datagramsRejected.value == 3 })
                try await Task.sleep(for: .milliseconds(200))
                let topics = recorder.messages.value.map(\.topic)
                #expect(topics.filter { $0 == "al/tok" }.count == 2)
                #expect(topics.filter { $0 == "al/uok" }.count == 2)
                #expect(!topics.contains("al/tdeny") && !topics.contains("al/udeny"))
                // Accounting: 4 frames from allowed peers produced = 4 delivered; the refused connection's frame
                // never entered the bridge; 3 datagrams rejected unread.
                #expect(bridge.metrics.route("tdeny").framesIn.value == 0)
                #expect(bridge.metrics.route("udeny").framesIn.value == 0)
                #expect(recorder.count == 4)
                await ok.close()
            }
            recorder.stop()
            await sub.shutdown()
        }
    }

    @Test("connection limit: the connection over max_connections is closed and counted; a slot frees when one closes")
    func connectionLimit() async throws {
        try await withBroker { broker in
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let route = RouteConfiguration(name: "lim", direction: .toMQTT,
                                           feed: FeedConfiguration(mode: .tcpServer, addresses: [SocketAddressSpec(host: "127.0.0.1", port: 0)],
                                                                   maxConnections: 2),
                                           topic: try TopicTemplate("lim/x"))
            let sub = try await connected(broker)
            let recorder = Recorder(try await sub.subscribe("lim/#", qos: .atLeastOnce, buffer: .recorder))
            try await withBridge(bridgeConfig(broker, spool: dir, routes: [route])) { bridge in
                let port = try #require(bridge.port(ofRoute: "lim"))
                let m = bridge.metrics.route("lim")
                let a = try await FeedPeer.connect(port: port)
                let b = try await FeedPeer.connect(port: port)
                #expect(await eventually { m.openConnectionCount == 2 })
                let c = try await FeedPeer.connect(port: port)
                #expect(await closedByBridge(c))
                #expect(m.connectionsRejected.value == 1)
                try await a.write(Array("a1\n".utf8))
                try await b.write(Array("b1\n".utf8))
                await a.close()
                #expect(await eventually { m.openConnectionCount == 1 })
                let d = try await FeedPeer.connect(port: port)
                try await d.write(Array("d1\n".utf8))
                #expect(await eventually { recorder.count >= 3 })
                try await Task.sleep(for: .milliseconds(200))
                #expect(d.channel.isActive)
                #expect(Set(recorder.strings) == ["a1", "b1", "d1"])
                #expect(recorder.count + m.totalDropped == 3)
                await b.close()
                await d.close()
            }
            recorder.stop()
            await sub.shutdown()
        }
    }

    @Test("maximum frame size on UDP: an oversize datagram frame is dropped and counted, the rest arrive")
    func udpMaxFrame() async throws {
        try await withBroker { broker in
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let route = RouteConfiguration(name: "um", direction: .toMQTT,
                                           feed: FeedConfiguration(mode: .udp, addresses: [SocketAddressSpec(host: "127.0.0.1", port: 0)]),
                                           framing: .lf, maxFrame: 10, topic: try TopicTemplate("um/x"))
            let sub = try await connected(broker)
            let recorder = Recorder(try await sub.subscribe("um/#", qos: .atLeastOnce, buffer: .recorder))
            try await withBridge(bridgeConfig(broker, spool: dir, routes: [route])) { bridge in
                try await sendDatagrams([Array("short\n0123456789ABCDEF\nlast\n".utf8)], to: try #require(bridge.port(ofRoute: "um")))
                let m = bridge.metrics.route("um")
                #expect(await eventually { recorder.count >= 2 && m.dropped(.oversize) == 1 })
                #expect(recorder.strings == ["short", "last"])
                #expect(recorder.count + m.totalDropped == 3)
            }
            recorder.stop()
            await sub.shutdown()
        }
    }

    /// A timing test (a connection that writes every 100 ms must not look idle for 3 s), so it runs in a `swift test`
    /// process of its own (``processAlone``): in the shared run, tests that hold the concurrency pool's threads
    /// for seconds stalled its writer long enough to close all three connections (seen with the machine loaded).
    @Test("idle timeout: a silent feed connection is closed and counted; a talking one and a reader of MQTT traffic stay",
          .enabled(if: processAlone))
    func idleTimeout() async throws {
        let parsed = try ConfigParser.parse("route i\nmode tcp_server\ntopic t\nidle_timeout 2.5\n")
        #expect(parsed.routes[0].feed.idleTimeout == .milliseconds(2500))
        try await withBroker { broker in
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let feed = FeedConfiguration(mode: .tcpServer, addresses: [SocketAddressSpec(host: "127.0.0.1", port: 0)],
                                         idleTimeout: .milliseconds(3000) * testTimeScale)
            let routes = [RouteConfiguration(name: "idle", direction: .toMQTT, feed: feed, topic: try TopicTemplate("idle/up")),
                          RouteConfiguration(name: "idleout", direction: .toFeed, feed: feed, subscriptions: ["idle/down"])]
            let sub = try await connected(broker)
            let recorder = Recorder(try await sub.subscribe("idle/up", qos: .atLeastOnce, buffer: .recorder))
            try await withBridge(bridgeConfig(broker, spool: dir, routes: routes)) { bridge in
                let m = bridge.metrics.route("idle")
                let mo = bridge.metrics.route("idleout")
                #expect(await eventually { bridge.metrics.isMQTTConnected })
                let pub = try await connected(broker)
                let silent = try await FeedPeer.connect(port: try #require(bridge.port(ofRoute: "idle")))
                let talker = try await FeedPeer.connect(port: try #require(bridge.port(ofRoute: "idle")))
                let reader = try await FeedPeer.connect(port: try #require(bridge.port(ofRoute: "idleout")))
                // Every message must reach the reader: start once the bridge holds all three connections and its
                // subscription is acknowledged (under ThreadSanitizer load either can lag behind the first publish).
                #expect(await eventually { m.openConnectionCount == 2 && mo.openConnectionCount == 1 && mo.isSubscribed && bridge.isReady })
                try await silent.write(Array("s1\n".utf8))
                var written = 1
                // 7.5 s: two and a half idle periods. Writes every 100 ms leave a 30x margin, so a loaded machine
                // does not make the talker look idle. Under sanitizers (several times slower, whole suites in
                // parallel) the idle period and the write interval both stretch by the test time scale.
                for i in 0..<75 {
                    try await talker.write(Array("t\(i)\n".utf8))
                    written += 1
                    try await pub.publish(to: "idle/down", string: "d\(i)", completion: .enqueued)
                    try await Task.sleep(for: .milliseconds(100) * testTimeScale)
                }
                // NIO's idle timer fires within a period or two of the deadline; allow for a loaded machine.
                #expect(await eventually(timeout: .seconds(20)) { !silent.channel.isActive && m.idleTimeouts.value == 1 },
                        "the silent connection should have been closed")
                #expect(talker.channel.isActive)
                #expect(reader.channel.isActive, "a connection receiving MQTT traffic is not idle")
                #expect(m.idleTimeouts.value == 1)
                #expect(mo.idleTimeouts.value == 0)
                #expect(await eventually { recorder.count >= written })
                #expect(recorder.count + m.totalDropped == written)
                #expect(m.openConnectionCount == 1 && mo.openConnectionCount == 1)
                #expect(await eventually { lines(reader.received).count == 75 },
                        "reader got \(lines(reader.received).count) lines; route received \(mo.messagesReceived.value), dropped \(mo.totalDropped)")
                // Then everyone goes quiet: all closed by the timeout.
                #expect(await eventually(timeout: .seconds(20)) { !talker.channel.isActive && !reader.channel.isActive })
                #expect(m.idleTimeouts.value == 2)
                #expect(mo.idleTimeouts.value == 1)
                #expect(await eventually { m.openConnectionCount == 0 && mo.openConnectionCount == 0 })
                await pub.shutdown()
            }
            recorder.stop()
            await sub.shutdown()
        }
    }

    @Test("spool directory and files are owner-only, even when the directory existed with a looser mode; so are generated configs")
    func ownerOnlyFiles() async throws {
        try await withBroker { broker in
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let spoolDir = dir + "/spool"
            try FileManager.default.createDirectory(atPath: spoolDir + "/m", withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o755])
            _ = chmod(spoolDir + "/m", 0o755)
            let sub = try await connected(broker)
            let recorder = Recorder(try await sub.subscribe("mo/#", qos: .atLeastOnce, buffer: .recorder))
            try await withBridge(bridgeConfig(broker, spool: spoolDir, routes: [try serverRoute("m", topic: "mo/x")])) { bridge in
                let peer = try await FeedPeer.connect(port: try #require(bridge.port(ofRoute: "m")))
                try await peer.write(Array((0..<100).map { "m\($0)\n" }.joined().utf8))
                #expect(await eventually { recorder.count >= 100 })
                #expect(recorder.count == 100)
                // The watermark file is written within the flush interval.
                #expect(await eventually { FileManager.default.fileExists(atPath: spoolDir + "/m/done") })
                await peer.close()
            }
            #expect(mode(spoolDir + "/m") == 0o700)
            let files = try FileManager.default.contentsOfDirectory(atPath: spoolDir + "/m")
            #expect(files.contains { $0.hasPrefix("seg-") })
            for f in files { #expect(mode(spoolDir + "/m/" + f) == 0o600, "\(f)") }
            // A generated configuration (what the scripts and tests write) is owner-only.
            try writePrivate("address 127.0.0.1:1\n", to: dir + "/gen.conf")
            #expect(mode(dir + "/gen.conf") == 0o600)
            recorder.stop()
            await sub.shutdown()
        }
    }

    @Test("a record the broker refuses (ACL, reason 0x87) is not lost: it goes to the dead-letter topic, counted, and the stream continues")
    func refusedGoesToDeadLetter() async throws {
        var brokerConfig = MosquittoBroker.Configuration()
        brokerConfig.aclFileContents = """
        topic readwrite ok/#
        topic readwrite dlq/#
        topic readwrite mqtt-bridge/#
        topic read no/#
        """
        try await withBroker(brokerConfig) { broker in
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let sub = try await connected(broker)
            let recorder = Recorder(try await sub.subscribe("ok/#", "no/#", "dlq/#", qos: .atLeastOnce, buffer: .recorder))
            var route = try serverRoute("acl", topic: "{field:0}/x")
            route.deadLetterTopic = "dlq/acl"
            try await withBridge(bridgeConfig(broker, spool: dir, routes: [route])) { bridge in
                let peer = try await FeedPeer.connect(port: try #require(bridge.port(ofRoute: "acl")))
                let frames = (0..<30).map { $0 % 3 == 1 ? "no,\($0)" : "ok,\($0)" }
                try await peer.write(Array(frames.map { $0 + "\n" }.joined().utf8))
                let m = bridge.metrics.route("acl")
                #expect(await eventually { recorder.count >= frames.count })
                try await Task.sleep(for: .milliseconds(200))
                let messages = recorder.messages.value
                let ok = messages.filter { $0.topic == "ok/x" }.map { String(decoding: $0.payload, as: UTF8.self) }
                let dead = messages.filter { $0.topic == "dlq/acl" }
                #expect(ok == frames.filter { $0.hasPrefix("ok") })
                #expect(dead.map { String(decoding: $0.payload, as: UTF8.self) } == frames.filter { $0.hasPrefix("no") })
                #expect(dead.allSatisfy { $0.properties.userProperties.contains(UserProperty("dead_letter", "acl")) })
                #expect(!messages.contains { $0.topic.hasPrefix("no/") })
                #expect(m.refused.value == 10)
                #expect(m.dropped(.refused) == 0)
                // produced 30 = 20 delivered + 10 dead-lettered + 0 drops; the spool is empty.
                #expect(ok.count + dead.count + m.totalDropped == frames.count)
                #expect(await eventually { bridge.spoolDepth(ofRoute: "acl") == 0 })
                #expect(m.framesPublished.value == frames.count)
                // A refusal is answered with a PUBACK and nothing else: the connection stays up (no resends, so no
                // duplicates). Under `max_queued_messages 0` mosquitto 2.0.11 drops the client after each one.
                #expect(bridge.metrics.mqttReconnects.value == 0, "the MQTT connection was lost \(bridge.metrics.mqttReconnects.value) times")
                await peer.close()
            }
            recorder.stop()
            await sub.shutdown()
        }
    }

    @Test("10,000 feed connections opened and dropped: the mqtt-bridge process's file descriptors and resident memory end where they began")
    func connectionChurn() async throws {
        let executable = try #require(builtExecutable("mqtt-bridge"), "build the mqtt-bridge executable first (swift build)")
        try await withBroker { broker in
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let feedPort = freeLoopbackPort()
            let httpPort = freeLoopbackPort()
            let configFile = dir + "/bridge.conf"
            try writePrivate("""
            address \(broker.host):\(broker.port)
            remote_clientid churn-bridge
            spool_dir \(dir)/spool
            metrics_listen 127.0.0.1:\(httpPort)
            progress_interval 0

            route churn
            direction to_mqtt
            mode tcp_server
            address 127.0.0.1:\(feedPort)
            topic churn/x
            qos 1
            """, to: configFile)
            let sub = try await connected(broker)
            let recorder = Recorder(try await sub.subscribe("churn/#", qos: .atLeastOnce, buffer: .recorder))
            // A separate process, so that other suites running in this one do not move the figures.
            let child = try Child(executable, ["--config", configFile, "--log-level", "warning"], output: dir + "/bridge.log")
            // Only if it is still our unreaped child (the normal path below stops it with SIGTERM).
            defer { child.killIfRunning() }
            #expect(await eventually { (try? await httpGet(port: httpPort, path: "/readyz"))?.0 == 200 })
            func fds() -> Int { (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(child.pid)/fd").count) ?? -1 }
            func rss() -> Int {
                guard let text = try? String(contentsOfFile: "/proc/\(child.pid)/status", encoding: .utf8) else { return -1 }
                for line in text.split(separator: "\n") where line.hasPrefix("VmRSS:") {
                    return Int(line.split(separator: " ", omittingEmptySubsequences: true)[1]) ?? -1
                }
                return -1
            }
            func open() async -> Double? {
                guard let (_, body) = try? await httpGet(port: httpPort, path: "/metrics") else { return nil }
                return metricValue(body, "mqtt_bridge_open_connections", route: "churn")
            }
            func churn(_ range: Range<Int>) async throws {
                try await withThrowingTaskGroup(of: Void.self) { group in
                    var next = range.lowerBound
                    func start() {
                        let i = next
                        next += 1
                        group.addTask {
                            let peer = try await FeedPeer.connect(port: feedPort)
                            if i % 2 == 0 { try await peer.write(Array("c\(i)\n".utf8)) }
                            await peer.close()
                        }
                    }
                    for _ in 0..<min(32, range.count) { start() }
                    while try await group.next() != nil {
                        if next < range.upperBound { start() }
                    }
                }
            }
            // Warm up (allocator pools, NIO, the metrics registry), then measure.
            try await churn(0..<500)
            #expect(await eventually { recorder.count >= 250 })
            #expect(await eventually { await open() == 0 })
            let fdsBefore = fds()
            let rssBefore = rss()
            try await churn(500..<10_500)
            #expect(await eventually(timeout: .seconds(60)) { recorder.count >= 5250 })
            #expect(await eventually { await open() == 0 })
            try await Task.sleep(for: .milliseconds(300))
            let fdsAfter = fds()
            let rssAfter = rss()
            print("churn: 10,000 connections; mqtt-bridge fds \(fdsBefore) -> \(fdsAfter); RSS \(rssBefore) -> \(rssAfter) KiB; \(recorder.count) frames delivered")
            // Tolerance: the same descriptors (+2 for a transient), resident memory within 8 MiB.
            #expect(fdsAfter <= fdsBefore + 2, "fds \(fdsBefore) -> \(fdsAfter)")
            // (Sanitizer builds keep shadow memory and quarantines that grow with every connection: memory is
            // checked in normal runs only.)
            if ProcessInfo.processInfo.environment["MOSQUITTO_SANITIZER"] == nil {
                #expect(rssAfter <= rssBefore + 8 * 1024, "RSS \(rssBefore) -> \(rssAfter) KiB")
            }
            if let (_, body) = try? await httpGet(port: httpPort, path: "/metrics") {
                #expect(metricValue(body, "mqtt_bridge_connections_total", route: "churn") == 10_500)
                #expect(metricValue(body, "mqtt_bridge_frames_in_total", route: "churn") == 5250)
            }
            // produced 5,250 (every other connection wrote one frame) = delivered + 0 drops.
            #expect(recorder.count == 5250)
            #expect(Set(recorder.strings).count == 5250)
            child.signal(SIGTERM)
            #expect(await child.exitStatus() != nil)
            recorder.stop()
            await sub.shutdown()
        }
    }
}
