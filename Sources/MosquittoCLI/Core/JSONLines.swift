#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CMosquitto
import MessagePack

/// The `--json` output of `mqtt-sub` and `mqtt-rr`: one JSON object per line, for `jq` and friends.
///
/// Unlike mosquitto's `%j` it never loses data:
/// - the payload is `"payload"` (a JSON string) when it is valid UTF-8, otherwise `"payload_base64"`; with
///   `--decode`, or when the MQTT 5 content type says MessagePack, `"payload"` is the decoded payload as a JSON
///   value;
/// - correlation data is `"correlation_data"` (UTF-8) or `"correlation_data_base64"`;
/// - user properties are an ordered array of `[name, value]` pairs, so repeated names survive;
/// - `received_at` is RFC 3339 in UTC with nanoseconds.
///
/// ```json
/// {"received_at":"2025-01-02T03:04:05.123456789Z","topic":"a/b","qos":1,"retain":false,"mid":3,"payloadlen":5,"payload":"hello","properties":{"content_type":"text/plain","user_properties":[["k","v"]]}}
/// ```
enum JSONLines {
    /// Prints the object for one message (without the newline) on standard output.
    static func print(_ m: mosquitto_message, _ properties: OpaquePointer?, decoded: MessagePackValue? = nil) {
        var out: [UInt8] = []
        object(m, properties, clock: .now(), decoded: decoded).print(into: &out, pretty: false)
        outBytes(out)
    }

    /// `decoded`: with `--decode`, the payload as a value, printed as `"payload"`'s JSON value instead of a string.
    static func object(_ m: mosquitto_message, _ properties: OpaquePointer?, clock: MessagePrinter.Clock,
                       decoded: MessagePackValue? = nil) -> CJSON {
        let payload = m.payload.map { Array(UnsafeRawBufferPointer(start: $0, count: Int(m.payloadlen))) } ?? []
        var pairs: [(String, CJSON)] = [
            ("received_at", .string(rfc3339(clock))),
            ("topic", .string(Array(cBytes(m.topic)))),
            ("qos", .int(Int(m.qos))),
            ("retain", .bool(m.retain)),
            ("mid", .int(Int(m.mid))),
            ("payloadlen", .int(Int(m.payloadlen))),
        ]
        if let decoded {
            pairs.append(("payload", .verbatim(Array(decoded.jsonText(style: .compact).utf8))))
        } else {
            pairs.append(binary("payload", payload))
        }
        var props: [(String, CJSON)] = []
        var users: [CJSON] = []
        var subscriptionIdentifiers: [UInt32] = []
        var p: OpaquePointer? = properties
        while let prop = p {
            let identifier = mosquitto_property_identifier(prop)
            var i8: UInt8 = 0
            var i16: UInt16 = 0
            var i32: UInt32 = 0
            switch identifier {
            case Int32(MQTT_PROP_PAYLOAD_FORMAT_INDICATOR.rawValue):
                _ = mosquitto_property_read_byte(prop, identifier, &i8, false)
                props.append(("payload_format_indicator", .int(Int(i8))))
            case Int32(MQTT_PROP_MESSAGE_EXPIRY_INTERVAL.rawValue):
                _ = mosquitto_property_read_int32(prop, identifier, &i32, false)
                props.append(("message_expiry_interval", .number(Double(i32))))
            case Int32(MQTT_PROP_CONTENT_TYPE.rawValue), Int32(MQTT_PROP_RESPONSE_TOPIC.rawValue):
                var value: CStr?
                _ = mosquitto_property_read_string(prop, identifier, &value, false)
                if let value {
                    let key = identifier == Int32(MQTT_PROP_CONTENT_TYPE.rawValue) ? "content_type" : "response_topic"
                    props.append((key, .string(Array(cBytes(value)))))
                    free(value)
                }
            case Int32(MQTT_PROP_CORRELATION_DATA.rawValue):
                var value: UnsafeMutableRawPointer?
                _ = mosquitto_property_read_binary(prop, identifier, &value, &i16, false)
                if let value {
                    props.append(binary("correlation_data", Array(UnsafeRawBufferPointer(start: value, count: Int(i16)))))
                    free(value)
                } else {
                    props.append(("correlation_data", .string([])))
                }
            case Int32(MQTT_PROP_TOPIC_ALIAS.rawValue):
                _ = mosquitto_property_read_int16(prop, identifier, &i16, false)
                props.append(("topic_alias", .int(Int(i16))))
            case Int32(MQTT_PROP_SUBSCRIPTION_IDENTIFIER.rawValue):
                _ = mosquitto_property_read_varint(prop, identifier, &i32, false)
                subscriptionIdentifiers.append(i32)
            case Int32(MQTT_PROP_USER_PROPERTY.rawValue):
                var key: CStr?
                var value: CStr?
                _ = mosquitto_property_read_string_pair(prop, identifier, &key, &value, false)
                if let key, let value { users.append(.array([.string(Array(cBytes(key))), .string(Array(cBytes(value)))])) }
                free(key)
                free(value)
            default:
                break
            }
            p = mosquitto_property_next(prop)
        }
        if let first = subscriptionIdentifiers.first {
            props.append(("subscription_identifier", .number(Double(first))))
        }
        if !users.isEmpty { props.append(("user_properties", .array(users))) }
        if !props.isEmpty { pairs.append(("properties", .object(props))) }
        return .object(pairs)
    }

    private static func binary(_ key: String, _ bytes: [UInt8]) -> (String, CJSON) {
        if String(validating: bytes, as: UTF8.self) != nil { return (key, .string(bytes)) }
        return (key + "_base64", .string(base64(bytes)))
    }

    static func base64(_ bytes: [UInt8]) -> [UInt8] {
        let table = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var k = 0
        while k + 2 < bytes.count {
            let n = UInt32(bytes[k]) << 16 | UInt32(bytes[k + 1]) << 8 | UInt32(bytes[k + 2])
            out += [table[Int(n >> 18)], table[Int(n >> 12 & 63)], table[Int(n >> 6 & 63)], table[Int(n & 63)]]
            k += 3
        }
        let rest = bytes.count - k
        if rest == 1 {
            let n = UInt32(bytes[k]) << 16
            out += [table[Int(n >> 18)], table[Int(n >> 12 & 63)], 61, 61]
        } else if rest == 2 {
            let n = UInt32(bytes[k]) << 16 | UInt32(bytes[k + 1]) << 8
            out += [table[Int(n >> 18)], table[Int(n >> 12 & 63)], table[Int(n >> 6 & 63)], 61]
        }
        return out
    }

    static func rfc3339(_ c: MessagePrinter.Clock) -> [UInt8] {
        var t = c.seconds
        var time = tm()
        gmtime_r(&t, &time)
        var buffer = [CChar](repeating: 0, count: 64)
        let n = strftime(&buffer, 64, "%Y-%m-%dT%H:%M:%S", &time)
        var out = buffer[0..<n].map { UInt8(bitPattern: $0) }
        var fraction = [CChar](repeating: 0, count: 16)
        _ = withVaList([c.nanoseconds]) { vsnprintf(&fraction, 16, ".%09ldZ", $0) }
        out += fraction.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
        return out
    }
}
