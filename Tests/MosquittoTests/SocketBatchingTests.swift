import Foundation
@testable import Mosquitto
import MosquittoBroker
import Testing

/// The batched socket I/O under libmosquitto (`batchesSocketIO`, on by default): the bytes and their order must be
/// exactly those of libmosquitto's own I/O, with far fewer system calls.
@Suite("Socket batching: libmosquitto's reads and writes through the client's buffers", .timeLimit(.minutes(2)))
struct SocketBatchingTests {
    /// Payload `i` of a mix of sizes: empty, small, around the 64 KiB buffer size, and larger than the buffer.
    static func sized(_ i: Int) -> [UInt8] {
        let sizes = [0, 1, 2, 63, 64 * 1024 - 5, 64 * 1024, 64 * 1024 + 7, 200_000, 17, 1_000]
        let n = sizes[i % sizes.count]
        // A plain loop: under ThreadSanitizer, `(0..<n).map` from several test cases at once hung in the Swift
        // runtime's one-time set-up of tuple type metadata (unspecialized `Range.formIndex(after:)`).
        var bytes = [UInt8](repeating: 0, count: n)
        var j = 0
        while j < n {
            bytes[j] = UInt8(truncatingIfNeeded: j &* 31 &+ i)
            j += 1
        }
        return bytes
    }

    @Test("Messages of every size, small to larger than the buffers, arrive byte-exact and in order at each QoS",
          arguments: QoS.allCases)
    func mixedSizes(qos: QoS) async throws {
        #expect(SocketBatching.isAvailable, "the redirection of libmosquitto's I/O must work on this platform")
        try await withBroker { broker in
            let sub = try await connected(broker)
            let pub = try await connected(broker)
            let topic = "batch/mixed/\(qos.rawValue)"
            let stream = try await sub.subscribe(topic, qos: qos)
            let count = 300
            for i in 0..<count {
                try await pub.publish(MQTTMessage(topic: topic, payload: Self.sized(i), qos: qos), completion: .enqueued)
            }
            let got = try await collect(stream, count: count, timeout: .seconds(60))
            #expect(got.count == count)
            for (i, m) in got.enumerated() where m.payload != Self.sized(i) {
                Issue.record("message \(i) arrived with \(m.payload.count) bytes, not the \(Self.sized(i).count) sent, or altered")
                break
            }
            await pub.shutdown()
            await sub.shutdown()
        }
    }

    @Test("Small messages cost fewer socket reads than libmosquitto's three per packet, and no socket-pair writes")
    func fewerSystemCalls() async throws {
        try await withBroker { broker in
            let sub = try await connected(broker)
            let pub = try await connected(broker)
            let stream = try await sub.subscribe("batch/count", qos: .atLeastOnce)
            let count = 5_000
            // Publish from the network thread's executor, as a fast producer would: its packets leave together.
            let publisher = Task(executorPreference: pub.executor) {
                for i in 0..<count {
                    try await pub.publish(MQTTMessage(topic: "batch/count", payload: payload(i), qos: .atLeastOnce), completion: .enqueued)
                }
                await pub.waitUntilAllPublished()
            }
            let got = try await collect(stream, count: count, timeout: .seconds(60))
            try await publisher.value
            let intact = got.map(\.payload) == (0..<count).map(payload)
            #expect(intact, "all \(count) messages, in order")
            let s = try #require(sub.core.socketIOCounters)
            let p = try #require(pub.core.socketIOCounters)
            // libmosquitto alone reads each packet with at least three `read` calls: 15,000 for the subscriber's
            // PUBLISHes, as many for the publisher's PUBACKs. Batched, the worst case (a machine so idle that
            // every packet is read as soon as it arrives) is one read per packet plus one that finds the socket
            // empty; bursts take far fewer (1,500-6,700 per side for 5,000 packets when measured).
            #expect(s.socketReads > 0 && s.socketReads < UInt64(3 * count), "subscriber: \(s.socketReads) socket reads for \(count) PUBLISHes")
            #expect(p.socketReads > 0 && p.socketReads < UInt64(3 * count), "publisher: \(p.socketReads) socket reads for \(count) PUBACKs")
            // At most one send per pass, and a pass handles at least one packet.
            #expect(p.socketSends > 0 && p.socketSends <= UInt64(count + 2), "publisher: \(p.socketSends) sends for \(count) PUBLISHes")
            // Every packet queued on the network thread would have written a byte to libmosquitto's socket pair.
            #expect(p.wakeupsSkipped >= UInt64(count), "publisher: \(p.wakeupsSkipped) socket-pair writes skipped")
            #expect(s.wakeupsSkipped >= UInt64(count), "subscriber: \(s.wakeupsSkipped) socket-pair writes skipped")
            await pub.shutdown()
            await sub.shutdown()
        }
    }

    @Test("A publisher on the cooperative pool skips libmosquitto's socket-pair write as well")
    func poolPublisherSkipsWakeups() async throws {
        try await withBroker { broker in
            let pub = try await connected(broker)
            let count = 2_000
            // A plain task: each QoS 0 publish queues its packet from a pool thread, where libmosquitto writes the
            // wake-up byte itself (on the network thread the batching skips it anyway).
            try await Task {
                for i in 0..<count {
                    try await pub.publish(MQTTMessage(topic: "batch/pool", payload: payload(i), qos: .atMostOnce), completion: .enqueued)
                }
                await pub.waitUntilAllPublished()
            }.value
            let p = try #require(pub.core.socketIOCounters)
            #expect(p.wakeupsSkipped >= UInt64(count), "\(p.wakeupsSkipped) socket-pair writes skipped for \(count) publishes")
            await pub.shutdown()
        }
    }

    @Test("A backlog of QoS 0 messages published just before shutdown still leaves before DISCONNECT")
    func backlogBeforeShutdown() async throws {
        try await withBroker { broker in
            let sub = try await connected(broker)
            let count = 20_000
            // Room for every message: this test is about the publisher's backlog leaving before DISCONNECT. With
            // the default buffer (4,096, then backpressure for at most 10 s, then a drop), a consumer starved of
            // CPU under ThreadSanitizer and load lost message 4,096 by that documented policy, not by the publisher.
            let stream = try await sub.subscribe([Subscription("batch/backlog", qos: .atMostOnce)], buffer: .init(capacity: count))
            let pub = try await connected(broker)
            let body = [UInt8](repeating: 0x2E, count: 500)  // 10 MB in all: more than the socket and the buffer take at once
            for i in 0..<count {
                try await pub.publish(MQTTMessage(topic: "batch/backlog", payload: payload(i) + body, qos: .atMostOnce), completion: .enqueued)
            }
            await pub.shutdown()
            let got = try await collect(stream, count: count, timeout: .seconds(30))
            #expect(got.count == count, "\(got.count) of \(count) QoS 0 messages arrived")
            let firstWrong = got.indices.first { got[$0].payload != payload($0) + body }
            #expect(firstWrong == nil, "message \(firstWrong ?? -1) arrived altered or out of order")
            await sub.shutdown()
        }
    }

    @Test("With batching off (batchesSocketIO = false) the client uses libmosquitto's own I/O and still works")
    func unbatched() async throws {
        try await withBroker { broker in
            let sub = try await connected(broker) { $0.batchesSocketIO = false }
            let pub = try await connected(broker) { $0.batchesSocketIO = false }
            #expect(sub.core.socketIOCounters == nil)
            let stream = try await sub.subscribe("batch/off", qos: .exactlyOnce)
            for i in 0..<200 {
                try await pub.publish(MQTTMessage(topic: "batch/off", payload: Self.sized(i), qos: .exactlyOnce), completion: .enqueued)
            }
            let got = try await collect(stream, count: 200, timeout: .seconds(30))
            let intact = got.map(\.payload) == (0..<200).map(Self.sized)
            #expect(intact, "all 200 messages, byte-exact and in order (\(got.count) arrived)")
            await pub.shutdown()
            await sub.shutdown()
        }
    }
}
