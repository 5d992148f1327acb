import FoundationEssentials
import MessagePack
import MessagePackCodable
import Mosquitto

/// How a typed value becomes a payload and back: JSON or MessagePack, or, when receiving, whichever the message's
/// MQTT 5 content type names.
///
/// - ``json`` uses Foundation's `JSONEncoder` and `JSONDecoder` with their default strategies; its content type is
///   `application/json` and its payload format indicator 1 (UTF-8).
/// - ``messagePack`` uses ``MessagePackEncoder`` and ``MessagePackDecoder`` (`Date` as a timestamp, `Data` as
///   binary); its content type is `application/msgpack` and its payload format indicator 0 (bytes).
/// - ``auto(default:)`` decodes each message with the codec its content type names (`application/json`, any
///   `…+json`, `text/json`; `application/msgpack`, `application/x-msgpack`, `application/vnd.msgpack`; parameters
///   such as `; charset=utf-8` ignored), and with `default` when it has none (MQTT 3.1.1) or another. It encodes
///   with `default`.
public struct MQTTPayloadCodec: Sendable, Hashable, CustomStringConvertible {
    enum Kind: Sendable, Hashable { case json, messagePack }
    let kind: Kind
    let isAuto: Bool

    /// JSON text (`application/json`).
    public static let json = MQTTPayloadCodec(kind: .json, isAuto: false)
    /// MessagePack (`application/msgpack`).
    public static let messagePack = MQTTPayloadCodec(kind: .messagePack, isAuto: false)
    /// Chooses per message from the MQTT 5 content type, falling back to `default` (``json`` unless given).
    public static func auto(default fallback: MQTTPayloadCodec = .json) -> MQTTPayloadCodec {
        MQTTPayloadCodec(kind: fallback.kind, isAuto: true)
    }
    /// ``auto(default:)`` with JSON as the fallback.
    public static var auto: MQTTPayloadCodec { .auto() }

    /// The content type this codec sets when publishing.
    public var contentType: String { kind == .json ? "application/json" : "application/msgpack" }

    /// The payload format indicator this codec sets when publishing: UTF-8 for JSON, bytes for MessagePack.
    public var payloadFormat: PayloadFormat { kind == .json ? .utf8 : .bytes }

    public var description: String {
        let name = kind == .json ? "json" : "messagePack"
        return isAuto ? "auto(default: \(name))" : name
    }

    /// The codec that decodes a message with this content type: this one unless it is ``auto(default:)`` and the
    /// content type names JSON or MessagePack.
    public func resolved(contentType: String?) -> MQTTPayloadCodec {
        guard isAuto else { return self }
        let fallback = MQTTPayloadCodec(kind: kind, isAuto: false)
        guard let contentType else { return fallback }
        let media = String(contentType.prefix { $0 != ";" }.filter { $0 != " " && $0 != "\t" }).lowercased()
        switch media {
        case "application/json", "text/json": return .json
        case "application/msgpack", "application/x-msgpack", "application/vnd.msgpack": return .messagePack
        default: return media.hasSuffix("+json") ? .json : fallback
        }
    }

    /// Encodes a value into a payload.
    /// - Throws: `EncodingError` from the encoder.
    public func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        switch kind {
        case .json: return Array(try JSONEncoder().encode(value))
        case .messagePack: return try MessagePackEncoder().encode(value)
        }
    }

    /// Decodes a payload, choosing the codec from `contentType` when this is ``auto(default:)``.
    /// - Throws: ``MQTTPayloadError`` saying which codec failed and why.
    public func decode<T: Decodable>(_ type: T.Type, from payload: [UInt8], contentType: String? = nil) throws(MQTTPayloadError) -> T {
        let codec = resolved(contentType: contentType)
        do {
            switch codec.kind {
            case .json: return try JSONDecoder().decode(type, from: Data(payload))
            case .messagePack: return try MessagePackDecoder().decode(type, from: payload)
            }
        } catch {
            throw MQTTPayloadError(codec: codec, contentType: contentType, payloadSize: payload.count, reason: describe(error))
        }
    }
}

/// A payload that did not decode as the expected type.
public struct MQTTPayloadError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The codec that was used (after ``MQTTPayloadCodec/auto(default:)`` chose one).
    public var codec: MQTTPayloadCodec
    /// The message's MQTT 5 content type, if it had one.
    public var contentType: String?
    /// The payload's size in bytes.
    public var payloadSize: Int
    /// What was wrong: the decoder's error with its coding path.
    public var reason: String

    public var description: String {
        "payload of \(payloadSize) bytes\(contentType.map { " (content type \($0))" } ?? "") does not decode as \(codec): \(reason)"
    }
}

private func describe(_ error: any Error) -> String {
    guard let e = error as? DecodingError else { return "\(error)" }
    func path(_ c: DecodingError.Context) -> String {
        c.codingPath.isEmpty ? "" : " at " + c.codingPath.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined()
    }
    switch e {
    case .typeMismatch(let type, let c): return "type mismatch for \(type)\(path(c)): \(c.debugDescription)"
    case .valueNotFound(let type, let c): return "missing \(type)\(path(c)): \(c.debugDescription)"
    case .keyNotFound(let key, let c): return "missing key '\(key.stringValue)'\(path(c))"
    case .dataCorrupted(let c): return "\(c.debugDescription)\(path(c))"
    @unknown default: return "\(e)"
    }
}

extension MQTTMessage {
    /// A message whose payload is `value` encoded by `codec`, with the codec's MQTT 5 content type and payload
    /// format indicator (unless `properties` already sets them; MQTT 3.1.1 connections send no properties).
    ///
    /// - Throws: `EncodingError` from the encoder.
    public init<T: Encodable>(topic: String, encoding value: T, codec: MQTTPayloadCodec = .json, qos: QoS = .atLeastOnce,
                              retain: Bool = false, properties: MessageProperties = .init()) throws {
        var properties = properties
        if properties.contentType == nil { properties.contentType = codec.contentType }
        if properties.payloadFormat == nil { properties.payloadFormat = codec.payloadFormat }
        self.init(topic: topic, payload: try codec.encode(value), qos: qos, retain: retain, properties: properties)
    }

    /// The payload decoded as `type`; ``MQTTPayloadCodec/auto(default:)`` chooses by the content type.
    /// - Throws: ``MQTTPayloadError``.
    public func decode<T: Decodable>(_ type: T.Type, codec: MQTTPayloadCodec = .auto) throws(MQTTPayloadError) -> T {
        try codec.decode(type, from: payload, contentType: properties.contentType)
    }
}
