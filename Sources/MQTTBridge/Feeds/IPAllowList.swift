#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The peers a TCP server route accepts: IP addresses and CIDR blocks, IPv4 and IPv6. Empty allows everyone.
package struct IPAllowList: Sendable, Hashable {
    struct Entry: Sendable, Hashable {
        var bytes: [UInt8]
        var prefix: Int
    }
    let entries: [Entry]

    /// Creates a list from entries such as `127.0.0.1`, `10.0.0.0/8` or `::1`. Invalid entries are skipped.
    package init(_ entries: [String]) {
        self.entries = entries.compactMap(Self.parse)
    }

    /// Whether `entry` is an IP address or CIDR block.
    package static func isValidEntry(_ entry: String) -> Bool { parse(entry) != nil }

    /// Whether `address` is allowed.
    package func allows(_ address: String) -> Bool {
        if entries.isEmpty { return true }
        guard let a = Self.address(address) else { return false }
        for e in entries {
            var candidate = a
            // IPv4-mapped IPv6 peers match IPv4 entries.
            if e.bytes.count == 4 && a.count == 16 && a[0..<10].allSatisfy({ $0 == 0 }) && a[10] == 0xFF && a[11] == 0xFF {
                candidate = Array(a[12...])
            }
            guard candidate.count == e.bytes.count else { continue }
            var bits = e.prefix
            var match = true
            for i in 0..<candidate.count where bits > 0 {
                let take = min(8, bits)
                let mask: UInt8 = take == 8 ? 0xFF : ~(0xFF >> UInt8(take))
                if candidate[i] & mask != e.bytes[i] & mask { match = false; break }
                bits -= take
            }
            if match { return true }

        }
        return false
    }

    static func parse(_ s: String) -> Entry? {
        let parts = s.split(separator: "/", maxSplits: 1).map(String.init)
        guard let first = parts.first, let bytes = address(first) else { return nil }
        var prefix = bytes.count * 8
        if parts.count == 2 {
            guard let p = Int(parts[1]), (0...bytes.count * 8).contains(p) else { return nil }
            prefix = p
        }
        return Entry(bytes: bytes, prefix: prefix)
    }

    static func address(_ s: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, s, &v4) == 1 {
            return withUnsafeBytes(of: &v4) { Array($0) }
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, s, &v6) == 1 {
            return withUnsafeBytes(of: &v6) { Array($0) }
        }
        return nil
    }
}
