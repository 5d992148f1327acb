import FoundationEssentials
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Mosquitto

/// The `--json` output of `mqtt-sub` and `mqtt-rr`: one JSON object per line, for `jq` and friends.
///
/// Unlike mosquitto's `%j` it never loses data:
/// - the payload is `"payload"` (a JSON string) when it is valid UTF-8, otherwise `"payload_base64"`;
/// - correlation data is `"correlation_data"` (UTF-8) or `"correlation_data_base64"`;
/// - user properties are an ordered array of `[name, value]` pairs, so repeated names survive;
/// - `received_at` is RFC 3339 in UTC with nanoseconds.
///
/// ```json
/// {"received_at":"2025-01-02T03:04:05.123456789Z","topic":"a/b","qos":1,"retain":false,"mid":3,"payloadlen":5,"payload":"hello","properties":{"content_type":"text/plain","user_properties":[["k","v"]]}}
/// ```
public enum JSONLines {
    /// Appends the JSON object (without the newline) for `message`.
    public static func append(_ message: MQTTMessage, subscriptionIdentifier: UInt32? = nil,
                              clock: MessageFormatter.Clock = .now(), to out: inout [UInt8]) {
        var pairs: [(String, CJSON)] = [
            ("received_at", .string(rfc3339(clock))),
            ("topic", .string(message.topic)),
            ("qos", .int(Int(message.qos.rawValue))),
            ("retain", .bool(message.retain)),
            ("mid", .int(Int(message.messageID))),
            ("payloadlen", .int(message.payload.count)),
        ]
        pairs.append(binary("payload", message.payload))
        let p = message.properties
        var props: [(String, CJSON)] = []
        if let v = p.payloadFormat { props.append(("payload_format_indicator", .int(Int(v.rawValue)))) }
        if let v = p.messageExpiryInterval { props.append(("message_expiry_interval", .number(Double(v)))) }
        if let v = p.contentType { props.append(("content_type", .string(v))) }
        if let v = p.responseTopic { props.append(("response_topic", .string(v))) }
        if let v = p.correlationData { props.append(binary("correlation_data", v)) }
        if let v = p.topicAlias { props.append(("topic_alias", .int(Int(v)))) }
        if let s = subscriptionIdentifier { props.append(("subscription_identifier", .int(Int(s)))) }
        if !p.userProperties.isEmpty {
            props.append(("user_properties", .array(p.userProperties.map { .array([.string($0.name), .string($0.value)]) })))
        }
        if !props.isEmpty { pairs.append(("properties", .object(props))) }
        escapedObject(pairs, into: &out)
    }

    private static func binary(_ key: String, _ bytes: [UInt8]) -> (String, CJSON) {
        if String(validating: bytes, as: UTF8.self) != nil { return (key, .string(bytes)) }
        return (key + "_base64", .string(Data(bytes).base64EncodedString()))
    }

    /// Prints compact JSON; strings are valid UTF-8 here, so cJSON's escaping is correct JSON.
    private static func escapedObject(_ pairs: [(String, CJSON)], into out: inout [UInt8]) {
        CJSON.object(pairs).print(into: &out, pretty: false)
    }

    static func rfc3339(_ c: MessageFormatter.Clock) -> String {
        var t = time_t(c.seconds)
        var tmv = tm()
        gmtime_r(&t, &tmv)
        var buf = [CChar](repeating: 0, count: 64)
        let n = strftime(&buf, 64, "%Y-%m-%dT%H:%M:%S", &tmv)
        let base = String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        let ns = String(c.nanoseconds)
        return base + "." + String(repeating: "0", count: max(0, 9 - ns.count)) + ns + "Z"
    }
}
