import Foundation
import Mosquitto
import MosquittoBroker
import MosquittoTestSupport
import Synchronization
import Testing

@Suite("Volume", .serialized, .timeLimit(.minutes(5 * testTimeScale)))
struct VolumeTests {
    /// Keeps both cores busy for about 40 s, and its publishing loop rarely suspends (a free queue slot returns at
    /// once), so it holds a thread of the two-thread concurrency pool: in the shared run it starved the timing
    /// tests of other suites. It runs in a `swift test` process of its own (``processAlone``), which also makes
    /// its memory figure its own.
    @Test("1,000,000 QoS 1 messages published as fast as the API allows all arrive, with bounded memory",
          .enabled(if: processAlone))
    func millionQoS1() async throws {
        let n = Int(ProcessInfo.processInfo.environment["MOSQUITTO_VOLUME_MESSAGES"] ?? "") ?? 1_000_000
        var bc = MosquittoBroker.Configuration()
        bc.maxQueuedMessages = 0  // let the broker queue for the subscriber instead of dropping
        bc.maxInflightMessages = 100
        try await withBroker(bc) { broker in
            let sub = try await connected(broker) { $0.maximumInflightMessages = 100 }
            let pub = try await connected(broker) {
                $0.maximumInflightMessages = 100
                $0.maximumQueuedMessages = 2000
            }
            // Lossless: the network thread waits for the reader (a sanitizer run can be 10x slower).
            let stream = try await sub.subscribe([Subscription("volume/x", qos: .atLeastOnce)],
                                                 buffer: .init(capacity: 4096, overflow: .backpressure(maxWait: .seconds(120))))
            let rssBefore = residentBytes()
            let peakRSS = Locked(0)
            let seen = Locked([Bool](repeating: false, count: n))
            let reader = Task { () -> (distinct: Int, total: Int) in
                var distinct = 0, total = 0
                do {
                    for try await m in stream {
                        total += 1
                        let id = m.payload.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }
                        let fresh = seen.withLock { s -> Bool in
                            guard Int(id) < n, !s[Int(id)] else { return false }
                            s[Int(id)] = true
                            return true
                        }
                        if fresh { distinct += 1 }
                        if total % 100_000 == 0 { peakRSS.withLock { $0 = max($0, residentBytes()) } }
                        if distinct == n { break }
                    }
                } catch {}
                return (distinct, total)
            }
            let started = ContinuousClock.now
            var body = [UInt8](repeating: 0x2A, count: 64)
            for i in 0..<n {
                withUnsafeBytes(of: UInt32(i)) { for (k, b) in $0.enumerated() { body[k] = b } }
                try await pub.publish(MQTTMessage(topic: "volume/x", payload: body, qos: .atLeastOnce), completion: .enqueued)
                if i % 100_000 == 0 { peakRSS.withLock { $0 = max($0, residentBytes()) } }
            }
            await pub.waitUntilAllPublished()
            let published = ContinuousClock.now - started
            let result = try await withThrowingTaskGroup(of: (Int, Int)?.self) { g in
                g.addTask { await reader.value }
                g.addTask { try await Task.sleep(for: .seconds(120)); return nil }
                let r = try await g.next()!
                g.cancelAll()
                reader.cancel()
                return r
            }
            let (distinct, total) = result ?? (seen.withLock { $0.filter { $0 }.count }, -1)
            let elapsed = ContinuousClock.now - started
            let growth = peakRSS.value - rssBefore
            print("volume: \(n) QoS 1 messages, published in \(published), received \(distinct) distinct (\(total) total) in \(elapsed); RSS growth \(growth / 1_048_576) MiB; dropped \(stream.droppedCount)")
            #expect(distinct == n, "every message must arrive")
            #expect(stream.droppedCount == 0)
            #expect(growth < 300 * 1_048_576, "memory must stay bounded (grew \(growth / 1_048_576) MiB; 1M messages would be ~\(n * 200 / 1_048_576) MiB)")
            await pub.shutdown()
            await sub.shutdown()
        }
    }
}

