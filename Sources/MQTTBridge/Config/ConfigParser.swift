#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Mosquitto
import MQTTOutbox

/// `read(2)`, under a name that `ConfigParser.read(file:)` does not hide.
private func systemRead(_ fd: Int32, _ buffer: UnsafeMutableRawPointer, _ count: Int) -> Int { read(fd, buffer, count) }

/// One problem found in a configuration file.
public struct ConfigIssue: Error, Sendable, Hashable, CustomStringConvertible {
    /// The 1-based line number (0 when the problem is about the whole file).
    public var line: Int
    /// What is wrong.
    public var message: String
    /// Creates an issue.
    public init(line: Int, message: String) {
        self.line = line
        self.message = message
    }
    public var description: String { line > 0 ? "line \(line): \(message)" : message }
}

/// Every problem found in a configuration file, in line order.
public struct ConfigErrors: Error, Sendable, CustomStringConvertible {
    /// The problems.
    public var issues: [ConfigIssue]
    /// The file name used in messages.
    public var file: String
    public var description: String {
        issues.map { $0.line > 0 ? "\(file):\($0.line): \($0.message)" : "\(file): \($0.message)" }.joined(separator: "\n")
    }
}

/// A configuration file that cannot be read as text: missing, unreadable, a directory, a FIFO or device, too
/// large, or not UTF-8. ``message`` is one line in mosquitto's style, e.g.
/// `Error: Unable to open config file plant.conf: No such file or directory.`
public struct ConfigFileError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The path as given.
    public var path: String
    /// The whole line to print.
    public var message: String
    /// Creates an error.
    public init(path: String, message: String) {
        self.path = path
        self.message = message
    }
    public var description: String { message }
}

/// Reads the bridge's `mosquitto.conf`-style configuration.
///
/// One `key value` per line; a line whose first non-blank character is `#` is a comment; a value may be written
/// in double quotes (`framing` also takes single quotes, as on the command line: `framing 'length 2 be'`). Global
/// keys (the broker connection with mosquitto bridge names such as `address`, `remote_clientid`, `cleansession`,
/// `restart_timeout`, `bridge_cafile`; the spool; operations) come first. Each `route <name>` line starts a route
/// block whose keys apply to that route until the next `route` line:
///
/// ```
/// address 127.0.0.1:1883
/// remote_clientid plant1-bridge
/// cleansession false
/// spool_dir /var/lib/mqtt-bridge
/// metrics_listen 127.0.0.1:9100
///
/// route gps1
/// direction to_mqtt
/// mode tcp_client
/// address 10.0.0.5:10110
/// framing crlf
/// max_frame 4KiB
/// topic nmea/{feed}/{regex:1}
/// topic_regex ^\$(\w{5})
/// qos 1
/// ```
///
/// The keys:
///
/// - Broker (global): `address host[:port] [host[:port]]…` (several brokers, tried in turn after a failure: a
///   working broker is kept until it fails, mosquitto's `round_robin true`; or `ws://host[:port][/path]`, `wss://…`
///   for MQTT over WebSockets, the path defaulting to `/mqtt`, every entry with the same scheme and path),
///   `round_robin true`, `bridge_protocol_version mqttv50|mqttv311|mqttv31`, `remote_clientid`,
///   `remote_username`, `remote_password`, `cleansession`, `session_expiry`, `keepalive_interval`,
///   `restart_timeout base [cap]`, `bridge_cafile`, `bridge_capath`, `bridge_certfile`, `bridge_keyfile`,
///   `bridge_tls_version`, `bridge_insecure`, `max_inflight_messages` (default 32), `tcp_nodelay`,
///   `auth_failure_limit N` (stop after N consecutive refusals of the credentials; default: retry for ever).
/// - Spool (global): `spool_dir`, `spool_max_bytes`, `spool_segment_bytes`, `spool_fsync always|never|SECONDS`,
///   `spool_full block|drop_newest`, `spool_stall_timeout SECONDS` (default 60; 0 = never).
/// - Operations (global): `metrics_listen host:port`, `state_prefix`, `notifications`, `progress_interval`,
///   `drain_timeout`, `publish_window`.
/// - Route: `direction`, `mode`, `address` (repeatable), `udp_target` (repeatable), `allow` (repeatable),
///   `max_connections`, `restart_timeout`, `idle_timeout`, `framing`, `max_frame`, `oversize`, `partial_on_close`,
///   `topic`, `dead_letter_topic`, `transcode` (`none` or `json_msgpack`), `field_separator`, `topic_regex`, `subscribe` (repeatable), `share_group`, `qos`,
///   `retain`, `out_queue_bytes`, `slow_reader`.
///
/// Every problem is reported with its line number; parsing continues after an error so that one run lists them
/// all, but each mistake is reported once: a key whose value was refused does not also make its route "need" that
/// key, and a route option before the first `route` line is reported once for the block. A key given twice in one
/// place is an error (except the repeatable ones above). Two routes cannot listen on one address and port.
public enum ConfigParser {
    /// The longest file ``read(file:)`` accepts.
    public static let maximumFileBytes = 64 << 20
    /// The longest line ``parse(_:file:base:)`` reads; a longer one is reported, not read.
    public static let maximumLineBytes = 256 << 10

    /// Reads a configuration file as UTF-8 text, without blocking on a FIFO or device.
    /// - Throws: ``ConfigFileError`` with a one-line message in mosquitto's style.
    public static func read(file path: String) throws(ConfigFileError) -> String {
        func fail(_ message: String) -> ConfigFileError { ConfigFileError(path: path, message: "Error: " + message) }
        func reason(_ code: Int32) -> String { String(cString: strerror(code)) }
        // O_NONBLOCK: opening a FIFO without a writer must not hang; the type is checked on the open descriptor.
        let fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC)
        if fd < 0 { throw fail("Unable to open config file \(path): \(reason(errno)).") }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw fail("Unable to open config file \(path): \(reason(errno)).") }
        switch info.st_mode & S_IFMT {
        case S_IFREG: break
        case S_IFDIR: throw fail("Config file \(path) is a directory.")
        case S_IFIFO: throw fail("Config file \(path) is a FIFO, not a regular file.")
        case S_IFSOCK: throw fail("Config file \(path) is a socket, not a regular file.")
        case S_IFCHR, S_IFBLK: throw fail("Config file \(path) is a device, not a regular file.")
        default: throw fail("Config file \(path) is not a regular file.")
        }
        if Int(info.st_size) > maximumFileBytes {
            throw fail("Config file \(path) is too large (\(info.st_size) bytes; the limit is \(maximumFileBytes >> 20) MiB).")
        }
        var bytes = [UInt8](repeating: 0, count: Int(info.st_size) + 1)
        var count = 0
        while true {
            if count == bytes.count {
                if count > maximumFileBytes {
                    throw fail("Config file \(path) is too large (more than \(maximumFileBytes >> 20) MiB).")
                }
                bytes.append(contentsOf: repeatElement(0, count: 65536))
            }
            let n = bytes.withUnsafeMutableBytes { systemRead(fd, $0.baseAddress! + count, $0.count - count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw fail("Unable to read config file \(path): \(reason(errno)).")
            }
            if n == 0 { break }
            count += n
        }
        bytes.removeSubrange(count...)
        func lineNumber(at offset: Int) -> Int { bytes[..<offset].reduce(1) { $1 == 0x0A ? $0 + 1 : $0 } }
        // memchr, not firstIndex(of:): a large file is scanned in milliseconds even in an unoptimized build.
        let nulOffset = bytes.withUnsafeBytes { b -> Int? in
            guard let base = b.baseAddress, let p = memchr(base, 0, b.count) else { return nil }
            return base.distance(to: UnsafeRawPointer(p))
        }
        if let nul = nulOffset {
            throw fail("Config file \(path) is not a text file (a NUL byte on line \(lineNumber(at: nul))).")
        }
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { bytes.removeFirst(3) }  // a UTF-8 byte order mark
        if let text = String(validating: bytes, as: UTF8.self) { return text }
        var start = 0
        for (i, b) in bytes.enumerated() where b == 0x0A || i == bytes.count - 1 {
            if String(validating: bytes[start...i], as: UTF8.self) == nil { break }
            start = i + 1
        }
        throw fail("Config file \(path) is not UTF-8 text (line \(lineNumber(at: start))).")
    }

    /// Parses `text`. `base` supplies defaults (for example, broker options from the command line).
    /// - Throws: ``ConfigErrors`` listing every problem.
    public static func parse(_ text: String, file: String = "config", base: BridgeConfiguration? = nil) throws(ConfigErrors) -> BridgeConfiguration {
        var p = Parser(base: base ?? BridgeConfiguration(mqtt: MQTTConfiguration(host: "localhost", port: 1883)))
        var text = text
        // Lines are found with memchr, so that a file of one 50 MB line costs milliseconds, even unoptimized.
        text.withUTF8 { buffer in
            var number = 0
            var start = 0
            while start <= buffer.count {
                var end = buffer.count
                if start < buffer.count, let base = buffer.baseAddress,
                   let found = memchr(base + start, 0x0A, buffer.count - start) {
                    end = base.distance(to: found.assumingMemoryBound(to: UInt8.self))
                }
                number += 1
                p.line = number
                if end - start > maximumLineBytes {
                    p.error("line too long (\(end - start) bytes; the limit is \(maximumLineBytes >> 10) KiB)")
                } else {
                    p.handleLine(String(decoding: UnsafeBufferPointer(rebasing: buffer[start..<end]), as: UTF8.self))
                }
                start = end + 1
            }
        }
        p.finishRoute()
        p.finish()
        if !p.issues.isEmpty {
            let sorted = p.issues.enumerated().sorted { ($0.element.line, $0.offset) < ($1.element.line, $1.offset) }.map(\.element)
            throw ConfigErrors(issues: sorted, file: file)
        }
        return p.config
    }

    /// Checks `text` and returns the problems (empty when it is valid): what `mqtt-bridge --check` prints.
    public static func check(_ text: String, file: String = "config") -> [ConfigIssue] {
        do {
            _ = try parse(text, file: file)
            return []
        } catch {
            return error.issues
        }
    }

    /// The global keys (with mosquitto's bridge names and the aliases the parser accepts).
    package static let globalKeys = [
        "address", "addresses", "round_robin", "bridge_protocol_version", "protocol_version", "remote_clientid", "clientid", "local_clientid",
        "remote_username", "username", "remote_password", "password", "cleansession", "session_expiry",
        "bridge_session_expiry_interval", "keepalive_interval", "restart_timeout", "bridge_cafile", "bridge_capath",
        "bridge_certfile", "bridge_keyfile", "bridge_tls_version", "bridge_insecure", "max_inflight_messages", "tcp_nodelay",
        "auth_failure_limit", "spool_dir", "spool_max_bytes", "spool_segment_bytes", "spool_fsync", "spool_full",
        "spool_stall_timeout", "metrics_listen", "http_listen", "state_prefix", "notification_topic", "notifications",
        "progress_interval", "drain_timeout", "publish_batch", "publish_window",
    ]

    /// The keys of a `route` block.
    package static let routeKeys = [
        "direction", "mode", "address", "addresses", "udp_target", "allow", "max_connections", "restart_timeout", "idle_timeout",
        "framing", "max_frame", "oversize", "partial_on_close", "topic", "dead_letter_topic", "field_separator", "topic_regex",
        "subscribe", "share_group", "qos", "retain", "out_queue_bytes", "slow_reader", "transcode",
    ]

    /// Route keys that may be given on several lines (each adds to the list).
    static let repeatableRouteKeys: Set<String> = ["address", "udp_target", "allow", "subscribe"]

    /// Other spellings of one key, mapped to the name used in duplicate-key messages.
    static let aliases: [String: String] = [
        "addresses": "address", "protocol_version": "bridge_protocol_version", "clientid": "remote_clientid",
        "local_clientid": "remote_clientid", "username": "remote_username", "password": "remote_password",
        "bridge_session_expiry_interval": "session_expiry", "http_listen": "metrics_listen",
        "notification_topic": "state_prefix", "publish_batch": "publish_window",
    ]

    static let globalKeySet = Set(globalKeys)
    static let routeKeySet = Set(routeKeys)

    /// `text` in single quotes for a message: at most `limit` characters (then `…`), control characters escaped,
    /// so that a 50 MB line or a terminal escape sequence in a file never reaches the terminal whole.
    package static func quote(_ text: some StringProtocol, limit: Int = 80) -> String {
        var out = "'"
        var n = 0
        for ch in text {
            if n == limit {
                out += "…"
                break
            }
            if ch.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) {
                for s in ch.unicodeScalars { out += s.value < 0x20 || s.value == 0x7F ? "\\u{\(String(s.value, radix: 16))}" : String(s) }
            } else {
                out.append(ch)
            }
            n += 1
        }
        return out + "'"
    }

    /// `message` with every single-quoted part longer than `limit` characters cut to `limit` and `…`, and the
    /// whole cut to 1,000 characters: for messages from elsewhere (topic templates) that quote a value whole.
    package static func shorten(_ message: String, limit: Int = 80) -> String {
        guard message.utf8.count > limit else { return message }
        var out = ""
        var quoted = ""
        var quotedCount = 0
        var inQuote = false
        for ch in message {
            if ch == "'" {
                if inQuote { out += quote(quoted, limit: limit) } else { quoted = ""; quotedCount = 0 }
                inQuote.toggle()
            } else if inQuote {
                if quotedCount <= limit { quoted.append(ch) }
                quotedCount += 1
            } else {
                out.append(ch)
            }
            if out.utf8.count > 4000 { break }
        }
        if out.count > 1000 { return String(out.prefix(1000)) + "…" }
        if inQuote { out += "'" + quoted }
        return out
    }

    /// The known key closest to `key` (optimal string alignment distance, at most 1 for short keys, 2 up to 8
    /// characters and 3 beyond), or nil.
    package static func suggestion(for key: String, among candidates: [String]) -> String? {
        guard key.utf8.count <= 64 else { return nil }
        let a = Array(key.lowercased().unicodeScalars)
        let limit = a.count <= 4 ? 1 : (a.count <= 8 ? 2 : 3)
        var best: (String, Int)?
        for c in candidates where c != key {
            let b = Array(c.unicodeScalars)
            guard abs(a.count - b.count) <= limit else { continue }
            var d = [[Int]](repeating: [Int](repeating: 0, count: b.count + 1), count: a.count + 1)
            for i in 0...a.count { d[i][0] = i }
            for j in 0...b.count { d[0][j] = j }
            if !a.isEmpty && !b.isEmpty {
                for i in 1...a.count {
                    for j in 1...b.count {
                        let cost = a[i - 1] == b[j - 1] ? 0 : 1
                        d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost)
                        if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] { d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1) }
                    }
                }
            }
            let distance = d[a.count][b.count]
            if distance <= limit && distance < (best?.1 ?? Int.max) { best = (c, distance) }
        }
        return best?.0
    }

    /// Parses `host:port`, `[v6]:port`, `:port` or `port` (host `defaultHost`); with `defaultPort`, a bare host too.
    /// A port that is a number out of range is reported as such (`port 70000 out of range (1-65535)`).
    package static func address(_ text: String, defaultHost: String = "127.0.0.1", defaultPort: Int? = nil,
                               minimumPort: Int = 0) -> Result<SocketAddressSpec, ConfigIssue> {
        let format = ConfigIssue(line: 0, message: "invalid address \(quote(text)): use " + (defaultPort == nil ? "host:port" : "host[:port]"))
        var host = defaultHost
        var portText: Substring?
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return .failure(format) }
            host = String(text[text.index(after: text.startIndex)..<close])
            let rest = text[text.index(after: close)...]
            if rest.hasPrefix(":") { portText = rest.dropFirst() } else if !rest.isEmpty { return .failure(format) }
            if host.isEmpty { return .failure(format) }
        } else if let colon = text.lastIndex(of: ":") {
            if colon != text.startIndex { host = String(text[..<colon]) }
            portText = text[text.index(after: colon)...]
        } else if defaultPort == nil {
            portText = Substring(text)
        } else {
            host = text
        }
        guard let portText else {
            guard let defaultPort, !host.isEmpty else { return .failure(format) }
            return .success(SocketAddressSpec(host: host, port: defaultPort))
        }
        if let port = Int(portText), (minimumPort...65535).contains(port) { return .success(SocketAddressSpec(host: host, port: port)) }
        let digits = portText.hasPrefix("-") ? portText.dropFirst() : portText
        if !digits.isEmpty && digits.allSatisfy({ $0.isASCII && $0.isNumber }) {
            return .failure(ConfigIssue(line: 0, message: "port \(portText.count > 24 ? quote(portText, limit: 24) : String(portText)) out of range (1-65535)"))
        }
        return .failure(format)
    }

    /// Parses a size such as `65536`, `64KiB`, `64KB`, `16MiB`, `2GB`, `1k`.
    package static func size(_ s: String) -> Int? {
        let lower = s.lowercased()
        let units: [(String, Int)] = [("kib", 1 << 10), ("mib", 1 << 20), ("gib", 1 << 30), ("kb", 1 << 10), ("mb", 1 << 20),
                                      ("gb", 1 << 30), ("k", 1 << 10), ("m", 1 << 20), ("g", 1 << 30), ("b", 1)]
        for (suffix, factor) in units where lower.hasSuffix(suffix) {
            guard let n = Int(lower.dropLast(suffix.count)), n >= 0 else { return nil }
            let (product, overflow) = n.multipliedReportingOverflow(by: factor)
            return overflow ? nil : product
        }
        return Int(lower).flatMap { $0 >= 0 ? $0 : nil }
    }

    /// Parses bytes written as `0x0D0A` (hex) or as text with `\n`, `\r`, `\t`, `\0`, `\\` escapes.
    package static func bytes(_ s: String) -> [UInt8]? {
        if s.hasPrefix("0x") || s.hasPrefix("0X") {
            let hex = Array(s.dropFirst(2).utf8)
            guard !hex.isEmpty, hex.count % 2 == 0 else { return nil }
            var out: [UInt8] = []
            var i = 0
            while i < hex.count {
                guard let v = UInt8(String(decoding: hex[i..<i + 2], as: UTF8.self), radix: 16) else { return nil }
                out.append(v)
                i += 2
            }
            return out
        }
        var out: [UInt8] = []
        var escape = false
        for b in s.utf8 {
            if escape {
                switch b {
                case UInt8(ascii: "n"): out.append(0x0A)
                case UInt8(ascii: "r"): out.append(0x0D)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "0"): out.append(0x00)
                case UInt8(ascii: "s"): out.append(0x20)
                default: out.append(b)
                }
                escape = false
            } else if b == UInt8(ascii: "\\") {
                escape = true
            } else {
                out.append(b)
            }
        }
        return out.isEmpty ? nil : out
    }

    /// Parses a framing specification: `lf`, `crlf`, `line`, `delimiter <bytes>`, `fixed <n>`,
    /// `length <1|2|4|8> [be|le]`, `raw`. The whole specification may be in single or double quotes, as it is
    /// written for `--framing` on a command line (`'length 2 be'`).
    package static func framing(_ s: String) -> Result<Framing, ConfigIssue> {
        var s = Substring(s)
        if s.count >= 2, let first = s.first, first == "'" || first == "\"", s.last == first { s = s.dropFirst().dropLast() }
        let parts = s.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
        guard let kind = parts.first?.lowercased() else { return .failure(.init(line: 0, message: "framing needs a value")) }
        switch kind {
        case "lf", "line", "lines": return .success(.lf)
        case "crlf": return .success(.crlf)
        case "raw": return .success(.raw)
        case "delimiter":
            guard parts.count == 2, let d = bytes(parts[1]) else {
                return .failure(.init(line: 0, message: "framing delimiter needs bytes: 'delimiter 0x03' or 'delimiter |'"))
            }
            return .success(.delimiter(d))
        case "fixed":
            guard parts.count == 2, let n = size(parts[1]), n > 0 else {
                return .failure(.init(line: 0, message: "framing fixed needs a length > 0: 'fixed 64'"))
            }
            return .success(.fixed(n))
        case "length":
            guard parts.count >= 2, let w = Int(parts[1]), [1, 2, 4, 8].contains(w) else {
                return .failure(.init(line: 0, message: "framing length needs a width of 1, 2, 4 or 8: 'length 2 be'"))
            }
            let order = parts.count > 2 ? Framing.ByteOrder(rawValue: parts[2].lowercased()) : .bigEndian
            guard let order, parts.count <= 3 else {
                return .failure(.init(line: 0, message: "framing length byte order must be 'be' or 'le'"))
            }
            return .success(.lengthPrefixed(width: w, byteOrder: order))
        default:
            return .failure(.init(line: 0, message: "unknown framing \(quote(kind)) (use lf, crlf, delimiter, fixed, length or raw)"))
        }
    }

    static func bool(_ s: String) -> Bool? {
        switch s.lowercased() {
        case "true", "yes", "on", "1": return true
        case "false", "no", "off", "0": return false
        default: return nil
        }
    }

    /// Parses a number of seconds (fractions allowed) up to about 31 years; nil for anything else (`inf`, `nan`).
    package static func seconds(_ s: String) -> Duration? {
        guard let d = Double(s), d.isFinite, d >= 0, d < 1e9 else { return nil }
        return .milliseconds(Int64(d * 1000))
    }

    private struct RouteDraft {
        var line: Int
        var name: String
        /// A block of route options with no `route` line before it (reported once), or a `route` line without a
        /// name: its keys are still checked, but it is not a route, so the route-level checks are skipped.
        var nameless = false
        var direction: RouteDirection?
        var mode: FeedConfiguration.Mode?
        var addresses: [SocketAddressSpec] = []
        var udpTargets: [SocketAddressSpec] = []
        var allow: [String] = []
        var maxConnections = 1024
        var idleTimeout: Duration = .zero
        var restart = RestartTimeout(base: .milliseconds(200), cap: .seconds(10))
        var framing: Framing = .lf
        var maxFrame = 65536
        var oversize: OversizePolicy = .discard
        var partial: PartialFramePolicy = .drop
        var topic: TopicTemplate?
        var deadLetter: String?
        var fieldSeparator: [UInt8] = [UInt8(ascii: ",")]
        var regex: String?
        var subscriptions: [String] = []
        var shareGroup: String?
        var qos: QoS = .atLeastOnce
        var retain = false
        var outQueue = 1 << 20
        var slowReader: SlowReaderPolicy = .drop
        var transcode: PayloadTranscoding = .none
        var framingLine = 0
        /// The line each key was first given on (aliases under one name).
        var seen: [String: Int] = [:]
        /// Keys whose value was refused: the route-level checks do not report them again as missing.
        var failed: Set<String> = []
    }

    /// A route's listen address, to find two routes on one address and port.
    private struct Listener {
        var route: String
        var index: Int
        var line: Int
        var udp: Bool
        var address: SocketAddressSpec
    }

    private struct Parser {
        var config: BridgeConfiguration
        var issues: [ConfigIssue] = []
        var line = 0
        var route: RouteDraft?
        var routeCount = 0
        var names: Set<String> = []
        var listeners: [Listener] = []
        var username: String?
        var password: String?
        var passwordLine = 0
        var tls = MQTTConfiguration.TLS()
        var tlsSet = false
        /// `address wss://…`: TLS on, with the system's CA store unless bridge_cafile or bridge_capath says otherwise.
        var webSocketsTLS = false
        var cleanSession = true
        var sessionExpiry: UInt32 = 0xFFFF_FFFF
        var statePrefixSet = false
        var globalSeen: [String: Int] = [:]
        var globalFailed: Set<String> = []

        init(base: BridgeConfiguration) {
            config = base
            config.routes = []
            if let c = base.mqtt.credentials {
                username = c.username
                password = c.password
            }
            if let t = base.mqtt.tls {
                tls = t
                tlsSet = true
            }
            if case .persistent(let e) = base.mqtt.session {
                cleanSession = false
                sessionExpiry = e
            }
        }

        mutating func error(_ message: String) { issues.append(ConfigIssue(line: line, message: shorten(message))) }

        /// One line: a comment, a blank line, or `key value` (the value may be in double quotes).
        mutating func handleLine(_ raw: String) {
            var line = Substring(raw)
            if line.hasSuffix("\r") { line = line.dropLast() }
            let trimmed = line.drop { $0 == " " || $0 == "\t" }
            if trimmed.isEmpty || trimmed.hasPrefix("#") { return }
            let key: Substring
            var value: Substring
            if let space = trimmed.firstIndex(where: { $0 == " " || $0 == "\t" }) {
                key = trimmed[..<space]
                value = trimmed[space...].drop { $0 == " " || $0 == "\t" }
                while let last = value.last, last == " " || last == "\t" { value = value.dropLast() }
            } else {
                key = trimmed
                value = ""
            }
            if value.count >= 2 && value.hasPrefix("\"") && value.hasSuffix("\"") { value = value.dropFirst().dropLast() }
            handle(String(key), String(value))
        }

        mutating func need(_ key: String, _ value: String) -> Bool {
            if value.isEmpty {
                error("\(quote(key)) needs a value")
                return false
            }
            return true
        }

        static func isGlobalOnly(_ key: String) -> Bool { globalKeySet.contains(key) && !routeKeySet.contains(key) }
        static func isRouteOnly(_ key: String) -> Bool { routeKeySet.contains(key) && !globalKeySet.contains(key) }

        mutating func handle(_ key: String, _ value: String) {
            if key == "route" { return startRoute(value) }
            if let r = route {
                // In a block with no `route` line, global keys are still global: only the missing line is wrong.
                if r.nameless && routeCount == 0 && Self.isGlobalOnly(key) {
                    handleGlobal(key, value)
                } else {
                    handleRoute(key, value)
                }
            } else if Self.isRouteOnly(key) {
                error("\(quote(key)) is a route option; put a 'route <name>' line before it")
                route = RouteDraft(line: line, name: "", nameless: true)
                handleRoute(key, value)
            } else {
                handleGlobal(key, value)
            }
        }

        mutating func startRoute(_ value: String) {
            finishRoute()
            routeCount += 1
            guard need("route", value) else {
                // Still a route block, so that its keys are not reported as global keys one by one.
                route = RouteDraft(line: line, name: "", nameless: true)
                return
            }
            let ok = value.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == ".") }
            if !ok || value.hasPrefix(".") {
                error("route name \(quote(value)) may hold only letters, digits, '-', '_' and '.'")
            } else if names.contains(value) {
                error("duplicate route name \(quote(value))")
            }
            names.insert(value)
            route = RouteDraft(line: line, name: value)
        }

        mutating func handleGlobal(_ key: String, _ value: String) {
            let canonical = aliases[key] ?? key
            let before = issues.count
            defer { if issues.count > before { globalFailed.insert(canonical) } }
            guard need(key, value) else { return }
            guard globalKeySet.contains(key) else {
                if let s = suggestion(for: key, among: globalKeys) {
                    return error("unknown option \(quote(key)); did you mean '\(s)'?")
                }
                if let s = suggestion(for: key, among: routeKeys) {
                    return error("unknown option \(quote(key)); did you mean '\(s)'? (a route option: put a 'route <name>' line before it)")
                }
                return error("unknown option \(quote(key))")
            }
            if let first = globalSeen[canonical] {
                let as_ = canonical == key ? "" : " as '\(canonical)'"
                return error("duplicate option \(quote(key)) (already set on line \(first)\(as_))")
            }
            globalSeen[canonical] = line
            switch key {
            case "address", "addresses":
                // mosquitto's form: `address host[:port] [host[:port]]…`, tried in turn (see round_robin).
                let parts = value.split(separator: " ").map(String.init)
                let webSockets = parts.filter { $0.lowercased().hasPrefix("ws://") || $0.lowercased().hasPrefix("wss://") }
                if !webSockets.isEmpty {
                    // MQTT over WebSockets: ws://host[:port][/path], wss:// with TLS (the bridge_* TLS keys apply).
                    // The transport (path, TLS) is the connection's, so every entry must agree on it.
                    guard webSockets.count == parts.count else {
                        return error("broker address: mix of ws:// and plain addresses; use one kind for every address")
                    }
                    do throws(MQTTError) {
                        var urls: [MQTTConfiguration] = []
                        for part in parts { urls.append(try MQTTConfiguration(url: part)) }
                        guard Set(urls.map { "\($0.transport)|\($0.tls != nil)" }).count == 1 else {
                            return error("broker address: every ws:// address must have the same scheme and path")
                        }
                        config.mqtt.endpoints = urls.map(\.endpoint)
                        config.mqtt.transport = urls[0].transport
                        if urls[0].tls != nil { webSocketsTLS = true }
                    } catch {
                        self.error("broker address: " + error.message)
                    }
                    return
                }
                var endpoints: [MQTTConfiguration.Endpoint] = []
                for part in parts {
                    switch address(part, defaultHost: "", defaultPort: 1883, minimumPort: 1) {
                    case .success(let a): endpoints.append(.tcp(host: a.host, port: a.port))
                    case .failure(let e): error("broker address: " + e.message)
                    }
                }
                if !endpoints.isEmpty { config.mqtt.endpoints = endpoints }
            case "round_robin":
                // The bridge always keeps a broker that works until it fails (mosquitto's round_robin true); it
                // never leaves a working secondary to return to the first address, as mosquitto's false does.
                guard let b = bool(value) else { return error("round_robin must be true or false") }
                if !b {
                    error("round_robin false (return to the first address while connected elsewhere) is not supported: the bridge stays on a working broker until it fails; use round_robin true or leave the key out")
                }
            case "bridge_protocol_version", "protocol_version":
                switch value {
                case "mqttv50", "mqttv5", "5": config.mqtt.protocolVersion = .v5
                case "mqttv311", "4": config.mqtt.protocolVersion = .v3_1_1
                case "mqttv31", "3": config.mqtt.protocolVersion = .v3_1
                default: error("bridge_protocol_version must be mqttv50, mqttv311 or mqttv31")
                }
            case "remote_clientid", "clientid", "local_clientid":
                config.mqtt.clientID = value
                if !statePrefixSet { config.statePrefix = "mqtt-bridge/" + value }
            case "remote_username", "username":
                username = value
            case "remote_password", "password":
                password = value
                passwordLine = line
            case "cleansession":
                guard let b = bool(value) else { return error("cleansession must be true or false") }
                cleanSession = b
            case "session_expiry", "bridge_session_expiry_interval":
                guard let n = UInt32(value) else { return error("session_expiry must be a number of seconds") }
                sessionExpiry = n
            case "keepalive_interval":
                guard let n = Int(value), n == 0 || (5...65535).contains(n) else {
                    return error("keepalive_interval must be 0 or 5 to 65535 seconds")
                }
                config.mqtt.keepAlive = n
            case "restart_timeout":
                guard let r = restartTimeout(value) else { return error("restart_timeout needs 'base [cap]' in seconds") }
                config.mqtt.reconnect.initialDelay = r.base
                config.mqtt.reconnect.maximumDelay = r.cap
            case "bridge_cafile": tls.caFile = value; tlsSet = true
            case "bridge_capath": tls.caDirectory = value; tlsSet = true
            case "bridge_certfile": tls.certificateFile = value; tlsSet = true
            case "bridge_keyfile": tls.keyFile = value; tlsSet = true
            case "bridge_tls_version": tls.version = value; tlsSet = true
            case "bridge_insecure":
                guard let b = bool(value) else { return error("bridge_insecure must be true or false") }
                tls.insecure = b
            case "max_inflight_messages":
                guard let n = Int(value), n >= 0 else { return error("max_inflight_messages must be a number") }
                config.mqtt.maximumInflightMessages = n
                config.maxInflightMessages = n
            case "tcp_nodelay":
                guard let b = bool(value) else { return error("tcp_nodelay must be true or false") }
                config.tcpNoDelay = b
            case "auth_failure_limit":
                guard let n = Int(value), n >= 1 else {
                    return error("auth_failure_limit must be a number of attempts, 1 or more (leave it out to retry for ever)")
                }
                config.authFailureLimit = n
            case "spool_dir": config.spoolDirectory = value
            case "spool_max_bytes":
                guard let n = size(value), n > 0 else { return error("spool_max_bytes must be a size such as 256MiB") }
                config.spoolMaxBytes = n
            case "spool_segment_bytes":
                guard let n = size(value), n > 0 else { return error("spool_segment_bytes must be a size such as 16MiB") }
                config.spoolSegmentBytes = n
            case "spool_fsync":
                switch value {
                case "always": config.spoolFsync = .always
                case "never": config.spoolFsync = .never
                default:
                    let v = value.hasPrefix("interval ") ? String(value.dropFirst(9)) : value
                    guard let d = seconds(v) else { return error("spool_fsync must be always, never or an interval in seconds") }
                    config.spoolFsync = .interval(d)
                }
            case "spool_full":
                guard let f = SpoolConfiguration.FullPolicy(rawValue: value) else { return error("spool_full must be block or drop_newest") }
                config.spoolFull = f
            case "spool_stall_timeout":
                guard let d = seconds(value) else { return error("spool_stall_timeout must be seconds (0 = never)") }
                config.spoolStallTimeout = d == .zero ? nil : d
            case "metrics_listen", "http_listen":
                switch address(value) {
                case .success(let a): config.metricsAddress = a
                case .failure(let e): error("metrics_listen: " + e.message)
                }
            case "state_prefix", "notification_topic":
                guard MQTTTopic.isValidName(value) else { return error("state_prefix \(quote(value)) is not a valid topic") }
                config.statePrefix = value
                statePrefixSet = true
            case "notifications":
                guard let b = bool(value) else { return error("notifications must be true or false") }
                config.notifications = b
            case "progress_interval":
                guard let d = seconds(value) else { return error("progress_interval must be seconds") }
                config.progressInterval = d
            case "drain_timeout":
                guard let d = seconds(value) else { return error("drain_timeout must be seconds") }
                config.drainTimeout = d
            case "publish_batch", "publish_window":
                guard let n = Int(value), (1...60000).contains(n) else { return error("\(key) must be 1 to 60000") }
                config.publishBatch = n
            default:
                error("unknown option \(quote(key))")
            }
        }

        func restartTimeout(_ value: String) -> RestartTimeout? {
            let parts = value.split(separator: " ").map(String.init)
            guard let first = parts.first, let base = seconds(first) else { return nil }
            if parts.count == 1 { return RestartTimeout(base: base, cap: base) }
            guard let cap = seconds(parts[1]), parts.count <= 3 else { return nil }
            return RestartTimeout(base: base, cap: cap)
        }

        mutating func handleRoute(_ key: String, _ value: String) {
            guard var r = route else { return }
            let canonical = key == "addresses" ? "address" : key
            let before = issues.count
            defer {
                if issues.count > before { r.failed.insert(canonical) }
                route = r
            }
            guard need(key, value) else { return }
            guard routeKeySet.contains(key) else {
                let place = r.name.isEmpty ? "" : " in route \(quote(r.name))"
                if Self.isGlobalOnly(key) {
                    return error("\(quote(key)) is a global option; put it before the first route")
                }
                if let s = suggestion(for: key, among: routeKeys) {
                    return error("unknown route option \(quote(key))\(place); did you mean '\(s)'?")
                }
                if let s = suggestion(for: key, among: globalKeys) {
                    return error("unknown route option \(quote(key))\(place); did you mean '\(s)'? (a global option: put it before the first route)")
                }
                return error("unknown route option \(quote(key))\(place)")
            }
            if !repeatableRouteKeys.contains(canonical) {
                if let first = r.seen[canonical] {
                    let place = r.name.isEmpty ? "" : " in route \(quote(r.name))"
                    return error("duplicate \(quote(key))\(place) (already set on line \(first))")
                }
            }
            if r.seen[canonical] == nil { r.seen[canonical] = line }
            applyRoute(key, value, &r)
        }

        mutating func applyRoute(_ key: String, _ value: String, _ r: inout RouteDraft) {
            switch key {
            case "direction":
                switch value {
                case "to_mqtt", "out", "feed_to_mqtt": r.direction = .toMQTT
                case "to_feed", "in", "mqtt_to_feed": r.direction = .toFeed
                case "both": r.direction = .both
                default: error("direction must be to_mqtt, to_feed or both")
                }
            case "mode":
                guard let m = FeedConfiguration.Mode(rawValue: value) else { return error("mode must be tcp_client, tcp_server or udp") }
                r.mode = m
            case "address", "addresses":
                for part in value.split(separator: " ") {
                    switch address(String(part)) {
                    case .success(let a): r.addresses.append(a)
                    case .failure(let e): return error(e.message)
                    }
                }
            case "udp_target":
                for part in value.split(separator: " ") {
                    switch address(String(part), minimumPort: 1) {
                    case .success(let a): r.udpTargets.append(a)
                    case .failure(let e): return error("udp_target: " + e.message)
                    }
                }
            case "allow":
                for part in value.split(separator: " ") {
                    guard IPAllowList.isValidEntry(String(part)) else {
                        return error("invalid allow entry \(quote(part)): use an IP address or CIDR block")
                    }
                    r.allow.append(String(part))
                }
            case "max_connections":
                guard let n = Int(value), n > 0 else { return error("max_connections must be a number > 0") }
                r.maxConnections = n
            case "restart_timeout":
                guard let t = restartTimeout(value) else { return error("restart_timeout needs 'base [cap]' in seconds") }
                r.restart = t
            case "idle_timeout":
                guard let d = seconds(value) else { return error("idle_timeout must be seconds (0 = never)") }
                r.idleTimeout = d
            case "framing":
                switch ConfigParser.framing(value) {
                case .success(let f): r.framing = f; r.framingLine = line
                case .failure(let e): error(e.message)
                }
            case "max_frame":
                guard let n = size(value), n > 0, n <= 256 << 20 else { return error("max_frame must be a size from 1 byte to 256MiB") }
                r.maxFrame = n
            case "oversize":
                guard let o = OversizePolicy(rawValue: value) else { return error("oversize must be discard, truncate or close") }
                r.oversize = o
            case "partial_on_close":
                guard let p = PartialFramePolicy(rawValue: value) else { return error("partial_on_close must be drop, emit or deadletter") }
                r.partial = p
            case "topic":
                do {
                    r.topic = try TopicTemplate(value)
                } catch {
                    self.error(error.message)
                }
            case "transcode":
                guard let t = PayloadTranscoding(rawValue: value) else { return error("transcode must be none or json_msgpack") }
                r.transcode = t
            case "dead_letter_topic":
                guard MQTTTopic.isValidName(value) else { return error("dead_letter_topic \(quote(value)) is not a valid topic name") }
                r.deadLetter = value
            case "field_separator":
                guard let b = bytes(value) else { return error("field_separator needs bytes") }
                r.fieldSeparator = b
            case "topic_regex":
                do {
                    _ = try Regex(value)
                    r.regex = value
                } catch {
                    self.error("topic_regex \(quote(value)) is not a valid regular expression")
                }
            case "subscribe":
                guard MQTTTopic.isValidFilter(value) else { return error("subscribe \(quote(value)) is not a valid topic filter") }
                r.subscriptions.append(value)
            case "share_group":
                guard !value.contains("/"), !value.contains("+"), !value.contains("#") else {
                    return error("share_group must not contain '/', '+' or '#'")
                }
                r.shareGroup = value
            case "qos":
                guard let n = UInt8(value), let q = QoS(rawValue: n) else { return error("qos must be 0, 1 or 2") }
                r.qos = q
            case "retain":
                guard let b = bool(value) else { return error("retain must be true or false") }
                r.retain = b
            case "out_queue_bytes":
                guard let n = size(value), n > 0 else { return error("out_queue_bytes must be a size such as 1MiB") }
                r.outQueue = n
            case "slow_reader":
                guard let p = SlowReaderPolicy(rawValue: value) else { return error("slow_reader must be drop or disconnect") }
                r.slowReader = p
            default:
                error("unknown route option \(quote(key))")
            }
        }

        mutating func finishRoute() {
            guard let r = route else { return }
            route = nil
            if r.nameless { return }
            let saved = line
            line = r.line
            defer { line = saved }
            let name = quote(r.name)
            let failed = r.failed
            guard let mode = r.mode else {
                if !failed.contains("mode") { error("route \(name) needs a 'mode' (tcp_client, tcp_server or udp)") }
                return
            }
            let direction = r.direction ?? .toMQTT
            if mode == .tcpClient && r.addresses.isEmpty && !failed.contains("address") {
                error("route \(name): mode tcp_client needs an 'address' to dial")
            }
            if mode != .tcpClient && r.addresses.count > 1 {
                error("route \(name): mode \(mode.rawValue) listens on one address, not \(r.addresses.count)")
            }
            if !failed.contains("direction") {
                if direction.readsFeed && r.topic == nil && !failed.contains("topic") {
                    error("route \(name): direction \(direction.rawValue) needs a 'topic'")
                }
                if direction.writesFeed && r.subscriptions.isEmpty && !failed.contains("subscribe") {
                    error("route \(name): direction \(direction.rawValue) needs a 'subscribe' filter")
                }
                if mode == .udp && direction.writesFeed && r.udpTargets.isEmpty && !failed.contains("udp_target") {
                    error("route \(name): udp to the feed needs a 'udp_target'")
                }
            }
            if case .fixed(let n) = r.framing, n > r.maxFrame, !failed.contains("max_frame") {
                error("route \(name): fixed frame length \(n) exceeds max_frame \(r.maxFrame)")
            }
            if let t = r.topic, t.usesRegex, r.regex == nil, !failed.contains("topic_regex") {
                error("route \(name): the topic uses {regex:N} but no 'topic_regex' is set")
            }
            var addresses = r.addresses
            if addresses.isEmpty { addresses = [SocketAddressSpec(host: "127.0.0.1", port: 0)] }
            if mode != .tcpClient, let a = r.addresses.first, a.port != 0 {
                listeners.append(Listener(route: r.name, index: routeCount, line: r.line, udp: mode == .udp, address: a))
            }
            let feed = FeedConfiguration(mode: mode, addresses: addresses, udpTargets: r.udpTargets, allow: r.allow,
                                         maxConnections: r.maxConnections, restartTimeout: r.restart, idleTimeout: r.idleTimeout)
            config.routes.append(RouteConfiguration(
                name: r.name, direction: direction, feed: feed, framing: r.framing, maxFrame: r.maxFrame, oversize: r.oversize,
                partialOnClose: r.partial, topic: r.topic, deadLetterTopic: r.deadLetter, fieldSeparator: r.fieldSeparator,
                topicRegex: r.regex, subscriptions: r.subscriptions, shareGroup: r.shareGroup, qos: r.qos, retain: r.retain,
                outQueueBytes: r.outQueue, slowReader: r.slowReader, transcode: r.transcode))
        }

        /// Whether two hosts bind overlapping addresses: the same host, or a wildcard (`0.0.0.0` covers IPv4,
        /// `::` everything on a dual-stack host).
        static func overlap(_ a: String, _ b: String) -> Bool {
            let a = a.lowercased(), b = b.lowercased()
            if a == b || a == "::" || b == "::" || a.isEmpty || b.isEmpty { return true }
            if a == "0.0.0.0" { return !b.contains(":") }
            if b == "0.0.0.0" { return !a.contains(":") }
            return false
        }

        mutating func checkListeners() {
            for (i, l) in listeners.enumerated() {
                line = l.line
                let kind = l.udp ? "UDP" : "TCP"
                if let other = listeners[..<i].first(where: {
                    $0.index != l.index && $0.udp == l.udp && $0.address.port == l.address.port && Self.overlap($0.address.host, l.address.host)
                }) {
                    error("route \(quote(l.route)): \(kind) address \(l.address) is already the listen address of route "
                          + "\(quote(other.route)) (line \(other.line)); two routes cannot listen on one address and port")
                } else if !l.udp, let m = config.metricsAddress, m.port == l.address.port, Self.overlap(m.host, l.address.host) {
                    let source = globalSeen["metrics_listen"].map { "metrics_listen (line \($0))" } ?? "the --metrics address"
                    error("route \(quote(l.route)): TCP address \(l.address) is also \(source)")
                }
            }
            line = 0
        }

        mutating func finish() {
            line = 0
            checkListeners()
            if let username {
                config.mqtt.credentials = .init(username: username, password: password)
            } else if password != nil && !globalFailed.contains("remote_username") {
                line = passwordLine
                error("remote_password needs remote_username")
                line = 0
            }
            if webSocketsTLS && tls.caFile == nil && tls.caDirectory == nil { tls.useSystemCertificates = true }
            if tlsSet || webSocketsTLS { config.mqtt.tls = tls }
            if cleanSession {
                config.mqtt.session = .clean
            } else {
                if config.mqtt.clientID == nil && !globalFailed.contains("remote_clientid") {
                    error("cleansession false needs remote_clientid")
                }
                config.mqtt.session = .persistent(expiry: sessionExpiry)
            }
            if config.routes.isEmpty && issues.isEmpty { error("no routes: add a 'route <name>' block") }
        }
    }
}
