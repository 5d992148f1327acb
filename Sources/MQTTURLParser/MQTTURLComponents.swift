/// The parts of an `-L` style MQTT URL: `scheme://[username[:password]@]host[:port][/topic]`.
///
/// The one parser of such URLs, shared by the library (`MQTTConfiguration(url:)`, `MQTTURL`) and by mqtt-pub,
/// mqtt-sub and mqtt-rr (`-L`), so that both accept the same URLs. It is pure Swift on bytes, with no Foundation,
/// because the command-line tools link nothing but libmosquitto.
///
/// The grammar is `mosquitto_pub -L`'s, with these differences: a host or port mosquitto 2.0.11 would misread is
/// refused (an empty host, a port that is not 1 to 65535, more than one `:`), IPv6 literals in brackets are accepted,
/// and the user information ends at the last `@`, not the first:
/// - The scheme is `mqtt`, `mqtts`, `ws` or `wss`, in any case. `mqtts` and `wss` mean TLS. The port defaults to
///   1883, or 8883 with TLS, as mosquitto 2.1's clients have it. (`ws` and `wss` mean MQTT over WebSockets, which
///   the library and the CLIs carry through a private tunnel: libmosquitto 2.0.11 has no WebSockets client.)
/// - The topic is everything after the first `/`, unparsed (it may hold `/`, `+`, `#`); nil when there is no `/`.
/// - The user information ends at the last `@` before the topic, so a password may contain `@`; the user name ends
///   at the first `:` in it, so a password may contain `:`.
/// - The host is an IPv6 literal in brackets (`[::1]`), or ends at the only `:`. It must not be empty.
/// - The port is 1 to 5 decimal digits with a value from 1 to 65535.
/// - Nothing is percent-decoded.
public struct MQTTURLComponents: Sendable, Hashable {
    /// The URL scheme.
    public enum Scheme: Sendable, Hashable {
        /// `mqtt://`: MQTT over TCP.
        case mqtt
        /// `mqtts://`: MQTT over TLS.
        case mqtts
        /// `ws://`: MQTT over WebSockets.
        case ws
        /// `wss://`: MQTT over WebSockets over TLS.
        case wss

        /// True for `mqtts` and `wss`.
        public var isTLS: Bool { self == .mqtts || self == .wss }
        /// True for `ws` and `wss`.
        public var isWebSockets: Bool { self == .ws || self == .wss }
        /// 8883 with TLS, 1883 without.
        public var defaultPort: Int { isTLS ? 8883 : 1883 }
    }

    /// Why a URL was refused.
    public enum Failure: Error, Sendable, Hashable {
        /// The scheme is not `mqtt://`, `mqtts://`, `ws://` or `wss://`.
        case unsupportedScheme
        /// `requireTopic` was set and there is no `/` after the host.
        case missingTopic
        /// The host is empty.
        case missingHost
        /// The host holds more than one `:` (an IPv6 address without brackets), a `[` starts an IPv6 literal that
        /// has no `]`, or something other than `:port` follows the `]`.
        case invalidIPv6Literal
        /// The text after the host's `:` is not a number from 1 to 65535.
        case invalidPort
    }

    /// The scheme.
    public var scheme: Scheme
    /// The user name (possibly empty), when the URL has an `@`.
    public var username: [UInt8]?
    /// The password (possibly empty), when the user information has a `:`.
    public var password: [UInt8]?
    /// The host name or address, without the brackets of an IPv6 literal.
    public var host: [UInt8]
    /// The port given, or the scheme's default.
    public var port: Int
    /// True when the URL gave the port.
    public var portGiven: Bool
    /// The text after the first `/` (possibly empty), or nil when there is none.
    public var topic: [UInt8]?

    /// Parses a URL given as bytes (a C string's, or a `String`'s `utf8`).
    /// - Parameter requireTopic: Refuse a URL without a `/topic` part (as `mosquitto_pub -L` does), reporting
    ///   ``Failure/missingTopic`` before anything about the host.
    public init(parsing url: some Collection<UInt8>, requireTopic: Bool = false) throws(Failure) {
        let bytes = Array(url)
        var rest: ArraySlice<UInt8>
        guard let (scheme, length) = Self.scheme(of: bytes) else { throw .unsupportedScheme }
        self.scheme = scheme
        rest = bytes[length...]

        topic = nil
        if let slash = rest.firstIndex(of: UInt8(ascii: "/")) {
            topic = Array(rest[(slash + 1)...])
            rest = rest[..<slash]
        } else if requireTopic {
            throw .missingTopic
        }

        username = nil
        password = nil
        if let at = rest.lastIndex(of: UInt8(ascii: "@")) {
            let userinfo = rest[..<at]
            rest = rest[(at + 1)...]
            if let colon = userinfo.firstIndex(of: UInt8(ascii: ":")) {
                username = Array(userinfo[..<colon])
                password = Array(userinfo[(colon + 1)...])
            } else {
                username = Array(userinfo)
            }
        }

        var portText: ArraySlice<UInt8>?
        if rest.first == UInt8(ascii: "[") {
            guard let close = rest.firstIndex(of: UInt8(ascii: "]")) else { throw .invalidIPv6Literal }
            host = Array(rest[(rest.startIndex + 1)..<close])
            let after = rest[(close + 1)...]
            if let first = after.first {
                guard first == UInt8(ascii: ":") else { throw .invalidIPv6Literal }
                portText = after.dropFirst()
            }
        } else if let colon = rest.firstIndex(of: UInt8(ascii: ":")) {
            // A second ':' is an IPv6 address without its brackets, which mosquitto cannot read either.
            if rest[(colon + 1)...].contains(UInt8(ascii: ":")) { throw .invalidIPv6Literal }
            host = Array(rest[..<colon])
            portText = rest[(colon + 1)...]
        } else {
            host = Array(rest)
        }
        if host.isEmpty { throw .missingHost }

        if let portText {
            guard let p = Self.port(portText) else { throw .invalidPort }
            port = p
            portGiven = true
        } else {
            port = scheme.defaultPort
            portGiven = false
        }
    }

    /// Parses a URL given as a string.
    public init(parsing url: String, requireTopic: Bool = false) throws(Failure) {
        try self.init(parsing: url.utf8, requireTopic: requireTopic)
    }

    /// The host as a string (bytes that are not UTF-8 are replaced).
    public var hostString: String { String(decoding: host, as: UTF8.self) }

    /// The scheme at the start of `bytes` (case-insensitive) and the length of `scheme://`.
    private static func scheme(of bytes: [UInt8]) -> (Scheme, Int)? {
        let candidates: [(String, Scheme)] = [("mqtt://", .mqtt), ("mqtts://", .mqtts), ("ws://", .ws), ("wss://", .wss)]
        for (prefix, scheme) in candidates {
            let p = Array(prefix.utf8)
            guard bytes.count >= p.count else { continue }
            if zip(bytes, p).allSatisfy({ lowercased($0) == $1 }) { return (scheme, p.count) }
        }
        return nil
    }

    private static func lowercased(_ b: UInt8) -> UInt8 {
        (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(b) ? b + 32 : b
    }

    /// 1 to 5 decimal digits, 1...65535.
    private static func port(_ text: ArraySlice<UInt8>) -> Int? {
        guard (1...5).contains(text.count) else { return nil }
        var value = 0
        for b in text {
            guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(b) else { return nil }
            value = value * 10 + Int(b - UInt8(ascii: "0"))
        }
        return (1...65535).contains(value) ? value : nil
    }
}
