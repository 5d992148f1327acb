extension MQTTConfiguration {
    /// A durable outbox: the client's outgoing messages on disk, so that a restart, `kill -9` or a reboot while
    /// the broker is unreachable loses nothing that `publish` accepted.
    ///
    /// With an outbox, ``MQTTClient/publish(_:completion:)`` appends the message to an append-only, CRC-checked log
    /// in ``directory`` and returns per its completion (``PublishCompletion/stored`` once it is written). The client
    /// sends the log's records in order, at their QoS, and marks each one done when the broker acknowledged it
    /// (PUBACK, PUBCOMP, or the socket write at QoS 0). A client created later on the same directory sends what was
    /// not acknowledged before anything new: at least once, with duplicates bounded by what the broker acknowledged
    /// in the last few milliseconds before a crash (the watermark is written every 20 ms).
    ///
    /// ```swift
    /// var configuration = MQTTConfiguration(host: "broker.local")
    /// configuration.outbox = .init(directory: "/var/lib/telemetry/outbox")
    /// let client = try MQTTClient(configuration: configuration)   // resends what a previous run left
    /// try await client.connect()
    /// try await client.publish(to: "sensors/1/temp", string: "21.5", completion: .stored)
    /// ```
    ///
    /// - One live client per directory: a lock file (`lock`, an exclusive `flock`) is held while the client lives,
    ///   and a second client gets ``MQTTError/Code/outboxInUse``. The kernel releases it when the process ends.
    /// - A torn last record (a crash in the middle of a write) is detected by its checksum on open, reported in the
    ///   log and in ``OutboxStatus/corruptBytes``, and cut off; the records before it are sent.
    /// - The on-disk format is mqtt-bridge's spool format: one implementation serves both.
    /// - A message expiry interval (MQTT 5) counts from when the message was stored, by the wall clock, across
    ///   restarts: the message goes out with what is left of it, and one whose interval ran out is not sent. Its
    ///   waiter or callback gets ``MQTTError/Code/messageExpired`` and ``OutboxStatus/refusedMessages`` counts it.
    ///   The count stops once the message is handed to libmosquitto (at most ``MQTTConfiguration/maximumQueuedMessages``
    ///   at a time, also while offline), as for a client without an outbox.
    public struct Outbox: Sendable, Hashable {
        /// When the outbox calls `fsync`.
        public enum FsyncPolicy: Sendable, Hashable {
            /// After every append: survives a power loss, slowest.
            case always
            /// At most this long after an append: survives `kill -9` always (the page cache keeps the data), and
            /// loses at most this interval on a power loss.
            case interval(Duration)
            /// Never: survives `kill -9`, not a power loss.
            case never
        }

        /// What `publish` does when the outbox holds ``maximumBytes`` of unacknowledged messages, or the disk is full.
        public enum FullPolicy: Sendable, Hashable {
            /// Wait until the broker acknowledged enough (or, for a full disk, until a write succeeds, retried every
            /// 100 ms; cancelling the waiting task stops those retries, and nothing was stored then). A shutdown ends
            /// either wait.
            case suspendPublisher
            /// Throw at once: ``MQTTError/Code/outboxFull``, or ``MQTTError/Code/outboxUnavailable`` for a full
            /// disk. Nothing was stored.
            case fail
        }

        /// The directory (created 0700 if missing; its files are 0600).
        public var directory: String
        /// The most unacknowledged bytes (records with their headers) held before ``whenFull`` applies.
        public var maximumBytes: Int
        /// When to fsync. Default: every second.
        public var fsync: FsyncPolicy
        /// What happens when the outbox is full.
        public var whenFull: FullPolicy
        /// Size of one segment file; fully acknowledged segments are deleted.
        public var segmentBytes: Int

        /// Creates an outbox configuration.
        public init(directory: String, maximumBytes: Int = 256 << 20, fsync: FsyncPolicy = .interval(.seconds(1)),
                    whenFull: FullPolicy = .suspendPublisher, segmentBytes: Int = 16 << 20) {
            self.directory = directory
            self.maximumBytes = maximumBytes
            self.fsync = fsync
            self.whenFull = whenFull
            self.segmentBytes = segmentBytes
        }
    }
}

/// What a client's durable outbox holds now (``MQTTClient/outboxStatus``).
public struct OutboxStatus: Sendable, Hashable {
    /// Messages stored and not yet acknowledged by the broker.
    public var messages: Int
    /// Their size on disk, headers included.
    public var bytes: Int
    /// How long the oldest of them has waited (since it was stored, or since the outbox was opened for one a
    /// previous run left); nil when the outbox is empty.
    public var oldestAge: Duration?
    /// Messages a previous run left unacknowledged, found when the outbox was opened.
    public var recoveredMessages: Int
    /// Bytes of a torn or corrupt tail cut off when the outbox was opened (a crash in the middle of a write).
    public var corruptBytes: Int
    /// Messages the broker or the client refused for good, or that expired in the outbox (MQTT 5 message expiry
    /// interval), since the client was created (logged, then removed).
    public var refusedMessages: Int
}
