#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

import Foundation

// Plain blocking sockets for the "legacy" side of the bridge examples: a line-oriented TCP device and UDP peers.
// They listen on 127.0.0.1 only. Each blocking call runs on its own thread, never on the Swift concurrency pool.

private func loopback(port: UInt16) -> sockaddr_in {
    var a = sockaddr_in()
    #if canImport(Darwin)
    a.sin_len = UInt8(MemoryLayout<sockaddr_in>.size)
    #endif
    a.sin_family = sa_family_t(AF_INET)
    a.sin_port = port.bigEndian
    a.sin_addr.s_addr = inet_addr("127.0.0.1")
    return a
}

private func bindLoopback(_ fd: Int32, port: UInt16) throws -> Int {
    var yes: Int32 = 1
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
    var a = loopback(port: port)
    let rc = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    guard rc == 0 else { throw CheckFailed("cannot bind 127.0.0.1:\(port): \(String(cString: strerror(errno)))") }
    var bound = sockaddr_in()
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &bound) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
    return Int(UInt16(bigEndian: bound.sin_port))
}

/// Runs a blocking `body` on a new thread.
public func onThread(_ name: String, _ body: @escaping @Sendable () -> Void) {
    let t = Thread(block: body)
    t.name = name
    t.start()
}

/// A TCP listener on 127.0.0.1 and a free port.
public final class TCPListener: @unchecked Sendable {
    public let fd: Int32
    public let port: Int

    public init() throws {
        #if canImport(Glibc)
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
        #else
        fd = socket(AF_INET, SOCK_STREAM, 0)
        #endif
        port = try bindLoopback(fd, port: 0)
        guard listen(fd, 8) == 0 else { throw CheckFailed("cannot listen: \(String(cString: strerror(errno)))") }
    }

    /// Waits for the next connection; nil once the listener is stopped.
    public func nextConnection() -> LineConnection? {
        let c = accept(fd, nil, nil)
        return c >= 0 ? LineConnection(fd: c) : nil
    }

    /// Stops listening; a waiting ``nextConnection()`` returns nil.
    ///
    /// The socket itself is closed when the listener is released: closing it here would free its number while
    /// another thread may be on its way to `accept`, which would then accept on whatever socket reuses the number.
    public func stop() {
        shutdown(fd, Int32(SHUT_RDWR))
    }

    deinit { _ = close(fd) }
}

/// One TCP connection that reads and writes lines ending in `\n`.
public final class LineConnection: @unchecked Sendable {
    let fd: Int32
    private var buffer: [UInt8] = []  // only touched by the one reading thread
    private let writeLock = NSLock()

    init(fd: Int32) { self.fd = fd }

    /// The next line without its `\n`; nil at end of stream.
    public func readLine() -> String? {
        while true {
            if let nl = buffer.firstIndex(of: 0x0A) {
                let line = String(decoding: buffer[..<nl], as: UTF8.self)
                buffer.removeFirst(nl + 1)
                return line
            }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let n = read(fd, &chunk, chunk.count)
            if n <= 0 { return nil }
            buffer += chunk[..<n]
        }
    }

    /// Writes `line` and a `\n`. False when the peer is gone.
    @discardableResult
    public func writeLine(_ line: String) -> Bool {
        writeLock.withLock {
            let bytes = Array((line + "\n").utf8)
            var offset = 0
            while offset < bytes.count {
                let n = bytes[offset...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                if n <= 0 { return false }
                offset += n
            }
            return true
        }
    }

    /// Closes the connection; a waiting ``readLine()`` returns nil.
    public func stop() {
        shutdown(fd, Int32(SHUT_RDWR))
        _ = close(fd)
    }
}

/// A UDP socket on 127.0.0.1.
public final class UDPSocket: @unchecked Sendable {
    public let fd: Int32
    public let port: Int

    /// Binds to `port` (0: a free one).
    public init(port: Int = 0) throws {
        #if canImport(Glibc)
        fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
        #else
        fd = socket(AF_INET, SOCK_DGRAM, 0)
        #endif
        self.port = try bindLoopback(fd, port: UInt16(port))
        var timeout = timeval(tv_sec: 0, tv_usec: 100_000)  // so that receive() notices stop()
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    /// A UDP port that was free a moment ago, for a program that wants to be told where to listen.
    public static func freePort() throws -> Int {
        let s = try UDPSocket()
        defer { s.stop() }
        return s.port
    }

    /// Sends one datagram to 127.0.0.1:`port`.
    public func send(_ text: String, to port: Int) {
        var a = loopback(port: UInt16(port))
        let bytes = Array(text.utf8)
        _ = withUnsafePointer(to: &a) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                bytes.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, 0, sa, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
        }
    }

    /// Waits for the next datagram; nil once the socket is stopped.
    public func receive() -> String? {
        var chunk = [UInt8](repeating: 0, count: 65536)
        while !stopped.value {
            let n = recv(fd, &chunk, chunk.count, 0)
            if n >= 0 { return String(decoding: chunk[..<n], as: UTF8.self) }
        }
        return nil
    }

    private let stopped = Locked(false)

    /// Stops receiving: a waiting ``receive()`` returns nil within 100 ms. The descriptor closes at deinit.
    public func stop() {
        stopped.withLock { $0 = true }
    }

    deinit { _ = close(fd) }
}
