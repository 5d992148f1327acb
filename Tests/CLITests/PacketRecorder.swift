import Foundation
import MosquittoPOSIX

#if canImport(Glibc)
import Glibc
#endif

/// A TCP relay on loopback between a client and the real broker that records what the client sends, so that a
/// test can see the MQTT packets a command line produced (as a packet capture would). It forwards every byte
/// unchanged in both directions; it does not speak MQTT.
final class PacketRecorder: @unchecked Sendable {
    let port: Int
    private let listener: Int32
    private let target: Int
    /// Client-to-broker bytes, one entry per accepted connection.
    private let sent = LockedValue<[[UInt8]]>([])
    private let closed = LockedValue(false)

    /// With `socks5`, the relay is a minimal SOCKS5 proxy (no authentication, CONNECT to an IPv4 address or a
    /// host name that resolves to loopback) in front of the broker, for `--proxy` tests.
    private let socks5: Bool
    /// How many SOCKS5 CONNECT requests the relay served.
    var proxiedConnections: Int { served.withLock { $0 } }
    private let served = LockedValue(0)

    /// `address` is the loopback address the relay listens on (127.0.0.2 reaches the same machine under a name that
    /// a certificate for 127.0.0.1 does not cover).
    init(forwardingTo brokerPort: Int, socks5: Bool = false, address listenAddress: String = "127.0.0.1") throws {
        self.socks5 = socks5
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr(listenAddress)
        address.sin_port = 0
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 8) == 0 else {
            Glibc.close(fd)
            throw POSIXError(.EADDRINUSE)
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        listener = fd
        target = brokerPort
        port = Int(UInt16(bigEndian: address.sin_port))
        startDetachedThread { [self] in acceptLoop() }
    }

    /// Stops accepting; relays already running end when their peers close.
    ///
    /// Only the accept loop closes the listening socket, once `accept` has failed. Closing it here freed its number
    /// while the loop could still be on its way to `accept`: the next recorder's socket got the same number, and
    /// the old loop accepted (and closed) the next test client's connection. Under load that lost a recording.
    func close() {
        closed.withLock { $0 = true }
        shutdown(listener, Int32(SHUT_RDWR))
    }

    /// The packets the client sent on each connection so far.
    var connections: [[MQTTPacket]] { sent.withLock { $0 }.map(MQTTPacket.split) }

    /// Whether the client closed connection `index` (everything it sent on it is recorded).
    func clientClosed(_ index: Int) -> Bool { closedByClient.withLock { $0.contains(index) } }
    private let closedByClient = LockedValue<Set<Int>>([])

    private func acceptLoop() {
        defer { Glibc.close(listener) }
        while true {
            let client = accept(listener, nil, nil)
            if client < 0 { return }
            if closed.withLock({ $0 }) { Glibc.close(client); return }
            var destination = UInt16(target)
            if socks5 {
                guard let port = socksHandshake(client) else { Glibc.close(client); continue }
                destination = port
                served.withLock { $0 += 1 }
            }
            let broker = socket(AF_INET, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            address.sin_port = destination.bigEndian
            let ok = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(broker, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            if ok != 0 { Glibc.close(client); Glibc.close(broker); continue }
            let index = sent.withLock { s -> Int in s.append([]); return s.count - 1 }
            // Both directions run until their reader sees the end; the second to finish closes the sockets.
            let running = LockedValue(2)
            let finished: @Sendable () -> Void = {
                if running.withLock({ $0 -= 1; return $0 }) == 0 {
                    Glibc.close(client)
                    Glibc.close(broker)
                }
            }
            startDetachedThread { [self] in pump(from: client, to: broker, record: index); finished() }
            startDetachedThread { [self] in pump(from: broker, to: client, record: nil); finished() }
        }
    }

    /// Reads exactly `count` bytes.
    private func readExactly(_ fd: Int32, _ count: Int) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let n = out[got...].withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { return nil }
            got += n
        }
        return out
    }

    /// The SOCKS5 greeting and CONNECT request (RFC 1928); returns the requested port. The destination host is
    /// taken to be loopback (the tests only ask for the local broker).
    private func socksHandshake(_ fd: Int32) -> UInt16? {
        guard let hello = readExactly(fd, 2), hello[0] == 5, let methods = readExactly(fd, Int(hello[1])),
              methods.contains(0) else { return nil }
        _ = [UInt8]([5, 0]).withUnsafeBytes { write(fd, $0.baseAddress, 2) }
        guard let head = readExactly(fd, 4), head[0] == 5, head[1] == 1 else { return nil }
        switch head[3] {
        case 1: guard readExactly(fd, 4) != nil else { return nil }
        case 3:
            guard let n = readExactly(fd, 1), readExactly(fd, Int(n[0])) != nil else { return nil }
        default: return nil
        }
        guard let port = readExactly(fd, 2) else { return nil }
        _ = [UInt8]([5, 0, 0, 1, 127, 0, 0, 1, port[0], port[1]]).withUnsafeBytes { write(fd, $0.baseAddress, 10) }
        return UInt16(port[0]) << 8 | UInt16(port[1])
    }

    private func pump(from source: Int32, to sink: Int32, record: Int?) {
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(source, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            if let record { sent.withLock { $0[record] += buffer[0..<n] } }
            var offset = 0
            while offset < n {
                let w = buffer[offset..<n].withUnsafeBytes { write(sink, $0.baseAddress, $0.count) }
                if w <= 0 { break }
                offset += w
            }
        }
        if let record { closedByClient.withLock { _ = $0.insert(record) } }
        shutdown(sink, Int32(SHUT_WR))
    }
}

/// One MQTT 5 control packet as sent, with the properties of the packets the tests look at decoded.
struct MQTTPacket {
    /// The packet type (1 CONNECT, 3 PUBLISH, 8 SUBSCRIBE, 10 UNSUBSCRIBE, 14 DISCONNECT, …).
    var type: UInt8
    var body: [UInt8]
    /// The low four bits of the first byte (PUBLISH: DUP, QoS, RETAIN).
    var flags: UInt8 = 0

    /// Splits a byte stream into packets (fixed header and remaining length); a trailing partial packet is left out.
    static func split(_ bytes: [UInt8]) -> [MQTTPacket] {
        var out: [MQTTPacket] = []
        var i = 0
        while i < bytes.count {
            let type = bytes[i] >> 4
            var length = 0, shift = 0, j = i + 1
            while j < bytes.count {
                length |= Int(bytes[j] & 0x7F) << shift
                shift += 7
                j += 1
                if bytes[j - 1] & 0x80 == 0 { break }
            }
            guard j + length <= bytes.count else { break }
            out.append(MQTTPacket(type: type, body: Array(bytes[j..<(j + length)]), flags: bytes[i] & 0x0F))
            i = j + length
        }
        return out
    }

    /// The MQTT 5 property block of CONNECT, PUBLISH, SUBSCRIBE, UNSUBSCRIBE and DISCONNECT, as (identifier, raw
    /// value), in the order sent.
    var properties: [(UInt8, [UInt8])] {
        var i: Int
        switch type {
        case 3:  // topic name, then the packet identifier at QoS 1 and 2
            guard body.count > 2 else { return [] }
            i = 2 + (Int(body[0]) << 8 | Int(body[1])) + ((flags >> 1) & 3 > 0 ? 2 : 0)
        case 1:  // protocol name, level, flags, keepalive
            guard body.count > 2 else { return [] }
            let nameLength = Int(body[0]) << 8 | Int(body[1])
            i = 2 + nameLength + 1 + 1 + 2
        case 8, 10: i = 2  // packet identifier
        case 14:
            guard body.count > 1 else { return [] }
            i = 1  // reason code
        default: return []
        }
        guard i < body.count else { return [] }
        var length = 0, shift = 0
        while i < body.count {
            length |= Int(body[i] & 0x7F) << shift
            shift += 7
            i += 1
            if body[i - 1] & 0x80 == 0 { break }
        }
        let end = min(body.count, i + length)
        var out: [(UInt8, [UInt8])] = []
        while i < end {
            let id = body[i]
            i += 1
            let size: Int
            switch id {
            case 0x01, 0x17, 0x19, 0x24, 0x25, 0x28, 0x29, 0x2A: size = 1
            case 0x13, 0x21, 0x22, 0x23: size = 2
            case 0x02, 0x11, 0x18, 0x27: size = 4
            case 0x0B:  // variable byte integer
                var k = i
                while k < end && body[k] & 0x80 != 0 { k += 1 }
                size = k - i + 1
            case 0x26:  // string pair
                let a = Int(body[i]) << 8 | Int(body[i + 1])
                let b = Int(body[i + 2 + a]) << 8 | Int(body[i + 3 + a])
                size = 4 + a + b
            default:  // strings and binary data
                size = 2 + (Int(body[i]) << 8 | Int(body[i + 1]))
            }
            out.append((id, Array(body[i..<min(end, i + size)])))
            i += size
        }
        return out
    }

    /// The user properties (0x26) in order.
    var userProperties: [String] {
        properties.filter { $0.0 == 0x26 }.map { _, v in
            let a = Int(v[0]) << 8 | Int(v[1])
            let key = String(decoding: v[2..<(2 + a)], as: UTF8.self)
            let value = String(decoding: v[(4 + a)...], as: UTF8.self)
            return key + "=" + value
        }
    }

    /// The raw value of one property, if present.
    func property(_ id: UInt8) -> [UInt8]? { properties.first { $0.0 == id }?.1 }
}
