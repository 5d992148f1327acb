import FoundationEssentials
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Mosquitto

/// Turns received messages into the bytes mosquitto_sub 2.0.11 prints: the payload, `-v` (`topic payload`),
/// `-F` formats (every `%`, `@` and `\` sequence, with widths, padding and precision) and the `%j`/`%J` JSON,
/// or this toolkit's JSON-lines form.
public struct MessageFormatter: Sendable {
    /// How messages are printed.
    public enum Style: Sendable, Hashable {
        /// The raw payload (mosquitto_sub's default).
        case payload
        /// `topic payload` (`-v`).
        case verbose
        /// A `-F` format.
        case format(String)
        /// One JSON object per line with every property and a binary-safe payload (`--json`).
        case jsonLines
    }

    enum Token: Sendable, Hashable {
        case literal([UInt8])
        case percent(spec: UInt8, align: UInt8, pad: UInt8, width: Int, precision: Int)
        case time(UInt8)
    }

    /// The style.
    public let style: Style
    /// Whether a newline follows each message (`-N` turns it off).
    public let endOfLine: Bool
    /// Multi-line JSON for `%j`/`%J` (`--pretty`).
    public let pretty: Bool
    /// A subscription identifier to report in `%S` and the JSON (the one given with `-D subscribe
    /// subscription-identifier`); the library's own identifiers are never shown.
    public let subscriptionIdentifier: UInt32?
    let tokens: [Token]

    /// Creates a formatter.
    /// - Throws: ``CLIError`` for an invalid `-F` format, with mosquitto's messages.
    public init(style: Style, endOfLine: Bool = true, pretty: Bool = false, subscriptionIdentifier: UInt32? = nil) throws {
        self.style = style
        self.endOfLine = endOfLine
        self.pretty = pretty
        self.subscriptionIdentifier = subscriptionIdentifier
        if case .format(let f) = style {
            try Self.check(f)
            tokens = Self.tokenize(Array(f.utf8))
        } else {
            tokens = []
        }
    }

    /// The largest field width or precision a `-F` format may ask for.
    public static let maximumWidth = 65535

    /// mosquitto's `check_format`: the parse-time validation of `-F`, plus a bound on widths and precisions.
    public static func check(_ format: String) throws {
        let f = Array(format.utf8)
        let len = f.count
        var i = 0
        while i < len {
            if f[i] == UInt8(ascii: "%") {
                if i == len - 1 { throw CLIError.usage("Error: Incomplete format specifier.") }
                i += 1
                if f[i] == UInt8(ascii: "-") {
                    if i == len - 1 { throw CLIError.usage("Error: Incomplete format specifier.") }
                    i += 1
                }
                if f[i] == UInt8(ascii: "0") {
                    if i == len - 1 { throw CLIError.usage("Error: Incomplete format specifier.") }
                    i += 1
                }
                var width = 0
                while f[i] >= 48 && f[i] <= 57 {
                    if i == len - 1 { throw CLIError.usage("Error: Incomplete format specifier.") }
                    width = min(width * 10 + Int(f[i] - 48), maximumWidth + 1)
                    i += 1
                }
                if f[i] == UInt8(ascii: ".") {
                    if i == len - 1 { throw CLIError.usage("Error: Incomplete format specifier.") }
                    i += 1
                    var precision = 0
                    while f[i] >= 48 && f[i] <= 57 {
                        if i == len - 1 { throw CLIError.usage("Error: Incomplete format specifier.") }
                        precision = min(precision * 10 + Int(f[i] - 48), maximumWidth + 1)
                        i += 1
                    }
                    width = max(width, precision)
                }
                if width > maximumWidth {
                    // mosquitto_sub overflows an int here; a width that large is a typo, not a layout.
                    throw CLIError.usage("Error: Format width or precision too large (at most \(maximumWidth)).")
                }
                let valid = "%ACDEFIjJlmPpqRrStUxX".utf8
                if !valid.contains(f[i]) {
                    throw CLIError.usage("Error: Invalid format specifier '\(Character(Unicode.Scalar(f[i])))'.")
                }
            } else if f[i] == UInt8(ascii: "@") {
                if i == len - 1 { throw CLIError.usage("Error: Incomplete format specifier.") }
                i += 1
            } else if f[i] == 92 {
                if i == len - 1 { throw CLIError.usage("Error: Incomplete escape specifier.") }
                i += 1
                if !"\\0aenrtv".utf8.contains(f[i]) {
                    throw CLIError.usage("Error: Invalid escape specifier '\(Character(Unicode.Scalar(f[i])))'.")
                }
            }
            i += 1
        }
    }

    /// The same walk as mosquitto's `formatted_print`, done once.
    static func tokenize(_ f: [UInt8]) -> [Token] {
        var tokens: [Token] = []
        var literal: [UInt8] = []
        func emitLiteral() {
            if !literal.isEmpty { tokens.append(.literal(literal)); literal = [] }
        }
        let len = f.count
        var i = 0
        while i < len {
            let c = f[i]
            if c == UInt8(ascii: "%") {
                var align: UInt8 = 0, pad = UInt8(ascii: " "), width = 0, precision = -1
                if i < len - 1 {
                    i += 1
                    if f[i] == UInt8(ascii: "-") { align = f[i]; if i < len - 1 { i += 1 } }
                    if f[i] == UInt8(ascii: "0") { pad = f[i]; if i < len - 1 { i += 1 } }
                    while i < len - 1 && f[i] >= 48 && f[i] <= 57 { width = min(width * 10 + Int(f[i] - 48), Self.maximumWidth); i += 1 }
                    if f[i] == UInt8(ascii: ".") {
                        if i < len - 1 {
                            i += 1
                            precision = 0
                            while i < len - 1 && f[i] >= 48 && f[i] <= 57 { precision = min(precision * 10 + Int(f[i] - 48), Self.maximumWidth); i += 1 }
                        }
                    }
                    if i < len {
                        if f[i] == UInt8(ascii: "%") { literal.append(f[i]) } else {
                            emitLiteral()
                            tokens.append(.percent(spec: f[i], align: align, pad: pad, width: width, precision: precision))
                        }
                    }
                }
            } else if c == UInt8(ascii: "@") {
                if i < len - 1 {
                    i += 1
                    if f[i] == UInt8(ascii: "@") { literal.append(f[i]) } else {
                        emitLiteral()
                        tokens.append(.time(f[i]))
                    }
                }
            } else if c == 92 {
                if i < len - 1 {
                    i += 1
                    switch f[i] {
                    case 92: literal.append(92)
                    case UInt8(ascii: "0"): literal.append(0)
                    case UInt8(ascii: "a"): literal.append(7)
                    case UInt8(ascii: "e"): literal.append(27)
                    case UInt8(ascii: "n"): literal.append(10)
                    case UInt8(ascii: "r"): literal.append(13)
                    case UInt8(ascii: "t"): literal.append(9)
                    case UInt8(ascii: "v"): literal.append(11)
                    default: break
                    }
                }
            } else {
                literal.append(c)
            }
            i += 1
        }
        emitLiteral()
        return tokens
    }

    /// The wall-clock time of a message, taken once per message as mosquitto does.
    public struct Clock: Sendable {
        var seconds: Int
        var nanoseconds: Int
        /// Now.
        public static func now() -> Clock {
            var ts = timespec()
            clock_gettime(CLOCK_REALTIME, &ts)
            return Clock(seconds: Int(ts.tv_sec), nanoseconds: Int(ts.tv_nsec))
        }
        func strftime(_ format: String) -> [UInt8] {
            var t = time_t(seconds)
            var tmv = tm()
            localtime_r(&t, &tmv)
            var buf = [CChar](repeating: 0, count: 100)
            let n = Glibc.strftime(&buf, 100, format, &tmv)
            return buf[0..<n].map { UInt8(bitPattern: $0) }
        }
    }

    /// Appends the printed form of `message` to `out`.
    /// - Returns: an error line for standard error (a `%J` payload that is not JSON), or nil.
    @discardableResult
    public func append(_ message: MQTTMessage, to out: inout [UInt8], clock: @autoclosure () -> Clock = .now()) -> String? {
        switch style {
        case .payload:
            if !message.payload.isEmpty {
                out.append(contentsOf: message.payload)
                if endOfLine { out.append(10) }
            }
            return nil
        case .verbose:
            if !message.payload.isEmpty {
                out.append(contentsOf: cString(message.topic))
                out.append(32)
                out.append(contentsOf: message.payload)
                if endOfLine { out.append(10) }
            } else if endOfLine {
                out.append(contentsOf: cString(message.topic))
                out.append(contentsOf: " (null)\n".utf8)
            }
            return nil
        case .jsonLines:
            JSONLines.append(message, subscriptionIdentifier: subscriptionIdentifier, clock: clock(), to: &out)
            out.append(10)
            return nil
        case .format:
            var error: String?
            var time: Clock?
            func now() -> Clock {
                if let time { return time }
                let t = clock()
                time = t
                return t
            }
            for token in tokens {
                switch token {
                case .literal(let bytes): out.append(contentsOf: bytes)
                case .time(let c):
                    if c == UInt8(ascii: "N") {
                        out.append(contentsOf: pad9(now().nanoseconds).utf8)
                    } else {
                        out.append(contentsOf: now().strftime("%" + String(Character(Unicode.Scalar(c)))))
                    }
                case .percent(let spec, let align, let pad, let width, let precision):
                    if let e = percent(spec, align, pad, width, precision, message, now, &out) { error = e }
                }
            }
            if endOfLine { out.append(10) }
            return error
        }
    }

    private func cString(_ s: String) -> [UInt8] {
        let bytes = Array(s.utf8)
        if let nul = bytes.firstIndex(of: 0) { return Array(bytes[..<nul]) }
        return bytes
    }

    private func pad9(_ n: Int) -> String {
        let s = String(n)
        return String(repeating: "0", count: max(0, 9 - s.count)) + s
    }

    private func percent(_ spec: UInt8, _ align: UInt8, _ pad: UInt8, _ width: Int, _ precision: Int,
                         _ m: MQTTMessage, _ now: () -> Clock, _ out: inout [UInt8]) -> String? {
        let p = m.properties
        func int(_ v: Int) { out.append(contentsOf: Self.formatInt(v, align: align, pad: pad, width: width).utf8) }
        func blank(_ c: UInt8) { out.append(contentsOf: repeatElement(c, count: width)) }
        func str(_ s: [UInt8]) { out.append(contentsOf: Self.formatString(s, align: align, width: width, precision: precision)) }
        switch spec {
        case UInt8(ascii: "A"):
            if let v = p.topicAlias { int(Int(v)) } else { blank(pad) }
        case UInt8(ascii: "C"):
            if let v = p.contentType { str(cString(v)) } else { blank(32) }
        case UInt8(ascii: "D"):
            if let v = p.correlationData { out.append(contentsOf: v) }
        case UInt8(ascii: "E"):
            if let v = p.messageExpiryInterval { int(Int(Int32(bitPattern: v))) } else { blank(pad) }
        case UInt8(ascii: "F"):
            if let v = p.payloadFormat { int(Int(v.rawValue)) } else { blank(pad) }
        case UInt8(ascii: "I"):
            str(now().strftime("%FT%T%z"))
        case UInt8(ascii: "j"), UInt8(ascii: "J"):
            guard let json = Self.mosquittoJSON(m, escaped: spec == UInt8(ascii: "j"), subscriptionIdentifier: subscriptionIdentifier, clock: now()) else {
                return "Error: Message payload is not valid JSON on topic \(m.topic)."
            }
            json.print(into: &out, pretty: pretty)
        case UInt8(ascii: "l"): int(m.payload.count)
        case UInt8(ascii: "m"): int(Int(m.messageID))
        case UInt8(ascii: "P"):
            for (i, u) in p.userProperties.enumerated() {
                if i > 0 { out.append(32) }
                out.append(contentsOf: cString(u.name))
                out.append(UInt8(ascii: ":"))
                out.append(contentsOf: cString(u.value))
            }
        case UInt8(ascii: "p"): Self.writePayload(m.payload, hex: 0, align: align, pad: pad, width: width, into: &out)
        case UInt8(ascii: "q"): out.append(m.qos.rawValue + 48)
        case UInt8(ascii: "R"):
            if let v = p.responseTopic { str(cString(v)) }
        case UInt8(ascii: "r"): out.append(m.retain ? 49 : 48)
        case UInt8(ascii: "S"):
            if let v = subscriptionIdentifier { int(Int(Int32(bitPattern: v))) } else { blank(pad) }
        case UInt8(ascii: "t"): str(cString(m.topic))
        case UInt8(ascii: "U"):
            let t = now()
            out.append(contentsOf: "\(t.seconds).\(pad9(t.nanoseconds))".utf8)
        case UInt8(ascii: "x"): Self.writePayload(m.payload, hex: 1, align: align, pad: pad, width: width, into: &out)
        case UInt8(ascii: "X"): Self.writePayload(m.payload, hex: 2, align: align, pad: pad, width: width, into: &out)
        default: break
        }
        return nil
    }

    /// `formatted_print_int`.
    static func formatInt(_ v: Int, align: UInt8, pad: UInt8, width: Int) -> String {
        let s = String(v)
        if width == 0 || s.count >= width { return s }
        let fill = width - s.count
        if align == UInt8(ascii: "-") { return s + String(repeating: " ", count: fill) }
        if pad == UInt8(ascii: "0") {
            if v < 0 { return "-" + String(repeating: "0", count: fill) + String(-v) }
            return String(repeating: "0", count: fill) + s
        }
        return String(repeating: " ", count: fill) + s
    }

    /// `formatted_print_str` (printf `%*.*s` on bytes).
    static func formatString(_ s: [UInt8], align: UInt8, width: Int, precision: Int) -> [UInt8] {
        var v = s
        if precision >= 0 && v.count > precision { v = Array(v.prefix(precision)) }
        if v.count >= width { return v }
        let fill = [UInt8](repeating: 32, count: width - v.count)
        return align == UInt8(ascii: "-") ? v + fill : fill + v
    }

    /// `write_payload`, including 2.0.11's width handling for hex (width counted in bytes, then halved).
    static func writePayload(_ payload: [UInt8], hex: Int, align: UInt8, pad: UInt8, width: Int, into out: inout [UInt8]) {
        var len = payload.count
        var padlen: Int
        if width > 0 {
            if len > width { len = width }
            if hex > 0 {
                len /= 2
                padlen = width - len * 2
            } else {
                padlen = width - len
            }
        } else {
            padlen = width - len
        }
        if align != UInt8(ascii: "-") && padlen > 0 { out.append(contentsOf: repeatElement(pad, count: padlen)) }
        let digits = Array((hex == 2 ? "0123456789ABCDEF" : "0123456789abcdef").utf8)
        if hex == 0 {
            out.append(contentsOf: payload[0..<len])
        } else {
            for b in payload[0..<len] {
                out.append(digits[Int(b >> 4)])
                out.append(digits[Int(b & 15)])
            }
        }
        if align == UInt8(ascii: "-") && padlen > 0 { out.append(contentsOf: repeatElement(32, count: padlen)) }
    }

    /// The `%j`/`%J` object of mosquitto 2.0.11 with cJSON. Nil for `%J` when the payload is not JSON.
    static func mosquittoJSON(_ m: MQTTMessage, escaped: Bool, subscriptionIdentifier: UInt32?, clock: Clock) -> CJSON? {
        var tst = clock.strftime("%Y-%m-%dT%H:%M:%S")
        let micros = String(clock.nanoseconds / 1000)
        tst += Array(("." + String(repeating: "0", count: max(0, 6 - micros.count)) + micros + "Z").utf8)
        tst += clock.strftime("%z")
        var pairs: [(String, CJSON)] = [
            ("tst", .string(tst)),
            ("topic", .string(m.topic)),
            ("qos", .int(Int(m.qos.rawValue))),
            ("retain", .int(m.retain ? 1 : 0)),
            ("payloadlen", .int(m.payload.count)),
        ]
        if m.qos != .atMostOnce { pairs.append(("mid", .int(Int(m.messageID)))) }
        let p = m.properties
        // Properties in the order they arrived, as mosquitto_sub prints them (cJSON keeps insertion order); the user
        // properties form one object where the first of them arrived.
        var props: [(String, CJSON)] = []
        var done = Set<UInt8>()
        let known: [UInt8] = [0x0B, 0x01, 0x03, 0x08, 0x09, 0x26, 0x02]
        for id in p.receivedOrder + known where done.insert(id).inserted {
            switch id {
            case 0x0B: if let s = subscriptionIdentifier { props.append(("subscription-identifier", .int(Int(s)))) }
            case 0x01: if let v = p.payloadFormat { props.append(("payload-format-indicator", .int(Int(v.rawValue)))) }
            case 0x03: if let v = p.contentType { props.append(("content-type", .string(cTruncated(Array(v.utf8))))) }
            case 0x08: if let v = p.responseTopic { props.append(("response-topic", .string(cTruncated(Array(v.utf8))))) }
            case 0x09: if let v = p.correlationData { props.append(("correlation-data", .string(cTruncated(v)))) }
            case 0x26:
                if !p.userProperties.isEmpty {
                    props.append(("user-properties", .object(p.userProperties.map { ($0.name, .string(cTruncated(Array($0.value.utf8)))) })))
                }
            case 0x02: if let v = p.messageExpiryInterval { props.append(("message-expiry-interval", .number(Double(v)))) }
            default: break
            }
        }
        if !props.isEmpty { pairs.append(("properties", .object(props))) }
        if escaped {
            pairs.append(("payload", m.payload.isEmpty ? .null : .string(cTruncated(m.payload))))
        } else if m.payload.isEmpty {
            pairs.append(("payload", .null))
        } else {
            guard let parsed = CJSON.parse(m.payload) else { return nil }
            pairs.append(("payload", parsed))
        }
        return .object(pairs)
    }

    static func cTruncated(_ bytes: [UInt8]) -> [UInt8] {
        if let nul = bytes.firstIndex(of: 0) { return Array(bytes[..<nul]) }
        return bytes
    }
}
