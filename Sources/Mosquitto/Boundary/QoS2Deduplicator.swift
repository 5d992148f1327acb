/// Works around a libmosquitto 2.0.11 defect that breaks QoS 2's exactly-once promise after a reconnect.
///
/// When a session resumes, the broker resends (with DUP) every QoS 2 PUBLISH whose PUBREC it did not see
/// before the connection dropped. libmosquitto still holds those messages (waiting for PUBREL) and queues the
/// resent copy as a second entry with the same packet identifier instead of recognising it
/// (`handle__publish` does not look for an existing entry), so one message is handed to the application twice:
/// once per PUBREL. Measured before this fix: 31 to 136 duplicates per broker restart in a 3,000-message QoS 2
/// stream (`ResilienceTests`), always with the same packet identifier and the same content.
///
/// A second delivery with the same packet identifier and the same topic, payload and properties as the
/// previous QoS 2 delivery with that identifier, within the last `window` deliveries, is such a duplicate: the
/// broker cannot legitimately reuse a packet identifier that soon (it allocates them in sequence, 65,535 before
/// a reuse). The memory is cleared when the broker starts a fresh session, since identifiers restart then.
struct QoS2Deduplicator {
    /// How many deliveries back a duplicate may be recognised.
    static let window = 4096
    private var last: [UInt16: (fingerprint: Int, index: Int)] = [:]
    private var index = 0
    /// Duplicates suppressed so far.
    private(set) var suppressed = 0

    mutating func isDuplicate(_ message: MQTTMessage) -> Bool {
        index += 1
        let fingerprint = message.hashValue
        let id = message.messageID
        if let previous = last[id], previous.fingerprint == fingerprint, index - previous.index <= Self.window {
            // Consume the entry: a third copy would need a third identical resend.
            last[id] = nil
            suppressed += 1
            return true
        }
        last[id] = (fingerprint, index)
        if last.count > 2 * Self.window { last = last.filter { index - $0.value.index <= Self.window } }
        return false
    }

    mutating func reset() {
        last.removeAll()
    }
}
