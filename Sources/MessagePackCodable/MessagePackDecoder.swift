import FoundationEssentials
import MessagePack

/// Decodes `Decodable` values from MessagePack.
///
/// The counterpart of ``MessagePackEncoder``: maps decode keyed containers (string keys; integer keys are read as
/// their decimal text), arrays unkeyed ones. Numbers convert where no information is lost: any integer into an
/// integer type it fits, integers and float 32 into `Double`, and float 64 into `Float` when it is representable as
/// one (or NaN or infinite). `Date` decodes from a timestamp, `Data` and `[UInt8]` from binary (or from an array
/// of small integers).
///
/// Errors are `DecodingError`s with the coding path; bytes that are not MessagePack at all throw
/// `DecodingError.dataCorrupted` whose underlying error is the reader's ``MessagePackError``.
public struct MessagePackDecoder: Sendable {
    /// Values handed to the decoded types' `init(from:)` as `decoder.userInfo`.
    public var userInfo: [CodingUserInfoKey: any Sendable] = [:]
    /// How deeply arrays and maps may nest in the input.
    public var maximumDepth = MessagePackReader.defaultMaximumDepth

    /// A decoder.
    public init() {}

    /// Decodes a `T` from MessagePack bytes holding exactly one value.
    public func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8]) throws -> T {
        let value: MessagePackValue
        do {
            value = try MessagePackValue(decoding: bytes, maximumDepth: maximumDepth)
        } catch {
            throw DecodingError.dataCorrupted(.init(codingPath: [], debugDescription: "not MessagePack: \(error)", underlyingError: error))
        }
        return try decode(type, from: value)
    }

    /// Decodes a `T` from a ``MessagePackValue`` tree.
    public func decode<T: Decodable>(_ type: T.Type, from value: MessagePackValue) throws -> T {
        try MessagePackTreeDecoder(value: value, codingPath: [], userInfo: userInfo).decodeAny(type)
    }
}

struct MessagePackTreeDecoder: Decoder {
    let value: MessagePackValue
    let codingPath: [any CodingKey]
    let userInfoStorage: [CodingUserInfoKey: any Sendable]
    var userInfo: [CodingUserInfoKey: Any] { userInfoStorage }

    init(value: MessagePackValue, codingPath: [any CodingKey], userInfo: [CodingUserInfoKey: any Sendable]) {
        self.value = value
        self.codingPath = codingPath
        self.userInfoStorage = userInfo
    }

    func decodeAny<T: Decodable>(_ type: T.Type) throws -> T {
        if type == Date.self {
            guard case .timestamp(let t) = value else { throw mismatch(type, "a timestamp") }
            return SpecialValue.date(t) as! T
        }
        if type == Data.self {
            return Data(try bytes(type)) as! T
        }
        if type == [UInt8].self {
            return try bytes(type) as! T
        }
        return try T(from: self)
    }

    private func bytes(_ type: Any.Type) throws -> [UInt8] {
        switch value {
        case .binary(let b): return b
        case .array(let elements):
            return try elements.enumerated().map { i, e in
                guard let u = e.uint64Value, let b = UInt8(exactly: u) else {
                    throw DecodingError.typeMismatch(UInt8.self, .init(codingPath: codingPath + [MessagePackCodingKey(intValue: i)],
                                                                         debugDescription: "expected a byte, found \(e)"))
                }
                return b
            }
        default: throw mismatch(type, "binary data")
        }
    }

    func mismatch(_ type: Any.Type, _ expected: String) -> DecodingError {
        DecodingError.typeMismatch(type, .init(codingPath: codingPath, debugDescription: "expected \(expected), found \(kind(value))"))
    }

    func child(_ value: MessagePackValue, _ key: any CodingKey) -> MessagePackTreeDecoder {
        MessagePackTreeDecoder(value: value, codingPath: codingPath + [key], userInfo: userInfoStorage)
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        guard case .map(let entries) = value else { throw mismatch([String: Any].self, "a map") }
        return KeyedDecodingContainer(KeyedContainer<Key>(decoder: self, entries: entries))
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        guard case .array(let elements) = value else { throw mismatch([Any].self, "an array") }
        return UnkeyedContainer(decoder: self, elements: elements)
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer { SingleContainer(decoder: self) }

    // MARK: scalars

    func decodeBool() throws -> Bool {
        guard case .bool(let b) = value else { throw mismatch(Bool.self, "a boolean") }
        return b
    }

    func decodeString() throws -> String {
        guard case .string(let s) = value else { throw mismatch(String.self, "a string") }
        return s
    }

    func decodeInteger<T: FixedWidthInteger>(_ type: T.Type) throws -> T {
        let result: T?
        switch value {
        case .int(let i): result = T(exactly: i)
        case .uint(let u): result = T(exactly: u)
        default: throw mismatch(type, "an integer")
        }
        guard let result else {
            throw DecodingError.dataCorrupted(.init(codingPath: codingPath, debugDescription: "\(value) does not fit in \(T.self)"))
        }
        return result
    }

    func decodeDouble() throws -> Double {
        guard let d = value.doubleValue else { throw mismatch(Double.self, "a number") }
        return d
    }

    func decodeFloat() throws -> Float {
        switch value {
        case .float(let f): return f
        case .double(let d):
            let f = Float(d)
            guard Double(f) == d || d.isNaN || d.isInfinite else {
                throw DecodingError.dataCorrupted(.init(codingPath: codingPath, debugDescription: "\(d) is not representable as a Float"))
            }
            return f
        case .int, .uint: return Float(value.doubleValue!)
        default: throw mismatch(Float.self, "a number")
        }
    }

    struct KeyedContainer<Key: CodingKey>: KeyedDecodingContainerProtocol {
        let decoder: MessagePackTreeDecoder
        let entries: [MessagePackMapEntry]
        /// For large maps, the first position of each key; small maps (the usual struct) are scanned instead.
        let index: [String: Int]?
        var codingPath: [any CodingKey] { decoder.codingPath }

        init(decoder: MessagePackTreeDecoder, entries: [MessagePackMapEntry]) {
            self.decoder = decoder
            self.entries = entries
            if entries.count > 16 {
                var index: [String: Int] = [:]
                index.reserveCapacity(entries.count)
                for (i, entry) in entries.enumerated() {
                    if let name = Self.name(entry.key), index[name] == nil { index[name] = i }
                }
                self.index = index
            } else {
                self.index = nil
            }
        }

        private static func name(_ key: MessagePackValue) -> String? {
            switch key {
            case .string(let s): return s
            case .int(let i): return String(i)
            case .uint(let u): return String(u)
            default: return nil
            }
        }

        var allKeys: [Key] {
            var seen = Set<String>()
            return entries.compactMap { entry in
                guard let name = Self.name(entry.key), seen.insert(name).inserted else { return nil }
                return Key(stringValue: name)
            }
        }

        private func lookup(_ key: Key) -> MessagePackValue? {
            let name = key.stringValue
            if let index { return index[name].map { entries[$0].value } }
            for entry in entries {
                switch entry.key {
                case .string(let s): if s == name { return entry.value }
                case .int, .uint: if Self.name(entry.key) == name { return entry.value }
                default: continue
                }
            }
            return nil
        }

        func contains(_ key: Key) -> Bool { lookup(key) != nil }

        private func value(_ key: Key) throws -> MessagePackValue {
            guard let v = lookup(key) else {
                throw DecodingError.keyNotFound(key, .init(codingPath: codingPath, debugDescription: "no value for key '\(key.stringValue)'"))
            }
            return v
        }

        /// A decoder for the value at `key`: its coding path is built only here, for nested values and errors.
        private func child(_ key: Key) throws -> MessagePackTreeDecoder { decoder.child(try value(key), key) }

        /// Scalars decode without a child decoder; the child (and its coding path) is made only to report an error.
        private func scalar<T>(_ key: Key, _ body: (MessagePackValue) -> T?, _ slow: (MessagePackTreeDecoder) throws -> T) throws -> T {
            let v = try value(key)
            if let fast = body(v) { return fast }
            return try slow(decoder.child(v, key))
        }

        func decodeNil(forKey key: Key) throws -> Bool { try value(key) == .nil }
        func decode(_ type: Bool.Type, forKey key: Key) throws -> Bool {
            try scalar(key, { if case .bool(let b) = $0 { return b } else { return nil } }) { try $0.decodeBool() }
        }
        func decode(_ type: String.Type, forKey key: Key) throws -> String {
            try scalar(key, { if case .string(let s) = $0 { return s } else { return nil } }) { try $0.decodeString() }
        }
        func decode(_ type: Double.Type, forKey key: Key) throws -> Double {
            try scalar(key, { if case .double(let d) = $0 { return d } else { return nil } }) { try $0.decodeDouble() }
        }
        func decode(_ type: Float.Type, forKey key: Key) throws -> Float {
            try scalar(key, { if case .float(let f) = $0 { return f } else { return nil } }) { try $0.decodeFloat() }
        }
        private func integer<T: FixedWidthInteger>(_ type: T.Type, _ key: Key) throws -> T {
            try scalar(key, { v in
                switch v {
                case .int(let i): return T(exactly: i)
                case .uint(let u): return T(exactly: u)
                default: return nil
                }
            }) { try $0.decodeInteger(type) }
        }
        func decode(_ type: Int.Type, forKey key: Key) throws -> Int { try integer(type, key) }
        func decode(_ type: Int8.Type, forKey key: Key) throws -> Int8 { try integer(type, key) }
        func decode(_ type: Int16.Type, forKey key: Key) throws -> Int16 { try integer(type, key) }
        func decode(_ type: Int32.Type, forKey key: Key) throws -> Int32 { try integer(type, key) }
        func decode(_ type: Int64.Type, forKey key: Key) throws -> Int64 { try integer(type, key) }
        func decode(_ type: UInt.Type, forKey key: Key) throws -> UInt { try integer(type, key) }
        func decode(_ type: UInt8.Type, forKey key: Key) throws -> UInt8 { try integer(type, key) }
        func decode(_ type: UInt16.Type, forKey key: Key) throws -> UInt16 { try integer(type, key) }
        func decode(_ type: UInt32.Type, forKey key: Key) throws -> UInt32 { try integer(type, key) }
        func decode(_ type: UInt64.Type, forKey key: Key) throws -> UInt64 { try integer(type, key) }
        func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T { try child(key).decodeAny(type) }
        func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type, forKey key: Key) throws -> KeyedDecodingContainer<NestedKey> {
            try child(key).container(keyedBy: type)
        }
        func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer { try child(key).unkeyedContainer() }
        func superDecoder() throws -> any Decoder {
            let superKey = MessagePackCodingKey.super
            let v = entries.first { $0.key == .string(superKey.stringValue) }?.value ?? .nil
            return decoder.child(v, superKey)
        }
        func superDecoder(forKey key: Key) throws -> any Decoder { try child(key) }
    }

    struct UnkeyedContainer: UnkeyedDecodingContainer {
        let decoder: MessagePackTreeDecoder
        let elements: [MessagePackValue]
        var currentIndex = 0
        var codingPath: [any CodingKey] { decoder.codingPath }
        var count: Int? { elements.count }
        var isAtEnd: Bool { currentIndex >= elements.count }

        init(decoder: MessagePackTreeDecoder, elements: [MessagePackValue]) {
            self.decoder = decoder
            self.elements = elements
        }

        private mutating func next(_ type: Any.Type) throws -> MessagePackTreeDecoder {
            guard !isAtEnd else {
                throw DecodingError.valueNotFound(type, .init(codingPath: codingPath + [MessagePackCodingKey(intValue: currentIndex)],
                                                             debugDescription: "the array has only \(elements.count) elements"))
            }
            defer { currentIndex += 1 }
            return decoder.child(elements[currentIndex], MessagePackCodingKey(intValue: currentIndex))
        }

        mutating func decodeNil() throws -> Bool {
            guard !isAtEnd, elements[currentIndex] == .nil else { return false }
            currentIndex += 1
            return true
        }
        mutating func decode(_ type: Bool.Type) throws -> Bool { try next(type).decodeBool() }
        mutating func decode(_ type: String.Type) throws -> String { try next(type).decodeString() }
        mutating func decode(_ type: Double.Type) throws -> Double { try next(type).decodeDouble() }
        mutating func decode(_ type: Float.Type) throws -> Float { try next(type).decodeFloat() }
        mutating func decode(_ type: Int.Type) throws -> Int { try next(type).decodeInteger(type) }
        mutating func decode(_ type: Int8.Type) throws -> Int8 { try next(type).decodeInteger(type) }
        mutating func decode(_ type: Int16.Type) throws -> Int16 { try next(type).decodeInteger(type) }
        mutating func decode(_ type: Int32.Type) throws -> Int32 { try next(type).decodeInteger(type) }
        mutating func decode(_ type: Int64.Type) throws -> Int64 { try next(type).decodeInteger(type) }
        mutating func decode(_ type: UInt.Type) throws -> UInt { try next(type).decodeInteger(type) }
        mutating func decode(_ type: UInt8.Type) throws -> UInt8 { try next(type).decodeInteger(type) }
        mutating func decode(_ type: UInt16.Type) throws -> UInt16 { try next(type).decodeInteger(type) }
        mutating func decode(_ type: UInt32.Type) throws -> UInt32 { try next(type).decodeInteger(type) }
        mutating func decode(_ type: UInt64.Type) throws -> UInt64 { try next(type).decodeInteger(type) }
        mutating func decode<T: Decodable>(_ type: T.Type) throws -> T { try next(type).decodeAny(type) }
        mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws -> KeyedDecodingContainer<NestedKey> {
            try next([String: Any].self).container(keyedBy: type)
        }
        mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer { try next([Any].self).unkeyedContainer() }
        mutating func superDecoder() throws -> any Decoder { try next(Any.self) }
    }

    struct SingleContainer: SingleValueDecodingContainer {
        let decoder: MessagePackTreeDecoder
        var codingPath: [any CodingKey] { decoder.codingPath }

        func decodeNil() -> Bool { decoder.value == .nil }
        func decode(_ type: Bool.Type) throws -> Bool { try decoder.decodeBool() }
        func decode(_ type: String.Type) throws -> String { try decoder.decodeString() }
        func decode(_ type: Double.Type) throws -> Double { try decoder.decodeDouble() }
        func decode(_ type: Float.Type) throws -> Float { try decoder.decodeFloat() }
        func decode(_ type: Int.Type) throws -> Int { try decoder.decodeInteger(type) }
        func decode(_ type: Int8.Type) throws -> Int8 { try decoder.decodeInteger(type) }
        func decode(_ type: Int16.Type) throws -> Int16 { try decoder.decodeInteger(type) }
        func decode(_ type: Int32.Type) throws -> Int32 { try decoder.decodeInteger(type) }
        func decode(_ type: Int64.Type) throws -> Int64 { try decoder.decodeInteger(type) }
        func decode(_ type: UInt.Type) throws -> UInt { try decoder.decodeInteger(type) }
        func decode(_ type: UInt8.Type) throws -> UInt8 { try decoder.decodeInteger(type) }
        func decode(_ type: UInt16.Type) throws -> UInt16 { try decoder.decodeInteger(type) }
        func decode(_ type: UInt32.Type) throws -> UInt32 { try decoder.decodeInteger(type) }
        func decode(_ type: UInt64.Type) throws -> UInt64 { try decoder.decodeInteger(type) }
        func decode<T: Decodable>(_ type: T.Type) throws -> T { try decoder.decodeAny(type) }
    }
}

private func kind(_ value: MessagePackValue) -> String {
    switch value {
    case .nil: return "nil"
    case .bool: return "a boolean"
    case .int, .uint: return "an integer"
    case .float, .double: return "a float"
    case .string: return "a string"
    case .binary: return "binary data"
    case .array: return "an array"
    case .map: return "a map"
    case .ext(let t, _): return "an extension of type \(t)"
    case .timestamp: return "a timestamp"
    }
}
