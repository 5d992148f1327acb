import Foundation
import Logging
import Mosquitto
import MQTTOutbox
import MosquittoTestSupport
import Testing
import MQTTBridge

#if canImport(Glibc)
import Glibc
#endif

/// The spool's torn-write warnings are expected here (the test makes them): errors only.
let silentLogger: Logger = {
    var l = Logger(label: "spool-model")
    l.logLevel = .error
    return l
}()

/// A trivially correct spool: an array of records, a watermark in memory and the one last recorded on disk, and
/// the next record a reader gets.
struct SpoolModel {
    var records: [UInt64: SpoolRecord] = [:]
    var next: UInt64 = 1
    var done: UInt64 = 0
    var durableDone: UInt64 = 0
    var readCursor: UInt64 = 1
    var pending: Int { Int(next - 1 - done) }
}

/// Model-based tests of the spool: random sequences of append, read, acknowledge, rewind, flush, close and reopen
/// (clean, after a crash, after a torn write), with segments of the smallest size so every sequence crosses many
/// segment boundaries, each step checked against ``SpoolModel``.
///
/// Set `MOSQUITTO_SPOOL_MODEL_SEED` to replay one sequence; a failure names its seed.
@Suite("Spool, model-based", .timeLimit(.minutes(5 * testTimeScale)))
struct SpoolModelTests {
    static let sequences: Int = {
        if let n = ProcessInfo.processInfo.environment["MOSQUITTO_SPOOL_MODEL_SEQUENCES"].flatMap(Int.init) { return n }
        return ProcessInfo.processInfo.environment["MOSQUITTO_SANITIZER"] == nil ? 2000 : 300
    }()

    enum Step: CustomStringConvertible {
        case append([Int]), read(Int), acknowledge(UInt64), markDone(UInt64), flush, rewind
        case reopen, crash, tornWrite(Int)
        var description: String {
            switch self {
            case .append(let sizes): "append(\(sizes))"
            case .read(let n): "read(\(n))"
            case .acknowledge(let s): "acknowledge(through: \(s))"
            case .markDone(let s): "markDone(through: \(s))"
            case .flush: "flushDone()"
            case .rewind: "rewind()"
            case .reopen: "close(), reopen"
            case .crash: "crash (no close), reopen"
            case .tornWrite(let n): "crash with \(n) torn bytes at the tail, reopen"
            }
        }
    }

    static func record(_ seq: UInt64, size: Int, rng: inout SeededGenerator) -> SpoolRecord {
        // Distinct per record, cheap to make (a debug build fills random bytes one by one slowly).
        var payload = [UInt8](repeating: UInt8(truncatingIfNeeded: rng.next()), count: size)
        withUnsafeBytes(of: seq.littleEndian) { for i in 0..<min(8, size) { payload[i] = $0[i] } }
        let topic = ["a", "b/c", "sensors/\(seq % 3)"][Int(seq % 3)]
        let qos: QoS = seq % 2 == 0 ? .atLeastOnce : .atMostOnce
        return SpoolRecord(topic: topic, payload: payload, qos: qos, flags: seq % 5 == 0 ? .retain : [])
    }

    /// Runs one seeded sequence; returns nil when it matches the model, or what went wrong and the steps so far.
    static func run(seed: UInt64, steps count: Int) throws -> String? {
        var rng = SeededGenerator(seed: seed)
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let configuration = SpoolConfiguration(directory: dir, maxBytes: 1 << 30, segmentBytes: 4096, fsync: .never)
        var spool: Spool? = try Spool(configuration: configuration, logger: silentLogger)
        var model = SpoolModel()
        var log: [String] = []
        func fail(_ message: String) -> String {
            "seed \(seed): \(message)\nsteps:\n" + log.suffix(40).joined(separator: "\n")
        }
        for _ in 0..<count {
            let roll = Int.random(in: 0..<100, using: &rng)
            let step: Step
            switch roll {
            case 0..<30: step = .append((0..<Int.random(in: 1...4, using: &rng)).map { _ in Int.random(in: 0...1800, using: &rng) })
            case 30..<55: step = .read(Int.random(in: 1...6, using: &rng))
            case 55..<70 where model.readCursor - 1 > model.done:
                step = .acknowledge(UInt64.random(in: model.done + 1...model.readCursor - 1, using: &rng))
            case 70..<75 where model.readCursor - 1 > model.done:
                step = .markDone(UInt64.random(in: model.done + 1...model.readCursor - 1, using: &rng))
            case 75..<82: step = .flush
            case 82..<87: step = .rewind
            case 87..<93: step = .reopen
            case 93..<97: step = .crash
            case 97..<100: step = .tornWrite(Int.random(in: 1...40, using: &rng))
            default: step = .read(1)
            }
            log.append(step.description)
            switch step {
            case .append(let sizes):
                var batch: [SpoolRecord] = []
                for size in sizes {
                    let r = record(model.next, size: size, rng: &rng)
                    var stored = r
                    stored.sequence = model.next
                    model.records[model.next] = stored
                    model.next += 1
                    batch.append(r)
                }
                try spool!.append(batch)
            case .read(let n):
                let got = try spool!.readBatch(maxRecords: n)
                let available = Int(model.next - model.readCursor)
                let expected = (0..<min(n, available)).map { model.records[model.readCursor + UInt64($0)]! }
                if got != expected {
                    return fail("read(\(n)) gave sequences \(got.map(\.sequence)), expected \(expected.map(\.sequence))")
                }
                model.readCursor += UInt64(got.count)
            case .acknowledge(let through):
                spool!.acknowledge(through: through)
                model.done = through
            case .markDone(let through):
                try spool!.markDone(through: through)
                model.done = through
                model.durableDone = through
            case .flush:
                try spool!.flushDone()
                model.durableDone = model.done
            case .rewind:
                spool!.rewind()
                model.readCursor = model.done + 1
            case .reopen:
                spool!.close()
                spool = nil
                spool = try Spool(configuration: configuration, logger: silentLogger)
                model.durableDone = model.done
                model.readCursor = model.done + 1
            case .crash, .tornWrite:
                spool = nil  // deinit closes the files without recording the watermark, as kill -9 would
                if case .tornWrite(let n) = step, let last = try lastSegment(dir) {
                    let fd = open(last, O_WRONLY | O_APPEND)
                    var garbage = [UInt8](repeating: 0, count: n)
                    for i in garbage.indices { garbage[i] = UInt8(truncatingIfNeeded: rng.next()) }
                    _ = garbage.withUnsafeBytes { Glibc.write(fd, $0.baseAddress!, n) }
                    Glibc.close(fd)
                }
                spool = try Spool(configuration: configuration, logger: silentLogger)
                model.done = model.durableDone
                model.readCursor = model.done + 1
            }
            let depth = spool!.depth.records
            if depth != model.pending {
                return fail("after \(step): \(depth) unacknowledged records, the model has \(model.pending)")
            }
            if spool!.firstUnacknowledged != model.done + 1 {
                return fail("after \(step): first unacknowledged \(spool!.firstUnacknowledged), the model has \(model.done + 1)")
            }
            if (spool!.oldestUnacknowledgedAge == nil) != (model.pending == 0) {
                return fail("after \(step): oldest age \(String(describing: spool!.oldestUnacknowledgedAge)) with \(model.pending) pending")
            }
        }
        // Whatever state the sequence left: everything unread is still readable in order, and after it is all
        // acknowledged and the spool reopened, a new record is read at once (a spool never stalls).
        let rest = try spool!.readBatch(maxRecords: Int.max)
        let expected = (model.readCursor..<model.next).map { model.records[$0]! }
        if rest != expected {
            return fail("final read gave \(rest.map(\.sequence)), expected \(expected.map(\.sequence))")
        }
        try spool!.markDone(through: model.next - 1)
        spool!.close()
        spool = try Spool(configuration: configuration, logger: silentLogger)
        try spool!.append([SpoolRecord(topic: "after", payload: [1], qos: .atLeastOnce)])
        let after = try spool!.readBatch(maxRecords: 10)
        if after.map(\.sequence) != [model.next] {
            return fail("after acknowledging everything and reopening, a new record read as \(after.map(\.sequence)), expected [\(model.next)]")
        }
        return nil
    }

    static func lastSegment(_ dir: String) throws -> String? {
        try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix("seg-") }.sorted().last.map { dir + "/" + $0 }
    }

    @Test("thousands of seeded random sequences of spool operations match a trivially correct model")
    func randomSequences() async throws {
        let seeds: [UInt64]
        if let seed = ProcessInfo.processInfo.environment["MOSQUITTO_SPOOL_MODEL_SEED"].flatMap({ UInt64($0) }) {
            seeds = [seed]
        } else {
            seeds = (0..<UInt64(Self.sequences)).map { 0x5EED_0000 + $0 }
        }
        // Tens of seconds of synchronous file work: on a thread of its own, not on one of the cooperative pool's
        // (two on a 2-core machine), where it starved every other test's tasks in the parallel suite.
        let failures: [String] = try await onOwnThread {
            var failures: [String] = []
            for seed in seeds {
                do {
                    if let problem = try Self.run(seed: seed, steps: 80) { failures.append(problem) }
                } catch {
                    failures.append("seed \(seed): \(error)")
                }
                if failures.count >= 3 { break }
            }
            return failures
        }
        #expect(failures.isEmpty, "\(failures.count) failing sequences; the first:\n\(failures.first ?? "")")
    }

    @Test("a spool reopened with every record acknowledged reads what is appended next, restart after restart")
    func modelCatchesTheRestartStall() throws {
        // The exact shape of the restart blocker: every record acknowledged, reopen, append, read.
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // The default segment size: the new records go into the segment the acknowledged ones are in.
        let configuration = SpoolConfiguration(directory: dir, fsync: .never)
        var spool = try Spool(configuration: configuration, logger: silentLogger)
        try spool.append((0..<100).map { SpoolRecord(topic: "x", payload: Array("line \($0)".utf8), qos: .atLeastOnce) })
        let first = try spool.readBatch(maxRecords: 1000)
        #expect(first.count == 100)
        try spool.markDone(through: first.last!.sequence)
        for restart in 0..<3 {
            spool.close()
            spool = try Spool(configuration: configuration, logger: silentLogger)
            try spool.append((0..<100).map { SpoolRecord(topic: "x", payload: Array("restart \(restart) line \($0)".utf8), qos: .atLeastOnce) })
            let got = try spool.readBatch(maxRecords: 1000)
            #expect(got.count == 100, "restart \(restart): \(got.count) of 100 new records readable")
            #expect(got.first.map { String(decoding: $0.payload, as: UTF8.self) } == "restart \(restart) line 0")
            if let last = got.last { try spool.markDone(through: last.sequence) }
        }
    }
}
