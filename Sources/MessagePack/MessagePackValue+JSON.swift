// JSON text <-> MessagePackValue, without Foundation (the CLIs link this and nothing else).

extension MessagePackValue {
    /// Parses JSON text into a value, keeping the order of object members.
    ///
    /// The mapping is that of Python's `msgpack.packb(json.loads(text))`: an object becomes a map with string keys in
    /// order (a repeated name keeps its first place and its last value), an array an array, a number without fraction or exponent an integer (an error
    /// when it does not fit in 64 bits), any other number a float 64, `true`/`false`/`null` themselves. Like
    /// Python's parser it accepts `NaN`, `Infinity` and `-Infinity`.
    ///
    /// - Throws: ``MessagePackError`` with ``MessagePackError/Code/invalidJSON`` and the byte offset of the problem,
    ///   or ``MessagePackError/Code/notRepresentable`` for an integer out of range.
    public init(json text: String, maximumDepth: Int = MessagePackReader.defaultMaximumDepth) throws(MessagePackError) {
        var parser = JSONParser(bytes: Array(text.utf8), maximumDepth: maximumDepth)
        self = try parser.parseDocument()
    }

    /// Parses JSON from UTF-8 bytes; see ``init(json:maximumDepth:)``.
    public init(jsonUTF8 bytes: [UInt8], maximumDepth: Int = MessagePackReader.defaultMaximumDepth) throws(MessagePackError) {
        var parser = JSONParser(bytes: bytes, maximumDepth: maximumDepth)
        self = try parser.parseDocument()
    }

    /// How ``jsonText(style:)`` lays out its output.
    public enum JSONStyle: Sendable {
        /// Python's `json.dumps` default: `{"a": 1, "b": [1, 2]}`, non-ASCII escaped as `\uXXXX`.
        case python
        /// No spaces: `{"a":1,"b":[1,2]}`, non-ASCII escaped as `\uXXXX`.
        case compact
    }

    /// The value as JSON text, as Python's `json.dumps(msgpack.unpackb(bytes))` prints it where Python can.
    ///
    /// Numbers, strings, arrays and maps print exactly as Python prints them (floats in `repr` form, `NaN`,
    /// `Infinity` and `-Infinity` as Python writes them, although they are not strict JSON). Where Python's `json`
    /// module fails, this renders instead:
    /// - binary data as a base64 string;
    /// - a timestamp as an RFC 3339 string in UTC with nanoseconds when not zero (`"2026-01-01T00:00:00.5Z"`);
    /// - any other extension as `{"ext": TYPE, "base64": "..."}`;
    /// - a map key that is not a string: integers, floats, `true`, `false` and `null` as Python converts them
    ///   (`"1"`, `"true"`, `"null"`); any other key as its JSON text in a string.
    public func jsonText(style: JSONStyle = .python) -> String {
        var out: [UInt8] = []
        appendJSON(to: &out, style: style)
        return String(decoding: out, as: UTF8.self)
    }

    func appendJSON(to out: inout [UInt8], style: JSONStyle) {
        let comma: [UInt8] = style == .python ? [0x2c, 0x20] : [0x2c]
        let colon: [UInt8] = style == .python ? [0x3a, 0x20] : [0x3a]
        switch self {
        case .nil: out.append(contentsOf: "null".utf8)
        case .bool(let b): out.append(contentsOf: (b ? "true" : "false").utf8)
        case .int(let i): out.append(contentsOf: String(i).utf8)
        case .uint(let u): out.append(contentsOf: String(u).utf8)
        case .float(let f): out.append(contentsOf: pythonRepr(Double(f)).utf8)
        case .double(let d): out.append(contentsOf: pythonRepr(d).utf8)
        case .string(let s): appendJSONString(s, to: &out)
        case .binary(let b): appendJSONString(base64(b), to: &out)
        case .array(let a):
            out.append(0x5b)
            for (i, element) in a.enumerated() {
                if i > 0 { out.append(contentsOf: comma) }
                element.appendJSON(to: &out, style: style)
            }
            out.append(0x5d)
        case .map(let m):
            out.append(0x7b)
            for (i, entry) in m.enumerated() {
                if i > 0 { out.append(contentsOf: comma) }
                appendJSONString(entry.key.jsonKey(style: style), to: &out)
                out.append(contentsOf: colon)
                entry.value.appendJSON(to: &out, style: style)
            }
            out.append(0x7d)
        case .ext(let type, let data):
            MessagePackValue.map([.init(key: "ext", value: .int(Int64(type))), .init(key: "base64", value: .string(base64(data)))])
                .appendJSON(to: &out, style: style)
        case .timestamp(let t): appendJSONString(rfc3339(t), to: &out)
        }
    }

    private func jsonKey(style: JSONStyle) -> String {
        switch self {
        case .string(let s): return s
        case .nil, .bool, .int, .uint, .float, .double: return jsonText(style: style)
        default: return jsonText(style: style)
        }
    }
}

/// Appends `s` as a JSON string literal, escaped as Python's `json.dumps` (ensure_ascii) does.
private func appendJSONString(_ s: String, to out: inout [UInt8]) {
    let hex = Array("0123456789abcdef".utf8)
    func u(_ v: UInt16) {
        out.append(contentsOf: [0x5c, 0x75])
        for shift in stride(from: 12, through: 0, by: -4) { out.append(hex[Int(v >> UInt16(shift)) & 0xf]) }
    }
    out.append(0x22)
    for scalar in s.unicodeScalars {
        switch scalar.value {
        case 0x22: out.append(contentsOf: [0x5c, 0x22])
        case 0x5c: out.append(contentsOf: [0x5c, 0x5c])
        case 0x0a: out.append(contentsOf: [0x5c, 0x6e])
        case 0x0d: out.append(contentsOf: [0x5c, 0x72])
        case 0x09: out.append(contentsOf: [0x5c, 0x74])
        case 0x08: out.append(contentsOf: [0x5c, 0x62])
        case 0x0c: out.append(contentsOf: [0x5c, 0x66])
        case 0x20 ... 0x7e: out.append(UInt8(scalar.value))
        case 0x10000...:
            let v = scalar.value - 0x10000
            u(UInt16(0xd800 + (v >> 10)))
            u(UInt16(0xdc00 + (v & 0x3ff)))
        default: u(UInt16(scalar.value))
        }
    }
    out.append(0x22)
}

/// A double as Python's `repr` prints it: the shortest digits that read back the same, in fixed notation when the
/// decimal exponent is in -5 ... 15 (with `.0` for whole numbers), otherwise as `d.ddde+XX`.
func pythonRepr(_ d: Double) -> String {
    if d.isNaN { return "NaN" }
    if d.isInfinite { return d < 0 ? "-Infinity" : "Infinity" }
    if d == 0 { return d.sign == .minus ? "-0.0" : "0.0" }
    // Swift's description gives the shortest round-tripping digits; take them apart and lay them out again.
    var text = Array("\(d.magnitude)".utf8)
    var exponent = 0
    if let e = text.firstIndex(where: { $0 == 0x65 || $0 == 0x45 }) {
        exponent = Int(String(decoding: text[(e + 1)...], as: UTF8.self))!
        text = Array(text[..<e])
    }
    var digits: [UInt8] = []
    var pointPosition = text.count  // digits before the point
    for (i, c) in text.enumerated() {
        if c == 0x2e { pointPosition = i } else { digits.append(c) }
    }
    // Value = 0.d1d2d3... × 10^(pointPosition + exponent); strip leading and trailing zeros.
    var decimalPoint = pointPosition + exponent
    while digits.first == 0x30 { digits.removeFirst(); decimalPoint -= 1 }
    while digits.last == 0x30 { digits.removeLast() }
    let sign = d.sign == .minus ? "-" : ""
    let sciExponent = decimalPoint - 1
    let digitString = String(decoding: digits, as: UTF8.self)
    if sciExponent < -4 || sciExponent >= 16 {
        var mantissa = String(digitString.prefix(1))
        if digits.count > 1 { mantissa += "." + digitString.dropFirst() }
        let e = sciExponent < 0 ? "-" : "+"
        let magnitude = abs(sciExponent)
        return sign + mantissa + "e" + e + (magnitude < 10 ? "0" : "") + String(magnitude)
    }
    if decimalPoint <= 0 {
        return sign + "0." + String(repeating: "0", count: -decimalPoint) + digitString
    }
    if decimalPoint >= digits.count {
        return sign + digitString + String(repeating: "0", count: decimalPoint - digits.count) + ".0"
    }
    return sign + String(digitString.prefix(decimalPoint)) + "." + String(digitString.dropFirst(decimalPoint))
}

/// Standard base64 with padding.
func base64(_ bytes: [UInt8]) -> String {
    let table = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    var out: [UInt8] = []
    out.reserveCapacity((bytes.count + 2) / 3 * 4)
    var i = 0
    while i + 3 <= bytes.count {
        let n = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2])
        out += [table[Int(n >> 18 & 63)], table[Int(n >> 12 & 63)], table[Int(n >> 6 & 63)], table[Int(n & 63)]]
        i += 3
    }
    let rest = bytes.count - i
    if rest == 1 {
        let n = UInt32(bytes[i]) << 16
        out += [table[Int(n >> 18 & 63)], table[Int(n >> 12 & 63)], 0x3d, 0x3d]
    } else if rest == 2 {
        let n = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8
        out += [table[Int(n >> 18 & 63)], table[Int(n >> 12 & 63)], table[Int(n >> 6 & 63)], 0x3d]
    }
    return String(decoding: out, as: UTF8.self)
}

/// A timestamp as RFC 3339 in UTC (proleptic Gregorian calendar), nanoseconds without trailing zeros.
func rfc3339(_ t: MessagePackTimestamp) -> String {
    // Days from civil (Howard Hinnant's algorithm), in reverse.
    let (days, secondOfDay) = t.seconds.quotientAndRemainder(dividingBy: 86_400)
    let z = (secondOfDay < 0 ? days - 1 : days) + 719_468
    let sod = secondOfDay < 0 ? secondOfDay + 86_400 : secondOfDay
    let era = (z >= 0 ? z : z - 146_096) / 146_097
    let doe = z - era * 146_097
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
    let mp = (5 * doy + 2) / 153
    let day = doy - (153 * mp + 2) / 5 + 1
    let month = mp < 10 ? mp + 3 : mp - 9
    let year = yoe + era * 400 + (month <= 2 ? 1 : 0)
    func pad(_ v: Int64, _ width: Int) -> String {
        let s = String(v.magnitude)
        return (v < 0 ? "-" : "") + String(repeating: "0", count: max(0, width - s.count)) + s
    }
    var text = "\(pad(year, 4))-\(pad(month, 2))-\(pad(day, 2))T\(pad(sod / 3600, 2)):\(pad(sod / 60 % 60, 2)):\(pad(sod % 60, 2))"
    if t.nanoseconds != 0 {
        var fraction = pad(Int64(t.nanoseconds), 9)
        while fraction.hasSuffix("0") { fraction.removeLast() }
        text += "." + fraction
    }
    return text + "Z"
}

/// A strict JSON parser (RFC 8259, plus Python's NaN/Infinity) producing MessagePackValues.
struct JSONParser {
    let bytes: [UInt8]
    let maximumDepth: Int
    var offset = 0

    init(bytes: [UInt8], maximumDepth: Int) {
        self.bytes = bytes
        self.maximumDepth = maximumDepth
    }

    mutating func parseDocument() throws(MessagePackError) -> MessagePackValue {
        skipWhitespace()
        let value = try parseValue(depth: 0)
        skipWhitespace()
        guard offset == bytes.count else { throw error("unexpected text after the JSON value") }
        return value
    }

    private func error(_ message: String) -> MessagePackError {
        MessagePackError(.invalidJSON, at: offset, message)
    }

    private mutating func skipWhitespace() {
        while offset < bytes.count, [0x20, 0x09, 0x0a, 0x0d].contains(bytes[offset]) { offset += 1 }
    }

    private mutating func expect(_ word: String) -> Bool {
        let w = Array(word.utf8)
        guard bytes.count - offset >= w.count, Array(bytes[offset ..< offset + w.count]) == w else { return false }
        offset += w.count
        return true
    }

    private mutating func parseValue(depth: Int) throws(MessagePackError) -> MessagePackValue {
        guard offset < bytes.count else { throw error("the JSON text ends where a value was expected") }
        switch bytes[offset] {
        case 0x7b: // {
            guard depth < maximumDepth else { throw error("objects and arrays nested deeper than \(maximumDepth)") }
            offset += 1
            var entries: [MessagePackMapEntry] = []
            var positions: [String: Int] = [:]
            skipWhitespace()
            if offset < bytes.count, bytes[offset] == 0x7d { offset += 1; return .map(entries) }
            while true {
                skipWhitespace()
                guard offset < bytes.count, bytes[offset] == 0x22 else { throw error("expected a string key in an object") }
                let key = try parseString()
                skipWhitespace()
                guard offset < bytes.count, bytes[offset] == 0x3a else { throw error("expected ':' after an object key") }
                offset += 1
                skipWhitespace()
                let value = try parseValue(depth: depth + 1)
                // A repeated member replaces the value where the name first appeared, as Python's json does.
                if let i = positions[key] {
                    entries[i].value = value
                } else {
                    positions[key] = entries.count
                    entries.append(.init(key: .string(key), value: value))
                }
                skipWhitespace()
                guard offset < bytes.count else { throw error("the JSON text ends inside an object") }
                if bytes[offset] == 0x2c { offset += 1; continue }
                if bytes[offset] == 0x7d { offset += 1; return .map(entries) }
                throw error("expected ',' or '}' in an object")
            }
        case 0x5b: // [
            guard depth < maximumDepth else { throw error("objects and arrays nested deeper than \(maximumDepth)") }
            offset += 1
            var elements: [MessagePackValue] = []
            skipWhitespace()
            if offset < bytes.count, bytes[offset] == 0x5d { offset += 1; return .array(elements) }
            while true {
                skipWhitespace()
                elements.append(try parseValue(depth: depth + 1))
                skipWhitespace()
                guard offset < bytes.count else { throw error("the JSON text ends inside an array") }
                if bytes[offset] == 0x2c { offset += 1; continue }
                if bytes[offset] == 0x5d { offset += 1; return .array(elements) }
                throw error("expected ',' or ']' in an array")
            }
        case 0x22: return .string(try parseString())
        case 0x74: if expect("true") { return .bool(true) }
        case 0x66: if expect("false") { return .bool(false) }
        case 0x6e: if expect("null") { return .nil }
        case 0x4e: if expect("NaN") { return .double(.nan) }
        case 0x49: if expect("Infinity") { return .double(.infinity) }
        case 0x2d, 0x30 ... 0x39:
            if expect("-Infinity") { return .double(-.infinity) }
            return try parseNumber()
        default: break
        }
        throw error("expected a JSON value")
    }

    private mutating func parseNumber() throws(MessagePackError) -> MessagePackValue {
        let start = offset
        func digits() -> Int {
            let s = offset
            while offset < bytes.count, (0x30 ... 0x39).contains(bytes[offset]) { offset += 1 }
            return offset - s
        }
        if bytes[offset] == 0x2d { offset += 1 }
        let intStart = offset
        let intDigits = digits()
        guard intDigits > 0 else { throw error("expected digits in a number") }
        if intDigits > 1, bytes[intStart] == 0x30 { offset = intStart; throw error("a number with a leading zero") }
        var isInteger = true
        if offset < bytes.count, bytes[offset] == 0x2e {
            offset += 1
            isInteger = false
            guard digits() > 0 else { throw error("expected digits after a decimal point") }
        }
        if offset < bytes.count, bytes[offset] == 0x65 || bytes[offset] == 0x45 {
            offset += 1
            isInteger = false
            if offset < bytes.count, bytes[offset] == 0x2b || bytes[offset] == 0x2d { offset += 1 }
            guard digits() > 0 else { throw error("expected digits in an exponent") }
        }
        let text = String(decoding: bytes[start ..< offset], as: UTF8.self)
        if isInteger {
            if let i = Int64(text) { return .int(i) }
            if let u = UInt64(text) { return .uint(u) }
            throw MessagePackError(.notRepresentable, at: start, "the integer \(text) does not fit in 64 bits")
        }
        guard let d = Double(text) else { throw MessagePackError(.invalidJSON, at: start, "an unreadable number") }
        return .double(d)
    }

    private mutating func hex4() throws(MessagePackError) -> UInt32 {
        guard bytes.count - offset >= 4 else { throw error("a \\u escape needs four hex digits") }
        var v: UInt32 = 0
        for _ in 0 ..< 4 {
            let c = bytes[offset]
            let d: UInt32
            switch c {
            case 0x30 ... 0x39: d = UInt32(c - 0x30)
            case 0x41 ... 0x46: d = UInt32(c - 0x41 + 10)
            case 0x61 ... 0x66: d = UInt32(c - 0x61 + 10)
            default: throw error("a \\u escape needs four hex digits")
            }
            v = v << 4 | d
            offset += 1
        }
        return v
    }

    private mutating func parseString() throws(MessagePackError) -> String {
        offset += 1  // the opening quote
        var out: [UInt8] = []
        let start = offset
        while true {
            guard offset < bytes.count else { throw error("the JSON text ends inside a string") }
            let c = bytes[offset]
            if c == 0x22 { offset += 1; break }
            if c < 0x20 { throw error("a control character inside a string must be escaped") }
            if c != 0x5c { out.append(c); offset += 1; continue }
            offset += 1
            guard offset < bytes.count else { throw error("the JSON text ends inside a string") }
            let e = bytes[offset]
            offset += 1
            switch e {
            case 0x22: out.append(0x22)
            case 0x5c: out.append(0x5c)
            case 0x2f: out.append(0x2f)
            case 0x62: out.append(0x08)
            case 0x66: out.append(0x0c)
            case 0x6e: out.append(0x0a)
            case 0x72: out.append(0x0d)
            case 0x74: out.append(0x09)
            case 0x75:
                var scalar = try hex4()
                if (0xd800 ..< 0xdc00).contains(scalar) {
                    guard expect("\\u") else { throw error("a lone UTF-16 surrogate in a \\u escape") }
                    let low = try hex4()
                    guard (0xdc00 ..< 0xe000).contains(low) else { throw error("a lone UTF-16 surrogate in a \\u escape") }
                    scalar = 0x10000 + (scalar - 0xd800) << 10 + (low - 0xdc00)
                } else if (0xdc00 ..< 0xe000).contains(scalar) {
                    throw error("a lone UTF-16 surrogate in a \\u escape")
                }
                out.append(contentsOf: Array(String(Character(Unicode.Scalar(scalar)!)).utf8))
            default: throw error("an unknown escape in a string")
            }
        }
        guard let s = String(validating: out, as: UTF8.self) else {
            throw MessagePackError(.invalidJSON, at: start, "a string that is not valid UTF-8")
        }
        return s
    }
}
