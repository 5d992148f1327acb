#if canImport(Darwin)
import Darwin
#elseif canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

import Foundation
import MosquittoPOSIX

/// Thin wrappers over the POSIX calls the broker needs: loopback sockets, owner-only files, signals.
enum POSIX {
    static var errnoDescription: String {
        String(cString: strerror(errno))
    }

    // MARK: Signals

    /// Sends `signal` to `pid`. Errors (typically `ESRCH`: already gone) are ignored.
    static func send(signal: Int32, to pid: Int32) {
        guard pid > 0 else { return }
        _ = kill(pid, signal)
    }

    static var effectiveUserIsRoot: Bool {
        geteuid() == 0
    }

    // MARK: Files

    /// Creates a pipe whose two ends are close-on-exec, so no spawned program inherits them by accident.
    static func makeCloseOnExecPipe() -> (readEnd: Int32, writeEnd: Int32)? {
        // pipe2(O_CLOEXEC) is not visible from Swift's Glibc module; a program spawned by another
        // thread between pipe() and fcntl() could inherit an end, which only delays the watchdog.
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { return nil }
        _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
        return (fds[0], fds[1])
    }

    /// Creates a fresh directory with mode 0700 under `parent`, named `prefix` plus random characters.
    static func makeTemporaryDirectory(in parent: String, prefix: String) throws(MosquittoBrokerError) -> String {
        var template = Array((parent + "/" + prefix + "XXXXXX").utf8CString)
        let made = template.withUnsafeMutableBufferPointer { buffer -> Bool in
            mkdtemp(buffer.baseAddress!) != nil
        }
        guard made else {
            throw MosquittoBrokerError(
                code: .fileSystem,
                message: "cannot create a temporary directory in \(parent): \(errnoDescription)",
                hint: "check that $TMPDIR points to a writable directory"
            )
        }
        let path = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        _ = chmod(path, 0o700)
        return path
    }

    /// Creates `path` as a directory with mode 0700 (or tightens the mode if it exists).
    static func makePrivateDirectory(_ path: String) throws(MosquittoBrokerError) {
        if mkdir(path, 0o700) != 0 && errno != EEXIST {
            throw MosquittoBrokerError(code: .fileSystem, message: "cannot create \(path): \(errnoDescription)")
        }
        _ = chmod(path, 0o700)
    }

    /// Writes `contents` to `path`, replacing it, with mode 0600.
    static func writePrivateFile(_ path: String, contents: String) throws(MosquittoBrokerError) {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw MosquittoBrokerError(code: .fileSystem, message: "cannot write \(path): \(errnoDescription)")
        }
        defer { close(fd) }
        _ = fchmod(fd, 0o600)
        let bytes = Array(contents.utf8)
        var written = 0
        while written < bytes.count {
            let result = bytes.withUnsafeBytes { buffer in
                write(fd, buffer.baseAddress! + written, buffer.count - written)
            }
            if result < 0 {
                if errno == EINTR { continue }
                throw MosquittoBrokerError(code: .fileSystem, message: "cannot write \(path): \(errnoDescription)")
            }
            written += result
        }
    }

    /// Opens `path` for appending (creating it with mode 0600), for use as a child's stdout and stderr.
    static func openPrivateFileForAppending(_ path: String) throws(MosquittoBrokerError) -> FileHandle {
        let fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            throw MosquittoBrokerError(code: .fileSystem, message: "cannot open \(path): \(errnoDescription)")
        }
        _ = fchmod(fd, 0o600)
        return FileHandle(fileDescriptor: fd, closeOnDealloc: true)
    }

    /// Sets the mode of an existing file to 0600.
    static func makeOwnerOnly(_ path: String) {
        _ = chmod(path, 0o600)
    }

    static func fileSize(_ path: String) -> Int {
        var info = stat()
        guard stat(path, &info) == 0 else { return 0 }
        return Int(info.st_size)
    }

    static func isExecutableFile(_ path: String) -> Bool {
        var info = stat()
        guard stat(path, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else { return false }
        return access(path, X_OK) == 0
    }

    /// Reads `path` from byte `offset` to the end, decoding invalid UTF-8 leniently. Missing files read as "".
    static func readFile(_ path: String, from offset: Int = 0) -> String {
        guard let handle = FileHandle(forReadingAtPath: path) else { return "" }
        defer { try? handle.close() }
        if offset > 0 {
            do { try handle.seek(toOffset: UInt64(offset)) } catch { return "" }
        }
        let data = (try? handle.readToEnd()) ?? Data()
        return String(decoding: data, as: UTF8.self)
    }

    // MARK: Loopback sockets

    fileprivate static func makeLoopbackAddress(port: Int) -> sockaddr_in {
        var address = sockaddr_in()
        #if canImport(Darwin)
        address.sin_len = UInt8(MemoryLayout<sockaddr_in>.size)
        #endif
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(truncatingIfNeeded: port).bigEndian)
        address.sin_addr = in_addr(s_addr: in_addr_t(0x7F00_0001).bigEndian)
        return address
    }

    private static func makeTCPSocket() -> Int32 {
        #if canImport(Darwin)
        return socket(AF_INET, SOCK_STREAM, 0)
        #else
        return socket(AF_INET, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
        #endif
    }

    /// Finds `count` distinct free TCP ports on 127.0.0.1.
    ///
    /// Each port is found by binding a socket to `127.0.0.1:0` and reading the port the kernel chose.
    /// All sockets stay open until every port is known, so the ports differ; then they are closed.
    /// Another process could take a port before it is used; callers that can, keep a ``PortHold`` instead.
    static func reserveLoopbackPorts(count: Int) throws(MosquittoBrokerError) -> [Int] {
        var holds: [PortHold] = []
        defer { for hold in holds { hold.release() } }
        for _ in 0..<count {
            holds.append(try PortHold(port: 0))
        }
        return holds.map(\.port)
    }

    /// Whether a TCP connection to `127.0.0.1:port` succeeds. The connection is closed at once.
    static func canConnectToLoopback(port: Int) -> Bool {
        let fd = makeTCPSocket()
        guard fd >= 0 else { return false }
        defer { close(fd) }
        // Bound the connect: loopback answers at once, but never hang the caller.
        var timeout = timeval(tv_sec: 1, tv_usec: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = makeLoopbackAddress(port: port)
        let result = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        return result == 0
    }
}

/// A TCP socket bound to `127.0.0.1:port` with `SO_REUSEADDR` that never listens: it keeps the port for a broker
/// while mosquitto is not bound to it (before the first launch, while stopped, across a restart).
///
/// On Linux such a socket keeps the port away from everything else: the kernel never hands it out for `bind` to
/// port 0 or as the local port of an outgoing connection, and a `bind` without `SO_REUSEADDR` fails. Connections
/// to it are refused, exactly as if nothing were there, and mosquitto's listeners, plain, TLS and WebSockets (all
/// of which set `SO_REUSEADDR`), still bind and listen on it. Elsewhere (`SO_REUSEADDR` on BSD does not allow a
/// second socket on the same address) ``sharesWithMosquitto`` is false and every hold is released before a launch.
final class PortHold: Sendable {
    let port: Int
    private let descriptor: LockedValue<Int32>

    /// Whether mosquitto's plain and TLS listeners can bind while the hold is kept.
    static var sharesWithMosquitto: Bool {
        #if os(Linux)
        true
        #else
        false
        #endif
    }

    /// Binds `127.0.0.1:port`, or a port the kernel chooses when `port` is 0.
    init(port: Int) throws(MosquittoBrokerError) {
        #if canImport(Darwin)
        let fd = socket(AF_INET, SOCK_STREAM, 0)
        if fd >= 0 { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        #else
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
        #endif
        guard fd >= 0 else {
            throw MosquittoBrokerError(code: .fileSystem, message: "socket() failed: \(POSIX.errnoDescription)")
        }
        var yes: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        var address = POSIX.makeLoopbackAddress(port: port)
        let bound = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let named = bound == 0 ? withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        } : -1
        guard bound == 0, named == 0 else {
            let description = POSIX.errnoDescription
            close(fd)
            throw MosquittoBrokerError(code: .fileSystem, message: "cannot bind a socket to 127.0.0.1:\(port): \(description)")
        }
        self.port = Int(UInt16(bigEndian: address.sin_port))
        self.descriptor = LockedValue(fd)
    }

    /// Closes the socket; the port is free for anyone. Later calls do nothing.
    func release() {
        let fd = descriptor.withLock { fd -> Int32 in
            defer { fd = -1 }
            return fd
        }
        if fd >= 0 { close(fd) }
    }

    deinit { release() }
}
