/// How a byte stream is cut into frames, shared by both directions of a route.
///
/// The decoder (feed → MQTT) and the encoder (MQTT → feed) use the same value, so a route that reads
/// CRLF lines also writes CRLF lines.
public enum Framing: Sendable, Hashable, CustomStringConvertible {
    /// Lines ended by a line feed (`\n`). A carriage return before it stays in the payload.
    case lf
    /// Lines ended by carriage return + line feed (`\r\n`). A lone `\n` stays in the payload.
    case crlf
    /// Frames ended by a custom, possibly multi-byte, delimiter. The delimiter is not part of the payload.
    case delimiter([UInt8])
    /// Frames of exactly this many bytes.
    case fixed(Int)
    /// A length header of `width` bytes (1, 2, 4 or 8) in `byteOrder`, then that many payload bytes.
    case lengthPrefixed(width: Int, byteOrder: ByteOrder)
    /// Every chunk read from the socket (or every datagram) is one frame, cut at the maximum frame size.
    case raw

    /// Byte order of a length header.
    public enum ByteOrder: String, Sendable, Hashable {
        /// Most significant byte first (network order).
        case bigEndian = "be"
        /// Least significant byte first.
        case littleEndian = "le"
    }

    /// The delimiter of the delimiter-based framings, nil for the others.
    public var delimiterBytes: [UInt8]? {
        switch self {
        case .lf: return [0x0A]
        case .crlf: return [0x0D, 0x0A]
        case .delimiter(let d): return d
        default: return nil
        }
    }

    public var description: String {
        switch self {
        case .lf: return "lf"
        case .crlf: return "crlf"
        case .delimiter(let d): return "delimiter 0x" + d.map { String($0, radix: 16).leftPadded(2) }.joined()
        case .fixed(let n): return "fixed \(n)"
        case .lengthPrefixed(let w, let o): return "length \(w) \(o.rawValue)"
        case .raw: return "raw"
        }
    }
}

/// What the decoder does with a frame longer than the maximum frame size.
public enum OversizePolicy: String, Sendable, Hashable, CaseIterable {
    /// Drop the whole frame (up to the next delimiter, or the announced length) and count it; the next
    /// frame is intact. The default.
    case discard
    /// Emit the first `maxFrame` bytes, marked as truncated, then skip the rest of the frame.
    case truncate
    /// Close the connection.
    case close
}

/// What happens to an incomplete frame left over when a connection closes.
public enum PartialFramePolicy: String, Sendable, Hashable, CaseIterable {
    /// Drop it and count it. The default: half a line is never published as if it were whole.
    case drop
    /// Publish it, marked with the MQTT 5 user property `partial=true`.
    case emit
    /// Publish it to the route's dead-letter topic.
    case deadletter
}

extension String {
    func leftPadded(_ n: Int) -> String { count >= n ? self : String(repeating: "0", count: n - count) + self }
}

/// One result of decoding.
package enum FrameEvent: Sendable, Hashable {
    /// A complete frame's payload.
    case frame([UInt8])
    /// The first `maxFrame` bytes of an oversize frame (``OversizePolicy/truncate``).
    case truncated([UInt8])
    /// An oversize frame was dropped (``OversizePolicy/discard``), `bytes` long as far as seen.
    case oversizeDropped(bytes: Int)
    /// An oversize frame arrived and the policy is ``OversizePolicy/close``.
    case closeConnection
}

/// Cuts a byte stream into frames, incrementally: bytes may arrive one at a time or thousands of frames at once.
///
/// Memory is bounded by the maximum frame size plus one read: an unterminated stream never grows the buffer
/// beyond `maxFrame + delimiter length`.
package struct FrameDecoder: Sendable {
    /// The framing.
    package let framing: Framing
    /// The largest payload accepted.
    package let maxFrame: Int
    /// The oversize policy.
    package let oversize: OversizePolicy

    private var buffer: [UInt8] = []
    /// Bytes at the start of `buffer` already searched for a delimiter (minus the delimiter length - 1).
    private var scanned = 0
    /// Bytes still to skip of an oversize frame (length-prefixed), or `Int.max` while discarding to a delimiter.
    private var skipping = 0
    private var skippedSoFar = 0

    /// Creates a decoder.
    package init(framing: Framing, maxFrame: Int = 65536, oversize: OversizePolicy = .discard) {
        self.framing = framing
        self.maxFrame = max(1, maxFrame)
        self.oversize = oversize
        buffer.reserveCapacity(min(self.maxFrame, 64 * 1024))
    }

    /// Bytes buffered as an incomplete frame.
    package var bufferedCount: Int { buffer.count }

    /// Feeds bytes and reports every event they complete, in order.
    package mutating func decode(_ bytes: UnsafeRawBufferPointer, _ emit: (FrameEvent) -> Void) {
        switch framing {
        case .raw:
            var i = 0
            while i < bytes.count {
                let n = min(maxFrame, bytes.count - i)
                emit(.frame(Array(bytes[i..<i + n])))
                i += n
            }
        case .fixed(let size):
            decodeFixed(bytes, size: size, emit)
        case .lengthPrefixed(let width, let order):
            decodeLength(bytes, width: width, order: order, emit)
        case .lf, .crlf, .delimiter:
            decodeDelimited(bytes, delimiter: framing.delimiterBytes!, emit)
        }
    }

    /// Feeds bytes from an array. See ``decode(_:_:)-(UnsafeRawBufferPointer,_)``.
    package mutating func decode(_ bytes: [UInt8], _ emit: (FrameEvent) -> Void) {
        bytes.withUnsafeBytes { decode($0, emit) }
    }

    /// Ends the stream: returns the incomplete frame left over, if any, and resets the decoder.
    package mutating func finish() -> [UInt8]? {
        defer {
            buffer.removeAll(keepingCapacity: false)
            scanned = 0
            skipping = 0
            skippedSoFar = 0
        }
        if skipping > 0 || buffer.isEmpty { return nil }
        if case .lengthPrefixed(let width, _) = framing, buffer.count >= width {
            return Array(buffer[width...])
        }
        return buffer
    }

    private mutating func decodeDelimited(_ bytes: UnsafeRawBufferPointer, delimiter: [UInt8], _ emit: (FrameEvent) -> Void) {
        let d = delimiter.count
        let first = delimiter[0]
        var start = 0  // start of the current frame inside `bytes`, when the buffer is empty
        var i = 0
        // Fast path: nothing buffered, search `bytes` directly.
        if buffer.isEmpty && skipping == 0 {
            while i + d <= bytes.count {
                if bytes[i] == first && (d == 1 || matches(bytes, at: i, delimiter)) {
                    let length = i - start
                    if length <= maxFrame {
                        emit(.frame(Array(bytes[start..<i])))
                    } else {
                        oversizeComplete(Array(bytes[start..<start + maxFrame]), length: length, emit)
                        if oversize == .close { return }
                    }
                    i += d
                    start = i
                } else {
                    i += 1
                }
            }
            let rest = bytes.count - start
            if rest > maxFrame + d - 1 {
                // No delimiter within maxFrame: oversize, handled by the buffered path.
                buffer.append(contentsOf: bytes[start..<bytes.count])
                scanned = max(0, buffer.count - (d - 1))
                checkOverflow(delimiterLength: d, emit)
                return
            }
            buffer.append(contentsOf: bytes[start..<bytes.count])
            scanned = max(0, buffer.count - (d - 1))
            return
        }
        // Buffered path, byte by byte into the buffer; keeps memory bounded. Once a frame completes and the
        // buffer is empty again, the rest goes through the fast path.
        var index = 0
        while index < bytes.count {
            let b = bytes[index]
            index += 1
            buffer.append(b)
            let n = buffer.count
            if n >= d && buffer[n - d] == first && tailMatches(delimiter) {
                let length = n - d
                if skipping > 0 {
                    emit(.oversizeDropped(bytes: skippedSoFar + length))
                    skipping = 0
                    skippedSoFar = 0
                } else if length <= maxFrame {
                    emit(.frame(Array(buffer[0..<length])))
                } else {
                    oversizeComplete(Array(buffer[0..<maxFrame]), length: length, emit)
                    if oversize == .close { buffer.removeAll(); return }
                }
                buffer.removeAll(keepingCapacity: true)
                scanned = 0
                if index < bytes.count {
                    decodeDelimited(UnsafeRawBufferPointer(rebasing: bytes[index...]), delimiter: delimiter, emit)
                }
                return
            }
            if n > maxFrame + d - 1 {
                checkOverflow(delimiterLength: d, emit)
                if oversize == .close && skipping == 0 && buffer.isEmpty { return }
            }
        }
        scanned = max(0, buffer.count - (d - 1))
    }

    /// The buffer holds more than `maxFrame` bytes without a delimiter: start skipping to the next delimiter.
    private mutating func checkOverflow(delimiterLength d: Int, _ emit: (FrameEvent) -> Void) {
        if skipping == 0 {
            switch oversize {
            case .close:
                emit(.closeConnection)
                buffer.removeAll()
                return
            case .truncate:
                emit(.truncated(Array(buffer[0..<maxFrame])))
            case .discard:
                break
            }
            skipping = Int.max
            skippedSoFar = 0
        }
        // Keep only the last d-1 bytes: they may be the start of the delimiter.
        let keep = d - 1
        let drop = buffer.count - keep
        if drop > 0 {
            skippedSoFar += drop
            buffer.removeFirst(drop)
        }
    }

    private mutating func oversizeComplete(_ head: [UInt8], length: Int, _ emit: (FrameEvent) -> Void) {
        switch oversize {
        case .discard: emit(.oversizeDropped(bytes: length))
        case .truncate: emit(.truncated(head))
        case .close: emit(.closeConnection)
        }
    }

    private func matches(_ bytes: UnsafeRawBufferPointer, at i: Int, _ delimiter: [UInt8]) -> Bool {
        for k in 1..<delimiter.count where bytes[i + k] != delimiter[k] { return false }
        return true
    }

    private func tailMatches(_ delimiter: [UInt8]) -> Bool {
        let base = buffer.count - delimiter.count
        for k in 0..<delimiter.count where buffer[base + k] != delimiter[k] { return false }
        return true
    }

    private mutating func decodeFixed(_ bytes: UnsafeRawBufferPointer, size: Int, _ emit: (FrameEvent) -> Void) {
        var i = 0
        if !buffer.isEmpty {
            let need = size - buffer.count
            let take = min(need, bytes.count)
            buffer.append(contentsOf: bytes[0..<take])
            i = take
            if buffer.count == size {
                emit(.frame(buffer))
                buffer.removeAll(keepingCapacity: true)
            }
        }
        while i + size <= bytes.count {
            emit(.frame(Array(bytes[i..<i + size])))
            i += size
        }
        if i < bytes.count { buffer.append(contentsOf: bytes[i..<bytes.count]) }
    }

    private mutating func decodeLength(_ bytes: UnsafeRawBufferPointer, width: Int, order: Framing.ByteOrder,
                                       _ emit: (FrameEvent) -> Void) {
        var i = 0
        while i < bytes.count {
            if skipping > 0 {
                let n = min(skipping, bytes.count - i)
                skipping -= n
                i += n
                continue
            }
            // Header.
            if buffer.count < width {
                let n = min(width - buffer.count, bytes.count - i)
                buffer.append(contentsOf: bytes[i..<i + n])
                i += n
                if buffer.count < width { return }
            }
            var length: UInt64 = 0
            for k in 0..<width {
                let b = UInt64(buffer[order == .bigEndian ? k : width - 1 - k])
                length = (length << 8) | b
            }
            if length > UInt64(maxFrame) {
                // Oversize: the length is known, so skip exactly that many bytes.
                let total = length > UInt64(Int.max / 2) ? Int.max / 2 : Int(length)
                switch oversize {
                case .close:
                    emit(.closeConnection)
                    buffer.removeAll()
                    return
                case .discard:
                    emit(.oversizeDropped(bytes: total))
                    buffer.removeAll(keepingCapacity: true)
                    skipping = total
                case .truncate:
                    // Collect maxFrame bytes, then skip the rest.
                    let have = buffer.count - width
                    let n = min(maxFrame - have, bytes.count - i)
                    buffer.append(contentsOf: bytes[i..<i + n])
                    i += n
                    if buffer.count - width == maxFrame {
                        emit(.truncated(Array(buffer[width...])))
                        buffer.removeAll(keepingCapacity: true)
                        skipping = total - maxFrame
                    }
                }
                continue
            }
            let need = Int(length) - (buffer.count - width)
            let n = min(need, bytes.count - i)
            buffer.append(contentsOf: bytes[i..<i + n])
            i += n
            if n == need {
                emit(.frame(Array(buffer[width...])))
                buffer.removeAll(keepingCapacity: true)
            }
        }
    }
}

/// Turns payloads back into bytes on the wire, with the same framing the decoder reads.
package struct FrameEncoder: Sendable {
    /// The framing.
    package let framing: Framing

    /// Creates an encoder.
    package init(framing: Framing) { self.framing = framing }

    /// Why a payload cannot be framed without changing its meaning.
    package enum Failure: String, Sendable, Error {
        /// The payload contains the delimiter, so the feed would see two frames.
        case containsDelimiter = "contains_delimiter"
        /// The payload is not exactly the fixed frame length.
        case wrongLength = "wrong_length"
        /// The payload is longer than the length header can express.
        case tooLong = "too_long"
    }

    /// Appends the framed payload to `out`.
    package func encode(_ payload: [UInt8], into out: inout [UInt8]) throws(Failure) {
        switch framing {
        case .raw:
            out.append(contentsOf: payload)
        case .fixed(let n):
            guard payload.count == n else { throw .wrongLength }
            out.append(contentsOf: payload)
        case .lengthPrefixed(let width, let order):
            let max: UInt64 = width >= 8 ? UInt64.max : (UInt64(1) << UInt64(width * 8)) - 1
            guard UInt64(payload.count) <= max else { throw .tooLong }
            let length = UInt64(payload.count)
            for k in 0..<width {
                let shift = order == .bigEndian ? (width - 1 - k) * 8 : k * 8
                out.append(UInt8(truncatingIfNeeded: length >> UInt64(shift)))
            }
            out.append(contentsOf: payload)
        case .lf, .crlf, .delimiter:
            let d = framing.delimiterBytes!
            if contains(payload, d) { throw .containsDelimiter }
            out.append(contentsOf: payload)
            out.append(contentsOf: d)
        }
    }

    /// The framed payload.
    package func encode(_ payload: [UInt8]) throws(Failure) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(payload.count + 8)
        try encode(payload, into: &out)
        return out
    }

    private func contains(_ p: [UInt8], _ d: [UInt8]) -> Bool {
        guard p.count >= d.count else { return false }
        if d.count == 1 { return p.contains(d[0]) }
        var i = 0
        while i + d.count <= p.count {
            if p[i] == d[0] {
                var ok = true
                for k in 1..<d.count where p[i + k] != d[k] { ok = false; break }
                if ok { return true }
            }
            i += 1
        }
        return false
    }
}
