import MosquittoPOSIX
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A buffered writer for a file descriptor (standard output or error), safe to share between threads.
///
/// The subscriber appends each formatted message and flushes when no further message is waiting, so a burst of
/// messages costs one `write(2)` per 64 KiB instead of one per message, while a lone message still reaches the
/// reader at once. A write error (for example a closed pipe) is remembered in ``failed``.
package final class StandardOutput: Sendable {
    /// Standard output.
    package static let shared = StandardOutput(fileDescriptor: 1)
    /// Standard error (unbuffered: every line is written at once).
    package static let error = StandardOutput(fileDescriptor: 2)

    private struct State {
        var buffer: [UInt8] = []
        var failed = false
    }
    private let state = LockedValue(State())
    private let fd: Int32
    /// Bytes held before a write is forced.
    package let threshold = 65536

    /// Creates a writer for `fileDescriptor`.
    package init(fileDescriptor: Int32) {
        fd = fileDescriptor
    }

    /// True once a write failed (the reader went away).
    package var failed: Bool { state.withLock { $0.failed } }

    /// Appends bytes; writes them out when more than ``threshold`` bytes are held.
    package func append(_ bytes: [UInt8]) {
        state.withLock { s in
            s.buffer.append(contentsOf: bytes)
            if s.buffer.count >= threshold { Self.drain(fd, &s) }
        }
    }

    /// Appends a line and writes everything out.
    package func writeLine(_ line: String) {
        state.withLock { s in
            s.buffer.append(contentsOf: line.utf8)
            s.buffer.append(10)
            Self.drain(fd, &s)
        }
    }

    /// Writes out what is held. Returns false when the write failed.
    @discardableResult
    package func flush() -> Bool {
        state.withLock { s in
            Self.drain(fd, &s)
            return !s.failed
        }
    }

    private static func drain(_ fd: Int32, _ s: inout State) {
        guard !s.buffer.isEmpty else { return }
        if s.failed { s.buffer.removeAll(keepingCapacity: true); return }
        var offset = 0
        s.buffer.withUnsafeBytes { raw in
            while offset < raw.count {
                let n = write(fd, raw.baseAddress! + offset, raw.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    s.failed = true
                    return
                }
                offset += n
            }
        }
        s.buffer.removeAll(keepingCapacity: true)
    }
}

/// Prints one line on standard error at once.
func printError(_ line: String) {
    StandardOutput.error.writeLine(line)
}
