import Foundation
import Mosquitto
import MosquittoBroker
import MosquittoTestSupport
import Testing

/// `mqtt-pub -l`: every line delivered, in order, before the process exits 0.
@Suite(.serialized)
struct LineModeTests {
    static let lineCount = 100_000

    @Test("mqtt-pub -l delivers 100,000 lines in order (QoS 1: none lost; QoS 2: none lost, none duplicated)",
          arguments: [QoS.atLeastOnce, QoS.exactlyOnce])
    func everyLine(_ qos: QoS) async throws {
        var input = ""
        input.reserveCapacity(Self.lineCount * 7)
        for i in 1...Self.lineCount { input += "\(i)\n" }
        try await withBroker { broker in
            let listener = try await libraryClient(broker)
            let stream = try await listener.subscribe([Subscription("lines/q", qos: qos)],
                                                      buffer: .init(capacity: 200_000, overflow: .backpressure(maxWait: .seconds(60))))
            let started = ContinuousClock.now
            let result = try await run(tool("mqtt-pub"), at(broker) + ["-t", "lines/q", "-l", "-q", String(qos.rawValue)],
                                       stdin: Array(input.utf8), timeout: .seconds(240))
            let elapsed = ContinuousClock.now - started
            #expect(result.status == 0, "\(result)")
            // Exit 0 means every line was acknowledged, so every line is already at the broker; collect them.
            var received: [Int] = []
            received.reserveCapacity(Self.lineCount)
            var seen = Set<Int>()
            let deadline = ContinuousClock.now + .seconds(60)
            var iterator = stream.makeAsyncIterator()
            while seen.count < Self.lineCount && ContinuousClock.now < deadline {
                guard let m = try await iterator.next() else { break }
                let n = Int(m.string ?? "") ?? -1
                received.append(n)
                seen.insert(n)
            }
            #expect(seen.count == Self.lineCount, "received \(seen.count) distinct lines of \(Self.lineCount)")
            // In order: the first occurrences are 1, 2, 3, …
            var firsts: [Int] = []
            var dedup = Set<Int>()
            for n in received where dedup.insert(n).inserted { firsts.append(n) }
            #expect(firsts == Array(1...Self.lineCount).prefix(firsts.count).map { $0 }, "lines out of order")
            if qos == .exactlyOnce {
                #expect(received.count == seen.count, "\(received.count - seen.count) duplicates at QoS 2")
            }
            print("mqtt-pub -l -q \(qos.rawValue): \(Self.lineCount) lines in \(elapsed)")
            await listener.shutdown()
        }
    }

    @Test("-l keeps a trailing line without newline, empty lines and carriage returns, as mosquitto_pub")
    func lineEdges() async throws {
        try await withBroker { broker in
            let listener = try await libraryClient(broker)
            let stream = try await listener.subscribe("edge", qos: .atLeastOnce)
            let r = try await run(tool("mqtt-pub"), at(broker) + ["-t", "edge", "-l", "-q", "1"], stdin: Array("a\n\nb\r\nlast".utf8))
            #expect(r.status == 0, "\(r)")
            var got: [[UInt8]] = []
            for try await m in stream {
                got.append(m.payload)
                if got.count == 4 { break }
            }
            #expect(got == [Array("a".utf8), [], Array("b\r".utf8), Array("last".utf8)])
            await listener.shutdown()
        }
    }
}
