import CMosquitto

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// An owned C property list built from Swift values with `mosquitto_property_add_*` (so that libmosquitto
/// sends every property, not just the first). Free it with ``free()`` after the C call that borrows it.
struct CPropertyList {
    var head: OpaquePointer?

    init() {}

    static func prop(_ p: mqtt5_property) -> Int32 { Int32(bitPattern: p.rawValue) }

    mutating func add(byte id: mqtt5_property, _ v: UInt8) throws(MQTTError) {
        try check(mosquitto_property_add_byte(&head, Self.prop(id), v))
    }
    mutating func add(int16 id: mqtt5_property, _ v: UInt16) throws(MQTTError) {
        try check(mosquitto_property_add_int16(&head, Self.prop(id), v))
    }
    mutating func add(int32 id: mqtt5_property, _ v: UInt32) throws(MQTTError) {
        try check(mosquitto_property_add_int32(&head, Self.prop(id), v))
    }
    mutating func add(varint id: mqtt5_property, _ v: UInt32) throws(MQTTError) {
        try check(mosquitto_property_add_varint(&head, Self.prop(id), v))
    }
    mutating func add(string id: mqtt5_property, _ v: String) throws(MQTTError) {
        try check(mosquitto_property_add_string(&head, Self.prop(id), v))
    }
    mutating func add(binary id: mqtt5_property, _ v: [UInt8]) throws(MQTTError) {
        let rc = v.withUnsafeBytes { mosquitto_property_add_binary(&head, Self.prop(id), $0.baseAddress, UInt16(clamping: $0.count)) }
        try check(rc)
    }
    mutating func add(userProperty p: UserProperty) throws(MQTTError) {
        try check(mosquitto_property_add_string_pair(&head, Self.prop(MQTT_PROP_USER_PROPERTY), p.name, p.value))
    }

    private func check(_ rc: Int32) throws(MQTTError) {
        if rc != MOSQ_ERR_SUCCESS.rawValue {
            throw MQTTError(.invalidArgument, "Invalid MQTT 5 property: \(MQTTError.libraryText(rc)). Property strings must be valid UTF-8 without NUL and at most 65535 bytes.")
        }
    }

    mutating func free() {
        if head != nil { mosquitto_property_free_all(&head) }
        head = nil
    }

    /// Builds the list for a PUBLISH (or will) from typed properties.
    static func publish(_ p: MessageProperties, willDelay: UInt32? = nil) throws(MQTTError) -> CPropertyList {
        var list = CPropertyList()
        do {
            if let v = p.payloadFormat { try list.add(byte: MQTT_PROP_PAYLOAD_FORMAT_INDICATOR, v.rawValue) }
            if let v = p.messageExpiryInterval { try list.add(int32: MQTT_PROP_MESSAGE_EXPIRY_INTERVAL, v) }
            if let v = p.contentType { try list.add(string: MQTT_PROP_CONTENT_TYPE, v) }
            if let v = p.responseTopic {
                try MQTTTopic.validateName(v)
                try list.add(string: MQTT_PROP_RESPONSE_TOPIC, v)
            }
            if let v = p.correlationData { try list.add(binary: MQTT_PROP_CORRELATION_DATA, v) }
            if let v = p.topicAlias { try list.add(int16: MQTT_PROP_TOPIC_ALIAS, v) }
            if let v = willDelay { try list.add(int32: MQTT_PROP_WILL_DELAY_INTERVAL, v) }
            for u in p.userProperties { try list.add(userProperty: u) }
        } catch {
            list.free()
            throw error
        }
        return list
    }
}

/// Reads a received C property list into Swift values. Must run inside the callback that owns `list`.
enum PropertyReader {
    static func messageProperties(_ list: OpaquePointer?) -> MessageProperties {
        var out = MessageProperties()
        var node = list
        // The arrival order is kept unless the only property is the subscription identifier (the common case,
        // which then allocates nothing).
        let onlySubscriptionID = list.map { mosquitto_property_next($0) == nil
            && mosquitto_property_identifier($0) == Int32(MQTT_PROP_SUBSCRIPTION_IDENTIFIER.rawValue) } ?? true
        var order: [UInt8] = []
        while let p = node {
            let id = mosquitto_property_identifier(p)
            if !onlySubscriptionID { order.append(UInt8(truncatingIfNeeded: id)) }
            switch UInt32(bitPattern: id) {
            case MQTT_PROP_PAYLOAD_FORMAT_INDICATOR.rawValue:
                var v: UInt8 = 0
                mosquitto_property_read_byte(p, id, &v, false)
                out.payloadFormat = PayloadFormat(rawValue: v) ?? .bytes
            case MQTT_PROP_MESSAGE_EXPIRY_INTERVAL.rawValue:
                var v: UInt32 = 0
                mosquitto_property_read_int32(p, id, &v, false)
                out.messageExpiryInterval = v
            case MQTT_PROP_CONTENT_TYPE.rawValue:
                out.contentType = readString(p, id)
            case MQTT_PROP_RESPONSE_TOPIC.rawValue:
                out.responseTopic = readString(p, id)
            case MQTT_PROP_CORRELATION_DATA.rawValue:
                out.correlationData = readBinary(p, id)
            case MQTT_PROP_TOPIC_ALIAS.rawValue:
                var v: UInt16 = 0
                mosquitto_property_read_int16(p, id, &v, false)
                out.topicAlias = v
            case MQTT_PROP_SUBSCRIPTION_IDENTIFIER.rawValue:
                var v: UInt32 = 0
                mosquitto_property_read_varint(p, id, &v, false)
                out.appendSubscriptionID(v)
            case MQTT_PROP_USER_PROPERTY.rawValue:
                if let pair = readPair(p, id) { out.userProperties.append(pair) }
            default:
                break
            }
            node = mosquitto_property_next(p)
        }
        if !order.isEmpty { out.setReceivedOrder(order) }
        return out
    }

    static func connAck(flags: Int32, _ list: OpaquePointer?) -> ConnAck {
        var ack = ConnAck(sessionPresent: flags & 1 == 1)
        var node = list
        while let p = node {
            let id = mosquitto_property_identifier(p)
            switch UInt32(bitPattern: id) {
            case MQTT_PROP_ASSIGNED_CLIENT_IDENTIFIER.rawValue:
                ack.assignedClientID = readString(p, id)
            case MQTT_PROP_SERVER_KEEP_ALIVE.rawValue:
                var v: UInt16 = 0
                mosquitto_property_read_int16(p, id, &v, false)
                ack.serverKeepAlive = v
            case MQTT_PROP_MAXIMUM_QOS.rawValue:
                var v: UInt8 = 0
                mosquitto_property_read_byte(p, id, &v, false)
                ack.maximumQoS = QoS(rawValue: v) ?? .exactlyOnce
            case MQTT_PROP_RETAIN_AVAILABLE.rawValue:
                var v: UInt8 = 0
                mosquitto_property_read_byte(p, id, &v, false)
                ack.retainAvailable = v != 0
            case MQTT_PROP_RECEIVE_MAXIMUM.rawValue:
                var v: UInt16 = 0
                mosquitto_property_read_int16(p, id, &v, false)
                ack.receiveMaximum = v
            case MQTT_PROP_MAXIMUM_PACKET_SIZE.rawValue:
                var v: UInt32 = 0
                mosquitto_property_read_int32(p, id, &v, false)
                ack.maximumPacketSize = v
            case MQTT_PROP_SHARED_SUB_AVAILABLE.rawValue:
                var v: UInt8 = 0
                mosquitto_property_read_byte(p, id, &v, false)
                ack.sharedSubscriptionAvailable = v != 0
            case MQTT_PROP_USER_PROPERTY.rawValue:
                if let pair = readPair(p, id) { ack.userProperties.append(pair) }
            default:
                break
            }
            node = mosquitto_property_next(p)
        }
        return ack
    }

    /// The Server Reference property (MQTT 5) of a CONNACK or DISCONNECT, if any.
    static func serverReference(_ list: OpaquePointer?) -> String? {
        var node = list
        while let p = node {
            let id = mosquitto_property_identifier(p)
            if UInt32(bitPattern: id) == MQTT_PROP_SERVER_REFERENCE.rawValue { return readString(p, id) }
            node = mosquitto_property_next(p)
        }
        return nil
    }

    static func readString(_ p: OpaquePointer, _ id: Int32) -> String? {
        var raw: UnsafeMutablePointer<CChar>?
        guard mosquitto_property_read_string(p, id, &raw, false) != nil, let raw else { return nil }
        defer { Glibc_free(raw) }
        return String(cString: raw)
    }

    static func readBinary(_ p: OpaquePointer, _ id: Int32) -> [UInt8]? {
        var raw: UnsafeMutableRawPointer?
        var len: UInt16 = 0
        guard mosquitto_property_read_binary(p, id, &raw, &len, false) != nil else { return nil }
        guard let raw else { return [] }
        defer { Glibc_free(raw) }
        return Array(UnsafeRawBufferPointer(start: raw, count: Int(len)))
    }

    static func readPair(_ p: OpaquePointer, _ id: Int32) -> UserProperty? {
        var name: UnsafeMutablePointer<CChar>?
        var value: UnsafeMutablePointer<CChar>?
        guard mosquitto_property_read_string_pair(p, id, &name, &value, false) != nil else { return nil }
        defer { Glibc_free(name); Glibc_free(value) }
        return UserProperty(name.map { String(cString: $0) } ?? "", value.map { String(cString: $0) } ?? "")
    }
}

@inline(__always) func Glibc_free(_ p: UnsafeMutableRawPointer?) { free(p) }
@inline(__always) func Glibc_free(_ p: UnsafeMutablePointer<CChar>?) { free(p) }
