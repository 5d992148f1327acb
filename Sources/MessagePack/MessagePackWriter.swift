/// Writes ``MessagePackValue``s in their canonical (smallest) encoding.
///
/// The choices are those of the reference implementation (Python's `msgpack.packb(value, use_bin_type=True)`):
/// the smallest integer format (an unsigned one for values ≥ 0), fixstr/str 8/16/32, bin 8/16/32,
/// fixarray/array 16/32, fixmap/map 16/32, fixext 1/2/4/8/16 for those exact lengths and ext 8/16/32 otherwise,
/// and the smallest timestamp form. A `Double` is written as float 64 and a `Float` as float 32.
///
/// Strings, binaries, arrays and maps longer than 2^32 - 1 cannot be represented and trap.
public struct MessagePackWriter: Sendable {
    /// The bytes written so far.
    public private(set) var bytes: [UInt8]

    /// An empty writer; `reservingCapacity` preallocates.
    public init(reservingCapacity capacity: Int = 0) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    /// Appends one value (and everything it contains).
    public mutating func write(_ value: MessagePackValue) {
        switch value {
        case .nil: bytes.append(0xc0)
        case .bool(let b): bytes.append(b ? 0xc3 : 0xc2)
        case .int(let i): writeInt(i)
        case .uint(let u): writeUInt(u)
        case .float(let f):
            bytes.append(0xca)
            appendBigEndian(f.bitPattern)
        case .double(let d):
            bytes.append(0xcb)
            appendBigEndian(d.bitPattern)
        case .string(let s):
            var s = s
            s.withUTF8 { utf8 in
                writeStringHeader(count: utf8.count)
                bytes.append(contentsOf: utf8)
            }
        case .binary(let b):
            writeBinaryHeader(count: b.count)
            bytes.append(contentsOf: b)
        case .array(let a):
            writeArrayHeader(count: a.count)
            for element in a { write(element) }
        case .map(let m):
            writeMapHeader(count: m.count)
            for entry in m {
                write(entry.key)
                write(entry.value)
            }
        case .ext(let type, let data):
            writeExt(type: type, data: data)
        case .timestamp(let t):
            writeTimestamp(t)
        }
    }

    /// Appends an integer in the smallest format.
    public mutating func writeInt(_ i: Int64) {
        if i >= 0 { return writeUInt(UInt64(i)) }
        switch i {
        case -32 ..< 0: bytes.append(UInt8(bitPattern: Int8(i)))
        case Int64(Int8.min) ..< -32: bytes.append(0xd0); bytes.append(UInt8(bitPattern: Int8(i)))
        case Int64(Int16.min) ..< Int64(Int8.min): bytes.append(0xd1); appendBigEndian(UInt16(bitPattern: Int16(i)))
        case Int64(Int32.min) ..< Int64(Int16.min): bytes.append(0xd2); appendBigEndian(UInt32(bitPattern: Int32(i)))
        default: bytes.append(0xd3); appendBigEndian(UInt64(bitPattern: i))
        }
    }

    /// Appends a non-negative integer in the smallest format.
    public mutating func writeUInt(_ u: UInt64) {
        switch u {
        case 0 ..< 0x80: bytes.append(UInt8(u))
        case 0x80 ... 0xff: bytes.append(0xcc); bytes.append(UInt8(u))
        case 0x100 ... 0xffff: bytes.append(0xcd); appendBigEndian(UInt16(u))
        case 0x1_0000 ... 0xffff_ffff: bytes.append(0xce); appendBigEndian(UInt32(u))
        default: bytes.append(0xcf); appendBigEndian(u)
        }
    }

    /// Appends the header of a string of `count` UTF-8 bytes (the bytes follow).
    public mutating func writeStringHeader(count: Int) {
        switch count {
        case 0 ..< 32: bytes.append(0xa0 | UInt8(count))
        case 32 ... 0xff: bytes.append(0xd9); bytes.append(UInt8(count))
        case 0x100 ... 0xffff: bytes.append(0xda); appendBigEndian(UInt16(count))
        default: bytes.append(0xdb); appendBigEndian(length32(count))
        }
    }

    /// Appends the header of `count` bytes of binary data (the bytes follow).
    public mutating func writeBinaryHeader(count: Int) {
        switch count {
        case 0 ... 0xff: bytes.append(0xc4); bytes.append(UInt8(count))
        case 0x100 ... 0xffff: bytes.append(0xc5); appendBigEndian(UInt16(count))
        default: bytes.append(0xc6); appendBigEndian(length32(count))
        }
    }

    /// Appends the header of an array of `count` elements (the elements follow).
    public mutating func writeArrayHeader(count: Int) {
        switch count {
        case 0 ..< 16: bytes.append(0x90 | UInt8(count))
        case 16 ... 0xffff: bytes.append(0xdc); appendBigEndian(UInt16(count))
        default: bytes.append(0xdd); appendBigEndian(length32(count))
        }
    }

    /// Appends the header of a map of `count` entries (keys and values follow, alternating).
    public mutating func writeMapHeader(count: Int) {
        switch count {
        case 0 ..< 16: bytes.append(0x80 | UInt8(count))
        case 16 ... 0xffff: bytes.append(0xde); appendBigEndian(UInt16(count))
        default: bytes.append(0xdf); appendBigEndian(length32(count))
        }
    }

    /// Appends an extension value: fixext for 1, 2, 4, 8 and 16 bytes, ext 8/16/32 otherwise.
    public mutating func writeExt(type: Int8, data: [UInt8]) {
        switch data.count {
        case 1: bytes.append(0xd4)
        case 2: bytes.append(0xd5)
        case 4: bytes.append(0xd6)
        case 8: bytes.append(0xd7)
        case 16: bytes.append(0xd8)
        case 0 ... 0xff: bytes.append(0xc7); bytes.append(UInt8(data.count))
        case 0x100 ... 0xffff: bytes.append(0xc8); appendBigEndian(UInt16(data.count))
        default: bytes.append(0xc9); appendBigEndian(length32(data.count))
        }
        bytes.append(UInt8(bitPattern: type))
        bytes.append(contentsOf: data)
    }

    /// Appends a timestamp in its smallest form: 32-bit when it has no nanoseconds and fits in 32 bits of
    /// seconds, 64-bit when the seconds fit in 34 bits, 96-bit otherwise.
    public mutating func writeTimestamp(_ t: MessagePackTimestamp) {
        if t.seconds >> 34 == 0 {
            let data64 = UInt64(t.nanoseconds) << 34 | UInt64(t.seconds)
            if data64 & 0xffff_ffff_0000_0000 == 0 {
                bytes.append(0xd6); bytes.append(0xff); appendBigEndian(UInt32(data64))
            } else {
                bytes.append(0xd7); bytes.append(0xff); appendBigEndian(data64)
            }
        } else {
            bytes.append(0xc7); bytes.append(12); bytes.append(0xff)
            appendBigEndian(t.nanoseconds)
            appendBigEndian(UInt64(bitPattern: t.seconds))
        }
    }

    private func length32(_ count: Int) -> UInt32 {
        guard let n = UInt32(exactly: count) else {
            fatalError("MessagePack cannot represent a length of \(count) (the maximum is 2^32 - 1)")
        }
        return n
    }

    @inline(__always)
    private mutating func appendBigEndian<T: FixedWidthInteger>(_ value: T) {
        var v = value.bigEndian
        withUnsafeBytes(of: &v) { bytes.append(contentsOf: $0) }
    }
}

extension MessagePackValue {
    /// The value's canonical encoding.
    public func encoded() -> [UInt8] {
        var writer = MessagePackWriter()
        writer.write(self)
        return writer.bytes
    }
}
