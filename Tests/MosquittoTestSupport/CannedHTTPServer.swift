#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import MosquittoPOSIX

/// A loopback HTTP server that answers every request with the same canned bytes, then closes: a stand-in for a
/// web server, or a proxy, in front of a broker.
package final class CannedHTTPServer: Sendable {
    /// The loopback port it listens on.
    package let port: Int
    /// Each request received, up to its blank line.
    package let requests = Locked<[String]>([])
    private let fd: Int32
    private let stopped = Locked(false)

    /// Listens on a free loopback port and answers every request with `response`.
    package convenience init(response: String) throws {
        try self.init(respond: { _ in response })
    }

    /// Listens on a free loopback port and answers every request with what `respond` makes of it.
    package init(respond: @escaping @Sendable (String) -> String) throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0, listen(fd, 8) == 0 else { close(fd); throw POSIXError(.EADDRINUSE) }
        var bound = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &bound) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        self.fd = fd
        self.port = Int(UInt16(bigEndian: bound.sin_port))
        let requests = self.requests
        let stopped = self.stopped
        _ = startDetachedThread {
            // Only this thread closes the listening socket: closed by stop(), its number could be reused by the next
            // server's socket before this loop's next accept, which would then answer that server's clients.
            defer { close(fd) }
            while true {
                let c = accept(fd, nil, nil)
                if c < 0 || stopped.value {
                    if c >= 0 { close(c) }
                    return
                }
                var request: [UInt8] = []
                var buf = [UInt8](repeating: 0, count: 4096)
                while !request.suffix(4).elementsEqual("\r\n\r\n".utf8) {
                    let n = read(c, &buf, buf.count)
                    if n <= 0 { break }
                    request += buf[0..<n]
                }
                let text = String(decoding: request, as: UTF8.self)
                requests.withLock { $0.append(text) }
                let bytes = Array(respond(text).utf8)
                _ = write(c, bytes, bytes.count)
                // Let the client close first (at most 5 s): closing at once could overtake the answer, so that a
                // slow client saw the connection end before it read the response.
                var tv = timeval(tv_sec: 5, tv_usec: 0)
                setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
                while read(c, &buf, buf.count) > 0 {}
                close(c)
            }
        }
    }

    /// Stops listening (the accepting thread closes the socket).
    package func stop() {
        stopped.withLock { $0 = true }
        shutdown(fd, Int32(SHUT_RDWR))
    }
}

/// The `Sec-WebSocket-Accept` a WebSocket server answers to a request's `Sec-WebSocket-Key` (RFC 6455: base64 of the
/// SHA-1 of the key and a fixed GUID), for stand-in servers that upgrade.
package func webSocketAccept(forRequest request: String) -> String? {
    guard let line = request.split(separator: "\r\n").first(where: { $0.lowercased().hasPrefix("sec-websocket-key:") }) else { return nil }
    let key = line.dropFirst("sec-websocket-key:".count).trimmingCharacters(in: .whitespaces)
    return Data(sha1(Array((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").utf8))).base64EncodedString()
}

/// SHA-1 (FIPS 180-4), only for ``webSocketAccept(forRequest:)``.
func sha1(_ message: [UInt8]) -> [UInt8] {
    var h: [UInt32] = [0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0]
    var m = message
    let bits = UInt64(message.count) * 8
    m.append(0x80)
    while m.count % 64 != 56 { m.append(0) }
    for i in (0..<8).reversed() { m.append(UInt8(truncatingIfNeeded: bits >> (UInt64(i) * 8))) }
    func rotl(_ x: UInt32, _ n: UInt32) -> UInt32 { (x << n) | (x >> (32 - n)) }
    for chunk in stride(from: 0, to: m.count, by: 64) {
        var w = [UInt32](repeating: 0, count: 80)
        for i in 0..<16 {
            let j = chunk + 4 * i
            w[i] = UInt32(m[j]) << 24 | UInt32(m[j + 1]) << 16 | UInt32(m[j + 2]) << 8 | UInt32(m[j + 3])
        }
        for i in 16..<80 { w[i] = rotl(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1) }
        var (a, b, c, d, e) = (h[0], h[1], h[2], h[3], h[4])
        for i in 0..<80 {
            let f: UInt32
            let k: UInt32
            switch i {
            case 0..<20: f = (b & c) | (~b & d); k = 0x5A827999
            case 20..<40: f = b ^ c ^ d; k = 0x6ED9EBA1
            case 40..<60: f = (b & c) | (b & d) | (c & d); k = 0x8F1BBCDC
            default: f = b ^ c ^ d; k = 0xCA62C1D6
            }
            let t = rotl(a, 5) &+ f &+ e &+ k &+ w[i]
            (e, d, c, b, a) = (d, c, rotl(b, 30), a, t)
        }
        h[0] &+= a; h[1] &+= b; h[2] &+= c; h[3] &+= d; h[4] &+= e
    }
    return h.flatMap { v in [UInt8(v >> 24), UInt8((v >> 16) & 0xFF), UInt8((v >> 8) & 0xFF), UInt8(v & 0xFF)] }
}
