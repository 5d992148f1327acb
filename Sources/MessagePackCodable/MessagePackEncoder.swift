import FoundationEssentials
import MessagePack

/// Encodes `Encodable` values as MessagePack.
///
/// Structs and dictionaries become maps with string keys (the coding keys' `stringValue`, as `JSONEncoder` uses),
/// in the order the properties are encoded; arrays become arrays; `nil` optionals that are encoded become `nil`.
/// Integers use the smallest format, `Double` float 64, `Float` float 32. Three types get MessagePack's own
/// representation instead of their `Codable` one:
/// - `Date` is a timestamp (extension type -1, nanosecond resolution as far as `Date`'s `Double` holds it);
/// - `Data` and `[UInt8]` are binary (bin 8/16/32).
///
/// ```swift
/// struct Reading: Codable { var device: String; var celsius: Double; var at: Date }
/// let bytes = try MessagePackEncoder().encode(Reading(device: "kitchen", celsius: 21.5, at: .now))
/// let back = try MessagePackDecoder().decode(Reading.self, from: bytes)
/// ```
public struct MessagePackEncoder: Sendable {
    /// Values handed to the encoded types' `encode(to:)` as `encoder.userInfo`.
    public var userInfo: [CodingUserInfoKey: any Sendable] = [:]

    /// An encoder.
    public init() {}

    /// Encodes `value` into MessagePack bytes.
    ///
    /// - Throws: `EncodingError.invalidValue` when the value's `encode(to:)` encodes nothing.
    public func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        var writer = MessagePackWriter(reservingCapacity: 256)
        writer.write(try encodeValue(value))
        return writer.bytes
    }

    /// Encodes `value` into a ``MessagePackValue`` tree.
    public func encodeValue<T: Encodable>(_ value: T) throws -> MessagePackValue {
        let encoder = MessagePackTreeEncoder(codingPath: [], userInfo: userInfo)
        try encoder.encodeAny(value)
        guard let result = encoder.storage.finished() else {
            throw EncodingError.invalidValue(value, .init(codingPath: [], debugDescription: "\(T.self) encoded no value"))
        }
        return result
    }
}

/// A container under construction: a leaf value, an array or a map of nodes.
final class EncodingNode {
    /// An element: a finished scalar (no node allocated for it) or a nested container.
    enum Child {
        case value(MessagePackValue)
        case node(EncodingNode)
        var finished: MessagePackValue {
            switch self {
            case .value(let v): return v
            case .node(let n): return n.finished() ?? .map([])
            }
        }
    }
    enum Content {
        case empty
        case value(MessagePackValue)
        case array([Child])
        case map([MessagePackMapEntry], pending: [(Int, EncodingNode)])
    }
    var content: Content = .empty

    func finished() -> MessagePackValue? {
        switch content {
        case .empty: return nil
        case .value(let v): return v
        case .array(let children): return .array(children.map(\.finished))
        case .map(var entries, let pending):
            for (i, node) in pending { entries[i].value = node.finished() ?? .map([]) }
            return .map(entries)
        }
    }
}

struct MessagePackCodingKey: CodingKey {
    var stringValue: String
    var intValue: Int?
    init(stringValue: String) { self.stringValue = stringValue }
    init(intValue: Int) { self.stringValue = String(intValue); self.intValue = intValue }
    static let `super` = MessagePackCodingKey(stringValue: "super")
}

/// Special representations shared by the encoder and decoder.
enum SpecialValue {
    static func encode(_ value: any Encodable) -> MessagePackValue? {
        switch value {
        case let d as Data: return .binary(Array(d))
        case let b as [UInt8]: return .binary(b)
        case let date as Date: return .timestamp(timestamp(date))
        default: return nil
        }
    }

    static func timestamp(_ date: Date) -> MessagePackTimestamp {
        let interval = date.timeIntervalSince1970
        var seconds = interval.rounded(.down)
        var nanoseconds = ((interval - seconds) * 1e9).rounded()
        if nanoseconds >= 1e9 { seconds += 1; nanoseconds -= 1e9 }
        let s = Int64(exactly: seconds) ?? (seconds < 0 ? Int64.min : Int64.max)
        return MessagePackTimestamp(seconds: s, nanoseconds: UInt32(max(0, nanoseconds)))
    }

    static func date(_ t: MessagePackTimestamp) -> Date {
        Date(timeIntervalSince1970: Double(t.seconds) + Double(t.nanoseconds) / 1e9)
    }
}

final class MessagePackTreeEncoder: Encoder {
    let codingPath: [any CodingKey]
    let userInfoStorage: [CodingUserInfoKey: any Sendable]
    var userInfo: [CodingUserInfoKey: Any] { userInfoStorage }
    let storage: EncodingNode

    init(codingPath: [any CodingKey], userInfo: [CodingUserInfoKey: any Sendable], node: EncodingNode = EncodingNode()) {
        self.codingPath = codingPath
        self.userInfoStorage = userInfo
        self.storage = node
    }

    func encodeAny(_ value: some Encodable) throws {
        if let special = SpecialValue.encode(value) {
            storage.content = .value(special)
        } else {
            try value.encode(to: self)
        }
    }

    func child(_ key: any CodingKey, node: EncodingNode) -> MessagePackTreeEncoder {
        MessagePackTreeEncoder(codingPath: codingPath + [key], userInfo: userInfoStorage, node: node)
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        if case .map = storage.content {} else {
            var entries: [MessagePackMapEntry] = []
            entries.reserveCapacity(16)
            storage.content = .map(entries, pending: [])
        }
        return KeyedEncodingContainer(KeyedContainer<Key>(encoder: self))
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        if case .array = storage.content {} else { storage.content = .array([]) }
        return UnkeyedContainer(encoder: self)
    }

    func singleValueContainer() -> any SingleValueEncodingContainer { SingleContainer(encoder: self) }

    func appendToMap(_ key: String, _ value: MessagePackValue) {
        guard case .map(var entries, let pending) = storage.content else { return }
        storage.content = .empty
        entries.append(MessagePackMapEntry(key: .string(key), value: value))
        storage.content = .map(entries, pending: pending)
    }

    func appendToMap(_ key: String, _ node: EncodingNode) {
        guard case .map(var entries, var pending) = storage.content else { return }
        storage.content = .empty
        pending.append((entries.count, node))
        entries.append(MessagePackMapEntry(key: .string(key), value: .nil))
        storage.content = .map(entries, pending: pending)
    }

    func appendToArray(_ child: EncodingNode.Child) {
        guard case .array(var children) = storage.content else { return }
        storage.content = .empty
        children.append(child)
        storage.content = .array(children)
    }

    func appendToArray(_ node: EncodingNode) { appendToArray(.node(node)) }

    var arrayCount: Int {
        if case .array(let nodes) = storage.content { return nodes.count }
        return 0
    }

    struct KeyedContainer<Key: CodingKey>: KeyedEncodingContainerProtocol {
        let encoder: MessagePackTreeEncoder
        var codingPath: [any CodingKey] { encoder.codingPath }

        private func put(_ value: MessagePackValue, _ key: Key) { encoder.appendToMap(key.stringValue, value) }

        mutating func encodeNil(forKey key: Key) throws { put(.nil, key) }
        mutating func encode(_ value: Bool, forKey key: Key) throws { put(.bool(value), key) }
        mutating func encode(_ value: String, forKey key: Key) throws { put(.string(value), key) }
        mutating func encode(_ value: Double, forKey key: Key) throws { put(.double(value), key) }
        mutating func encode(_ value: Float, forKey key: Key) throws { put(.float(value), key) }
        mutating func encode(_ value: Int, forKey key: Key) throws { put(.int(Int64(value)), key) }
        mutating func encode(_ value: Int8, forKey key: Key) throws { put(.int(Int64(value)), key) }
        mutating func encode(_ value: Int16, forKey key: Key) throws { put(.int(Int64(value)), key) }
        mutating func encode(_ value: Int32, forKey key: Key) throws { put(.int(Int64(value)), key) }
        mutating func encode(_ value: Int64, forKey key: Key) throws { put(.int(value), key) }
        mutating func encode(_ value: UInt, forKey key: Key) throws { put(.uint(UInt64(value)), key) }
        mutating func encode(_ value: UInt8, forKey key: Key) throws { put(.uint(UInt64(value)), key) }
        mutating func encode(_ value: UInt16, forKey key: Key) throws { put(.uint(UInt64(value)), key) }
        mutating func encode(_ value: UInt32, forKey key: Key) throws { put(.uint(UInt64(value)), key) }
        mutating func encode(_ value: UInt64, forKey key: Key) throws { put(.uint(value), key) }
        mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
            if let special = SpecialValue.encode(value) { return put(special, key) }
            let node = EncodingNode()
            try encoder.child(key, node: node).encodeAny(value)
            encoder.appendToMap(key.stringValue, node)
        }
        mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type, forKey key: Key) -> KeyedEncodingContainer<NestedKey> {
            let node = EncodingNode()
            encoder.appendToMap(key.stringValue, node)
            return encoder.child(key, node: node).container(keyedBy: keyType)
        }
        mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
            let node = EncodingNode()
            encoder.appendToMap(key.stringValue, node)
            return encoder.child(key, node: node).unkeyedContainer()
        }
        mutating func superEncoder() -> any Encoder { superEncoder(key: MessagePackCodingKey.super) }
        mutating func superEncoder(forKey key: Key) -> any Encoder { superEncoder(key: key) }
        private func superEncoder(key: any CodingKey) -> any Encoder {
            let node = EncodingNode()
            encoder.appendToMap(key.stringValue, node)
            return encoder.child(key, node: node)
        }
    }

    struct UnkeyedContainer: UnkeyedEncodingContainer, PrimitivePutting {
        let encoder: MessagePackTreeEncoder
        var codingPath: [any CodingKey] { encoder.codingPath }
        var count: Int { encoder.arrayCount }

        func put(_ value: MessagePackValue) { encoder.appendToArray(.value(value)) }
        private var nextKey: MessagePackCodingKey { MessagePackCodingKey(intValue: count) }

        mutating func encode<T: Encodable>(_ value: T) throws {
            let node = EncodingNode()
            let key = nextKey
            encoder.appendToArray(node)
            try encoder.child(key, node: node).encodeAny(value)
        }
        mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<NestedKey> {
            let node = EncodingNode()
            let key = nextKey
            encoder.appendToArray(node)
            return encoder.child(key, node: node).container(keyedBy: keyType)
        }
        mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
            let node = EncodingNode()
            let key = nextKey
            encoder.appendToArray(node)
            return encoder.child(key, node: node).unkeyedContainer()
        }
        mutating func superEncoder() -> any Encoder {
            let node = EncodingNode()
            let key = nextKey
            encoder.appendToArray(node)
            return encoder.child(key, node: node)
        }
    }

    struct SingleContainer: SingleValueEncodingContainer, PrimitivePutting {
        let encoder: MessagePackTreeEncoder
        var codingPath: [any CodingKey] { encoder.codingPath }
        func put(_ value: MessagePackValue) { encoder.storage.content = .value(value) }

        mutating func encode<T: Encodable>(_ value: T) throws { try encoder.encodeAny(value) }
    }
}

/// The primitive `encode` methods of the unkeyed and single-value containers, which differ only in where a value
/// goes (appended to the array, or the single value).
protocol PrimitivePutting {
    func put(_ value: MessagePackValue)
}

extension PrimitivePutting {
    func encodeNil() throws { put(.nil) }
    func encode(_ value: Bool) throws { put(.bool(value)) }
    func encode(_ value: String) throws { put(.string(value)) }
    func encode(_ value: Double) throws { put(.double(value)) }
    func encode(_ value: Float) throws { put(.float(value)) }
    func encode(_ value: Int) throws { put(.int(Int64(value))) }
    func encode(_ value: Int8) throws { put(.int(Int64(value))) }
    func encode(_ value: Int16) throws { put(.int(Int64(value))) }
    func encode(_ value: Int32) throws { put(.int(Int64(value))) }
    func encode(_ value: Int64) throws { put(.int(value)) }
    func encode(_ value: UInt) throws { put(.uint(UInt64(value))) }
    func encode(_ value: UInt8) throws { put(.uint(UInt64(value))) }
    func encode(_ value: UInt16) throws { put(.uint(UInt64(value))) }
    func encode(_ value: UInt32) throws { put(.uint(UInt64(value))) }
    func encode(_ value: UInt64) throws { put(.uint(value)) }
}
