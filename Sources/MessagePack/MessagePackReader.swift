/// Why bytes did not decode as MessagePack.
///
/// ``offset`` is where in the input the problem was found; ``message`` says what it was.
public struct MessagePackError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The kind of problem, open to new cases.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private let name: String
        private init(_ name: String) { self.name = name }
        /// The input ended inside a value.
        public static let truncated = Code("truncated")
        /// 0xc1, which the specification never uses.
        public static let invalidByte = Code("invalid byte")
        /// A string is not valid UTF-8.
        public static let invalidUTF8 = Code("invalid UTF-8")
        /// A timestamp (extension type -1) of a length other than 4, 8 or 12, or with nanoseconds ≥ 10^9.
        public static let invalidTimestamp = Code("invalid timestamp")
        /// Arrays and maps nested deeper than the reader's limit.
        public static let tooDeep = Code("nested too deeply")
        /// Bytes after the value, where one value was expected.
        public static let trailingBytes = Code("trailing bytes")
        /// A value of the wrong type for what was being decoded (Codable, JSON conversion).
        public static let typeMismatch = Code("type mismatch")
        /// A value not representable in the target (a number out of range, a map key JSON cannot have).
        public static let notRepresentable = Code("not representable")
        /// Text that is not JSON.
        public static let invalidJSON = Code("invalid JSON")
        public var description: String { name }
    }

    /// The kind of problem.
    public var code: Code
    /// The byte offset in the input where it was found.
    public var offset: Int
    /// What was wrong, in words.
    public var message: String

    /// An error.
    public init(_ code: Code, at offset: Int, _ message: String) {
        self.code = code
        self.offset = offset
        self.message = message
    }

    public var description: String { "\(message) (at byte \(offset))" }
}

/// Reads MessagePack values from bytes, checking every length against the input.
///
/// The reader never traps on its input: truncated or malformed bytes, invalid UTF-8 in a string, a timestamp of a
/// wrong length and nesting deeper than ``maximumDepth`` all throw a ``MessagePackError``. A declared length larger
/// than what is left of the input fails before anything is allocated for it.
///
/// Non-canonical encodings (an int 32 holding 5, a str 16 of three bytes) are accepted; writing the value back
/// gives the canonical form.
public struct MessagePackReader: Sendable {
    /// The input.
    public let bytes: [UInt8]
    /// Where the next value starts.
    public private(set) var offset: Int
    /// How deeply arrays and maps may nest (a guard against stack exhaustion); ``defaultMaximumDepth`` unless set.
    public var maximumDepth: Int

    /// The default nesting limit, 64: reading, writing, comparing and printing a value that deep stays within a
    /// 512 KiB thread stack even in a debug build (each level costs a few KiB of stack there).
    public static let defaultMaximumDepth = 64

    /// A reader at the start of `bytes`.
    public init(_ bytes: [UInt8], maximumDepth: Int = MessagePackReader.defaultMaximumDepth) {
        self.bytes = bytes
        self.offset = 0
        self.maximumDepth = maximumDepth
    }

    /// Whether every byte has been read.
    public var isAtEnd: Bool { offset >= bytes.count }

    /// Reads the next value.
    ///
    /// - Throws: ``MessagePackError`` when the bytes are not a valid value; the offset is then unspecified.
    public mutating func read() throws(MessagePackError) -> MessagePackValue {
        try readValue(depth: 0)
    }

    private mutating func readValue(depth: Int) throws(MessagePackError) -> MessagePackValue {
        let start = offset
        let b = try byte()
        switch b {
        case 0x00 ... 0x7f: return .int(Int64(b))
        case 0x80 ... 0x8f: return try readMap(count: Int(b & 0x0f), depth: depth, at: start)
        case 0x90 ... 0x9f: return try readArray(count: Int(b & 0x0f), depth: depth, at: start)
        case 0xa0 ... 0xbf: return try readString(count: Int(b & 0x1f))
        case 0xc0: return .nil
        case 0xc1: throw MessagePackError(.invalidByte, at: start, "0xc1 is never used in MessagePack")
        case 0xc2: return .bool(false)
        case 0xc3: return .bool(true)
        case 0xc4: return .binary(try take(Int(try uint8())))
        case 0xc5: return .binary(try take(Int(try uint16())))
        case 0xc6: return .binary(try take(Int(try uint32())))
        case 0xc7: return try readExt(count: Int(try uint8()), at: start)
        case 0xc8: return try readExt(count: Int(try uint16()), at: start)
        case 0xc9: return try readExt(count: Int(try uint32()), at: start)
        case 0xca: return .float(Float(bitPattern: try uint32()))
        case 0xcb: return .double(Double(bitPattern: try uint64()))
        case 0xcc: return .uint(UInt64(try uint8()))
        case 0xcd: return .uint(UInt64(try uint16()))
        case 0xce: return .uint(UInt64(try uint32()))
        case 0xcf: return .uint(try uint64())
        case 0xd0: return .int(Int64(Int8(bitPattern: try uint8())))
        case 0xd1: return .int(Int64(Int16(bitPattern: try uint16())))
        case 0xd2: return .int(Int64(Int32(bitPattern: try uint32())))
        case 0xd3: return .int(Int64(bitPattern: try uint64()))
        case 0xd4: return try readExt(count: 1, at: start)
        case 0xd5: return try readExt(count: 2, at: start)
        case 0xd6: return try readExt(count: 4, at: start)
        case 0xd7: return try readExt(count: 8, at: start)
        case 0xd8: return try readExt(count: 16, at: start)
        case 0xd9: return try readString(count: Int(try uint8()))
        case 0xda: return try readString(count: Int(try uint16()))
        case 0xdb: return try readString(count: Int(try uint32()))
        case 0xdc: return try readArray(count: Int(try uint16()), depth: depth, at: start)
        case 0xdd: return try readArray(count: Int(try uint32()), depth: depth, at: start)
        case 0xde: return try readMap(count: Int(try uint16()), depth: depth, at: start)
        case 0xdf: return try readMap(count: Int(try uint32()), depth: depth, at: start)
        default: return .int(Int64(Int8(bitPattern: b)))  // 0xe0 ... 0xff: negative fixint
        }
    }

    private mutating func readArray(count: Int, depth: Int, at start: Int) throws(MessagePackError) -> MessagePackValue {
        guard depth < maximumDepth else {
            throw MessagePackError(.tooDeep, at: start, "arrays and maps nested deeper than \(maximumDepth)")
        }
        // Every element takes at least one byte: a count larger than the rest of the input cannot be right.
        guard count <= bytes.count - offset else { throw truncated(start, "an array of \(count) elements") }
        var elements: [MessagePackValue] = []
        elements.reserveCapacity(count)
        for _ in 0 ..< count { elements.append(try readValue(depth: depth + 1)) }
        return .array(elements)
    }

    private mutating func readMap(count: Int, depth: Int, at start: Int) throws(MessagePackError) -> MessagePackValue {
        guard depth < maximumDepth else {
            throw MessagePackError(.tooDeep, at: start, "arrays and maps nested deeper than \(maximumDepth)")
        }
        guard count <= (bytes.count - offset) / 2 else { throw truncated(start, "a map of \(count) entries") }
        var entries: [MessagePackMapEntry] = []
        entries.reserveCapacity(count)
        for _ in 0 ..< count {
            let key = try readValue(depth: depth + 1)
            let value = try readValue(depth: depth + 1)
            entries.append(MessagePackMapEntry(key: key, value: value))
        }
        return .map(entries)
    }

    private mutating func readString(count: Int) throws(MessagePackError) -> MessagePackValue {
        let start = offset
        guard count <= bytes.count - offset else { throw truncated(start, "a string of \(count) bytes") }
        let utf8 = bytes[offset ..< offset + count]
        guard let s = String(validating: utf8, as: UTF8.self) else {
            throw MessagePackError(.invalidUTF8, at: start, "a string of \(count) bytes is not valid UTF-8")
        }
        offset += count
        return .string(s)
    }

    private mutating func readExt(count: Int, at start: Int) throws(MessagePackError) -> MessagePackValue {
        let type = Int8(bitPattern: try uint8())
        let data = try take(count)
        guard type == -1 else { return .ext(type: type, data: data) }
        switch count {
        case 4:
            return .timestamp(MessagePackTimestamp(seconds: Int64(be(data, UInt32.self, 0)), nanoseconds: 0))
        case 8:
            let data64 = be(data, UInt64.self, 0)
            let nanoseconds = UInt32(data64 >> 34)
            try checkNanoseconds(nanoseconds, at: start)
            return .timestamp(MessagePackTimestamp(seconds: Int64(data64 & 0x3_ffff_ffff), nanoseconds: nanoseconds))
        case 12:
            let nanoseconds = be(data, UInt32.self, 0)
            try checkNanoseconds(nanoseconds, at: start)
            let seconds = Int64(bitPattern: be(data, UInt64.self, 4))
            return .timestamp(MessagePackTimestamp(seconds: seconds, nanoseconds: nanoseconds))
        default:
            throw MessagePackError(.invalidTimestamp, at: start,
                                   "a timestamp (extension type -1) of \(count) bytes; it must have 4, 8 or 12")
        }
    }

    private func checkNanoseconds(_ n: UInt32, at start: Int) throws(MessagePackError) {
        guard n < 1_000_000_000 else {
            throw MessagePackError(.invalidTimestamp, at: start, "a timestamp with \(n) nanoseconds (at most 999999999)")
        }
    }

    private func be<T: FixedWidthInteger>(_ data: [UInt8], _: T.Type, _ at: Int) -> T {
        var v: T = 0
        for i in 0 ..< T.bitWidth / 8 { v = v << 8 | T(data[at + i]) }
        return v
    }

    private func truncated(_ start: Int, _ what: String) -> MessagePackError {
        MessagePackError(.truncated, at: start, "the input ends inside \(what)")
    }

    private mutating func byte() throws(MessagePackError) -> UInt8 {
        guard offset < bytes.count else { throw truncated(offset, "a value (no bytes left)") }
        defer { offset += 1 }
        return bytes[offset]
    }

    private mutating func uint8() throws(MessagePackError) -> UInt8 {
        guard offset < bytes.count else { throw truncated(offset - 1, "a value's header") }
        defer { offset += 1 }
        return bytes[offset]
    }

    private mutating func fixed<T: FixedWidthInteger>(_: T.Type) throws(MessagePackError) -> T {
        let size = T.bitWidth / 8
        guard size <= bytes.count - offset else { throw truncated(offset - 1, "a value's header") }
        var v: T = 0
        for i in 0 ..< size { v = v << 8 | T(bytes[offset + i]) }
        offset += size
        return v
    }

    private mutating func uint16() throws(MessagePackError) -> UInt16 { try fixed(UInt16.self) }
    private mutating func uint32() throws(MessagePackError) -> UInt32 { try fixed(UInt32.self) }
    private mutating func uint64() throws(MessagePackError) -> UInt64 { try fixed(UInt64.self) }

    private mutating func take(_ count: Int) throws(MessagePackError) -> [UInt8] {
        guard count <= bytes.count - offset else { throw truncated(offset, "\(count) bytes of data") }
        defer { offset += count }
        return Array(bytes[offset ..< offset + count])
    }
}

extension MessagePackValue {
    /// Decodes exactly one value from `bytes`.
    ///
    /// - Parameters:
    ///   - bytes: the encoding of one value, and nothing after it.
    ///   - maximumDepth: how deeply arrays and maps may nest.
    /// - Throws: ``MessagePackError`` when the bytes are not one valid value (``MessagePackError/Code/trailingBytes``
    ///   when something follows it).
    public init(decoding bytes: [UInt8], maximumDepth: Int = MessagePackReader.defaultMaximumDepth) throws(MessagePackError) {
        var reader = MessagePackReader(bytes, maximumDepth: maximumDepth)
        self = try reader.read()
        guard reader.isAtEnd else {
            throw MessagePackError(.trailingBytes, at: reader.offset,
                                   "\(bytes.count - reader.offset) bytes follow the value")
        }
    }
}
