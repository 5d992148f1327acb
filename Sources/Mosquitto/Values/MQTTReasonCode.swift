/// An MQTT reason code: what the broker (or the client) says about the outcome of an operation.
///
/// MQTT 5 puts one in CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK, DISCONNECT and AUTH. The static
/// members carry the names of the MQTT 5 specification (section 2.4, table 2-6); ``description`` prints that name
/// with the value, for example `Not authorized (0x87)`. Values of 0x80 and above are failures (``isFailure``).
/// The value itself is ``rawValue``; a code the specification does not name is kept as it came.
///
/// Some values have more than one name, depending on the packet: 0x00 is ``success``, ``normalDisconnection``
/// and ``grantedQoS0``, and they compare equal. On an MQTT 3.x CONNACK refusal, ``MQTTError/reasonCode`` holds the
/// 3.1.1 return code (1 to 5) instead, which MQTT 5's names do not describe.
///
/// ```swift
/// let receipt = try await client.publish(message)
/// if receipt.reasonCode == .noMatchingSubscribers { print("nobody is listening") }
/// await client.shutdown(disconnectReason: .disconnectWithWillMessage)
/// ```
public struct MQTTReasonCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    /// The byte on the wire.
    public var rawValue: UInt8

    /// Wraps a reason code byte.
    public init(rawValue: UInt8) {
        self.rawValue = rawValue
    }

    /// Wraps a reason code byte.
    public init(_ rawValue: UInt8) {
        self.rawValue = rawValue
    }

    /// True for failure codes (0x80 and above).
    public var isFailure: Bool { rawValue >= 0x80 }

    /// The specification's name for the code, or nil for a value MQTT 5 does not define.
    public var name: String? {
        switch rawValue {
        case 0x00: return "Success"
        case 0x01: return "Granted QoS 1"
        case 0x02: return "Granted QoS 2"
        case 0x04: return "Disconnect with Will Message"
        case 0x10: return "No matching subscribers"
        case 0x11: return "No subscription existed"
        case 0x18: return "Continue authentication"
        case 0x19: return "Re-authenticate"
        case 0x80: return "Unspecified error"
        case 0x81: return "Malformed Packet"
        case 0x82: return "Protocol Error"
        case 0x83: return "Implementation specific error"
        case 0x84: return "Unsupported Protocol Version"
        case 0x85: return "Client Identifier not valid"
        case 0x86: return "Bad User Name or Password"
        case 0x87: return "Not authorized"
        case 0x88: return "Server unavailable"
        case 0x89: return "Server busy"
        case 0x8A: return "Banned"
        case 0x8B: return "Server shutting down"
        case 0x8C: return "Bad authentication method"
        case 0x8D: return "Keep Alive timeout"
        case 0x8E: return "Session taken over"
        case 0x8F: return "Topic Filter invalid"
        case 0x90: return "Topic Name invalid"
        case 0x91: return "Packet Identifier in use"
        case 0x92: return "Packet Identifier not found"
        case 0x93: return "Receive Maximum exceeded"
        case 0x94: return "Topic Alias invalid"
        case 0x95: return "Packet too large"
        case 0x96: return "Message rate too high"
        case 0x97: return "Quota exceeded"
        case 0x98: return "Administrative action"
        case 0x99: return "Payload format invalid"
        case 0x9A: return "Retain not supported"
        case 0x9B: return "QoS not supported"
        case 0x9C: return "Use another server"
        case 0x9D: return "Server moved"
        case 0x9E: return "Shared Subscriptions not supported"
        case 0x9F: return "Connection rate exceeded"
        case 0xA0: return "Maximum connect time"
        case 0xA1: return "Subscription Identifiers not supported"
        case 0xA2: return "Wildcard Subscriptions not supported"
        default: return nil
        }
    }

    /// The name and the value, for example `Not authorized (0x87)`; `Unknown reason code (0xA3)` for a value MQTT 5 does not name.
    public var description: String {
        let hex = rawValue < 0x10 ? "0x0" + String(rawValue, radix: 16, uppercase: true) : "0x" + String(rawValue, radix: 16, uppercase: true)
        return "\(name ?? "Unknown reason code") (\(hex))"
    }

    /// 0x00, Success: the operation worked (PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK, AUTH, CONNACK).
    public static let success = MQTTReasonCode(0x00)
    /// 0x00, Normal disconnection: close the connection and discard the will (DISCONNECT). The same value as ``success``.
    public static let normalDisconnection = MQTTReasonCode(0x00)
    /// 0x00, Granted QoS 0 (SUBACK). The same value as ``success``.
    public static let grantedQoS0 = MQTTReasonCode(0x00)
    /// 0x01, Granted QoS 1 (SUBACK).
    public static let grantedQoS1 = MQTTReasonCode(0x01)
    /// 0x02, Granted QoS 2 (SUBACK).
    public static let grantedQoS2 = MQTTReasonCode(0x02)
    /// 0x04, Disconnect with Will Message: close the connection and have the broker publish the will (DISCONNECT from the client).
    public static let disconnectWithWillMessage = MQTTReasonCode(0x04)
    /// 0x10, No matching subscribers: the broker accepted the message, but nobody is subscribed to it (PUBACK, PUBREC).
    public static let noMatchingSubscribers = MQTTReasonCode(0x10)
    /// 0x11, No subscription existed (UNSUBACK).
    public static let noSubscriptionExisted = MQTTReasonCode(0x11)
    /// 0x18, Continue authentication (AUTH).
    public static let continueAuthentication = MQTTReasonCode(0x18)
    /// 0x19, Re-authenticate (AUTH).
    public static let reAuthenticate = MQTTReasonCode(0x19)
    /// 0x80, Unspecified error: the receiver does not want to say why it failed.
    public static let unspecifiedError = MQTTReasonCode(0x80)
    /// 0x81, Malformed Packet: the packet could not be parsed.
    public static let malformedPacket = MQTTReasonCode(0x81)
    /// 0x82, Protocol Error: the packet broke the protocol.
    public static let protocolError = MQTTReasonCode(0x82)
    /// 0x83, Implementation specific error: valid, but not accepted by this receiver.
    public static let implementationSpecificError = MQTTReasonCode(0x83)
    /// 0x84, Unsupported Protocol Version (CONNACK).
    public static let unsupportedProtocolVersion = MQTTReasonCode(0x84)
    /// 0x85, Client Identifier not valid (CONNACK).
    public static let clientIdentifierNotValid = MQTTReasonCode(0x85)
    /// 0x86, Bad User Name or Password (CONNACK).
    public static let badUserNameOrPassword = MQTTReasonCode(0x86)
    /// 0x87, Not authorized (CONNACK, PUBACK, PUBREC, SUBACK, UNSUBACK, DISCONNECT).
    public static let notAuthorized = MQTTReasonCode(0x87)
    /// 0x88, Server unavailable (CONNACK).
    public static let serverUnavailable = MQTTReasonCode(0x88)
    /// 0x89, Server busy (CONNACK, DISCONNECT).
    public static let serverBusy = MQTTReasonCode(0x89)
    /// 0x8A, Banned (CONNACK).
    public static let banned = MQTTReasonCode(0x8A)
    /// 0x8B, Server shutting down (DISCONNECT).
    public static let serverShuttingDown = MQTTReasonCode(0x8B)
    /// 0x8C, Bad authentication method (CONNACK, DISCONNECT).
    public static let badAuthenticationMethod = MQTTReasonCode(0x8C)
    /// 0x8D, Keep Alive timeout (DISCONNECT).
    public static let keepAliveTimeout = MQTTReasonCode(0x8D)
    /// 0x8E, Session taken over: another connection with the same client id (DISCONNECT).
    public static let sessionTakenOver = MQTTReasonCode(0x8E)
    /// 0x8F, Topic Filter invalid (SUBACK, UNSUBACK, DISCONNECT).
    public static let topicFilterInvalid = MQTTReasonCode(0x8F)
    /// 0x90, Topic Name invalid (CONNACK, PUBACK, PUBREC, DISCONNECT).
    public static let topicNameInvalid = MQTTReasonCode(0x90)
    /// 0x91, Packet Identifier in use (PUBACK, PUBREC, SUBACK, UNSUBACK).
    public static let packetIdentifierInUse = MQTTReasonCode(0x91)
    /// 0x92, Packet Identifier not found (PUBREL, PUBCOMP).
    public static let packetIdentifierNotFound = MQTTReasonCode(0x92)
    /// 0x93, Receive Maximum exceeded (DISCONNECT).
    public static let receiveMaximumExceeded = MQTTReasonCode(0x93)
    /// 0x94, Topic Alias invalid (DISCONNECT).
    public static let topicAliasInvalid = MQTTReasonCode(0x94)
    /// 0x95, Packet too large (CONNACK, DISCONNECT).
    public static let packetTooLarge = MQTTReasonCode(0x95)
    /// 0x96, Message rate too high (DISCONNECT).
    public static let messageRateTooHigh = MQTTReasonCode(0x96)
    /// 0x97, Quota exceeded (CONNACK, PUBACK, PUBREC, SUBACK, DISCONNECT).
    public static let quotaExceeded = MQTTReasonCode(0x97)
    /// 0x98, Administrative action (DISCONNECT).
    public static let administrativeAction = MQTTReasonCode(0x98)
    /// 0x99, Payload format invalid (CONNACK, PUBACK, PUBREC, DISCONNECT).
    public static let payloadFormatInvalid = MQTTReasonCode(0x99)
    /// 0x9A, Retain not supported (CONNACK, DISCONNECT).
    public static let retainNotSupported = MQTTReasonCode(0x9A)
    /// 0x9B, QoS not supported (CONNACK, DISCONNECT).
    public static let qosNotSupported = MQTTReasonCode(0x9B)
    /// 0x9C, Use another server (CONNACK, DISCONNECT).
    public static let useAnotherServer = MQTTReasonCode(0x9C)
    /// 0x9D, Server moved (CONNACK, DISCONNECT).
    public static let serverMoved = MQTTReasonCode(0x9D)
    /// 0x9E, Shared Subscriptions not supported (SUBACK, DISCONNECT).
    public static let sharedSubscriptionsNotSupported = MQTTReasonCode(0x9E)
    /// 0x9F, Connection rate exceeded (CONNACK, DISCONNECT).
    public static let connectionRateExceeded = MQTTReasonCode(0x9F)
    /// 0xA0, Maximum connect time (DISCONNECT).
    public static let maximumConnectTime = MQTTReasonCode(0xA0)
    /// 0xA1, Subscription Identifiers not supported (SUBACK, DISCONNECT).
    public static let subscriptionIdentifiersNotSupported = MQTTReasonCode(0xA1)
    /// 0xA2, Wildcard Subscriptions not supported (SUBACK, DISCONNECT).
    public static let wildcardSubscriptionsNotSupported = MQTTReasonCode(0xA2)
}
