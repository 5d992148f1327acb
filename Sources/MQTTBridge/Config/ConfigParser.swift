import Mosquitto

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

/// Reads the bridge's `mosquitto.conf`-style configuration.
///
/// One `key value` per line; a line whose first non-blank character is `#` is a comment. Global keys (the broker
/// connection with mosquitto bridge names such as `address`, `remote_clientid`, `cleansession`, `restart_timeout`,
/// `bridge_cafile`; the spool; operations) come first. Each `route <name>` line starts a route block whose keys apply
/// to that route until the next `route` line:
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
/// Every problem is reported with its line number; parsing continues after an error so that one run lists them all.
public enum ConfigParser {
    /// Parses `text`. `base` supplies defaults (for example, broker options from the command line).
    /// - Throws: ``ConfigErrors`` listing every problem.
    public static func parse(_ text: String, file: String = "config", base: BridgeConfiguration? = nil) throws(ConfigErrors) -> BridgeConfiguration {
        var p = Parser(base: base ?? BridgeConfiguration(mqtt: MQTTConfiguration(host: "localhost", port: 1883)))
        var number = 0
        for raw in text.split(separator: "\n", omittingEmptySubsequences: false) {
            number += 1
            var line = Substring(raw)
            if line.hasSuffix("\r") { line = line.dropLast() }
            let trimmed = line.drop { $0 == " " || $0 == "\t" }
            if trimmed.isEmpty || trimmed.hasPrefix("#") { continue }
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
            p.line = number
            p.handle(String(key), String(value))
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

    /// Parses a size such as `65536`, `64KiB`, `64KB`, `16MiB`, `2GB`, `1k`.
    public static func size(_ s: String) -> Int? {
        let lower = s.lowercased()
        let units: [(String, Int)] = [("kib", 1 << 10), ("mib", 1 << 20), ("gib", 1 << 30), ("kb", 1 << 10), ("mb", 1 << 20),
                                      ("gb", 1 << 30), ("k", 1 << 10), ("m", 1 << 20), ("g", 1 << 30), ("b", 1)]
        for (suffix, factor) in units where lower.hasSuffix(suffix) {
            guard let n = Int(lower.dropLast(suffix.count)), n >= 0 else { return nil }
            return n * factor
        }
        return Int(lower).flatMap { $0 >= 0 ? $0 : nil }
    }

    /// Parses bytes written as `0x0D0A` (hex) or as text with `\n`, `\r`, `\t`, `\0`, `\\` escapes.
    public static func bytes(_ s: String) -> [UInt8]? {
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
    /// `length <1|2|4|8> [be|le]`, `raw`.
    public static func framing(_ s: String) -> Result<Framing, ConfigIssue> {
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
            return .failure(.init(line: 0, message: "unknown framing '\(kind)' (use lf, crlf, delimiter, fixed, length or raw)"))
        }
    }

    static func bool(_ s: String) -> Bool? {
        switch s.lowercased() {
        case "true", "yes", "on", "1": return true
        case "false", "no", "off", "0": return false
        default: return nil
        }
    }

    static func seconds(_ s: String) -> Duration? {
        guard let d = Double(s), d >= 0 else { return nil }
        return .milliseconds(Int64(d * 1000))
    }

    private struct RouteDraft {
        var line: Int
        var name: String
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
        var framingLine = 0
    }

    private struct Parser {
        var config: BridgeConfiguration
        var issues: [ConfigIssue] = []
        var line = 0
        var route: RouteDraft?
        var names: Set<String> = []
        var username: String?
        var password: String?
        var passwordLine = 0
        var tls = MQTTConfiguration.TLS()
        var tlsSet = false
        var cleanSession = true
        var sessionExpiry: UInt32 = 0xFFFF_FFFF
        var statePrefixSet = false

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

        mutating func error(_ message: String) { issues.append(ConfigIssue(line: line, message: message)) }

        mutating func need(_ key: String, _ value: String) -> Bool {
            if value.isEmpty {
                error("'\(key)' needs a value")
                return false
            }
            return true
        }

        mutating func handle(_ key: String, _ value: String) {
            if key == "route" {
                finishRoute()
                guard need(key, value) else { return }
                let ok = value.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == ".") }
                if !ok || value.hasPrefix(".") {
                    error("route name '\(value)' may hold only letters, digits, '-', '_' and '.'")
                } else if names.contains(value) {
                    error("duplicate route name '\(value)'")
                }
                names.insert(value)
                route = RouteDraft(line: line, name: value)
                return
            }
            if route != nil {
                handleRoute(key, value)
            } else {
                handleGlobal(key, value)
            }
        }

        mutating func handleGlobal(_ key: String, _ value: String) {
            guard need(key, value) else { return }
            switch key {
            case "address", "addresses":
                let first = value.split(separator: " ").first.map(String.init) ?? value
                var host = first
                var port = 1883
                if let colon = first.lastIndex(of: ":"), !first.hasSuffix("]") {
                    host = String(first[..<colon])
                    guard let p = Int(first[first.index(after: colon)...]), (1...65535).contains(p) else {
                        return error("invalid broker address '\(first)': use host[:port] with a port from 1 to 65535")
                    }
                    port = p
                }
                config.mqtt.endpoint = .tcp(host: host, port: port)
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
            case "metrics_listen", "http_listen":
                guard let a = SocketAddressSpec(parsing: value) else { return error("metrics_listen needs host:port") }
                config.metricsAddress = a
            case "state_prefix", "notification_topic":
                guard MQTTTopic.isValidName(value) else { return error("state_prefix '\(value)' is not a valid topic") }
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
                error("unknown option '\(key)'" + (routeKeys.contains(key) ? " before any 'route' line" : ""))
            }
        }

        static let routeKeysList = ["direction", "mode", "udp_target", "allow", "max_connections", "idle_timeout", "framing", "max_frame", "oversize",
                                    "partial_on_close", "topic", "dead_letter_topic", "field_separator", "topic_regex", "subscribe",
                                    "share_group", "qos", "retain", "out_queue_bytes", "slow_reader"]
        var routeKeys: Set<String> { Set(Self.routeKeysList) }

        func restartTimeout(_ value: String) -> RestartTimeout? {
            let parts = value.split(separator: " ").map(String.init)
            guard let first = parts.first, let base = seconds(first) else { return nil }
            if parts.count == 1 { return RestartTimeout(base: base, cap: base) }
            guard let cap = seconds(parts[1]), parts.count <= 3 else { return nil }
            return RestartTimeout(base: base, cap: cap)
        }

        mutating func handleRoute(_ key: String, _ value: String) {
            guard need(key, value) else { return }
            guard var r = route else { return }
            defer { route = r }
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
                    guard let a = SocketAddressSpec(parsing: String(part)) else {
                        return error("invalid address '\(part)': use host:port")
                    }
                    r.addresses.append(a)
                }
            case "udp_target":
                for part in value.split(separator: " ") {
                    guard let a = SocketAddressSpec(parsing: String(part)), a.port > 0 else {
                        return error("invalid udp_target '\(part)': use host:port")
                    }
                    r.udpTargets.append(a)
                }
            case "allow":
                for part in value.split(separator: " ") {
                    guard IPAllowList.isValidEntry(String(part)) else { return error("invalid allow entry '\(part)': use an IP address or CIDR block") }
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
            case "dead_letter_topic":
                guard MQTTTopic.isValidName(value) else { return error("dead_letter_topic '\(value)' is not a valid topic name") }
                r.deadLetter = value
            case "field_separator":
                guard let b = bytes(value) else { return error("field_separator needs bytes") }
                r.fieldSeparator = b
            case "topic_regex":
                do {
                    _ = try Regex(value)
                    r.regex = value
                } catch {
                    self.error("topic_regex '\(value)' is not a valid regular expression")
                }
            case "subscribe":
                guard MQTTTopic.isValidFilter(value) else { return error("subscribe '\(value)' is not a valid topic filter") }
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
                error("unknown route option '\(key)'")
            }
        }

        mutating func finishRoute() {
            guard let r = route else { return }
            route = nil
            let saved = line
            line = r.line
            defer { line = saved }
            guard let mode = r.mode else { return error("route '\(r.name)' needs a 'mode' (tcp_client, tcp_server or udp)") }
            let direction = r.direction ?? .toMQTT
            if mode == .tcpClient && r.addresses.isEmpty { error("route '\(r.name)': mode tcp_client needs an 'address' to dial") }
            if direction.readsFeed && r.topic == nil { error("route '\(r.name)': direction \(direction.rawValue) needs a 'topic'") }
            if direction.writesFeed && r.subscriptions.isEmpty { error("route '\(r.name)': direction \(direction.rawValue) needs a 'subscribe' filter") }
            if mode == .udp && direction.writesFeed && r.udpTargets.isEmpty { error("route '\(r.name)': udp to the feed needs a 'udp_target'") }
            if case .fixed(let n) = r.framing, n > r.maxFrame { error("route '\(r.name)': fixed frame length \(n) exceeds max_frame \(r.maxFrame)") }
            if let t = r.topic, t.usesRegex, r.regex == nil { error("route '\(r.name)': the topic uses {regex:N} but no 'topic_regex' is set") }
            var addresses = r.addresses
            if addresses.isEmpty { addresses = [SocketAddressSpec(host: "127.0.0.1", port: 0)] }
            let feed = FeedConfiguration(mode: mode, addresses: addresses, udpTargets: r.udpTargets, allow: r.allow,
                                         maxConnections: r.maxConnections, restartTimeout: r.restart, idleTimeout: r.idleTimeout)
            config.routes.append(RouteConfiguration(
                name: r.name, direction: direction, feed: feed, framing: r.framing, maxFrame: r.maxFrame, oversize: r.oversize,
                partialOnClose: r.partial, topic: r.topic, deadLetterTopic: r.deadLetter, fieldSeparator: r.fieldSeparator,
                topicRegex: r.regex, subscriptions: r.subscriptions, shareGroup: r.shareGroup, qos: r.qos, retain: r.retain,
                outQueueBytes: r.outQueue, slowReader: r.slowReader))
        }

        mutating func finish() {
            line = 0
            if let username {
                config.mqtt.credentials = .init(username: username, password: password)
            } else if password != nil {
                line = passwordLine
                error("remote_password needs remote_username")
                line = 0
            }
            if tlsSet { config.mqtt.tls = tls }
            if cleanSession {
                config.mqtt.session = .clean
            } else {
                if config.mqtt.clientID == nil { error("cleansession false needs remote_clientid") }
                config.mqtt.session = .persistent(expiry: sessionExpiry)
            }
            if config.routes.isEmpty && issues.isEmpty { error("no routes: add a 'route <name>' block") }
        }
    }
}
