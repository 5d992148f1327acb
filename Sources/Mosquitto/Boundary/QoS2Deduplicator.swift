/// Works around a mosquitto 2.0.11 broker defect that breaks QoS 2's exactly-once promise across broker restarts.
///
/// A broker with persistence that is restarted can send this client again, as a PUBLISH with DUP and the same
/// packet identifier, a QoS 2 message whose exchange had already finished: the client had received PUBREL,
/// delivered the message and sent PUBCOMP. The broker should resend PUBREL at most, and it resends the whole
/// message instead, once per restart: a message can come back at every restart that follows. libmosquitto has
/// released that packet identifier, so it rightly treats the resend as a new message and delivers it again.
/// Seen in libmosquitto's trace (`ResilienceTests.gracefulRestart`): `PUBLISH (d0, m362)`, PUBREC, PUBREL,
/// `PUBCOMP (m362)`, the broker restarts, then `PUBLISH (d1, m362)` with the same content. Measured before any fix:
/// 31 to 136 duplicates per restart in a 3,000-message stream on a loaded machine.
///
/// A delivery with the same packet identifier and the same topic, payload and properties as an earlier QoS 2
/// delivery with that identifier, at most `window` deliveries after the last copy, is such a duplicate: mosquitto
/// allocates identifiers for a client in sequence, 65,535 before one is reused, so a legitimate message cannot
/// reuse one that soon. Every copy renews the entry, so a third copy, from a second restart, is recognised too.
/// The memory is cleared when the broker starts a fresh session, since identifiers restart then.
struct QoS2Deduplicator {
    /// How many deliveries after the last copy a duplicate may be recognised.
    static let window = 4096
    private var last: [UInt16: (fingerprint: Int, index: Int)] = [:]
    private var index = 0
    /// Duplicates suppressed so far.
    private(set) var suppressed = 0

    mutating func isDuplicate(_ message: MQTTMessage) -> Bool {
        index += 1
        let fingerprint = message.hashValue
        let id = message.messageID
        let duplicate = if let previous = last[id] {
            previous.fingerprint == fingerprint && index - previous.index <= Self.window
        } else {
            false
        }
        // Kept, not consumed, when it matches: each later restart can resend the message once more.
        last[id] = (fingerprint, index)
        if duplicate { suppressed += 1 }
        if last.count > 2 * Self.window { last = last.filter { index - $0.value.index <= Self.window } }
        return duplicate
    }

    mutating func reset() {
        last.removeAll()
    }
}
