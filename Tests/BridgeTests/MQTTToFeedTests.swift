import Foundation
import Mosquitto
import MosquittoBroker
import MosquittoTestSupport
import MQTTBridge
import NIOCore
import NIOPosix
import Testing

@Suite("MQTT to feed", .serialized, .timeLimit(.minutes(5 * testTimeScale)))
struct MQTTToFeedTests {
    @Test("a slow TCP reader stays within its queue bound and does not slow the other reader")
    func slowReader() async throws {
        // The broker must not drop what it queues for the bridge when the machine is busy (its default
        // max_queued_messages is 1000): the accounting below is about the bridge's own drops.
        var brokerConfig = MosquittoBroker.Configuration()
        brokerConfig.maxQueuedMessages = 0
        try await withBroker(brokerConfig) { broker in
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            var route = try serverRoute("out", direction: .toFeed, subscriptions: ["down/#"])
            let bound = 1 << 20
            route.outQueueBytes = bound
            try await withBridge(bridgeConfig(broker, spool: dir, routes: [route])) { bridge in
                let port = try #require(bridge.port(ofRoute: "out"))
                let fast = try await FeedPeer.connect(port: port)
                let slow = try await FeedPeer.connect(port: port, autoRead: false, receiveBuffer: 4096)
                let m = bridge.metrics.route("out")
                #expect(await eventually { m.openConnectionCount == 2 && m.isSubscribed })
                let pub = try await connected(broker)
                let count = 6000
                let filler = String(repeating: "z", count: 2000)
                for i in 0..<count {
                    try await pub.publish(to: "down/x", string: "\(i):\(filler)", qos: .atLeastOnce, completion: .enqueued)
                    // Paced so that a reader that keeps up can keep up on a loaded machine (12 MB at full speed
                    // overran the fast reader's 1 MiB bound when the test itself was starved of CPU). The slow
                    // reader reads nothing at all, so it still overflows its bound.
                    if i % 200 == 199 {
                        let target = i + 1
                        #expect(await eventually(timeout: .seconds(60)) { lines(fast.received).count >= target },
                                "fast reader: \(lines(fast.received).count) of \(target) lines; slow-reader drops \(m.dropped(.slowReader)), queued \(m.queuedByteCount) bytes, received from MQTT \(m.messagesReceived.value)")
                    }
                }
                await pub.waitUntilAllPublished()
                // The fast reader gets everything, in order, while the slow one is stuck.
                #expect(await eventually(timeout: .seconds(60)) { lines(fast.received).count >= count })
                let fastLines = lines(fast.received)
                #expect(fastLines.count == count)
                #expect(fastLines.indices.allSatisfy { fastLines[$0].hasPrefix("\($0):") })
                // The slow reader's queue never went past its bound (plus one message).
                #expect(m.maxQueuedBytesPerConnection <= bound + 2100)
                #expect(m.dropped(.slowReader) > 0)
                // Now drain the slow reader. Accounting over both connections: sent twice = received + dropped.
                slow.channel.setOption(.autoRead, value: true).whenComplete { _ in }
                slow.channel.read()
                #expect(await eventually(timeout: .seconds(20)) {
                    m.queuedByteCount == 0 && lines(fast.received).count + lines(slow.received).count + m.dropped(.slowReader) >= 2 * count
                })
                try await Task.sleep(for: .milliseconds(300))
                #expect(lines(fast.received).count + lines(slow.received).count + m.dropped(.slowReader) == 2 * count)
                #expect(m.dropped(.noConnection) == 0)
                await fast.close()
                await slow.close()
                await pub.shutdown()
            }
        }
    }

    @Test("two bridge instances share one MQTT-to-feed route ($share): each message reaches the feed once")
    func sharedSubscription() async throws {
        try await withBroker { broker in
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            var route = try serverRoute("shared", direction: .toFeed, subscriptions: ["jobs/#"])
            route.shareGroup = "bridges"
            let a = bridgeConfig(broker, spool: dir + "/a", routes: [route], id: "bridge-a")
            let b = bridgeConfig(broker, spool: dir + "/b", routes: [route], id: "bridge-b")
            try await withBridge(a) { bridgeA in
                try await withBridge(b) { bridgeB in
                    // One feed consumer connected to both instances.
                    let toA = try await FeedPeer.connect(port: try #require(bridgeA.port(ofRoute: "shared")))
                    let toB = try await FeedPeer.connect(port: try #require(bridgeB.port(ofRoute: "shared")))
                    let (ra, rb) = (bridgeA.metrics.route("shared"), bridgeB.metrics.route("shared"))
                    #expect(await eventually { ra.isSubscribed && rb.isSubscribed && ra.openConnectionCount == 1 && rb.openConnectionCount == 1 })
                    let pub = try await connected(broker)
                    let count = 1000
                    for i in 0..<count {
                        try await pub.publish(to: "jobs/\(i % 7)", string: "job-\(i)", qos: .atLeastOnce, completion: .enqueued)
                    }
                    await pub.waitUntilAllPublished()
                    #expect(await eventually { lines(toA.received).count + lines(toB.received).count >= count })
                    try await Task.sleep(for: .milliseconds(300))
                    let all = lines(toA.received) + lines(toB.received)
                    #expect(all.count == count)
                    #expect(Set(all) == Set((0..<count).map { "job-\($0)" }))
                    #expect(bridgeA.metrics.route("shared").messagesReceived.value > 0)
                    #expect(bridgeB.metrics.route("shared").messagesReceived.value > 0)
                    await toA.close()
                    await toB.close()
                    await pub.shutdown()
                }
            }
        }
    }

    @Test("a route in both directions does not echo its own publications back to the feed (no-local)")
    func noLocalLoop() async throws {
        try await withBroker { broker in
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let route = try serverRoute("loop", direction: .both, topic: "loop/feed", subscriptions: ["loop/#"])
            try await withBridge(bridgeConfig(broker, spool: dir, routes: [route])) { bridge in
                let peer = try await FeedPeer.connect(port: try #require(bridge.port(ofRoute: "loop")))
                #expect(await eventually { bridge.metrics.route("loop").isSubscribed && bridge.metrics.route("loop").openConnectionCount == 1 })
                let sub = try await connected(broker)
                let recorder = Recorder(try await sub.subscribe("loop/feed", buffer: .recorder))
                try await peer.write(Array("from-feed-1\nfrom-feed-2\n".utf8))
                #expect(await eventually { recorder.count == 2 })
                let pub = try await connected(broker)
                try await pub.publish(to: "loop/cmd", string: "from-mqtt")
                #expect(await eventually { lines(peer.received).count >= 1 })
                try await Task.sleep(for: .milliseconds(300))
                // The feed sees only the other client's message, never its own two frames.
                #expect(lines(peer.received) == ["from-mqtt"])
                #expect(bridge.metrics.route("loop").messagesReceived.value == 1)
                recorder.stop()
                await peer.close()
                await pub.shutdown()
                await sub.shutdown()
            }
        }
    }
}

/// Receives datagrams into a list.
final class DatagramCollector: ChannelInboundHandler, Sendable {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    let datagrams = Locked<[[UInt8]]>([])
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var e = unwrapInboundIn(data)
        let bytes = e.data.readBytes(length: e.data.readableBytes) ?? []
        datagrams.withLock { $0.append(bytes) }
    }
}

@Suite("UDP and TCP client feeds", .serialized, .timeLimit(.minutes(5 * testTimeScale)))
struct OtherFeedTests {
    @Test("UDP: datagrams in are published; MQTT messages go out as datagrams")
    func udp() async throws {
        try await withBroker { broker in
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let collector = DatagramCollector()
            let sink = try await DatagramBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .channelInitializer { ch in ch.eventLoop.makeCompletedFuture { try ch.pipeline.syncOperations.addHandler(collector) } }
                .bind(host: "127.0.0.1", port: 0).get()
            let sinkPort = try #require(sink.localAddress?.port)
            let route = RouteConfiguration(
                name: "udp", direction: .both,
                feed: FeedConfiguration(mode: .udp, addresses: [SocketAddressSpec(host: "127.0.0.1", port: 0)],
                                        udpTargets: [SocketAddressSpec(host: "127.0.0.1", port: sinkPort)]),
                framing: .raw, topic: try TopicTemplate("udp/in/{peer}"), subscriptions: ["udp/out"])
            let sub = try await connected(broker)
            let recorder = Recorder(try await sub.subscribe("udp/in/#", buffer: .recorder))
            try await withBridge(bridgeConfig(broker, spool: dir, routes: [route])) { bridge in
                let port = try #require(bridge.port(ofRoute: "udp"))
                let sender = try await DatagramBootstrap(group: MultiThreadedEventLoopGroup.singleton).bind(host: "127.0.0.1", port: 0).get()
                let target = try SocketAddress(ipAddress: "127.0.0.1", port: port)
                let datagrams: [[UInt8]] = (0..<50).map { [0x00, 0xFF, 0x0A] + Array("dgram-\($0)".utf8) }
                for d in datagrams {
                    try await sender.writeAndFlush(AddressedEnvelope(remoteAddress: target, data: sender.allocator.buffer(bytes: d))).get()
                }
                #expect(await eventually { recorder.count >= datagrams.count })
                #expect(Set(recorder.payloads) == Set(datagrams))  // UDP on loopback: none lost, order not promised
                #expect(recorder.messages.value.allSatisfy { $0.topic == "udp/in/127.0.0.1" })
                #expect(await eventually { bridge.metrics.route("udp").isSubscribed })
                let pub = try await connected(broker)
                for i in 0..<20 { try await pub.publish(to: "udp/out", string: "down-\(i)") }
                #expect(await eventually { collector.datagrams.value.count >= 20 })
                #expect(Set(collector.datagrams.value.map { String(decoding: $0, as: UTF8.self) }) == Set((0..<20).map { "down-\($0)" }))
                try await sender.close()
                await pub.shutdown()
            }
            try await sink.close()
            recorder.stop()
            await sub.shutdown()
        }
    }

    @Test("TCP client: the bridge dials the feed, redials after the feed drops, and loses no complete frame")
    func tcpClientRedial() async throws {
        try await withBroker { broker in
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            // The feed: each accepted connection gets the next batch of lines, then is closed by the feed.
            let batches = Locked<Int>(0)
            let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .childChannelInitializer { ch in
                    let n = batches.withLock { b -> Int in b += 1; return b }
                    let text = (0..<500).map { "b\(n):\($0)\n" }.joined()
                    ch.writeAndFlush(ch.allocator.buffer(string: text)).whenComplete { _ in
                        if n < 3 { ch.close(promise: nil) }
                    }
                    return ch.eventLoop.makeSucceededVoidFuture()
                }
                .bind(host: "127.0.0.1", port: 0).get()
            let port = try #require(server.localAddress?.port)
            var route = RouteConfiguration(
                name: "dial", direction: .toMQTT,
                feed: FeedConfiguration(mode: .tcpClient, addresses: [SocketAddressSpec(host: "127.0.0.1", port: port)],
                                        restartTimeout: RestartTimeout(base: .milliseconds(50), cap: .milliseconds(300))),
                topic: try TopicTemplate("dial/{feed}"))
            route.qos = .atLeastOnce
            let sub = try await connected(broker)
            let recorder = Recorder(try await sub.subscribe("dial/#", buffer: .recorder))
            try await withBridge(bridgeConfig(broker, spool: dir, routes: [route])) { bridge in
                #expect(await eventually { recorder.count >= 1500 })
                let expected = (1...3).flatMap { b in (0..<500).map { "b\(b):\($0)" } }
                #expect(recorder.strings == expected)
                #expect(bridge.metrics.route("dial").reconnects.value >= 2)
            }
            try await server.close()
            recorder.stop()
            await sub.shutdown()
        }
    }

    @Test("readiness waits for each MQTT-to-feed route's subscription: a filter the client refuses keeps the bridge not ready")
    func readinessNeedsSubscription() async throws {
        try await withBroker { broker in
            let good = try serverRoute("good", direction: .toFeed, subscriptions: ["ready/#"])
            // 300 levels: the client refuses it before sending (the broker would disconnect it), so the route's
            // subscription never succeeds and the bridge retries it every 500 ms.
            let deep = try serverRoute("deep", direction: .toFeed, subscriptions: [Array(repeating: "d", count: 300).joined(separator: "/")])
            let dirA = temporaryDirectory()
            let dirB = temporaryDirectory()
            defer {
                try? FileManager.default.removeItem(atPath: dirA)
                try? FileManager.default.removeItem(atPath: dirB)
            }
            try await withBridge(bridgeConfig(broker, spool: dirA, routes: [good])) { bridge in
                #expect(await eventually { bridge.isReady })
                #expect(bridge.metrics.route("good").isSubscribed)
            }
            try await withBridge(bridgeConfig(broker, spool: dirB, routes: [good, deep])) { bridge in
                #expect(await eventually { bridge.metrics.isMQTTConnected && bridge.metrics.route("good").isSubscribed })
                try await Task.sleep(for: .seconds(1))  // two of the refused route's retries
                #expect(!bridge.metrics.route("deep").isSubscribed)
                #expect(!bridge.isReady, "connected and listening, but the deep route cannot receive anything")
            }
        }
    }

    /// Routes start before the first connection; a subscribe made offline returns at once. The route said
    /// "subscribed" then, before the broker had the filter, and a message published right after never reached the
    /// feed (a loaded ThreadSanitizer run lost the first of 50 that way).
    @Test("a route is subscribed only once the broker has its filter: not while the broker is down, and the first message after it reaches the feed")
    func subscribedOnlyWhenTheBrokerHasIt() async throws {
        try await withBroker { broker in
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            await broker.stop()
            let holder = try PortHolder(port: broker.port)
            let route = try serverRoute("late", direction: .toFeed, subscriptions: ["late/#"])
            try await withBridge(bridgeConfig(broker, spool: dir, routes: [route])) { bridge in
                let peer = try await FeedPeer.connect(port: try #require(bridge.port(ofRoute: "late")))
                let m = bridge.metrics.route("late")
                #expect(await eventually { m.openConnectionCount == 1 })
                try await Task.sleep(for: .milliseconds(500))
                #expect(!m.isSubscribed, "subscribed while the broker is down")
                #expect(!bridge.isReady)
                holder.release()
                try await broker.start()
                #expect(await eventually(timeout: .seconds(30)) { m.isSubscribed })
                let pub = try await connected(broker)
                try await pub.publish(to: "late/1", string: "first", qos: .atLeastOnce)
                #expect(await eventually { lines(peer.received) == ["first"] }, "\(lines(peer.received))")
                await pub.shutdown()
                await peer.close()
            }
        }
    }

    @Test("/metrics, /healthz and /readyz answer over HTTP with the route counters")
    func metricsEndpoint() async throws {
        try await withBroker { broker in
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            var config = bridgeConfig(broker, spool: dir, routes: [try serverRoute("m", topic: "m/x")])
            config.metricsAddress = SocketAddressSpec(host: "127.0.0.1", port: 0)
            let sub = try await connected(broker)
            let recorder = Recorder(try await sub.subscribe("m/x", buffer: .recorder))
            let state = Recorder(try await sub.subscribe(config.statePrefix + "/state", buffer: .recorder))
            try await withBridge(config) { bridge in
                let http = try #require(bridge.metricsPort)
                #expect(await eventually { bridge.isReady })
                let peer = try await FeedPeer.connect(port: try #require(bridge.port(ofRoute: "m")))
                try await peer.write(Array("a\nb\nc\npartial".utf8))
                await peer.close()
                // The partial frame is counted when the bridge handles the close, which may come after the publishes.
                #expect(await eventually {
                    recorder.count == 3 && bridge.metrics.route("m").framesPublished.value == 3
                        && bridge.metrics.route("m").dropped(.partial) == 1
                })
                let (status, body) = try await httpGet(port: http, path: "/metrics")
                #expect(status == 200)
                #expect(metricValue(body, "mqtt_bridge_frames_in_total", route: "m") == 3)
                #expect(metricValue(body, "mqtt_bridge_frames_published_total", route: "m") == 3)
                #expect(body.contains("mqtt_bridge_drops_total{route=\"m\",reason=\"partial\"} 1"))
                #expect(metricValue(body, "mqtt_bridge_spool_records", route: "m") == 0)
                // Every family is described for Prometheus.
                for family in ["mqtt_bridge_frames_in_total", "mqtt_bridge_drops_total", "mqtt_bridge_spool_records", "mqtt_bridge_mqtt_connected"] {
                    #expect(body.contains("# HELP \(family) ") && body.contains("# TYPE \(family) "), "\(family) lacks HELP/TYPE")
                }
                #expect(try await httpGet(port: http, path: "/healthz").0 == 200)
                #expect(try await httpGet(port: http, path: "/readyz").0 == 200)
                #expect(try await httpGet(port: http, path: "/nope").0 == 404)
                #expect(await eventually { state.strings.last == "1" })
            }
            // Graceful stop sets the retained state to 0.
            #expect(await eventually { state.strings.last == "0" })
            recorder.stop()
            state.stop()
            await sub.shutdown()
        }
    }
}
