import Logging
import Mosquitto
import Synchronization

/// Moves spooled records to the broker, in order, and marks them done only once the broker acknowledged them.
///
/// It works in batches: it hands up to `batch` records of every spool to the client in order (QoS 1/2 messages
/// stay in libmosquitto's queue across reconnects), waits until the client reports every publication complete
/// (PUBACK/PUBCOMP, or the socket write for QoS 0), then advances each spool's done watermark. If the client shut
/// down, nothing is marked; if the connection dropped during a batch holding QoS 0 records, the batch is sent again.
/// Either way a crash at any point resends from the watermark: at-least-once, in order per spool.
final class Publisher: Sendable {
    struct Entry: Sendable {
        let name: String
        let spool: Spool
        let metrics: RouteMetrics
    }

    let client: MQTTClient
    let batch: Int
    let logger: Logger
    let doorbell: Doorbell
    private let entries = Mutex<[String: Entry]>([:])
    /// Incremented on every disconnect, to detect QoS 0 losses within a batch.
    let disconnects = Atomic<Int>(0)

    init(client: MQTTClient, batch: Int, doorbell: Doorbell, logger: Logger) {
        self.client = client
        self.batch = batch
        self.doorbell = doorbell
        self.logger = logger
    }

    func add(_ entry: Entry) {
        entries.withLock { $0[entry.name] = entry }
        doorbell.ring()
    }

    func spool(named name: String) -> Spool? { entries.withLock { $0[name]?.spool } }

    var allSpools: [Spool] { entries.withLock { $0.values.map(\.spool) } }

    /// Whether every spool is empty.
    var isDrained: Bool { entries.withLock { $0.values.allSatisfy { $0.spool.depth.records == 0 } } }

    static func message(for r: SpoolRecord, route: String, isV5: Bool) -> MQTTMessage {
        var properties = MessageProperties()
        if isV5 {
            if r.flags.contains(.partial) { properties.userProperties.append(UserProperty("partial", "true")) }
            if r.flags.contains(.truncated) { properties.userProperties.append(UserProperty("truncated", "true")) }
            if r.flags.contains(.deadLetter) { properties.userProperties.append(UserProperty("dead_letter", route)) }
        }
        return MQTTMessage(topic: r.topic, payload: r.payload, qos: r.qos, retain: r.flags.contains(.retain), properties: properties)
    }

    func run() async {
        let isV5 = client.configuration.protocolVersion == .v5
        while !Task.isCancelled {
            let current = entries.withLock { Array($0.values) }.sorted { $0.name < $1.name }
            var sent: [(Entry, UInt64, Int, Bool)] = []
            let generation = disconnects.load(ordering: .relaxed)
            var failed = false
            outer: for e in current {
                let records: [SpoolRecord]
                do {
                    records = try e.spool.readBatch(maxRecords: batch)
                } catch {
                    logger.error("Spool \(e.name): \(error)")
                    continue
                }
                guard let last = records.last else { continue }
                var hasQoS0 = false
                for (i, r) in records.enumerated() {
                    if r.qos == .atMostOnce { hasQoS0 = true }
                    do {
                        try await client.publish(Self.message(for: r, route: e.name, isV5: isV5), completion: .enqueued)
                    } catch let error as MQTTError {
                        if error.code == .shutDown || error.code == .gaveUp { return }
                        if error.code != .notConnected {
                            logger.warning("Route \(e.name): publishing to '\(r.topic)' failed: \(error.message)")
                        }
                        // Resend from the watermark once the connection is back.
                        if i > 0 { sent.append((e, records[i - 1].sequence, i, true)) }
                        failed = true
                        break outer
                    } catch {
                        return
                    }
                }
                sent.append((e, last.sequence, records.count, hasQoS0))
            }
            if sent.isEmpty && !failed {
                await doorbell.wait(timeout: .milliseconds(250))
                for e in current { e.spool.syncIfDue() }
                continue
            }
            await client.waitUntilAllPublished()
            if case .shutDown = client.state { return }
            let lostQoS0 = disconnects.load(ordering: .relaxed) != generation
            for (e, last, count, hasQoS0) in sent {
                if (hasQoS0 && lostQoS0) || failed {
                    e.spool.rewind()
                    continue
                }
                do {
                    try e.spool.markDone(through: last)
                    e.metrics.framesPublished.add(count)
                } catch {
                    logger.error("Spool \(e.name): cannot record acknowledgements: \(error)")
                }
            }
            if failed {
                for e in current { e.spool.rewind() }
                try? await Task.sleep(for: .milliseconds(100))
            }
        }
    }
}
