/// The MQTT protocol version spoken on the wire.
public enum MQTTProtocolVersion: Sendable, Hashable, CustomStringConvertible {
    /// MQTT 3.1.1 (protocol level 4).
    case v3_1_1
    /// MQTT 5 (protocol level 5): properties, reason codes, subscription options, request/response.
    case v5

    /// `mqttv5` or `mqttv311`, as mosquitto's tools spell the versions.
    public var description: String { self == .v5 ? "mqttv5" : "mqttv311" }
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
public struct MessageProperties: Sendable, Hashable {
    /// Payload format indicator.
    public var payloadFormat: PayloadFormat?
    /// Message expiry interval in seconds.
    public var messageExpiryInterval: UInt32?
    /// Content type, for example `application/json`.
    public var contentType: String?
    /// Response topic for request/response.
    public var responseTopic: String?
    /// Correlation data for request/response.
    public var correlationData: [UInt8]?
    /// Topic alias (outgoing only; incoming aliases are resolved by the broker side).
    public var topicAlias: UInt16?
    /// User properties, in order, duplicates allowed.
    public var userProperties: [UserProperty]
    /// Subscription identifiers the broker attached to a received message (read-only on receive).
    public var subscriptionIdentifiers: [UInt32]

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
        payloadFormat == nil && messageExpiryInterval == nil && contentType == nil && responseTopic == nil
            && correlationData == nil && topicAlias == nil && userProperties.isEmpty && subscriptionIdentifiers.isEmpty
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
        h.combine(payload)
        h.combine(qos)
        h.combine(retain)
        h.combine(properties)
    }

    /// The payload decoded as UTF-8, or nil when it is not valid UTF-8.
    public var string: String? {
        String(validating: payload, as: UTF8.self)
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
    /// User properties the broker sent.
    public var userProperties: [UserProperty]

    /// Creates a CONNACK summary with MQTT's defaults.
    public init(sessionPresent: Bool = false) {
        self.sessionPresent = sessionPresent
        self.assignedClientID = nil
        self.serverKeepAlive = nil
        self.maximumQoS = .exactlyOnce
        self.retainAvailable = true
        self.receiveMaximum = 65535
        self.maximumPacketSize = nil
        self.userProperties = []
    }
}

/// What a finished publication reports.
public struct PublishReceipt: Sendable, Hashable {
    /// The MQTT packet identifier libmosquitto used (also assigned at QoS 0).
    public var messageID: UInt16
    /// The MQTT 5 reason code of the PUBACK/PUBREC (0 for success or for QoS 0 and MQTT 3.1.1).
    public var reasonCode: UInt8
    /// True when the client was offline at publish time, so the message waited in the outgoing queue
    /// for the connection to come back (QoS 1 and 2 only; QoS 0 is refused while offline).
    public var queuedWhileOffline: Bool
    /// True when the broker has acknowledged the message (QoS 1/2) or it was written to the socket (QoS 0);
    /// false when `publish` returned as soon as the message entered the outgoing queue.
    public var completed: Bool
}
