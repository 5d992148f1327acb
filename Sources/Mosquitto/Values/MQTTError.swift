import CMosquitto

/// The one error type of the library.
///
/// Every failure carries a ``Code`` you can compare with `==` (or match in a `switch`), the MQTT reason code when the broker sent one,
/// and a ``message`` written for a person: what went wrong and what to do about it.
public struct MQTTError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What kind of failure this is.
    ///
    /// A struct rather than an enum, so that new codes can be added without breaking source compatibility (as
    /// ``MosquittoBroker``'s error codes are). Compare it with `==`, or match it in a `switch` against the static
    /// members (`case .notConnected:`); such a `switch` needs a `default:` case.
    public struct Code: Sendable, Hashable, CustomStringConvertible {
        private enum Base: Hashable, Sendable {
            case invalidTopic, invalidFilter, invalidArgument, payloadTooLarge, notConnected, connectionFailed
            case connectionLost, connectionRefused, badCredentials, notAuthorized, tls, subscriptionRejected
            case publishRejected, protocolError, timeout, shutDown, gaveUp, requiresMQTT5, system, webSocketRejected
            case outboxInUse, outboxFull, outboxUnavailable, messageExpired
            case library(Int32)
        }

        private let base: Base

        private init(_ base: Base) {
            self.base = base
        }

        /// A topic name given for publishing is not valid (wildcards, empty, bad UTF-8, too long).
        public static let invalidTopic = Code(.invalidTopic)
        /// A subscription filter is not valid (misplaced wildcard, bad `$share/` form, bad UTF-8, too long).
        public static let invalidFilter = Code(.invalidFilter)
        /// An argument or option is out of range or inconsistent.
        public static let invalidArgument = Code(.invalidArgument)
        /// The payload or packet is larger than MQTT (or the broker) allows.
        public static let payloadTooLarge = Code(.payloadTooLarge)
        /// The client is not connected and the operation cannot be queued (QoS 0 publish, unsubscribe).
        public static let notConnected = Code(.notConnected)
        /// The TCP connection could not be made (refused, unreachable, DNS failure).
        public static let connectionFailed = Code(.connectionFailed)
        /// The connection was lost before the operation finished.
        public static let connectionLost = Code(.connectionLost)
        /// The broker refused the connection with the given reason (see ``MQTTError/reasonCode``).
        public static let connectionRefused = Code(.connectionRefused)
        /// The broker refused the user name or password.
        public static let badCredentials = Code(.badCredentials)
        /// The broker says this client is not authorised (connect, publish or subscribe).
        public static let notAuthorized = Code(.notAuthorized)
        /// TLS failed: the certificate did not verify, a file could not be read, or the handshake failed.
        public static let tls = Code(.tls)
        /// The broker rejected a subscription (a SUBACK failure code).
        public static let subscriptionRejected = Code(.subscriptionRejected)
        /// The broker rejected a publication (a PUBACK/PUBREC failure reason code).
        public static let publishRejected = Code(.publishRejected)
        /// The broker or the client broke the MQTT protocol.
        public static let protocolError = Code(.protocolError)
        /// The operation did not finish in the time allowed.
        public static let timeout = Code(.timeout)
        /// The client was shut down before the operation finished.
        public static let shutDown = Code(.shutDown)
        /// The client gave up reconnecting after a fatal refusal or too many attempts.
        public static let gaveUp = Code(.gaveUp)
        /// The operation needs MQTT 5 (for example request/response or subscription options).
        public static let requiresMQTT5 = Code(.requiresMQTT5)
        /// An operating-system error (see ``MQTTError/systemErrno``).
        public static let system = Code(.system)
        /// The server did not accept the WebSocket upgrade for MQTT: an HTTP status other than 101 (see
        /// ``MQTTError/httpStatus``; 401 and 403 are ``badCredentials`` and ``notAuthorized``), no `mqtt` subprotocol,
        /// or a server that is not a WebSocket endpoint at all (see ``MQTTConfiguration/Transport/webSockets(_:)``).
        public static let webSocketRejected = Code(.webSocketRejected)
        /// Another live client (in this process or another) holds the outbox directory
        /// (``MQTTConfiguration/Outbox``); two clients never share one.
        public static let outboxInUse = Code(.outboxInUse)
        /// The outbox holds its ``MQTTConfiguration/Outbox/maximumBytes`` and its full policy is
        /// ``MQTTConfiguration/Outbox/FullPolicy/fail``: the message was not stored.
        public static let outboxFull = Code(.outboxFull)
        /// The outbox could not be opened or written (a full disk, permissions): the message was not stored.
        public static let outboxUnavailable = Code(.outboxUnavailable)
        /// The message's MQTT 5 message expiry interval ran out while it waited in the outbox
        /// (``MQTTConfiguration/Outbox``): it was not sent, and left the outbox.
        public static let messageExpired = Code(.messageExpired)
        /// Any other libmosquitto error code (a `MOSQ_ERR_*` value); see ``libraryErrorCode``.
        public static func library(_ rc: Int32) -> Code { Code(.library(rc)) }

        /// The libmosquitto `MOSQ_ERR_*` value of a ``library(_:)`` code; nil for every other code.
        public var libraryErrorCode: Int32? {
            if case .library(let rc) = base { return rc }
            return nil
        }

        /// The name of the code, for example `notConnected` or `library(14)`.
        public var description: String {
            switch base {
            case .library(let rc): return "library(\(rc))"
            default: return "\(base)"
            }
        }
    }

    /// What kind of failure this is.
    public var code: Code
    /// The MQTT reason code (CONNACK, PUBACK, PUBREC, SUBACK or DISCONNECT) when the broker sent one. On an MQTT 3.x
    /// CONNACK refusal it holds the 3.1.1 return code (1 to 5).
    public var reasonCode: MQTTReasonCode?
    /// The `errno` value for ``Code/system`` and ``Code/connectionFailed`` errors.
    public var systemErrno: Int32?
    /// A sentence a person can act on.
    public var message: String
    /// The HTTP status with which a server refused the WebSocket upgrade (for example 404), when that is what failed.
    public var httpStatus: Int?

    /// Creates an error.
    public init(_ code: Code, _ message: String, reasonCode: MQTTReasonCode? = nil, systemErrno: Int32? = nil,
                httpStatus: Int? = nil) {
        self.code = code
        self.message = message
        self.reasonCode = reasonCode
        self.systemErrno = systemErrno
        self.httpStatus = httpStatus
    }

    /// Creates an error from the reason code byte the engine reads off the wire.
    init(_ code: Code, _ message: String, reasonCode: UInt8?, systemErrno: Int32? = nil) {
        self.init(code, message, reasonCode: reasonCode.map(MQTTReasonCode.init(rawValue:)), systemErrno: systemErrno)
    }

    /// The ``message``, which says what went wrong and what to do.
    public var description: String { message }
}

extension MQTTError {
    /// libmosquitto's own text for a `MOSQ_ERR_*` code.
    static func libraryText(_ rc: Int32) -> String {
        String(cString: mosquitto_strerror(rc))
    }

    /// Maps a `MOSQ_ERR_*` result code to an error, with a sentence about `context`.
    static func fromLibrary(_ rc: Int32, context: String) -> MQTTError {
        let text = libraryText(rc)
        switch mosq_err_t(rawValue: rc) {
        case MOSQ_ERR_NO_CONN:
            return MQTTError(.notConnected, "\(context): the client is not connected to the broker.")
        case MOSQ_ERR_CONN_LOST:
            return MQTTError(.connectionLost, "\(context): the connection to the broker was lost.")
        case MOSQ_ERR_INVAL:
            return MQTTError(.invalidArgument, "\(context): invalid argument (\(text)).")
        case MOSQ_ERR_PAYLOAD_SIZE, MOSQ_ERR_OVERSIZE_PACKET:
            return MQTTError(.payloadTooLarge, "\(context): the message is larger than MQTT or the broker allows (\(text)). Send a smaller payload or raise the broker's message_size_limit/max_packet_size.")
        case MOSQ_ERR_TLS, MOSQ_ERR_TLS_HANDSHAKE:
            return MQTTError(.tls, "\(context): TLS failed (\(text)). Check the CA file, the broker's certificate and host name, and the client certificate and key.")
        case MOSQ_ERR_AUTH:
            return MQTTError(.badCredentials, "\(context): authentication failed. Check the user name and password.")
        case MOSQ_ERR_ACL_DENIED:
            return MQTTError(.notAuthorized, "\(context): not authorised by the broker's access control list.")
        case MOSQ_ERR_PROTOCOL, MOSQ_ERR_MALFORMED_PACKET, MOSQ_ERR_DUPLICATE_PROPERTY, MOSQ_ERR_QOS_NOT_SUPPORTED:
            return MQTTError(.protocolError, "\(context): MQTT protocol error (\(text)).")
        case MOSQ_ERR_MALFORMED_UTF8:
            return MQTTError(.invalidTopic, "\(context): a string is not valid UTF-8 for MQTT.")
        case MOSQ_ERR_NOT_SUPPORTED:
            return MQTTError(.invalidArgument, "\(context): not supported by this libmosquitto build (\(text)).")
        case MOSQ_ERR_EAI:
            return MQTTError(.connectionFailed, "\(context): the broker's host name could not be resolved.")
        case MOSQ_ERR_ERRNO:
            let e = errnoValue()
            let detail = String(cString: strerror(e))
            if e == ECONNREFUSED {
                return MQTTError(.connectionFailed, "\(context): connection refused (\(detail)). Is the broker running and listening on that host and port?", systemErrno: e)
            }
            return MQTTError(.connectionFailed, "\(context): \(detail).", systemErrno: e)
        case MOSQ_ERR_KEEPALIVE:
            return MQTTError(.connectionLost, "\(context): the broker did not answer within the keepalive interval.")
        case MOSQ_ERR_NOMEM:
            return MQTTError(.system, "\(context): out of memory.")
        default:
            return MQTTError(.library(rc), "\(context): \(text) (libmosquitto error \(rc)).")
        }
    }

    /// Maps a CONNACK return code to an error, using the text that fits the protocol version.
    static func connectRefused(_ rc: Int32, protocolVersion: MQTTProtocolVersion) -> MQTTError {
        let reason = UInt8(truncatingIfNeeded: rc)
        if protocolVersion != .v5 {
            let text = String(cString: mosquitto_connack_string(rc))
            switch rc {
            case 4: return MQTTError(.badCredentials, "\(text) The broker refused the user name or password; check the credentials and the broker's password_file.", reasonCode: reason)
            case 5: return MQTTError(.notAuthorized, "\(text) The broker does not allow this client; check the credentials, the client id and the broker's ACL.", reasonCode: reason)
            default: return MQTTError(.connectionRefused, text, reasonCode: reason)
            }
        }
        let text = String(cString: mosquitto_reason_string(rc))
        switch reason {
        case 0x86: return MQTTError(.badCredentials, "Connection refused: \(text) (reason 0x86). Check the user name and password.", reasonCode: reason)
        case 0x87: return MQTTError(.notAuthorized, "Connection refused: \(text) (reason 0x87). Check the credentials, the client id and the broker's ACL.", reasonCode: reason)
        default: return MQTTError(.connectionRefused, "Connection refused: \(text) (reason 0x\(String(reason, radix: 16))).", reasonCode: reason)
        }
    }

    /// A `$share/` subscription to a broker whose CONNACK said it has no shared subscriptions: refused by the
    /// client, as the broker would close the connection over it (DISCONNECT 0x9E).
    static func sharedSubscriptionsUnavailable(_ filter: String) -> MQTTError {
        let plain = MQTTTopic.shareGroup(of: filter)?.filter ?? filter
        return MQTTError(.subscriptionRejected, "Cannot subscribe to '\(filter)': the broker does not support shared subscriptions (its CONNACK says Shared Subscription Available = 0), and would close the connection over it (reason 0x9e). Subscribe to '\(plain)' from a single client, or use a broker that has them (mosquitto does).", reasonCode: 0x9E)
    }

    /// Maps a v5 reason code on PUBACK/PUBREC/SUBACK/DISCONNECT to a readable text.
    static func reasonText(_ reason: UInt8) -> String {
        String(cString: mosquitto_reason_string(Int32(reason)))
    }

    /// Whether reconnecting can help after this error.
    var isFatalForReconnect: Bool {
        switch code {
        case .badCredentials, .notAuthorized, .tls, .invalidArgument, .gaveUp, .shutDown: return true
        case .webSocketRejected:
            // A wrong path or a server that is not a WebSocket one stays so; a failing proxy, a timeout or a
            // rate limit may pass.
            guard let status = httpStatus else { return true }
            return !(500...599).contains(status) && status != 408 && status != 429
        case .connectionRefused:
            // v3: 1 unacceptable protocol, 2 identifier rejected. v5: 0x84 bad protocol, 0x85 bad client id,
            // 0x8A banned, 0x8C bad authentication method.
            guard let r = reasonCode else { return false }
            return [1, 2, 0x84, 0x85, 0x8A, 0x8C].contains(r.rawValue)
        default: return false
        }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

@inline(__always) func errnoValue() -> Int32 { errno }
