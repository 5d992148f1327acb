import FoundationEssentials
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Logging

/// The `-d` output: libmosquitto's log lines printed on standard output, one per line, as mosquitto's clients
/// print them. Other library messages are printed only at `notice` or above, prefixed with their level.
///
/// Passwords and PSK keys never reach it: libmosquitto does not log them and the tools never log options.
package struct DebugLogHandler: LogHandler {
    /// Whether anything is printed at all.
    package var enabled: Bool
    /// The level; set by the logger.
    package var logLevel: Logger.Level = .trace
    /// Metadata (unused).
    package var metadata: Logger.Metadata = [:]

    /// Creates a handler.
    package init(enabled: Bool) { self.enabled = enabled }

    /// Metadata access (unused).
    package subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    /// Prints a log line.
    package func log(event: LogEvent) {
        guard enabled else { return }
        let text = event.message.description
        let line: String
        if text.hasPrefix("libmosquitto: ") {
            line = String(text.dropFirst("libmosquitto: ".count))
        } else if event.level >= .notice {
            line = "\(event.level): \(text)"
        } else {
            return
        }
        StandardOutput.shared.writeLine(line)
    }
}
