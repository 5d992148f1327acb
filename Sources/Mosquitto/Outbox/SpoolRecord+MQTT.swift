import MQTTOutbox

extension SpoolRecord {
    /// Creates a record to publish at `qos` (the sequence is assigned by ``Spool/append(_:)``).
    package init(sequence: UInt64 = 0, topic: String, payload: [UInt8], qos: QoS, flags: Flags = [], properties: [UInt8] = []) {
        self.init(sequence: sequence, topic: topic, payload: payload, qosLevel: qos.rawValue, flags: flags, properties: properties)
    }

    /// The QoS to publish the record with.
    package var qos: QoS { QoS(rawValue: qosLevel) ?? .atLeastOnce }
}
