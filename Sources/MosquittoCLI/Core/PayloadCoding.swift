#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CMosquitto
import MessagePack

/// This toolkit's payload transcoding: `mqtt-sub --decode msgpack|json|auto` and `mqtt-pub --encode msgpack`.
enum PayloadCoding {
    /// What `--decode` names.
    enum Decode: Equatable {
        /// Payloads are MessagePack, printed as JSON.
        case msgpack
        /// Payloads are JSON text: printed as they are, embedded as JSON values in `--json` lines.
        case json
        /// By the MQTT 5 content type: MessagePack or JSON types as above, anything else as without `--decode`.
        case auto
    }

    /// A payload ready for printing.
    enum Rendered {
        /// Print the payload as it came (`auto` without a known content type, an empty payload).
        case unchanged
        /// The payload as a value, to print as JSON text.
        case value(MessagePackValue, isJSONText: Bool)
        /// The payload does not decode: the codec's name and why.
        case failed(codec: String, reason: String)
    }

    static let msgpackContentType = "application/msgpack"

    /// Whether a content type names MessagePack (true), JSON (false), or neither (nil); parameters are ignored.
    static func classify(contentType: [UInt8]) -> Bool? {
        var media = String(decoding: contentType, as: UTF8.self)
        if let semicolon = media.firstIndex(of: ";") { media = String(media[..<semicolon]) }
        media = media.filter { $0 != " " && $0 != "\t" }.lowercased()
        switch media {
        case "application/msgpack", "application/x-msgpack", "application/vnd.msgpack": return true
        case "application/json", "text/json": return false
        default: return media.hasSuffix("+json") ? false : nil
        }
    }

    /// The MQTT 5 content type of a received message, if it has one.
    static func contentType(_ properties: OpaquePointer?) -> [UInt8]? {
        guard let properties else { return nil }
        var value: CStr?
        guard mosquitto_property_read_string(properties, Int32(MQTT_PROP_CONTENT_TYPE.rawValue), &value, false) != nil,
              let value else { return nil }
        defer { free(value) }
        return Array(cBytes(value))
    }

    /// Decodes a received payload as `--decode` asks.
    static func render(_ mode: Decode, payload: [UInt8], properties: OpaquePointer?) -> Rendered {
        if payload.isEmpty { return .unchanged }
        var asMessagePack: Bool
        switch mode {
        case .msgpack: asMessagePack = true
        case .json: asMessagePack = false
        case .auto:
            guard let type = contentType(properties), let kind = classify(contentType: type) else { return .unchanged }
            asMessagePack = kind
        }
        do {
            if asMessagePack { return .value(try MessagePackValue(decoding: payload), isJSONText: false) }
            return .value(try MessagePackValue(jsonUTF8: payload), isJSONText: true)
        } catch {
            return .failed(codec: asMessagePack ? "MessagePack" : "JSON", reason: error.description)
        }
    }

    /// `--encode msgpack`: JSON text to MessagePack bytes, or the reason it is not JSON.
    static func encode(json: [UInt8]) -> Result<[UInt8], MessagePackError> {
        do {
            return .success(try MessagePackValue(jsonUTF8: json).encoded())
        } catch {
            return .failure(error)
        }
    }
}
