import Mosquitto

/// The MQTT 5 properties given with `-D`/`--property`, checked and sorted by packet, as mosquitto 2.0.11's
/// `client_props.c` does.
///
/// Each raw option is `command name value` or `command user-property key value`. The words are separated by
/// U+001F (what the tools' argument reader produces from mosquitto's separate words) or, when there is none,
/// by single spaces (for hand-written strings; the last word keeps its spaces).
package struct PropertyOptions: Sendable, Hashable {
    /// CONNECT user properties.
    package var connectUserProperties: [UserProperty] = []
    /// CONNECT receive-maximum.
    package var receiveMaximum: UInt16?
    /// CONNECT session-expiry-interval (like `-x`).
    package var sessionExpiryInterval: UInt32?
    /// PUBLISH properties (pub, rr).
    package var publish = MessageProperties()
    /// Will properties.
    package var will = MessageProperties()
    /// Will delay interval.
    package var willDelayInterval: UInt32?
    /// SUBSCRIBE subscription-identifier (sub, rr).
    package var subscriptionIdentifier: UInt32?
    /// The other CONNECT properties (maximum-packet-size, topic-alias-maximum, request-problem-information,
    /// request-response-information, authentication-method, authentication-data).
    package var connect = ConnectProperties()
    /// SUBSCRIBE user properties (sub, rr).
    package var subscribeUserProperties: [UserProperty] = []
    /// UNSUBSCRIBE user properties (sub).
    package var unsubscribeUserProperties: [UserProperty] = []
    /// DISCONNECT properties.
    package var disconnect = DisconnectProperties()

    /// Creates an empty set.
    package init() {}

    enum Kind { case byte, u16, u32, varint, string, binary, pair }

    static let kinds: [String: Kind] = [
        "payload-format-indicator": .byte, "message-expiry-interval": .u32, "content-type": .string,
        "response-topic": .string, "correlation-data": .binary, "subscription-identifier": .varint,
        "session-expiry-interval": .u32, "assigned-client-identifier": .string, "server-keep-alive": .u16,
        "authentication-method": .string, "authentication-data": .binary, "request-problem-information": .byte,
        "will-delay-interval": .u32, "request-response-information": .byte, "response-information": .string,
        "server-reference": .string, "reason-string": .string, "receive-maximum": .u16,
        "topic-alias-maximum": .u16, "topic-alias": .u16, "maximum-qos": .byte, "retain-available": .byte,
        "user-property": .pair, "maximum-packet-size": .u32, "wildcard-subscription-available": .byte,
        "subscription-identifier-available": .byte, "shared-subscription-available": .byte,
    ]

    static let commands = ["connect", "connack", "publish", "puback", "pubrec", "pubrel", "pubcomp", "subscribe",
                           "suback", "unsubscribe", "unsuback", "pingreq", "pingresp", "disconnect", "auth", "will"]

    /// Which packets the MQTT 5 specification allows each property in (libmosquitto's `mosquitto_property_check_command`).
    static func allowed(_ name: String, in command: String) -> Bool {
        switch name {
        case "payload-format-indicator", "message-expiry-interval", "content-type", "response-topic", "correlation-data":
            return command == "publish" || command == "will"
        case "subscription-identifier": return command == "publish" || command == "subscribe"
        case "session-expiry-interval": return ["connect", "connack", "disconnect"].contains(command)
        case "assigned-client-identifier", "server-keep-alive", "response-information", "maximum-qos", "retain-available",
             "wildcard-subscription-available", "subscription-identifier-available", "shared-subscription-available":
            return command == "connack"
        case "authentication-method", "authentication-data": return ["connect", "connack", "auth"].contains(command)
        case "request-problem-information", "request-response-information": return command == "connect"
        case "will-delay-interval": return command == "will"
        case "server-reference": return command == "connack" || command == "disconnect"
        case "reason-string":
            return ["connack", "puback", "pubrec", "pubrel", "pubcomp", "suback", "unsuback", "disconnect", "auth"].contains(command)
        case "receive-maximum", "topic-alias-maximum", "maximum-packet-size": return command == "connect" || command == "connack"
        case "topic-alias": return command == "publish"
        case "user-property": return !["pingreq", "pingresp"].contains(command)
        default: return false
        }
    }

    /// Splits one raw option into its words.
    static func words(_ raw: String) -> [String] {
        if raw.contains("\u{1F}") { return raw.split(separator: "\u{1F}", omittingEmptySubsequences: false).map(String.init) }
        let parts = raw.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: false).map(String.init)
        if parts.count == 3, parts[1].lowercased() == "user-property" {
            let kv = parts[2].split(separator: " ", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
            return [parts[0], parts[1]] + kv
        }
        return parts
    }

    /// Parses every `-D` option.
    /// - Throws: ``CLIError`` with mosquitto's messages (unknown command or property, not allowed, out of range, duplicate).
    package static func parse(_ raws: [String]) throws -> PropertyOptions {
        var out = PropertyOptions()
        var seen = Set<String>()
        for raw in raws {
            let w = words(raw)
            guard w.count >= 3 else { throw CLIError.usage("Error: --property argument given but not enough arguments specified.") }
            let command = w[0].lowercased()
            let name = w[1].lowercased()
            guard commands.contains(command) else { throw CLIError.usage("Error: Invalid command given in --property argument.") }
            guard let kind = kinds[name] else { throw CLIError.usage("Error: Invalid property name given in --property argument.") }
            guard allowed(name, in: command) else {
                throw CLIError.usage("Error: \(name) property not allowed for \(command) in --property argument.")
            }
            let supportedCommands = ["connect", "publish", "subscribe", "unsubscribe", "disconnect", "will"]
            if !supportedCommands.contains(command) || (command == "publish" && name == "subscription-identifier") {
                throw CLIError.usage("Error: \(name) property not supported for \(command) in --property argument.")
            }
            if kind == .pair && w.count < 4 {
                throw CLIError.usage("Error: --property argument given but not enough arguments specified.")
            }
            let value = w[2]
            func number(_ max: Int64) throws -> Int64 {
                let v = Int64(atolLike(value))
                guard v >= 0 && v <= max else {
                    throw CLIError.usage("Error: Property value (\(v)) out of range for property \(name).")
                }
                return v
            }
            if kind != .pair {
                let key = command + " " + name
                if seen.contains(key) {
                    let packet = command == "will" ? "will" : command.uppercased()
                    throw CLIError("Error in \(packet) properties: Duplicate property in property list")
                }
                seen.insert(key)
            }
            if (kind == .string || kind == .binary || kind == .pair) && value.utf8.count > 65535 {
                throw CLIError.usage("Error: Property value for \(name) is longer than 65535 bytes.")
            }
            switch (command, name) {
            case ("connect", "user-property"): out.connectUserProperties.append(UserProperty(value, w[3]))
            case ("connect", "receive-maximum"):
                let v = try number(65535)
                if v == 0 { throw CLIError("Error in CONNECT properties: receive-maximum must be between 1 and 65535.") }
                out.receiveMaximum = UInt16(v)
            case ("connect", "session-expiry-interval"): out.sessionExpiryInterval = UInt32(try number(Int64(UInt32.max)))
            case ("publish", _), ("will", _):
                var p = command == "publish" ? out.publish : out.will
                switch name {
                case "payload-format-indicator":
                    let v = try number(255)
                    guard let f = PayloadFormat(rawValue: UInt8(v)) else {
                        throw CLIError("Error in PUBLISH properties: payload-format-indicator must be 0 or 1.")
                    }
                    p.payloadFormat = f
                case "message-expiry-interval": p.messageExpiryInterval = UInt32(try number(Int64(UInt32.max)))
                case "content-type": p.contentType = value
                case "response-topic":
                    guard MQTTTopic.isValidName(value) else {
                        throw CLIError.usage("Error: Invalid response topic '\(value)', does it contain '+' or '#'?")
                    }
                    p.responseTopic = value
                case "correlation-data": p.correlationData = Array(value.utf8)
                case "topic-alias":
                    let v = try number(65535)
                    if v == 0 { throw CLIError("Error in PUBLISH properties: topic-alias must be between 1 and 65535.") }
                    p.topicAlias = UInt16(v)
                case "user-property": p.userProperties.append(UserProperty(value, w[3]))
                case "will-delay-interval": out.willDelayInterval = UInt32(try number(Int64(UInt32.max)))
                default: break
                }
                if command == "publish" { out.publish = p } else { out.will = p }
            case ("subscribe", "subscription-identifier"):
                let v = try number(268_435_455)
                if v == 0 { throw CLIError("Error in SUBSCRIBE properties: subscription-identifier must be between 1 and 268435455.") }
                out.subscriptionIdentifier = UInt32(v)
            case ("subscribe", "user-property"): out.subscribeUserProperties.append(UserProperty(value, w[3]))
            case ("unsubscribe", "user-property"): out.unsubscribeUserProperties.append(UserProperty(value, w[3]))
            case ("connect", "maximum-packet-size"):
                let v = try number(Int64(UInt32.max))
                if v == 0 { throw CLIError("Error in CONNECT properties: maximum-packet-size must be between 1 and 4294967295.") }
                out.connect.maximumPacketSize = UInt32(v)
            case ("connect", "topic-alias-maximum"): out.connect.topicAliasMaximum = UInt16(try number(65535))
            case ("connect", "request-problem-information"), ("connect", "request-response-information"):
                let v = try number(255)
                if v > 1 { throw CLIError("Error in CONNECT properties: \(name) must be 0 or 1.") }
                if name == "request-problem-information" {
                    out.connect.requestProblemInformation = v == 1
                } else {
                    out.connect.requestResponseInformation = v == 1
                }
            case ("connect", "authentication-method"): out.connect.authenticationMethod = value
            case ("connect", "authentication-data"): out.connect.authenticationData = Array(value.utf8)
            case ("disconnect", "session-expiry-interval"): out.disconnect.sessionExpiryInterval = UInt32(try number(Int64(UInt32.max)))
            case ("disconnect", "reason-string"): out.disconnect.reasonString = value
            case ("disconnect", "user-property"): out.disconnect.userProperties.append(UserProperty(value, w[3]))
            default:
                // Every property `allowed` lets through for a supported command is handled above.
                throw CLIError.usage("Error: \(name) property not supported for \(command) in --property argument.")
            }
        }
        return out
    }

    /// `atol` as mosquitto uses it for property values (64-bit).
    static func atolLike(_ s: String) -> Int64 {
        var chars = Substring(s).drop { $0 == " " || $0 == "\t" }
        var sign: Int64 = 1
        if chars.first == "-" { sign = -1; chars = chars.dropFirst() } else if chars.first == "+" { chars = chars.dropFirst() }
        var v: Int64 = 0
        for c in chars {
            guard c.isASCII, let d = c.wholeNumberValue else { break }
            v = v &* 10 &+ Int64(d)
            if v > Int64(UInt32.max) * 16 { break }
        }
        return sign * v
    }
}
