import MosquittoTestSupport
import MQTTBridge
import Testing

/// Decodes `chunks` in order and returns frames plus drop counts.
private func decode(_ framing: Framing, maxFrame: Int = 64, oversize: OversizePolicy = .discard,
                    _ chunks: [[UInt8]]) -> (frames: [[UInt8]], truncated: [[UInt8]], dropped: Int, closed: Bool, rest: [UInt8]?) {
    var d = FrameDecoder(framing: framing, maxFrame: maxFrame, oversize: oversize)
    var frames: [[UInt8]] = []
    var truncated: [[UInt8]] = []
    var dropped = 0
    var closed = false
    for c in chunks {
        d.decode(c) { e in
            switch e {
            case .frame(let f): frames.append(f)
            case .truncated(let f): truncated.append(f)
            case .oversizeDropped: dropped += 1
            case .closeConnection: closed = true
            }
        }
    }
    return (frames, truncated, dropped, closed, d.finish())
}

private func oneByteChunks(_ bytes: [UInt8]) -> [[UInt8]] { bytes.map { [$0] } }

@Suite("Framing", .timeLimit(.minutes(5 * testTimeScale)))
struct FramingTests {
    static let binaryPayloads: [[UInt8]] = [
        [0x00], [0xFF, 0x00, 0xFF], [0x0A, 0x0D, 0x0A], Array(0...255), [], [0x03, 0x03],
    ]

    @Test("every framing is byte-exact for payloads with NUL, 0xFF and delimiter bytes, in 1-byte and coalesced writes")
    func roundTripBinary() throws {
        let framings: [Framing] = [.lengthPrefixed(width: 2, byteOrder: .bigEndian), .lengthPrefixed(width: 4, byteOrder: .littleEndian),
                                   .lengthPrefixed(width: 8, byteOrder: .bigEndian)]
        for framing in framings {
            let encoder = FrameEncoder(framing: framing)
            var wire: [UInt8] = []
            for p in Self.binaryPayloads { try encoder.encode(p, into: &wire) }
            let sliced = decode(framing, maxFrame: 1024, oneByteChunks(wire))
            #expect(sliced.frames == Self.binaryPayloads, "\(framing) 1-byte writes")
            let whole = decode(framing, maxFrame: 1024, [wire])
            #expect(whole.frames == Self.binaryPayloads, "\(framing) one write")
            #expect(whole.rest == nil)
        }
        // Delimited framings: payloads without the delimiter but with NUL/0xFF and delimiter prefixes.
        let delimited: [(Framing, [[UInt8]])] = [
            (.lf, [[0x00, 0xFF, 0x0D], [0xFF], [0x41]]),
            (.crlf, [[0x0A, 0x00], [0x0D], [0xFF, 0x0D, 0x0D]]),
            (.delimiter([0x03, 0x04]), [[0x03], [0x04, 0x03], [0x00, 0xFF, 0x0A]]),
            (.fixed(3), [[0x00, 0x0A, 0xFF], [0xFF, 0xFF, 0xFF], [0x0D, 0x0A, 0x00]]),
        ]
        for (framing, payloads) in delimited {
            let encoder = FrameEncoder(framing: framing)
            var wire: [UInt8] = []
            for p in payloads { try encoder.encode(p, into: &wire) }
            #expect(decode(framing, oneByteChunks(wire)).frames == payloads, "\(framing) 1-byte writes")
            #expect(decode(framing, [wire]).frames == payloads, "\(framing) one write")
        }
    }

    @Test("thousands of lines coalesced into one write and the same sliced at every byte split the same")
    func coalescedAndSliced() {
        let frames = (0..<5000).map { Array("feed:\($0):payload".utf8) }
        var wire: [UInt8] = []
        for f in frames { wire += f + [0x0D, 0x0A] }
        #expect(decode(.crlf, [wire]).frames == frames)
        let head = Array(wire.prefix(20000))
        #expect(decode(.crlf, oneByteChunks(head)).frames == Array(frames.prefix(lines(head[...]))))
        // Every split point of a two-frame stream with a CRLF split across reads.
        let small = Array("ab\r\ncd\r\n".utf8)
        for i in 0...small.count {
            let r = decode(.crlf, [Array(small[..<i]), Array(small[i...])])
            #expect(r.frames == [Array("ab".utf8), Array("cd".utf8)], "split at \(i)")
        }
    }

    @Test("a frame ten times the maximum is dropped, the next frame is intact; truncate and close policies")
    func oversize() {
        let big = [UInt8](repeating: 0x41, count: 640)
        let wire = big + [0x0A] + Array("next".utf8) + [0x0A]
        let r = decode(.lf, maxFrame: 64, [wire])
        #expect(r.frames == [Array("next".utf8)])
        #expect(r.dropped == 1)
        let sliced = decode(.lf, maxFrame: 64, oneByteChunks(wire))
        #expect(sliced.frames == [Array("next".utf8)])
        #expect(sliced.dropped == 1)
        let t = decode(.lf, maxFrame: 64, oversize: .truncate, oneByteChunks(wire))
        #expect(t.truncated == [Array(big.prefix(64))])
        #expect(t.frames == [Array("next".utf8)])
        let c = decode(.lf, maxFrame: 64, oversize: .close, [wire])
        #expect(c.closed)
        // Length-prefixed: the announced length is skipped exactly.
        let encoder = FrameEncoder(framing: .lengthPrefixed(width: 2, byteOrder: .bigEndian))
        let lp = (try! encoder.encode(big)) + (try! encoder.encode(Array("ok".utf8)))
        let l = decode(.lengthPrefixed(width: 2, byteOrder: .bigEndian), maxFrame: 64, oneByteChunks(lp))
        #expect(l.frames == [Array("ok".utf8)])
        #expect(l.dropped == 1)
        // Memory stays bounded when no delimiter ever comes.
        var d = FrameDecoder(framing: .lf, maxFrame: 64)
        for _ in 0..<1000 { d.decode([UInt8](repeating: 0x42, count: 100)) { _ in } }
        #expect(d.bufferedCount <= 64)
    }

    @Test("a partial last frame is left for the close policy, never emitted as a frame")
    func partial() {
        let r = decode(.lf, [Array("a\nb\npar".utf8)])
        #expect(r.frames == [Array("a".utf8), Array("b".utf8)])
        #expect(r.rest == Array("par".utf8))
    }

    @Test("the encoder refuses payloads that would change meaning")
    func encoderRefuses() {
        #expect(throws: FrameEncoder.Failure.containsDelimiter) { try FrameEncoder(framing: .lf).encode(Array("a\nb".utf8)) }
        #expect(throws: FrameEncoder.Failure.wrongLength) { try FrameEncoder(framing: .fixed(4)).encode([1, 2]) }
        #expect(throws: FrameEncoder.Failure.tooLong) {
            try FrameEncoder(framing: .lengthPrefixed(width: 1, byteOrder: .bigEndian)).encode([UInt8](repeating: 0, count: 256))
        }
    }
}

private func lines(_ bytes: ArraySlice<UInt8>) -> Int { bytes.filter { $0 == 0x0A }.count }
