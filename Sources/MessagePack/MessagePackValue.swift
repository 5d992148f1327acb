/// One MessagePack value, covering the whole specification.
///
/// Integers keep the signedness of their source (``int(_:)`` for `Int64`, ``uint(_:)`` for `UInt64`) but compare
/// by value: `.int(5) == .uint(5)`. The writer picks the smallest encoding for both, as every canonical encoder
/// does, so a value's encoding does not depend on which case holds it. Floating-point values compare by bit
/// pattern, so that a NaN equals itself and `0.0` differs from `-0.0` (they encode differently). Maps keep their
/// entries in order and may hold duplicate keys, as the format allows.
///
/// ```swift
/// let reading: MessagePackValue = .map([
///     .init(key: "id", value: "kitchen"),
///     .init(key: "celsius", value: .double(21.5)),
/// ])
/// let bytes = reading.encoded()                   // [0x82, 0xa2, 0x69, 0x64, ...]
/// let back = try MessagePackValue(decoding: bytes)
/// ```
public enum MessagePackValue: Sendable {
    /// `nil` (0xc0).
    case `nil`
    /// `true` or `false` (0xc3, 0xc2).
    case bool(Bool)
    /// A signed integer; the writer uses an unsigned format when it is not negative.
    case int(Int64)
    /// An unsigned integer.
    case uint(UInt64)
    /// A 32-bit float (float 32, 0xca).
    case float(Float)
    /// A 64-bit float (float 64, 0xcb).
    case double(Double)
    /// A UTF-8 string (fixstr, str 8/16/32).
    case string(String)
    /// Bytes (bin 8/16/32).
    case binary([UInt8])
    /// An array (fixarray, array 16/32).
    case array([MessagePackValue])
    /// A map, its entries in order (fixmap, map 16/32).
    case map([MessagePackMapEntry])
    /// An extension value of an application-defined type (0...127; negative types are reserved by the
    /// specification, and -1, the timestamp, is decoded as ``timestamp(_:)``).
    case ext(type: Int8, data: [UInt8])
    /// The timestamp extension (type -1), in its 32-, 64- or 96-bit form.
    case timestamp(MessagePackTimestamp)
}

/// One key-value pair of a ``MessagePackValue/map(_:)``.
public struct MessagePackMapEntry: Sendable, Hashable {
    /// The key, which may be any value.
    public var key: MessagePackValue
    /// The value.
    public var value: MessagePackValue

    /// A pair.
    public init(key: MessagePackValue, value: MessagePackValue) {
        self.key = key
        self.value = value
    }
}

/// The MessagePack timestamp (extension type -1): seconds since 1970-01-01T00:00:00Z and nanoseconds.
///
/// The 32-bit form holds seconds 0 ... 2^32-1 with no nanoseconds, the 64-bit form seconds 0 ... 2^34-1 with
/// nanoseconds, and the 96-bit form any `Int64` seconds (before 1970 and after 2514) with nanoseconds.
public struct MessagePackTimestamp: Sendable, Hashable, Comparable {
    /// Seconds since the Unix epoch (negative before 1970).
    public var seconds: Int64
    /// Nanoseconds within the second, 0 ... 999,999,999, counted forward from `seconds` even when it is negative.
    public var nanoseconds: UInt32

    /// A timestamp; `nanoseconds` must be below one billion.
    public init(seconds: Int64, nanoseconds: UInt32 = 0) {
        precondition(nanoseconds < 1_000_000_000, "nanoseconds must be below 1,000,000,000")
        self.seconds = seconds
        self.nanoseconds = nanoseconds
    }

    public static func < (lhs: Self, rhs: Self) -> Bool {
        (lhs.seconds, lhs.nanoseconds) < (rhs.seconds, rhs.nanoseconds)
    }
}

extension MessagePackValue: Hashable {
    public static func == (lhs: Self, rhs: Self) -> Bool {
        switch (lhs, rhs) {
        case (.nil, .nil): return true
        case let (.bool(a), .bool(b)): return a == b
        case let (.int(a), .int(b)): return a == b
        case let (.uint(a), .uint(b)): return a == b
        case let (.int(a), .uint(b)), let (.uint(b), .int(a)): return a >= 0 && UInt64(a) == b
        case let (.float(a), .float(b)): return a.bitPattern == b.bitPattern
        case let (.double(a), .double(b)): return a.bitPattern == b.bitPattern
        case let (.string(a), .string(b)): return a == b
        case let (.binary(a), .binary(b)): return a == b
        case let (.array(a), .array(b)): return a == b
        case let (.map(a), .map(b)): return a == b
        case let (.ext(t1, d1), .ext(t2, d2)): return t1 == t2 && d1 == d2
        case let (.timestamp(a), .timestamp(b)): return a == b
        default: return false
        }
    }

    public func hash(into hasher: inout Hasher) {
        switch self {
        case .nil: hasher.combine(0)
        case .bool(let b): hasher.combine(1); hasher.combine(b)
        case .int(let i):
            if i >= 0 { hasher.combine(2); hasher.combine(UInt64(i)) } else { hasher.combine(3); hasher.combine(i) }
        case .uint(let u): hasher.combine(2); hasher.combine(u)
        case .float(let f): hasher.combine(4); hasher.combine(f.bitPattern)
        case .double(let d): hasher.combine(5); hasher.combine(d.bitPattern)
        case .string(let s): hasher.combine(6); hasher.combine(s)
        case .binary(let b): hasher.combine(7); hasher.combine(b)
        case .array(let a): hasher.combine(8); hasher.combine(a)
        case .map(let m): hasher.combine(9); hasher.combine(m)
        case .ext(let t, let d): hasher.combine(10); hasher.combine(t); hasher.combine(d)
        case .timestamp(let t): hasher.combine(11); hasher.combine(t)
        }
    }
}

extension MessagePackValue {
    /// The value as `Int64` when it is an integer that fits.
    public var int64Value: Int64? {
        switch self {
        case .int(let i): return i
        case .uint(let u): return u <= UInt64(Int64.max) ? Int64(u) : nil
        default: return nil
        }
    }

    /// The value as `UInt64` when it is a non-negative integer.
    public var uint64Value: UInt64? {
        switch self {
        case .int(let i): return i >= 0 ? UInt64(i) : nil
        case .uint(let u): return u
        default: return nil
        }
    }

    /// The value as `Double` when it is a float or an integer.
    public var doubleValue: Double? {
        switch self {
        case .double(let d): return d
        case .float(let f): return Double(f)
        case .int(let i): return Double(i)
        case .uint(let u): return Double(u)
        default: return nil
        }
    }

    /// The string, when the value is one.
    public var stringValue: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    /// The value for the first entry whose key is the string `key`, when the value is a map.
    public subscript(key: String) -> MessagePackValue? {
        guard case .map(let entries) = self else { return nil }
        return entries.first { $0.key == .string(key) }?.value
    }
}

extension MessagePackValue: ExpressibleByNilLiteral, ExpressibleByBooleanLiteral, ExpressibleByIntegerLiteral,
    ExpressibleByFloatLiteral, ExpressibleByStringLiteral, ExpressibleByArrayLiteral
{
    public init(nilLiteral: ()) { self = .nil }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(integerLiteral value: Int64) { self = .int(value) }
    public init(floatLiteral value: Double) { self = .double(value) }
    public init(stringLiteral value: String) { self = .string(value) }
    public init(arrayLiteral elements: MessagePackValue...) { self = .array(elements) }
}

extension MessagePackValue: CustomStringConvertible {
    /// A compact, JSON-like rendering for logs and test failures (not JSON: see ``jsonText(options:)``).
    public var description: String {
        switch self {
        case .nil: return "nil"
        case .bool(let b): return b ? "true" : "false"
        case .int(let i): return String(i)
        case .uint(let u): return String(u)
        case .float(let f): return "\(f)f"
        case .double(let d): return "\(d)"
        case .string(let s): return "\"\(s)\""
        case .binary(let b): return "bin(\(b.count) bytes)"
        case .array(let a): return "[" + a.map(\.description).joined(separator: ", ") + "]"
        case .map(let m): return "{" + m.map { "\($0.key.description): \($0.value.description)" }.joined(separator: ", ") + "}"
        case .ext(let t, let d): return "ext(\(t), \(d.count) bytes)"
        case .timestamp(let t): return "timestamp(\(t.seconds)s, \(t.nanoseconds)ns)"
        }
    }
}
