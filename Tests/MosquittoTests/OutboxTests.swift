import Foundation
import Logging
@testable import Mosquitto
import MosquittoBroker
import MosquittoTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The durable outbox (`MQTTConfiguration.outbox`) against a real broker that is stopped, restarted and starved of
/// disk. The SIGKILL case (10,000 QoS 1 readings, a new process on the same directory) is
/// `example-store-and-forward`, run by `OutboxProcessTests` below.
@Suite("Durable outbox", .timeLimit(.minutes(3 * testTimeScale)))
struct OutboxTests {
    func outboxConfiguration(_ broker: MosquittoBroker, directory: String, clientID: String = "outbox-publisher",
                             _ change: (inout MQTTConfiguration.Outbox) -> Void = { _ in }) -> MQTTConfiguration {
        var c = MQTTConfiguration(host: broker.host, port: broker.port, clientID: clientID)
        var outbox = MQTTConfiguration.Outbox(directory: directory)
        change(&outbox)
        c.outbox = outbox
        c.reconnect.retryInitialConnect = true
        c.reconnect.initialDelay = .milliseconds(50)
        c.reconnect.maximumDelay = .milliseconds(300)
        c.logger = quietLogger()
        return c
    }

    /// Collects the payload strings of `topic` until `count` distinct ones arrived (or the time is up).
    func collect(_ broker: MosquittoBroker, _ topic: String, count: Int, qos: QoS = .atLeastOnce,
                 clientID: String = "outbox-monitor") async throws -> (client: MQTTClient, task: Task<[MQTTMessage], any Error>) {
        var c = MQTTConfiguration(host: broker.host, port: broker.port, clientID: clientID)
        c.logger = quietLogger()
        let client = try MQTTClient(configuration: c)
        try await client.connect()
        let stream = try await client.subscribe([Subscription(topic, qos: qos)], buffer: .init(capacity: count * 2 + 16, overflow: .dropNewest))
        let task = Task { () -> [MQTTMessage] in
            var got: [MQTTMessage] = []
            var distinct = Set<[UInt8]>()
            let timer = Task { try await Task.sleep(for: .seconds(60 * testTimeScale)); stream.cancel() }
            defer { timer.cancel() }
            for try await m in stream {
                got.append(m)
                distinct.insert(m.payload)
                if distinct.count >= count { break }
            }
            return got
        }
        return (client, task)
    }

    @Test("messages go out through the outbox in order, at their QoS, with their MQTT 5 properties; it empties")
    func deliversInOrder() async throws {
        try await withBroker { broker in
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let (monitor, received) = try await collect(broker, "outbox/order", count: 300)
            let client = try MQTTClient(configuration: outboxConfiguration(broker, directory: dir))
            try await client.connect()
            var properties = MessageProperties()
            properties.contentType = "text/plain"
            properties.userProperties = [UserProperty("site", "north")]
            properties.correlationData = [1, 2, 3]
            for n in 1...300 {
                let completion: PublishCompletion = n % 50 == 0 ? .acknowledged : .stored
                let receipt = try await client.publish(to: "outbox/order", string: "m\(n)", qos: n % 3 == 0 ? .exactlyOnce : .atLeastOnce,
                                                       properties: n % 7 == 0 ? properties : .init(), completion: completion)
                #expect(receipt.completed == (completion == .acknowledged))
            }
            await client.waitUntilAllPublished()
            #expect(client.outboxStatus?.messages == 0)
            let got = try await received.value
            // The client sends them in order; the broker orders deliveries per QoS only (a QoS 2 message waits for
            // its PUBREL), so the order is checked per QoS.
            let qos2 = got.compactMap(\.string).filter { Int($0.dropFirst())! % 3 == 0 }
            let qos1 = got.compactMap(\.string).filter { Int($0.dropFirst())! % 3 != 0 }
            #expect(qos2 == (1...300).filter { $0 % 3 == 0 }.map { "m\($0)" })
            #expect(qos1 == (1...300).filter { $0 % 3 != 0 }.map { "m\($0)" })
            for m in got where Int(m.string!.dropFirst())! % 7 == 0 {
                #expect(m.properties.contentType == "text/plain")
                #expect(m.properties.userProperties == [UserProperty("site", "north")])
                #expect(m.properties.correlationData == [1, 2, 3])
            }
            await client.shutdown()
            await monitor.shutdown()
        }
    }

    @Test("two live clients never share an outbox: the second gets outboxInUse; after shutdown the directory is free")
    func lockFile() async throws {
        try await withBroker { broker in
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let first = try MQTTClient(configuration: outboxConfiguration(broker, directory: dir))
            #expect {
                _ = try MQTTClient(configuration: outboxConfiguration(broker, directory: dir, clientID: "second"))
            } throws: { error in
                guard let e = error as? MQTTError, e.code == .outboxInUse else { return false }
                return e.message.contains("in use by another live client (process \(getpid()))")
            }
            await first.shutdown()
            let again = try MQTTClient(configuration: outboxConfiguration(broker, directory: dir, clientID: "second"))
            await again.shutdown()
        }
    }

    @Test("PublishCompletion.stored without an outbox is refused with a clear error")
    func storedNeedsOutbox() async throws {
        try await withBroker { broker in
            var c = MQTTConfiguration(host: broker.host, port: broker.port)
            c.logger = quietLogger()
            let client = try MQTTClient(configuration: c)
            try await client.connect()
            await #expect {
                try await client.publish(to: "x", string: "y", completion: .stored)
            } throws: { error in
                (error as? MQTTError)?.code == .invalidArgument && "\(error)".contains("MQTTConfiguration.outbox")
            }
            #expect(client.outboxStatus == nil)
            await client.shutdown()
        }
    }

    @Test("with the broker down: QoS 0 and 1 are stored, the fail policy says when it is full, and everything accepted arrives once the broker is up")
    func brokerDownAndFull() async throws {
        try await withBroker { broker in
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            // The port stays taken while the broker is away: a freed port can go to another test's broker.
            await broker.stop()
            let holder = try PortHolder(port: broker.port)
            let client = try MQTTClient(configuration: outboxConfiguration(broker, directory: dir) {
                $0.maximumBytes = 64 << 10
                $0.whenFull = .fail
            })
            var accepted = 0
            var full: MQTTError?
            for n in 1...10_000 {
                do {
                    try await client.publish(to: "outbox/full", string: "m\(n) " + String(repeating: "x", count: 200),
                                             qos: n % 2 == 0 ? .atMostOnce : .atLeastOnce, completion: .stored)
                    accepted += 1
                } catch let e as MQTTError {
                    full = e
                    break
                }
            }
            #expect(full?.code == .outboxFull)
            #expect(full.map { "\($0)".contains("maximum of 65536 bytes") } == true)
            #expect(accepted > 100 && accepted < 10_000)
            #expect(client.outboxStatus?.messages == accepted)
            holder.release()
            try await broker.start()
            let (monitor, received) = try await collect(broker, "outbox/full", count: accepted)
            try await client.connect()
            await client.waitUntilAllPublished()
            let got = try await received.value.compactMap { $0.string?.split(separator: " ").first.map(String.init) }
            // In order per QoS (QoS 0 is not held back by QoS 1's in-flight window).
            #expect(got.filter { Int($0.dropFirst())! % 2 == 0 } == (1...accepted).filter { $0 % 2 == 0 }.map { "m\($0)" })
            #expect(got.filter { Int($0.dropFirst())! % 2 == 1 } == (1...accepted).filter { $0 % 2 == 1 }.map { "m\($0)" })
            await client.shutdown()
            await monitor.shutdown()
        }
    }

    @Test("a message expiry interval counts the time in the outbox, across a restart: expired messages are not sent, the others go with what is left")
    func expiryCountsTimeStored() async throws {
        try await withBroker { broker in
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            await broker.stop()
            let holder = try PortHolder(port: broker.port)
            // Stored by one client while the broker is away; that client ends before anything was sent.
            let first = try MQTTClient(configuration: outboxConfiguration(broker, directory: dir))
            func expiring(_ seconds: UInt32?) -> MessageProperties {
                var p = MessageProperties()
                p.messageExpiryInterval = seconds
                p.contentType = "text/plain"
                return p
            }
            try await first.publish(to: "outbox/expiry", string: "short", qos: .atLeastOnce, properties: expiring(2), completion: .stored)
            try await first.publish(to: "outbox/expiry", string: "long", qos: .atLeastOnce, properties: expiring(3600), completion: .stored)
            try await first.publish(to: "outbox/expiry", string: "none", qos: .atLeastOnce, properties: expiring(nil), completion: .stored)
            await first.shutdown()
            // Wall-clock time passes (a restart, a reboot): "short" runs out while it waits.
            try await Task.sleep(for: .seconds(3))
            holder.release()
            try await broker.start()
            let (monitor, received) = try await collect(broker, "outbox/expiry", count: 2)
            let second = try MQTTClient(configuration: outboxConfiguration(broker, directory: dir))
            try await second.connect()
            await second.waitUntilAllPublished()
            let got = try await received.value
            // In order, so an expired "short" that was sent would have come first.
            #expect(got.compactMap(\.string) == ["long", "none"])
            let long = got.first { $0.string == "long" }?.properties.messageExpiryInterval
            #expect(long.map { $0 <= 3597 && $0 > 3000 } == true, "\(String(describing: long))")
            #expect(got.first { $0.string == "none" }?.properties.messageExpiryInterval == nil)
            #expect(second.outboxStatus?.refusedMessages == 1)
            #expect(second.outboxStatus?.messages == 0)
            await second.shutdown()
            await monitor.shutdown()
        }
    }

    @Test("QoS 2 through the outbox with the broker restarted mid-stream: every message once, in order")
    func qos2BrokerRestart() async throws {
        try await withBroker(.init(persistence: true)) { broker in
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let total = 3000
            var sub = MQTTConfiguration(host: broker.host, port: broker.port, clientID: "outbox-q2-monitor")
            sub.session = .persistent(expiry: 3600)
            sub.logger = quietLogger()
            sub.reconnect.initialDelay = .milliseconds(50)
            let monitor = try MQTTClient(configuration: sub)
            try await monitor.connect()
            let stream = try await monitor.subscribe([Subscription("outbox/q2", qos: .exactlyOnce)],
                                                     buffer: .init(capacity: total * 2, overflow: .dropNewest))
            let received = Task { () -> [String] in
                var got: [String] = []
                let timer = Task { try await Task.sleep(for: .seconds(90 * testTimeScale)); stream.cancel() }
                defer { timer.cancel() }
                for try await m in stream {
                    got.append(m.string ?? "")
                    if m.string == "m\(total)" { break }
                }
                return got
            }
            var config = outboxConfiguration(broker, directory: dir, clientID: "outbox-q2-publisher")
            config.session = .persistent(expiry: 3600)
            let client = try MQTTClient(configuration: config)
            try await client.connect()
            for n in 1...total {
                try await client.publish(to: "outbox/q2", string: "m\(n)", qos: .exactlyOnce, completion: .stored)
                if n == total / 3 {
                    // Mid-stream: some messages are still in the outbox, some in flight.
                    try await broker.restart()
                }
            }
            await client.waitUntilAllPublished()
            let got = try await received.value
            let duplicates = got.count - Set(got).count
            #expect(duplicates == 0, "duplicates: \(got.count - Set(got).count)")
            #expect(got == (1...total).map { "m\($0)" })
            await client.shutdown()
            await monitor.shutdown()
        }
    }

    @Test("a torn last record (a crash mid-write) is detected and reported; the records before it still go out")
    func tornRecord() async throws {
        try await withBroker { broker in
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            await broker.stop()
            let holder = try PortHolder(port: broker.port)
            let first = try MQTTClient(configuration: outboxConfiguration(broker, directory: dir))
            for n in 1...100 {
                try await first.publish(to: "outbox/torn", string: "m\(n)", completion: .stored)
            }
            await first.shutdown()
            // Cut the last record in half, as a crash in the middle of its write would leave it.
            let segments = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix("seg-") }.sorted()
            let last = dir + "/" + segments.last!
            let size = try FileManager.default.attributesOfItem(atPath: last)[.size] as! Int
            #expect(truncate(last, off_t(size - 5)) == 0)

            let logs = Locked<[String]>([])
            var config = outboxConfiguration(broker, directory: dir)
            config.logger = Logger(label: "outbox") { _ in CapturingLogHandler(lines: logs, logLevel: .info) }
            let second = try MQTTClient(configuration: config)
            let status = try #require(second.outboxStatus)
            #expect(status.recoveredMessages == 99)
            #expect(status.corruptBytes > 0)
            #expect(logs.value.contains { $0.contains("torn or corrupt tail") })
            holder.release()
            try await broker.start()
            let (monitor, received) = try await collect(broker, "outbox/torn", count: 99)
            try await second.connect()
            await second.waitUntilAllPublished()
            #expect(try await received.value.map { $0.string ?? "" } == (1...99).map { "m\($0)" })
            await second.shutdown()
            await monitor.shutdown()
        }
    }

    @Test("a full disk: the fail policy throws outboxUnavailable, the suspend policy waits; nothing accepted is lost",
          .enabled(if: isRoot, "mounting a small tmpfs needs root"))
    func diskFull() async throws {
        try await withBroker { broker in
            let mount = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: mount) }
            try await withSmallFilesystem(at: mount, size: "512k") {
                await broker.stop()
                var holder = try PortHolder(port: broker.port)
                let payload = String(repeating: "d", count: 4000)
                // Fail: stops with outboxUnavailable once the disk is full.
                let failing = try MQTTClient(configuration: outboxConfiguration(broker, directory: mount + "/fail", clientID: "fail") {
                    $0.whenFull = .fail
                    $0.segmentBytes = 64 << 10
                })
                var failedWith: MQTTError?
                var accepted = 0
                for n in 1...1000 {
                    do {
                        try await failing.publish(to: "outbox/disk", string: "f\(n) \(payload)", completion: .stored)
                        accepted += 1
                    } catch let e as MQTTError {
                        failedWith = e
                        break
                    }
                }
                #expect(failedWith?.code == .outboxUnavailable)
                #expect("\(failedWith.map { "\($0)" } ?? "")".contains("No space left on device"))
                #expect(accepted > 10 && accepted < 1000)
                holder.release()
                try await broker.start()
                let (monitor, received) = try await collect(broker, "outbox/disk", count: accepted)
                try await failing.connect()
                await failing.waitUntilAllPublished()
                let got = try await received.value.compactMap { $0.string?.split(separator: " ").first.map(String.init) }
                #expect(got == (1...accepted).map { "f\($0)" })
                await failing.shutdown()
                await monitor.shutdown()
                // Its last segment keeps the delivered records until a new one starts: free the disk for the next.
                try FileManager.default.removeItem(atPath: mount + "/fail")

                // Suspend: the publisher waits while the disk is full and goes on once delivered segments are freed.
                await broker.stop()
                holder = try PortHolder(port: broker.port)
                let total = accepted * 2
                let waiting = try MQTTClient(configuration: outboxConfiguration(broker, directory: mount + "/suspend", clientID: "suspend") {
                    $0.segmentBytes = 64 << 10
                })
                let publishing = Task {
                    for n in 1...total {
                        try await waiting.publish(to: "outbox/disk2", string: "s\(n) \(payload)", completion: .stored)
                    }
                }
                // The disk fills before `total` are stored: the publisher is suspended, not failed.
                #expect(await eventually { (waiting.outboxStatus?.messages ?? 0) > 10 })
                try await Task.sleep(for: .seconds(1))
                let stuckAt = waiting.outboxStatus?.messages ?? 0
                #expect(stuckAt < total)
                try await Task.sleep(for: .milliseconds(500))
                #expect(waiting.outboxStatus?.messages == stuckAt)
                holder.release()
                try await broker.start()
                let (monitor2, received2) = try await collect(broker, "outbox/disk2", count: total, clientID: "outbox-monitor-2")
                try await waiting.connect()
                try await publishing.value
                await waiting.waitUntilAllPublished()
                let got2 = try await received2.value.compactMap { $0.string?.split(separator: " ").first.map(String.init) }
                #expect(got2 == (1...total).map { "s\($0)" })
                await waiting.shutdown()
                await monitor2.shutdown()
            }
        }
    }
}

/// The arithmetic of a message expiry interval in the outbox, without a broker.
@Suite("Durable outbox: message expiry")
struct OutboxExpiryTests {
    @Test("what is left of an interval: time stored counts, a clock that went back counts as none, nothing left throws messageExpired")
    func remaining() throws {
        #expect(try ClientOutbox.remainingExpiry(60, storedAt: 1_000, topic: "t", now: 1_000) == 60)
        #expect(try ClientOutbox.remainingExpiry(60, storedAt: 1_000, topic: "t", now: 1_059) == 1)
        #expect(try ClientOutbox.remainingExpiry(60, storedAt: 1_000, topic: "t", now: 900) == 60)
        for now: UInt64 in [1_060, 1_061, 99_999] {
            #expect {
                _ = try ClientOutbox.remainingExpiry(60, storedAt: 1_000, topic: "a/b", now: now)
            } throws: { error in
                guard let e = error as? MQTTError, e.code == .messageExpired else { return false }
                return e.message.contains("'a/b'") && e.message.contains("60 s")
            }
        }
    }

    @Test("the stored time is kept only with an expiry interval, and records written without it read as before")
    func coding() {
        var p = MessageProperties()
        p.contentType = "application/json"
        let plain = OutboxPropertiesCoding.encode(p, storedAt: 1_234)
        #expect(OutboxPropertiesCoding.decodeStored(plain).storedAt == nil)
        #expect(OutboxPropertiesCoding.decodeStored(plain).properties == p)
        p.messageExpiryInterval = 30
        let stamped = OutboxPropertiesCoding.encode(p, storedAt: 0x0102_0304_0506_0708)
        #expect(OutboxPropertiesCoding.decodeStored(stamped).storedAt == 0x0102_0304_0506_0708)
        #expect(OutboxPropertiesCoding.decode(stamped) == p)
        let old = OutboxPropertiesCoding.encode(p)
        #expect(OutboxPropertiesCoding.decodeStored(old).storedAt == nil)
        #expect(OutboxPropertiesCoding.decode(old) == p)
    }
}
