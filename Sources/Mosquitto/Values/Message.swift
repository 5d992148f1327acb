/// The MQTT protocol version spoken on the wire.
public enum MQTTProtocolVersion: Sendable, Hashable, CustomStringConvertible {
    /// MQTT 3.1 (protocol level 3), for old brokers. Client ids are limited to 23 bytes; without one, libmosquitto
    /// makes up a `mosq-` id (3.1 has no broker-assigned ids).
    case v3_1
    /// MQTT 3.1.1 (protocol level 4).
    case v3_1_1
    /// MQTT 5 (protocol level 5): properties, reason codes, subscription options, request/response.
    case v5

    /// `mqttv5`, `mqttv311` or `mqttv31`, as mosquitto's tools spell the versions.
    public var description: String {
        switch self {
        case .v3_1: return "mqttv31"
        case .v3_1_1: return "mqttv311"
        case .v5: return "mqttv5"
        }
    }
}

/// Quality of service: how hard the broker and client try to deliver a message.
public enum QoS: UInt8, Sendable, Hashable, Comparable, CaseIterable, CustomStringConvertible {
    /// QoS 0: sent once, never acknowledged, lost if the connection is down.
    case atMostOnce = 0
    /// QoS 1: acknowledged by PUBACK, resent until acknowledged; may arrive twice.
    case atLeastOnce = 1
    /// QoS 2: four-way handshake; arrives exactly once.
    case exactlyOnce = 2

    /// QoS levels order by strength: `.atMostOnce < .atLeastOnce < .exactlyOnce`.
    public static func < (lhs: QoS, rhs: QoS) -> Bool { lhs.rawValue < rhs.rawValue }
    /// The level as a digit: `0`, `1` or `2`.
    public var description: String { String(rawValue) }
}

/// An MQTT 5 user property: a name/value pair. Order is kept and names may repeat.
public struct UserProperty: Sendable, Hashable, CustomStringConvertible {
    /// The property name.
    public var name: String
    /// The property value.
    public var value: String
    /// Creates a user property.
    public init(_ name: String, _ value: String) {
        self.name = name
        self.value = value
    }
    /// `name=value`.
    public var description: String { "\(name)=\(value)" }
}

/// The MQTT 5 payload format indicator.
public enum PayloadFormat: UInt8, Sendable, Hashable {
    /// Unspecified bytes.
    case bytes = 0
    /// UTF-8 text.
    case utf8 = 1
}

/// Typed MQTT 5 properties of a PUBLISH packet. Ignored (not sent) on MQTT 3.1.1 connections.
///
/// A value type with copy-on-write storage: a message without properties carries no allocation, and copying a
/// message copies one reference instead of every field.
public struct MessageProperties: Sendable, Hashable {
    /// The fields, shared between copies until one of them is changed. Never mutated while shared.
    private final class Storage: @unchecked Sendable {
        var payloadFormat: PayloadFormat?
        var messageExpiryInterval: UInt32?
        var contentType: String?
        var responseTopic: String?
        var correlationData: [UInt8]?
        var topicAlias: UInt16?
        var userProperties: [UserProperty] = []
        var subscriptionIdentifiers: [UInt32] = []
        var receivedOrder: [UInt8] = []

        init() {}

        func copy() -> Storage {
            let c = Storage()
            c.payloadFormat = payloadFormat
            c.messageExpiryInterval = messageExpiryInterval
            c.contentType = contentType
            c.responseTopic = responseTopic
            c.correlationData = correlationData
            c.topicAlias = topicAlias
            c.userProperties = userProperties
            c.subscriptionIdentifiers = subscriptionIdentifiers
            c.receivedOrder = receivedOrder
            return c
        }
    }

    private var storage: Storage?
    /// The subscription identifier when a received message carries exactly one (the common case), kept inline so
    /// that routing a message needs no allocation; 0 when absent (identifiers start at 1). Storage then holds none.
    private var singleSubscriptionID: UInt32 = 0

    /// The storage, unshared, for a change.
    private mutating func unique() -> Storage {
        if storage == nil {
            storage = Storage()
        } else if !isKnownUniquelyReferenced(&storage!) {
            storage = storage!.copy()
        }
        return storage!
    }

    /// Payload format indicator.
    public var payloadFormat: PayloadFormat? {
        get { storage?.payloadFormat }
        set { if newValue != nil || storage != nil { unique().payloadFormat = newValue } }
    }
    /// Message expiry interval in seconds.
    public var messageExpiryInterval: UInt32? {
        get { storage?.messageExpiryInterval }
        set { if newValue != nil || storage != nil { unique().messageExpiryInterval = newValue } }
    }
    /// Content type, for example `application/json`.
    public var contentType: String? {
        get { storage?.contentType }
        set { if newValue != nil || storage != nil { unique().contentType = newValue } }
    }
    /// Response topic for request/response.
    public var responseTopic: String? {
        get { storage?.responseTopic }
        set { if newValue != nil || storage != nil { unique().responseTopic = newValue } }
    }
    /// Correlation data for request/response.
    public var correlationData: [UInt8]? {
        get { storage?.correlationData }
        set { if newValue != nil || storage != nil { unique().correlationData = newValue } }
    }
    /// Topic alias (outgoing only; incoming aliases are resolved by the broker side).
    public var topicAlias: UInt16? {
        get { storage?.topicAlias }
        set { if newValue != nil || storage != nil { unique().topicAlias = newValue } }
    }
    /// User properties, in order, duplicates allowed.
    public var userProperties: [UserProperty] {
        get { storage?.userProperties ?? [] }
        set { if !newValue.isEmpty || storage != nil { unique().userProperties = newValue } }
    }
    /// Subscription identifiers the broker attached to a received message (read-only on receive).
    public var subscriptionIdentifiers: [UInt32] {
        get {
            if singleSubscriptionID != 0 { return [singleSubscriptionID] }
            return storage?.subscriptionIdentifiers ?? []
        }
        set {
            if newValue.count == 1 && newValue[0] != 0 {
                singleSubscriptionID = newValue[0]
                if let s = storage, !s.subscriptionIdentifiers.isEmpty { unique().subscriptionIdentifiers = [] }
            } else {
                singleSubscriptionID = 0
                if !newValue.isEmpty || storage != nil { unique().subscriptionIdentifiers = newValue }
            }
        }
    }

    /// On a received message, the MQTT 5 property identifiers in the order the broker sent them (one entry per
    /// property, so a user property appears once per pair); empty for a message built locally. For tools that show
    /// properties the way they arrived, as `mosquitto_sub -F %j` does. Not part of equality.
    public var receivedOrder: [UInt8] {
        if let order = storage?.receivedOrder, !order.isEmpty { return order }
        return singleSubscriptionID != 0 ? [0x0B] : []
    }

    /// Records the arrival order (used when a message carries more than its subscription identifier).
    mutating func setReceivedOrder(_ order: [UInt8]) {
        unique().receivedOrder = order
    }

    /// The number of subscription identifiers, and the first one, without building an array.
    var firstSubscriptionID: (first: UInt32, count: Int)? {
        if singleSubscriptionID != 0 { return (singleSubscriptionID, 1) }
        guard let ids = storage?.subscriptionIdentifiers, let first = ids.first else { return nil }
        return (first, ids.count)
    }

    /// Adds a received subscription identifier.
    mutating func appendSubscriptionID(_ id: UInt32) {
        if singleSubscriptionID == 0 && id != 0 && (storage?.subscriptionIdentifiers.isEmpty ?? true) {
            singleSubscriptionID = id
        } else {
            var ids = subscriptionIdentifiers
            ids.append(id)
            subscriptionIdentifiers = ids
        }
    }

    /// Creates a set of properties; every field defaults to absent.
    public init(
        payloadFormat: PayloadFormat? = nil,
        messageExpiryInterval: UInt32? = nil,
        contentType: String? = nil,
        responseTopic: String? = nil,
        correlationData: [UInt8]? = nil,
        topicAlias: UInt16? = nil,
        userProperties: [UserProperty] = [],
        subscriptionIdentifiers: [UInt32] = []
    ) {
        self.payloadFormat = payloadFormat
        self.messageExpiryInterval = messageExpiryInterval
        self.contentType = contentType
        self.responseTopic = responseTopic
        self.correlationData = correlationData
        self.topicAlias = topicAlias
        self.userProperties = userProperties
        self.subscriptionIdentifiers = subscriptionIdentifiers
    }

    /// True when no property is set.
    public var isEmpty: Bool {
        if singleSubscriptionID != 0 { return false }
        guard let s = storage else { return true }
        return s.payloadFormat == nil && s.messageExpiryInterval == nil && s.contentType == nil && s.responseTopic == nil
            && s.correlationData == nil && s.topicAlias == nil && s.userProperties.isEmpty && s.subscriptionIdentifiers.isEmpty
    }

    /// Two sets are equal when every property is.
    public static func == (a: MessageProperties, b: MessageProperties) -> Bool {
        if a.storage === b.storage && a.singleSubscriptionID == b.singleSubscriptionID { return true }
        return a.payloadFormat == b.payloadFormat && a.messageExpiryInterval == b.messageExpiryInterval
            && a.contentType == b.contentType && a.responseTopic == b.responseTopic
            && a.correlationData == b.correlationData && a.topicAlias == b.topicAlias
            && a.userProperties == b.userProperties && a.subscriptionIdentifiers == b.subscriptionIdentifiers
    }

    /// Hashes every property.
    public func hash(into h: inout Hasher) {
        h.combine(payloadFormat)
        h.combine(messageExpiryInterval)
        h.combine(contentType)
        h.combine(responseTopic)
        h.combine(correlationData)
        h.combine(topicAlias)
        h.combine(userProperties)
        h.combine(subscriptionIdentifiers)
    }
}

/// An MQTT application message: what you publish and what a subscription delivers.
public struct MQTTMessage: Sendable, Hashable {
    /// The topic name (no wildcards).
    public var topic: String
    /// The payload bytes, exactly as sent.
    public var payload: [UInt8]
    /// Quality of service. On a received message, the QoS it was delivered with.
    public var qos: QoS
    /// The retain flag. On a received message, true when it came from the broker's retained store
    /// (or, with retain-as-published, when the publisher set it).
    public var retain: Bool
    /// MQTT 5 properties.
    public var properties: MessageProperties
    /// The packet identifier a received message arrived with (0 for QoS 0 and for messages you build).
    /// Not part of equality.
    public var messageID: UInt16 = 0

    /// Creates a message from a byte array (no copy: the array is shared until one side changes it).
    public init(topic: String, payload: [UInt8], qos: QoS = .atLeastOnce, retain: Bool = false, properties: MessageProperties = .init()) {
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.properties = properties
    }

    /// Creates a message from bytes.
    public init(topic: String, payload: some Sequence<UInt8>, qos: QoS = .atLeastOnce, retain: Bool = false, properties: MessageProperties = .init()) {
        self.topic = topic
        self.payload = Array(payload)
        self.qos = qos
        self.retain = retain
        self.properties = properties
    }

    /// Creates a message from a string, sent as UTF-8.
    public init(topic: String, string: String, qos: QoS = .atLeastOnce, retain: Bool = false, properties: MessageProperties = .init()) {
        self.init(topic: topic, payload: Array(string.utf8), qos: qos, retain: retain, properties: properties)
    }

    /// Two messages are equal when topic, payload, QoS, retain flag and properties are; ``messageID`` is not compared.
    public static func == (a: MQTTMessage, b: MQTTMessage) -> Bool {
        a.topic == b.topic && a.payload == b.payload && a.qos == b.qos && a.retain == b.retain && a.properties == b.properties
    }

    /// Hashes what `==` compares (everything but ``messageID``).
    public func hash(into h: inout Hasher) {
        h.combine(topic)
        // In one block, not byte by byte as `[UInt8]`'s own hash does (received QoS 2 messages are hashed).
        h.combine(payload.count)
        payload.withUnsafeBytes { h.combine(bytes: $0) }
        h.combine(qos)
        h.combine(retain)
        h.combine(properties)
    }

    /// The payload decoded as UTF-8, or nil when it is not valid UTF-8.
    public var string: String? {
        String(validating: payload, as: UTF8.self)
    }
}

/// MQTT 5 CONNECT properties beyond those ``MQTTConfiguration`` sets itself (session expiry, receive maximum, user
/// properties). Ignored on MQTT 3.x.
public struct ConnectProperties: Sendable, Hashable {
    /// Maximum Packet Size: the broker does not send this client packets larger than this many bytes (it drops
    /// such messages for this client instead).
    public var maximumPacketSize: UInt32?
    /// Topic Alias Maximum: how many topic aliases the broker may use towards this client.
    public var topicAliasMaximum: UInt16?
    /// Request Problem Information (false asks the broker to leave reason strings out of most replies).
    public var requestProblemInformation: Bool?
    /// Request Response Information (asks for Response Information in CONNACK).
    public var requestResponseInformation: Bool?
    /// Authentication Method for enhanced authentication. libmosquitto 2.0.11 sends it, but the client does not
    /// answer AUTH challenges: it only works with a broker that accepts the method in one step.
    public var authenticationMethod: String?
    /// Authentication Data sent with ``authenticationMethod``.
    public var authenticationData: [UInt8]?

    /// Creates a set of CONNECT properties; every field defaults to absent.
    public init(maximumPacketSize: UInt32? = nil, topicAliasMaximum: UInt16? = nil, requestProblemInformation: Bool? = nil,
                requestResponseInformation: Bool? = nil, authenticationMethod: String? = nil, authenticationData: [UInt8]? = nil) {
        self.maximumPacketSize = maximumPacketSize
        self.topicAliasMaximum = topicAliasMaximum
        self.requestProblemInformation = requestProblemInformation
        self.requestResponseInformation = requestResponseInformation
        self.authenticationMethod = authenticationMethod
        self.authenticationData = authenticationData
    }
}

/// MQTT 5 properties of the DISCONNECT a client sends (see ``MQTTClient/shutdown(disconnectReason:properties:)``).
public struct DisconnectProperties: Sendable, Hashable {
    /// A new Session Expiry Interval, in seconds (0: the broker discards the session now).
    public var sessionExpiryInterval: UInt32?
    /// A human-readable reason, for the broker's log.
    public var reasonString: String?
    /// User properties, in order.
    public var userProperties: [UserProperty]

    /// Creates a set of DISCONNECT properties; every field defaults to absent.
    public init(sessionExpiryInterval: UInt32? = nil, reasonString: String? = nil, userProperties: [UserProperty] = []) {
        self.sessionExpiryInterval = sessionExpiryInterval
        self.reasonString = reasonString
        self.userProperties = userProperties
    }
}

/// What the broker said when it accepted the connection (CONNACK).
public struct ConnAck: Sendable, Hashable {
    /// True when the broker resumed a stored session for this client id.
    public var sessionPresent: Bool
    /// The client identifier the broker assigned (MQTT 5, when the client sent none).
    public var assignedClientID: String?
    /// The keepalive the broker imposed (MQTT 5), in seconds.
    public var serverKeepAlive: UInt16?
    /// The highest QoS the broker supports (MQTT 5; 2 when absent).
    public var maximumQoS: QoS
    /// Whether the broker supports retained messages (MQTT 5; true when absent).
    public var retainAvailable: Bool
    /// How many QoS 1/2 publications the broker accepts in flight (MQTT 5; 65535 when absent).
    public var receiveMaximum: UInt16
    /// The largest packet the broker accepts (MQTT 5), in bytes.
    public var maximumPacketSize: UInt32?
    /// Whether the broker supports shared subscriptions, `$share/<group>/<filter>` (MQTT 5; true when absent).
    /// When false, ``MQTTClient/subscribe(_:buffer:)`` refuses `$share` filters up front
    /// (``MQTTError/Code/subscriptionRejected``, reason 0x9E) instead of sending a SUBSCRIBE the broker would answer
    /// by closing the connection, and after a reconnect to such a broker the `$share` filters held so far end their
    /// streams with that error. ejabberd 23.01 says false; mosquitto omits it (it supports them).
    public var sharedSubscriptionAvailable: Bool
    /// User properties the broker sent.
    public var userProperties: [UserProperty]
    /// Which broker accepted the connection: one of ``MQTTConfiguration/endpoints``, or where a redirect led.
    public var endpoint: MQTTConfiguration.Endpoint?

    /// Creates a CONNACK summary with MQTT's defaults.
    public init(sessionPresent: Bool = false) {
        self.sessionPresent = sessionPresent
        self.assignedClientID = nil
        self.serverKeepAlive = nil
        self.maximumQoS = .exactlyOnce
        self.retainAvailable = true
        self.receiveMaximum = 65535
        self.maximumPacketSize = nil
        self.sharedSubscriptionAvailable = true
        self.userProperties = []
        self.endpoint = nil
    }
}

/// What a finished publication reports.
public struct PublishReceipt: Sendable, Hashable {
    /// The MQTT packet identifier libmosquitto used (also assigned at QoS 0).
    public var messageID: UInt16
    /// The MQTT 5 reason code of the PUBACK/PUBREC: ``MQTTReasonCode/success``, or
    /// ``MQTTReasonCode/noMatchingSubscribers`` when nobody was subscribed; always `.success` for QoS 0 and MQTT 3.x.
    public var reasonCode: MQTTReasonCode
    /// True when the client was offline at publish time, so the message waited in the outgoing queue
    /// for the connection to come back (QoS 1 and 2 only; QoS 0 is refused while offline).
    public var queuedWhileOffline: Bool
    /// True when the broker has acknowledged the message (QoS 1/2) or it was written to the socket (QoS 0);
    /// false when `publish` returned as soon as the message entered the outgoing queue.
    public var completed: Bool

    /// A receipt, from the reason code byte the engine read.
    init(messageID: UInt16, reasonCode: UInt8, queuedWhileOffline: Bool, completed: Bool) {
        self.messageID = messageID
        self.reasonCode = MQTTReasonCode(rawValue: reasonCode)
        self.queuedWhileOffline = queuedWhileOffline
        self.completed = completed
    }
}
