#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CMosquitto

/// A JSON value printed byte for byte as cJSON (the library behind mosquitto_sub's `%j`/`%J`) prints it.
///
/// Objects keep their key order and may repeat keys, as cJSON does.
enum CJSON {
    case null
    case bool(Bool)
    case number(Double)
    /// A string given as raw bytes (cJSON passes bytes ≥ 0x80 through unchanged).
    case string([UInt8])
    case array([CJSON])
    case object([(String, CJSON)])
    /// JSON text printed as it is (`--json` with `--decode`: the decoded payload).
    case verbatim([UInt8])

    static func int(_ i: Int) -> CJSON { .number(Double(i)) }

    /// Appends the printed value: compact (`cJSON_PrintUnformatted`) or pretty (`cJSON_Print`, tabs).
    func print(into out: inout [UInt8], pretty: Bool, depth: Int = 0) {
        switch self {
        case .null: out.append(contentsOf: "null".utf8)
        case .bool(let b): out.append(contentsOf: (b ? "true" : "false").utf8)
        case .number(let d): out.append(contentsOf: Self.formatNumber(d).utf8)
        case .string(let bytes): Self.printString(bytes, into: &out)
        case .verbatim(let text): out.append(contentsOf: text)
        case .array(let items):
            out.append(UInt8(ascii: "["))
            for (i, item) in items.enumerated() {
                item.print(into: &out, pretty: pretty, depth: depth + 1)
                if i + 1 < items.count {
                    out.append(UInt8(ascii: ","))
                    if pretty { out.append(UInt8(ascii: " ")) }
                }
            }
            out.append(UInt8(ascii: "]"))
        case .object(let pairs):
            out.append(UInt8(ascii: "{"))
            if pretty { out.append(10) }
            for (i, (key, value)) in pairs.enumerated() {
                if pretty { out.append(contentsOf: repeatElement(9, count: depth + 1)) }
                Self.printString(Array(key.utf8), into: &out)
                out.append(UInt8(ascii: ":"))
                if pretty { out.append(9) }
                value.print(into: &out, pretty: pretty, depth: depth + 1)
                if i + 1 < pairs.count { out.append(UInt8(ascii: ",")) }
                if pretty { out.append(10) }
            }
            if pretty { out.append(contentsOf: repeatElement(9, count: depth)) }
            out.append(UInt8(ascii: "}"))
        }
    }

    /// cJSON's `print_number`: integers with `%d`, others with `%1.15g` (or `%1.17g` when that does not round-trip).
    static func formatNumber(_ d: Double) -> String {
        if d.isNaN || d.isInfinite { return "null" }
        let valueint: Int32 = d >= Double(Int32.max) ? Int32.max : (d <= Double(Int32.min) ? Int32.min : Int32(d))
        if d == Double(valueint) { return String(valueint) }
        let s15 = printf("%1.15g", d)
        if Double(s15) == d { return s15 }
        return printf("%1.17g", d)
    }

    /// C's `snprintf` for one double, as cJSON formats numbers.
    static func printf(_ format: String, _ d: Double) -> String {
        var buffer = [CChar](repeating: 0, count: 64)
        let n = withVaList([d]) { vsnprintf(&buffer, buffer.count, format, $0) }
        return String(decoding: buffer[0..<Int(max(0, min(n, 63)))].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// cJSON's `print_string_ptr`.
    static func printString(_ bytes: [UInt8], into out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        let hex = Array("0123456789abcdef".utf8)
        for b in bytes {
            switch b {
            case UInt8(ascii: "\""): out.append(contentsOf: [92, 34])
            case 92: out.append(contentsOf: [92, 92])
            case 8: out.append(contentsOf: [92, UInt8(ascii: "b")])
            case 12: out.append(contentsOf: [92, UInt8(ascii: "f")])
            case 10: out.append(contentsOf: [92, UInt8(ascii: "n")])
            case 13: out.append(contentsOf: [92, UInt8(ascii: "r")])
            case 9: out.append(contentsOf: [92, UInt8(ascii: "t")])
            case 0..<32:
                out.append(contentsOf: [92, UInt8(ascii: "u"), 48, 48, hex[Int(b >> 4)], hex[Int(b & 15)]])
            default: out.append(b)
            }
        }
        out.append(UInt8(ascii: "\""))
    }

    /// Parses a whole buffer as cJSON does with `require_null_terminated` (trailing blanks allowed). Nil when invalid.
    static func parse(_ bytes: [UInt8]) -> CJSON? {
        var p = Parser(bytes: bytes)
        p.skipWhitespace()
        guard let v = p.value(depth: 0) else { return nil }
        p.skipWhitespace()
        return p.i == bytes.count ? v : nil
    }

    private struct Parser {
        let bytes: [UInt8]
        var i = 0

        mutating func skipWhitespace() {
            while i < bytes.count && bytes[i] <= 32 && bytes[i] != 0 { i += 1 }
        }

        func starts(with word: String) -> Bool {
            let w = Array(word.utf8)
            return i + w.count <= bytes.count && Array(bytes[i..<i + w.count]) == w
        }

        mutating func value(depth: Int) -> CJSON? {
            guard depth < 1000, i < bytes.count else { return nil }
            if starts(with: "null") { i += 4; return .null }
            if starts(with: "false") { i += 5; return .bool(false) }
            if starts(with: "true") { i += 4; return .bool(true) }
            switch bytes[i] {
            case UInt8(ascii: "\""): return string().map { .string($0) }
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return number()
            case UInt8(ascii: "["): return array(depth: depth)
            case UInt8(ascii: "{"): return object(depth: depth)
            default: return nil
            }
        }

        mutating func number() -> CJSON? {
            // cJSON copies the characters that may belong to a number and lets strtod decide.
            var j = i
            while j < bytes.count, "0123456789+-eE.".utf8.contains(bytes[j]) { j += 1 }
            let text = String(decoding: bytes[i..<j], as: UTF8.self)
            var end: UnsafeMutablePointer<CChar>?
            let (d, used) = text.withCString { c -> (Double, Int) in
                let d = strtod(c, &end)
                return (d, end.map { $0 - UnsafeMutablePointer(mutating: c) } ?? 0)
            }
            guard used > 0 else { return nil }
            i += used
            return .number(d)
        }

        mutating func string() -> [UInt8]? {
            guard i < bytes.count, bytes[i] == UInt8(ascii: "\"") else { return nil }
            i += 1
            var out: [UInt8] = []
            while i < bytes.count {
                let b = bytes[i]
                if b == UInt8(ascii: "\"") { i += 1; return out }
                if b == 92 {
                    guard i + 1 < bytes.count else { return nil }
                    let e = bytes[i + 1]
                    i += 2
                    switch e {
                    case UInt8(ascii: "b"): out.append(8)
                    case UInt8(ascii: "f"): out.append(12)
                    case UInt8(ascii: "n"): out.append(10)
                    case UInt8(ascii: "r"): out.append(13)
                    case UInt8(ascii: "t"): out.append(9)
                    case UInt8(ascii: "\""), 92, UInt8(ascii: "/"): out.append(e)
                    case UInt8(ascii: "u"):
                        guard var cp = hex4() else { return nil }
                        if (0xDC00...0xDFFF).contains(cp) { return nil }
                        if (0xD800...0xDBFF).contains(cp) {
                            guard i + 1 < bytes.count, bytes[i] == 92, bytes[i + 1] == UInt8(ascii: "u") else { return nil }
                            i += 2
                            guard let low = hex4(), (0xDC00...0xDFFF).contains(low) else { return nil }
                            cp = 0x10000 + (((cp & 0x3FF) << 10) | (low & 0x3FF))
                        }
                        guard let scalar = Unicode.Scalar(cp) else { return nil }
                        out.append(contentsOf: Array(String(Character(scalar)).utf8))
                    default: return nil
                    }
                } else {
                    out.append(b)
                    i += 1
                }
            }
            return nil
        }

        mutating func hex4() -> UInt32? {
            guard i + 4 <= bytes.count, let v = UInt32(String(decoding: bytes[i..<i + 4], as: UTF8.self), radix: 16) else { return nil }
            i += 4
            return v
        }

        mutating func array(depth: Int) -> CJSON? {
            i += 1
            var items: [CJSON] = []
            skipWhitespace()
            if i < bytes.count && bytes[i] == UInt8(ascii: "]") { i += 1; return .array([]) }
            while true {
                skipWhitespace()
                guard let v = value(depth: depth + 1) else { return nil }
                items.append(v)
                skipWhitespace()
                guard i < bytes.count else { return nil }
                if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                if bytes[i] == UInt8(ascii: "]") { i += 1; return .array(items) }
                return nil
            }
        }

        mutating func object(depth: Int) -> CJSON? {
            i += 1
            var pairs: [(String, CJSON)] = []
            skipWhitespace()
            if i < bytes.count && bytes[i] == UInt8(ascii: "}") { i += 1; return .object([]) }
            while true {
                skipWhitespace()
                guard let key = string() else { return nil }
                skipWhitespace()
                guard i < bytes.count, bytes[i] == UInt8(ascii: ":") else { return nil }
                i += 1
                skipWhitespace()
                guard let v = value(depth: depth + 1) else { return nil }
                pairs.append((String(decoding: key, as: UTF8.self), v))
                skipWhitespace()
                guard i < bytes.count else { return nil }
                if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                if bytes[i] == UInt8(ascii: "}") { i += 1; return .object(pairs) }
                return nil
            }
        }
    }
}

// mosquitto's `%j`/`%J` objects live here, beside the enum: built in another file of the module, the compiler
// reported a "circular reference" on CJSON in incremental builds (Swift 6.1).
extension MessagePrinter {
    /// The `%j` (`escaped`) or `%J` object of mosquitto 2.1; nil for `%J` when the payload is not JSON.
    static func mosquittoJSON(_ m: mosquitto_message, _ properties: OpaquePointer?, escaped: Bool, clock: Clock) -> CJSON? {
        var pairs: [(String, CJSON)] = [
            ("tst", .string(timestamp(clock))),
            ("topic", .string(Array(cBytes(m.topic)))),
            ("qos", .int(Int(m.qos))),
            ("retain", .bool(m.retain)),
            ("payloadlen", .int(Int(m.payloadlen))),
        ]
        if m.qos > 0 { pairs.append(("mid", .int(Int(m.mid)))) }
        if let properties { pairs.append(("properties", .object(jsonProperties(properties)))) }
        if escaped {
            pairs.append(("payload", m.payload == nil ? .null : .string(cTruncated(m.payload, Int(m.payloadlen)))))
        } else if m.payload == nil {
            pairs.append(("payload", .null))
        } else {
            guard let parsed = CJSON.parse(Array(UnsafeRawBufferPointer(start: m.payload, count: Int(m.payloadlen)))) else { return nil }
            pairs.append(("payload", parsed))
        }
        return .object(pairs)
    }

    /// The message's properties in the order they arrived; user properties are one array of `{name: value}`
    /// objects, where the first of them arrived.
    static func jsonProperties(_ properties: OpaquePointer) -> [(String, CJSON)] {
        var out: [(String, CJSON)] = []
        var users: [CJSON] = []
        var userIndex = -1
        var p: OpaquePointer? = properties
        while let prop = p {
            let identifier = mosquitto_property_identifier(prop)
            let name = String(cString: mosquitto_property_identifier_to_string(identifier))
            var i8: UInt8 = 0
            var i16: UInt16 = 0
            var i32: UInt32 = 0
            switch identifier {
            case Int32(MQTT_PROP_PAYLOAD_FORMAT_INDICATOR.rawValue):
                _ = mosquitto_property_read_byte(prop, identifier, &i8, false)
                out.append((name, .int(Int(i8))))
            case Int32(MQTT_PROP_MESSAGE_EXPIRY_INTERVAL.rawValue):
                _ = mosquitto_property_read_int32(prop, identifier, &i32, false)
                out.append((name, .number(Double(i32))))
            case Int32(MQTT_PROP_CONTENT_TYPE.rawValue), Int32(MQTT_PROP_RESPONSE_TOPIC.rawValue):
                var value: CStr?
                _ = mosquitto_property_read_string(prop, identifier, &value, false)
                if let value {
                    out.append((name, .string(Array(cBytes(value)))))
                    free(value)
                }
            case Int32(MQTT_PROP_CORRELATION_DATA.rawValue):
                var value: UnsafeMutableRawPointer?
                _ = mosquitto_property_read_binary(prop, identifier, &value, &i16, false)
                if let value {
                    out.append((name, .string(cTruncated(value, Int(i16)))))
                    free(value)
                }
            case Int32(MQTT_PROP_SUBSCRIPTION_IDENTIFIER.rawValue):
                _ = mosquitto_property_read_varint(prop, identifier, &i32, false)
                out.append((name, .number(Double(i32))))
            case Int32(MQTT_PROP_TOPIC_ALIAS.rawValue):
                _ = mosquitto_property_read_int16(prop, identifier, &i16, false)
                out.append((name, .int(Int(i16))))
            case Int32(MQTT_PROP_USER_PROPERTY.rawValue):
                var key: CStr?
                var value: CStr?
                _ = mosquitto_property_read_string_pair(prop, identifier, &key, &value, false)
                if let key, let value {
                    if userIndex < 0 {
                        userIndex = out.count
                        out.append(("user-properties", .array([])))
                    }
                    users.append(.object([(String(decoding: cBytes(key), as: UTF8.self), .string(Array(cBytes(value))))]))
                }
                free(key)
                free(value)
            default:
                break
            }
            p = mosquitto_property_next(prop)
        }
        if userIndex >= 0 { out[userIndex] = ("user-properties", .array(users)) }
        return out
    }
}
