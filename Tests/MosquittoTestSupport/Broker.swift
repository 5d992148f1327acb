import Foundation
import Logging
import Mosquitto
import MosquittoBroker

/// Starts a private broker for the duration of `body`, and always shuts it down.
package func withBroker<T>(_ configuration: MosquittoBroker.Configuration = .init(),
                           _ body: (MosquittoBroker) async throws -> T) async throws -> T {
    // mosquitto drops QoS 1/2 messages beyond max_queued_messages (1000 by default) for a subscriber that falls
    // behind, which a test process starved of CPU can. A million unless a test sets it, so that a count that
    // comes up short is the toolkit's loss, not the broker's policy. (Not 0, "no limit": with 0, mosquitto 2.0.11
    // disconnects every client whose publish its ACL refuses.)
    var configuration = configuration
    if configuration.maxQueuedMessages == nil { configuration.maxQueuedMessages = 1_000_000 }
    return try await MosquittoBroker.with(configuration, body)
}

/// A free TCP port on 127.0.0.1 (bound, read back, closed).
package func freeLoopbackPort() -> Int {
    (try? MosquittoBroker.freeLoopbackPort()) ?? 0
}

/// A logger at `level` (warnings and worse by default), for clients and bridges whose logs a test does not read.
package func quietLogger(_ label: String = "test", level: Logger.Level = .warning) -> Logger {
    var logger = Logger(label: label)
    logger.logLevel = level
    return logger
}

/// A log handler that keeps every line, to check what the library logs.
package struct CapturingLogHandler: LogHandler {
    package let lines: Locked<[String]>
    package var logLevel: Logger.Level = .trace
    package var metadata: Logger.Metadata = [:]

    package init(lines: Locked<[String]>, logLevel: Logger.Level = .trace) {
        self.lines = lines
        self.logLevel = logLevel
    }

    package subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    package func log(event: LogEvent) {
        lines.withLock { $0.append("\(event.level) \(event.message) \(event.metadata ?? [:])") }
    }
}
