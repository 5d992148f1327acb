#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
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

/// Holds a loopback TCP port that a stopped broker released: listening, never accepting, so that no other test's
/// broker or listener can take it while a client keeps reconnecting to it (the client's CONNECT then goes
/// unanswered). Released by ``release()``.
package final class PortHolder: Sendable {
    private let fd: Int32

    package init(port: Int) throws {
        fd = try listenOnLoopback(port: port).descriptor
    }

    package func release() { _ = close(fd) }
}

/// A TCP socket listening on 127.0.0.1, at `port` or (0) at a port the system chose: the descriptor and the port.
/// For ``PortHolder`` and the small servers tests play (a redirecting broker, a feed that collects lines); the
/// caller accepts and closes. `SO_REUSEADDR`: a stopped broker's connections may be in TIME_WAIT on the port.
package func listenOnLoopback(port: Int = 0) throws -> (descriptor: Int32, port: Int) {
    #if canImport(Glibc)
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
    #else
    let fd = socket(AF_INET, SOCK_STREAM, 0)
    #endif
    guard fd >= 0 else { throw POSIXError(.EMFILE) }
    var yes: Int32 = 1
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = in_port_t(UInt16(port).bigEndian)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
    guard bound == 0, listen(fd, 16) == 0 else {
        let e = errno
        close(fd)
        throw POSIXError(POSIXErrorCode(rawValue: e) ?? .EADDRINUSE)
    }
    _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
    return (fd, Int(UInt16(bigEndian: addr.sin_port)))
}
