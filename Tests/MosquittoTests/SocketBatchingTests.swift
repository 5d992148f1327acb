import CMosquittoIO
import Foundation
import Logging
@testable import Mosquitto
import MosquittoBroker
import MosquittoPOSIX
import MosquittoTestSupport
import Testing

/// The batched socket I/O under libmosquitto (`batchesSocketIO`, on by default): the bytes and their order must be
/// exactly those of libmosquitto's own I/O, with far fewer system calls.
// Serialized: the rehearsals rewrite libmosquitto's process-wide slots, and a clean rehearsal running beside the
// rehearsal loop of `rehearsalsLeaveClientsAlone` saw its slots change under it (the parallel TSan suite).
@Suite("Socket batching: libmosquitto's reads and writes through the client's buffers", .serialized, .timeLimit(.minutes(2 * testTimeScale)))
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

    // MARK: Keeping it on only where it is proven (issue #14)

    @Test("Only a tested libmosquitto version is patched: any other leaves batching off, patches nothing, and says why")
    func versionGate() {
        var installs = 0
        for version in ["2.0.18", "2.0.10", "2.1.0", "1.6.9"] {
            let decision = SocketBatching.decide(libraryVersion: version, switchSetting: nil) { installs += 1; return nil }
            guard case .off(let reason) = decision else {
                Issue.record("libmosquitto \(version) was given batching")
                continue
            }
            #expect(reason.contains("this is \(version)") && reason.contains("2.0.11"), "\(reason)")
        }
        #expect(installs == 0, "libmosquitto was patched for a version batching was not tested with")
        // The tested version is patched; the switch turns batching off before the version is even looked at.
        #expect(SocketBatching.decide(libraryVersion: "2.0.11", switchSetting: nil) { installs += 1; return nil } == .on)
        #expect(installs == 1)
        for setting in ["0", "off", "false", "no"] {
            #expect(SocketBatching.decide(libraryVersion: "2.0.11", switchSetting: setting) { installs += 1; return nil } != .on)
        }
        #expect(installs == 1)
        #expect(SocketBatching.decide(libraryVersion: "2.0.11", switchSetting: "1") { installs += 1; return nil } == .on)
        #expect(installs == 2)
        // A failed installation is off, and the line gives its reason.
        let failed = SocketBatching.decide(libraryVersion: "2.0.11", switchSetting: nil) { "a slot could not be written" }
        #expect(failed == .off(reason: "Socket batching is off: a slot could not be written. The client uses libmosquitto's own socket I/O."))
        // This process: on exactly when the installed libmosquitto was tested and the installation took (an untested
        // one never reaches mosq_io_install, which then still says it was not called). Asked first: the decision
        // runs the installation, if any, and only then is its result there to read.
        let available = SocketBatching.isAvailable
        let installed = mosq_io_install_failure() == nil
        #expect(available == installed)
        if !SocketBatching.testedVersions.contains(MosquittoLibrary.version) { #expect(!installed) }
    }

    @Test("When batching is off, one debug line per process says why, however many clients ask")
    func oneLineSaysWhy() {
        let lines = Locked<[String]>([])
        let logger = Logger(label: "batching") { _ in CapturingLogHandler(lines: lines) }
        let off = SocketBatching.decide(libraryVersion: "2.0.18", switchSetting: nil) { nil }
        let process = LockedValue(false)  // what the process-wide flag is before the first client asks
        for _ in 0..<3 { SocketBatching.announce(off, to: logger, once: process) }
        let logged = lines.withLock { $0 }
        #expect(logged.count == 1, "\(logged)")
        #expect(logged.first?.hasPrefix("debug Socket batching is off: it was tested with libmosquitto 2.0.11 only, and this is 2.0.18.") == true, "\(logged)")
        // On: nothing to say.
        SocketBatching.announce(.on, to: logger, once: LockedValue(false))
        #expect(lines.withLock { $0.count } == 1)
    }

    /// Runs the installation's steps again on libmosquitto's slots (over the process's own installation, with
    /// stand-ins that behave like it, so that the other tests' clients carry on undisturbed).
    static func rehearse(failAt slot: Int32 = -1, sabotage: Int32 = 0) -> mosq_io_install_rehearsal {
        _ = SocketBatching.isAvailable
        return mosq_io_rehearse_install_for_testing(slot, sabotage)
    }

    @Test("A slot that cannot be patched puts back every slot already patched, and the installation fails")
    func rollback() throws {
        let clean = Self.rehearse()
        try #require(clean.failure == nil, "a rehearsal without injected failures succeeds: \(String(cString: clean.failure))")
        #expect(clean.result == 0 && clean.restored == 1)
        try #require(clean.slots >= 3 && clean.slots <= 6, "read, write and close have one or two slots each: \(clean.slots)")
        for n in 0..<clean.slots {
            let r = Self.rehearse(failAt: n)
            #expect(r.result == -1, "slot \(n) failed, yet the installation succeeded")
            #expect(r.patched == n, "the failure came after \(r.patched) slots, not \(n)")
            #expect(r.restored == 1, "after a failure at slot \(n), a slot patched before it still held the stand-in")
            #expect(r.failure.map { String(cString: $0) }?.contains("put back") == true)
        }
    }

    @Test("The self-check refuses a patch whose slot changed under it or whose round trip misbehaves, and puts every slot back")
    func selfCheck() throws {
        let clean = Self.rehearse()
        #expect(clean.result == 0 && clean.restored == 1)
        #expect(clean.standin_calls >= 3, "the round trip goes through the patched slots: \(clean.standin_calls) calls")
        let raced = Self.rehearse(sabotage: 1)
        #expect(raced.result == -1, "a slot that no longer held its interceptor passed the self-check")
        #expect(raced.restored == 1)
        #expect(raced.failure.map { String(cString: $0) }?.contains("does not hold its interceptor") == true)
        let corrupt = Self.rehearse(sabotage: 2)
        #expect(corrupt.result == -1, "a read that returned wrong bytes passed the self-check")
        #expect(corrupt.restored == 1)
        #expect(corrupt.failure.map { String(cString: $0) }?.contains("read through the patched slot") == true)
    }

    @Test("Rehearsals of the installation while clients connect and exchange messages leave them batched and intact")
    func rehearsalsLeaveClientsAlone() async throws {
        _ = SocketBatching.isAvailable
        let stop = Locked(false)
        let rehearsals = Locked((count: 0, unrestored: 0))
        // A thread of its own: a loop on the cooperative pool would starve the clients' tasks on two cores.
        let thread = Thread {
            var n: Int32 = 0
            while !stop.value {
                let r = Self.rehearse(failAt: n % 4 - 1, sabotage: n % 3)
                rehearsals.withLock { $0.count += 1; if r.restored != 1 { $0.unrestored += 1 } }
                n += 1
                usleep(200)
            }
        }
        thread.start()
        defer { stop.withLock { $0 = true } }
        try await withBroker { broker in
            for round in 0..<4 {
                // Each connection attaches its buffers while the rehearsals rewrite the slots; the check that the
                // slots hold the interceptors waits for the rehearsal to put them back, instead of failing.
                let sub = try await connected(broker)
                let pub = try await connected(broker)
                let topic = "batch/rehearsal/\(round)"
                let stream = try await sub.subscribe(topic, qos: .atLeastOnce)
                for i in 0..<100 {
                    try await pub.publish(MQTTMessage(topic: topic, payload: Self.sized(i), qos: .atLeastOnce), completion: .enqueued)
                }
                let got = try await collect(stream, count: 100, timeout: .seconds(60))
                #expect(got.map(\.payload) == (0..<100).map(Self.sized), "round \(round): \(got.count) of 100 arrived, or altered")
                #expect((sub.core.socketIOCounters?.socketReads ?? 0) > 0, "round \(round): the subscriber's connection was not batched")
                #expect((pub.core.socketIOCounters?.socketSends ?? 0) > 0, "round \(round): the publisher's connection was not batched")
                await pub.shutdown()
                await sub.shutdown()
            }
        }
        let done = rehearsals.value
        #expect(done.count > 0 && done.unrestored == 0, "\(done.count) rehearsals, \(done.unrestored) left a slot changed")
    }
}
