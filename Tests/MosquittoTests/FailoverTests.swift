import Foundation
import Mosquitto
import MosquittoBroker
import MosquittoTestSupport
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The broker a client is connected to, from its CONNACK (nil while it is not connected).
private func connectedEndpoint(_ client: MQTTClient) -> MQTTConfiguration.Endpoint? {
    if case .connected(let ack) = client.state { return ack.endpoint }
    return nil
}

private func endpoint(_ broker: MosquittoBroker) -> MQTTConfiguration.Endpoint {
    .tcp(host: broker.host, port: broker.port)
}

/// A TCP server on 127.0.0.1 that answers every connection with fixed bytes, for the MQTT 5 server redirects that
/// no broker packaged for Debian sends (mosquitto 2.0.11, RabbitMQ and ejabberd never do). It reads the client's
/// CONNECT, writes `reply`, and closes the connection after `linger`.
private final class ScriptedServer: Sendable {
    let port: Int
    private let listener: Int32
    private let connections = Atomic(0)
    private let stopped = Atomic(false)

    /// How many clients connected so far.
    var connectionCount: Int { connections.load(ordering: .relaxed) }

    init(reply: @escaping @Sendable () -> [UInt8], linger: Duration = .milliseconds(200)) throws {
        let (fd, boundPort) = try listenOnLoopback()
        port = boundPort
        listener = fd
        let lingerMicros = UInt32(linger / .microseconds(1))
        Thread { [self] in
            while true {
                let conn = accept(fd, nil, nil)
                if conn < 0 {
                    // Closed here, not in stop(): a descriptor closed under a blocked accept could be reused by
                    // the next server, and this thread would answer that server's clients.
                    if self.stopped.load(ordering: .relaxed) { close(fd); return }
                    continue
                }
                self.connections.add(1, ordering: .relaxed)
                var buffer = [UInt8](repeating: 0, count: 4096)
                _ = read(conn, &buffer, buffer.count)  // the CONNECT
                let bytes = reply()
                _ = bytes.withUnsafeBytes { write(conn, $0.baseAddress, $0.count) }
                usleep(lingerMicros)
                close(conn)
            }
        }.start()
    }

    /// Stops accepting: the accept in progress fails, and the thread closes the socket and ends.
    func stop() {
        stopped.store(true, ordering: .relaxed)
        shutdown(listener, Int32(SHUT_RDWR))
    }

    /// MQTT 5 properties holding one Server Reference.
    static func serverReference(_ reference: String) -> [UInt8] {
        let text = Array(reference.utf8)
        return [0x1C, UInt8(text.count >> 8), UInt8(text.count & 0xFF)] + text
    }

    /// A CONNACK that refuses with `reason` (0x9C use another server, 0x9D server moved) and a Server Reference.
    static func redirectingConnAck(reason: UInt8, to reference: String) -> [UInt8] {
        let props = serverReference(reference)
        return [0x20, UInt8(3 + props.count), 0x00, reason, UInt8(props.count)] + props
    }

    /// A CONNACK that accepts, then a DISCONNECT with `reason` and a Server Reference.
    static func acceptThenDisconnect(reason: UInt8, to reference: String) -> [UInt8] {
        let props = serverReference(reference)
        return [0x20, 3, 0x00, 0x00, 0x00] + [0xE0, UInt8(2 + props.count), reason, UInt8(props.count)] + props
    }
}

@Suite("Failover across brokers and MQTT 5 redirects", .serialized, .timeLimit(.minutes(5 * testTimeScale)))
struct FailoverTests {
    @Test("A QoS 1 publisher on broker A moves to B when A is killed, loses nothing it still held, stays on B when A returns, and goes back to A when B fails")
    func killedBrokerFailover() async throws {
        try await withBroker(.init(persistence: false)) { a in
            try await withBroker(.init(persistence: false)) { b in
                let subA = try await connected(a, id: "watch-a")
                let subB = try await connected(b, id: "watch-b")
                let seen = Locked<[Int: Int]>([:])  // message id → copies seen on A and B together
                func watch(_ client: MQTTClient) async throws -> Task<Void, Never> {
                    let stream = try await client.subscribe("fo/#", qos: .atLeastOnce)
                    return Task {
                        do {
                            for try await m in stream {
                                if let id = Int(m.string?.split(separator: "-").last ?? "") { seen.withLock { $0[id, default: 0] += 1 } }
                            }
                        } catch {}
                    }
                }
                let readers = [try await watch(subA), try await watch(subB)]

                var c = config(a, id: "failover-pub")
                c.endpoints = [endpoint(a), endpoint(b)]
                let pub = try MQTTClient(configuration: c)
                try await pub.connect()
                #expect(connectedEndpoint(pub) == endpoint(a))

                let n = 3000
                let killed = Locked(false)
                let ackedBeforeKill = Locked<Set<Int>>([])
                let publisher = Task {
                    try await withThrowingTaskGroup(of: Void.self) { g in
                        for w in 0..<4 {
                            g.addTask {
                                for i in stride(from: w, to: n, by: 4) {
                                    try await pub.publish(MQTTMessage(topic: "fo/x", string: "m-\(i)", qos: .atLeastOnce))
                                    if !killed.value { ackedBeforeKill.withLock { _ = $0.insert(i) } }
                                }
                            }
                        }
                        try await g.waitForAll()
                    }
                }
                #expect(await eventually(timeout: .seconds(60)) { ackedBeforeKill.withLock { $0.count } > n / 4 })
                killed.withLock { $0 = true }
                await a.kill()
                // The reconnect policy of the tests waits 0.1 s to 1 s: B is the next attempt.
                #expect(await eventually(timeout: .seconds(15)) { connectedEndpoint(pub) == endpoint(b) })
                try await publisher.value

                // Every message reached a broker's subscriber, except what A acknowledged and then died with.
                #expect(await eventually(timeout: .seconds(30)) {
                    let delivered = seen.withLock { Set($0.keys) }
                    return Set(0..<n).subtracting(delivered).isSubset(of: ackedBeforeKill.value)
                })
                let delivered = seen.withLock { Set($0.keys) }
                let lostByA = Set(0..<n).subtracting(delivered)
                #expect(lostByA.isSubset(of: ackedBeforeKill.value), "lost messages A never acknowledged: \(lostByA.subtracting(ackedBeforeKill.value).sorted().prefix(20))")
                print("failover: \(n) published, \(delivered.count) delivered, \(lostByA.count) lost with the killed broker (acknowledged by it before the kill)")

                // A returns: the client stays on B.
                try await a.start()
                try await Task.sleep(for: .seconds(2))
                #expect(connectedEndpoint(pub) == endpoint(b))
                try await pub.publish(MQTTMessage(topic: "fo/x", string: "m-\(n)", qos: .atLeastOnce))
                #expect(await eventually { seen.withLock { $0[n] } != nil })

                // B fails: back to A, where the watcher has re-subscribed on A's fresh session.
                await b.kill()
                #expect(await eventually(timeout: .seconds(15)) { connectedEndpoint(pub) == endpoint(a) })
                #expect(await eventually(timeout: .seconds(15)) { connectedEndpoint(subA) != nil })
                try await Task.sleep(for: .milliseconds(300))
                try await pub.publish(MQTTMessage(topic: "fo/x", string: "m-\(n + 1)", qos: .atLeastOnce))
                #expect(await eventually { seen.withLock { $0[n + 1] } != nil })

                for r in readers { r.cancel() }
                await pub.shutdown()
                await subA.shutdown()
                await subB.shutdown()
            }
        }
    }

    @Test("Failover over WebSockets: each attempt opens its tunnel to the endpoint it tries, so a killed broker A leads to B")
    func webSocketFailover() async throws {
        var bc = MosquittoBroker.Configuration(persistence: false)
        bc.webSockets = true
        try await withBroker(bc) { a in
            try await withBroker(bc) { b in
                let wsA = MQTTConfiguration.Endpoint.tcp(host: a.host, port: try #require(a.webSocketsPort))
                let wsB = MQTTConfiguration.Endpoint.tcp(host: b.host, port: try #require(b.webSocketsPort))
                let watch = try await connected(b, id: "ws-watch")
                let stream = try await watch.subscribe("wsf/#", qos: .atLeastOnce)
                var c = config(a, id: "ws-failover")
                c.endpoints = [wsA, wsB]
                c.transport = .webSockets(.init())
                let client = try MQTTClient(configuration: c)
                try await client.connect()
                #expect(connectedEndpoint(client) == wsA)
                await a.kill()
                #expect(await eventually(timeout: .seconds(15)) { connectedEndpoint(client) == wsB })
                try await client.publish(MQTTMessage(topic: "wsf/1", string: "over ws on B", qos: .atLeastOnce))
                let got = try await collect(stream, count: 1)
                #expect(got.first?.string == "over ws on B")
                await client.shutdown()
                await watch.shutdown()
            }
        }
    }

    @Test("The first connection tries every endpoint once: a dead first broker is skipped, and connect() throws only when none answers")
    func initialConnectTriesTheList() async throws {
        try await withBroker { b in
            let dead = freeLoopbackPort()  // nothing listens there: connections are refused
            var c = config(b, id: "initial-failover")
            c.endpoints = [.tcp(host: "127.0.0.1", port: dead), endpoint(b)]
            #expect(c.reconnect.retryInitialConnect == false)
            let client = try MQTTClient(configuration: c)
            try await client.connect()
            #expect(connectedEndpoint(client) == endpoint(b))
            await client.shutdown()

            c.endpoints = [.tcp(host: "127.0.0.1", port: dead), .tcp(host: "127.0.0.1", port: freeLoopbackPort())]
            let nowhere = try MQTTClient(configuration: c)
            await #expect(throws: MQTTError.self) { try await nowhere.connect() }
            await nowhere.shutdown()
        }
    }

    @Test("A CONNACK with 'use another server' (0x9C) and a Server Reference sends the client to that broker at once")
    func connAckRedirect() async throws {
        try await withBroker { b in
            let redirector = try ScriptedServer(reply: { ScriptedServer.redirectingConnAck(reason: 0x9C, to: "127.0.0.1:\(b.port)") })
            defer { redirector.stop() }
            var c = config(b, id: "redirected")
            c.endpoints = [.tcp(host: "127.0.0.1", port: redirector.port)]
            c.reconnect.initialDelay = .seconds(30)  // a redirect does not wait for the backoff
            let client = try MQTTClient(configuration: c)
            let started = ContinuousClock.now
            try await client.connect()
            #expect(connectedEndpoint(client) == endpoint(b))
            #expect(ContinuousClock.now - started < .seconds(25))
            #expect(redirector.connectionCount == 1)
            // It works there.
            let stream = try await client.subscribe("rd/#", qos: .atLeastOnce)
            try await client.publish(MQTTMessage(topic: "rd/1", string: "after redirect", qos: .atLeastOnce))
            let got = try await collect(stream, count: 1)
            #expect(got.first?.string == "after redirect")
            await client.shutdown()
        }
    }

    @Test("A CONNACK with 'server moved' (0x9D) replaces the entry for good: after the new broker restarts, the client reconnects there, not to the old address")
    func connAckMovedIsPermanent() async throws {
        try await withBroker { b in
            let mover = try ScriptedServer(reply: { ScriptedServer.redirectingConnAck(reason: 0x9D, to: "127.0.0.1:\(b.port)") })
            defer { mover.stop() }
            var c = config(b, id: "moved")
            c.endpoints = [.tcp(host: "127.0.0.1", port: mover.port)]
            let client = try MQTTClient(configuration: c)
            try await client.connect()
            #expect(connectedEndpoint(client) == endpoint(b))
            await b.stop()
            try await b.start()
            #expect(await eventually(timeout: .seconds(15)) { connectedEndpoint(client) == endpoint(b) })
            #expect(mover.connectionCount == 1)
            await client.shutdown()
        }
    }

    @Test("A DISCONNECT with 'server moved' (0x9D) is a lost connection: libmosquitto 2.0.11 drops its Server Reference, so the client goes on with its endpoint list")
    func disconnectRedirectFallsBackToTheList() async throws {
        try await withBroker { b in
            let mover = try ScriptedServer(reply: { ScriptedServer.acceptThenDisconnect(reason: 0x9D, to: "127.0.0.1:\(b.port)") })
            defer { mover.stop() }
            var c = config(b, id: "moved-by-disconnect")
            c.endpoints = [.tcp(host: "127.0.0.1", port: mover.port), endpoint(b)]
            let client = try MQTTClient(configuration: c)
            let events = client.makeEventStream()
            try await client.connect()
            #expect(await eventually { connectedEndpoint(client) == endpoint(b) })
            // The disconnection said why.
            var reason: MQTTReasonCode?
            for await event in events {
                if case .disconnected(let error?) = event { reason = error.reasonCode; break }
            }
            #expect(reason?.rawValue == 0x9D)
            #expect(mover.connectionCount == 1)
            await client.shutdown()
        }
    }

    @Test("Redirects that loop are bounded: after maximumRedirects in a row the redirect is a refusal, and connect() says so")
    func redirectLoopIsBounded() async throws {
        let portBox = Locked(0)
        let loop = try ScriptedServer(reply: { ScriptedServer.redirectingConnAck(reason: 0x9C, to: "127.0.0.1:\(portBox.value)") })
        defer { loop.stop() }
        portBox.withLock { $0 = loop.port }
        var c = MQTTConfiguration(host: "127.0.0.1", port: loop.port, clientID: "looping")
        c.maximumRedirects = 3
        c.logger = quietLogger()
        let client = try MQTTClient(configuration: c)
        do {
            try await client.connect()
            Issue.record("connect() succeeded against a redirect loop")
        } catch let error as MQTTError {
            #expect(error.reasonCode?.rawValue == 0x9C, "\(error.message)")
            #expect(error.message.localizedCaseInsensitiveContains("another server") || error.message.contains("0x9c"), "\(error.message)")
        }
        #expect(loop.connectionCount == 4)  // the first attempt and three redirects
        await client.shutdown()
    }
}
