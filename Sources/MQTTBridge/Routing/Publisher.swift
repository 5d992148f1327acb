import MosquittoPOSIX
import Logging
import Mosquitto
import MQTTOutbox
import Synchronization

/// Moves the routes' spooled records to the broker: one lane per route of the library's ``OutboxPump`` (the engine
/// of a client's durable outbox too), in order per route, each record marked done once the broker acknowledged it.
///
/// What is the bridge's own: the MQTT message made from a record (its flags become MQTT 5 user properties and the
/// content type), and what happens to a refused record: it is appended to the spool again on the route's
/// dead-letter topic, flagged, and counted (`refused`); a refused dead-letter record is dropped and counted (drop
/// reason `refused`).
final class Publisher: Sendable {
    let client: MQTTClient
    let logger: Logger
    let doorbell: Doorbell
    private let pump: OutboxPump
    /// Each route's dead-letter topic (a reload may change it).
    private let deadLetterTopics = LockedValue<[String: String]>([:])
    /// Incremented on every disconnect (kept for metrics and tests).
    let disconnects = Atomic<Int>(0)

    init(client: MQTTClient, batch: Int, doorbell: Doorbell, logger: Logger, flushInterval: Duration = .milliseconds(20)) {
        self.client = client
        self.doorbell = doorbell
        self.logger = logger
        pump = OutboxPump(batch: batch, doorbell: doorbell, logger: logger, flushInterval: flushInterval) { [client] message, onComplete in
            try await client.publish(message, onComplete: onComplete)
        }
    }

    func add(name: String, spool: Spool, metrics: RouteMetrics, deadLetterTopic: String) {
        deadLetterTopics.withLock { $0[name] = deadLetterTopic }
        let isV5 = client.configuration.protocolVersion == .v5
        let logger = self.logger
        let topics = deadLetterTopics
        pump.add(OutboxLane(
            name: name, spool: spool,
            message: { Self.message(for: $0, route: name, isV5: isV5) },
            refused: { r, error in
                let deadLetter = topics.withLock { $0[name] } ?? deadLetterTopic
                Self.refused(r, error: error, route: name, deadLetterTopic: deadLetter, spool: spool, metrics: metrics, logger: logger)
            },
            settled: { _, delivered in if delivered { metrics.framesPublished.add(1) } }))
    }

    /// A reload changed a route's dead-letter topic.
    func setDeadLetterTopic(_ topic: String, forRoute name: String) {
        deadLetterTopics.withLock { $0[name] = topic }
    }

    func spool(named name: String) -> Spool? { pump.spool(named: name) }

    var allSpools: [Spool] { pump.allSpools }

    /// Whether every spool is empty.
    var isDrained: Bool { pump.isDrained }

    static func message(for r: SpoolRecord, route: String, isV5: Bool) -> MQTTMessage {
        var properties = MessageProperties()
        if isV5 && !r.flags.isEmpty && r.flags != .retain {
            if r.flags.contains(.partial) { properties.userProperties.append(UserProperty("partial", "true")) }
            if r.flags.contains(.truncated) { properties.userProperties.append(UserProperty("truncated", "true")) }
            if r.flags.contains(.deadLetter) { properties.userProperties.append(UserProperty("dead_letter", route)) }
            if r.flags.contains(.messagePack) { properties.contentType = "application/msgpack" }
        }
        return MQTTMessage(topic: r.topic, payload: r.payload, qos: r.qos, retain: r.flags.contains(.retain), properties: properties)
    }

    func run() async {
        await pump.run()
    }

    /// A record the broker (or the client) refused: re-spooled on the dead-letter topic, or dropped if it was
    /// already a dead-letter record.
    static func refused(_ r: SpoolRecord, error: MQTTError, route: String, deadLetterTopic: String, spool: Spool,
                        metrics: RouteMetrics, logger: Logger) {
        metrics.refused.add()
        if r.flags.contains(.deadLetter) || r.topic == deadLetterTopic {
            metrics.drops[.refused]!.add()
            logger.error("Route \(route): the broker refused dead-letter record \(r.sequence) ('\(r.topic)'): \(error.message); dropped")
            return
        }
        var flags = r.flags
        flags.insert(.deadLetter)
        flags.remove(.retain)
        do {
            try spool.append([SpoolRecord(topic: deadLetterTopic, payload: r.payload, qos: r.qos, flags: flags)])
            metrics.deadLettered.add()
            logger.warning("Route \(route): the broker refused '\(r.topic)': \(error.message); sent to \(deadLetterTopic)")
        } catch {
            metrics.drops[.refused]!.add()
            logger.error("Route \(route): refused record \(r.sequence) could not be dead-lettered: \(error)")
        }
    }
}
