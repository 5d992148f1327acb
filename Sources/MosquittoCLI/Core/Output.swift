#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CMosquitto
import MessagePack

/// How `mqtt-sub` and `mqtt-rr` print a message: the payload, `-v`, a `-F` format (mosquitto 2.1's: widths,
/// precisions, hex separators, `%d`/`%f` numbers, `%j`/`%J` JSON with user properties as an array), or this
/// toolkit's `--json` lines. Everything goes through C's stdio, flushed after every message, as mosquitto_sub does.
enum MessagePrinter {
    /// The characters that may separate groups of hex digits: `%.2:x`.
    static let hexSeparators: [UInt8] = Array("!\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~ ".utf8)

    /// The largest field width or precision a `-F` format may ask for.
    static let maximumWidth = 65535

    /// mosquitto's `check_format`: validates a `-F` format, printing mosquitto's message when it is not.
    static func checkFormat(_ format: UnsafePointer<CChar>) -> Bool {
        let f = cBytes(format)
        let len = f.count
        func at(_ k: Int) -> UInt8 { k < len ? f[k] : 0 }
        func isDigit(_ c: UInt8) -> Bool { c >= 48 && c <= 57 }
        var i = 0
        while i < len {
            if f[i] == UInt8(ascii: "%") {
                if i == len - 1 {
                    errorPrintf("Error: Incomplete format specifier.\n")
                    return false
                }
                if at(i + 1) == UInt8(ascii: "0") || at(i + 1) == UInt8(ascii: "-") {
                    i += 1
                    if i == len - 1 {
                        errorPrintf("Error: Incomplete format specifier.\n")
                        return false
                    }
                }
                var width = 0
                while isDigit(at(i + 1)) {
                    i += 1
                    width = min(width * 10 + Int(f[i] - 48), maximumWidth + 1)
                    if i == len - 1 {
                        errorPrintf("Error: Incomplete format specifier.\n")
                        return false
                    }
                }
                if at(i + 1) == UInt8(ascii: ".") {
                    i += 1
                    if i == len - 1 {
                        errorPrintf("Error: Incomplete format specifier.\n")
                        return false
                    }
                    var precision = 0
                    while isDigit(at(i + 1)) {
                        i += 1
                        precision = min(precision * 10 + Int(f[i] - 48), maximumWidth + 1)
                        if i == len - 1 {
                            errorPrintf("Error: Incomplete format specifier.\n")
                            return false
                        }
                    }
                    width = max(width, precision)
                }
                if width > maximumWidth {
                    // mosquitto_sub overflows an int here and may then print billions of pad characters; a width
                    // that large is a typo, not a layout.
                    errorPrintf("Error: Format width or precision too large (at most %d).\n", Int32(maximumWidth))
                    return false
                }
                if hexSeparators.contains(at(i + 1)) { i += 1 }
                let spec = at(i + 1)
                if !"%ACDEFIlmPpqRSrtjJUxXfd".utf8.contains(spec) || spec == 0 {
                    errorPrintf("Error: Invalid format specifier '%c'.\n", Int32(spec))
                    return false
                }
                i += 1
            } else if f[i] == UInt8(ascii: "@") {
                if i == len - 1 {
                    errorPrintf("Error: Incomplete format specifier.\n")
                    return false
                }
                i += 1
            } else if f[i] == UInt8(ascii: "\\") {
                if i == len - 1 {
                    errorPrintf("Error: Incomplete escape specifier.\n")
                    return false
                }
                if !"\\0aenrtv".utf8.contains(at(i + 1)) {
                    errorPrintf("Error: Invalid escape specifier '%c'.\n", Int32(at(i + 1)))
                    return false
                }
                i += 1
            }
            i += 1
        }
        return true
    }

    /// A field's width, precision, alignment, padding and hex separator.
    struct Field {
        var width: Int32 = 0
        var precision: Int32 = -1
        var separator: UInt8 = 32
        var align: UInt8 = 0
        var pad: UInt8 = 32
    }

    /// The time a message is printed at.
    struct Clock {
        var seconds: time_t
        var nanoseconds: Int
        static func now() -> Clock {
            var ts = timespec()
            clock_gettime(CLOCK_REALTIME, &ts)
            return Clock(seconds: ts.tv_sec, nanoseconds: ts.tv_nsec)
        }
        func local() -> tm {
            var t = seconds
            var out = tm()
            localtime_r(&t, &out)
            return out
        }
        /// `strftime` into a C buffer; nil when the result is empty.
        func format(_ f: String) -> [CChar]? {
            var time = local()
            var buffer = [CChar](repeating: 0, count: 100)
            let n = strftime(&buffer, 100, f, &time)
            return n == 0 ? nil : Array(buffer[0...n])
        }
    }

    /// Prints one message (mosquitto's `print_message`), then flushes standard output.
    static func print(_ config: ClientConfig, _ message: UnsafePointer<mosquitto_message>, _ properties: OpaquePointer?) {
        guard let decode = config.payloadDecode else {
            // --json without --decode: a payload whose MQTT 5 content type says MessagePack is embedded as its value
            // (binary noise as base64 helps no one reading `mqtt-sub --json | jq`); if it does not decode, it is
            // printed as base64 as before.
            if config.jsonLines, let type = PayloadCoding.contentType(properties), PayloadCoding.classify(contentType: type) == true {
                let m = message.pointee
                let payload = m.payload.map { Array(UnsafeRawBufferPointer(start: $0, count: Int(m.payloadlen))) } ?? []
                if case .value(let value, _) = PayloadCoding.render(.msgpack, payload: payload, properties: properties) {
                    return print(config, m, properties, decoded: value)
                }
            }
            return print(config, message.pointee, properties, decoded: nil)
        }
        // --decode: every output prints the payload as JSON text (Python's json.dumps layout), --json embeds it as
        // a JSON value; a payload that does not decode is reported and not printed.
        var m = message.pointee
        let payload = m.payload.map { Array(UnsafeRawBufferPointer(start: $0, count: Int(m.payloadlen))) } ?? []
        switch PayloadCoding.render(decode, payload: payload, properties: properties) {
        case .unchanged:
            print(config, m, properties, decoded: nil)
        case .failed(let codec, let reason):
            codec.withCString { c in
                reason.withCString { r in
                    config.errPrintf("Error: Message payload is not valid %s on topic %s: %s.\n", c, m.topic, r)
                }
            }
        case .value(let value, let isJSONText):
            if config.jsonLines {
                print(config, m, properties, decoded: value)
                return
            }
            var text = isJSONText ? payload : Array(value.jsonText().utf8)
            text.withUnsafeMutableBytes { bytes in
                m.payload = bytes.baseAddress
                m.payloadlen = Int32(bytes.count)
                print(config, m, properties, decoded: nil)
            }
        }
    }

    private static func print(_ config: ClientConfig, _ m: mosquitto_message, _ properties: OpaquePointer?, decoded: MessagePackValue?) {
        if config.watch { Watch.position(m.topic) }
        if config.randomFilter < 10000 {
            if Int32(random() % 10000) >= config.randomFilter { return }
        }
        if config.jsonLines {
            JSONLines.print(m, properties, decoded: decoded)
            outByte(10)
            fflush(cStdout)
        } else if let format = config.format {
            formatted(config, format, m, properties)
        } else if config.verbose {
            if m.payloadlen != 0 {
                outString(m.topic)
                outByte(32)
                outWrite(m.payload, Int(m.payloadlen))
                if config.endOfLine { outByte(10) }
            } else if config.endOfLine {
                outString(m.topic)
                outString(" (null)\n")
            }
            fflush(cStdout)
        } else if m.payloadlen != 0 {
            outWrite(m.payload, Int(m.payloadlen))
            if config.endOfLine { outByte(10) }
            fflush(cStdout)
        }
        if config.watch { outPrintf("\u{1B}[%d;1H\n", Watch.next - 1) }
    }

    /// `-w`: each topic keeps its own line of the terminal.
    enum Watch {
        nonisolated(unsafe) static var lines: [[UInt8]: Int32] = [:]
        nonisolated(unsafe) static var next: Int32 = 2

        static func start(host: UnsafePointer<CChar>) {
            outPrintf("\u{1B}[2J\u{1B}[1;1H")
            outPrintf("Broker: %s\n", host)
        }

        static func position(_ topic: UnsafePointer<CChar>) {
            let key = Array(cBytes(topic))
            let line: Int32
            if let l = lines[key] {
                line = l
            } else {
                line = next
                next += 1
                lines[key] = line
            }
            outPrintf("\u{1B}[%d;1H", line)
        }
    }

    /// mosquitto's `formatted_print`.
    static func formatted(_ config: ClientConfig, _ format: UnsafePointer<CChar>, _ m: mosquitto_message, _ properties: OpaquePointer?) {
        let f = cBytes(format)
        let len = f.count
        var clock: Clock?
        var i = 0
        func isDigit(_ c: UInt8) -> Bool { c >= 48 && c <= 57 }
        while i < len {
            let c = f[i]
            if c == UInt8(ascii: "%") {
                var field = Field()
                if i < len - 1 {
                    i += 1
                    if f[i] == UInt8(ascii: "-") {
                        field.align = f[i]
                        if i < len - 1 { i += 1 }
                    }
                    if f[i] == UInt8(ascii: "0") {
                        field.pad = f[i]
                        if i < len - 1 { i += 1 }
                    }
                    while i < len - 1 && isDigit(f[i]) {
                        field.width = field.width &* 10 &+ Int32(f[i] - 48)
                        i += 1
                    }
                    if f[i] == UInt8(ascii: ".") {
                        if i < len - 1 {
                            i += 1
                            field.precision = 0
                            while i < len - 1 && isDigit(f[i]) {
                                field.precision = field.precision &* 10 &+ Int32(f[i] - 48)
                                i += 1
                            }
                        }
                    }
                    if hexSeparators.contains(f[i]) {
                        field.separator = f[i]
                        i += 1
                    }
                    if i < len {
                        percent(config, m, properties, f[i], field)
                    }
                }
            } else if c == UInt8(ascii: "@") {
                if i < len - 1 {
                    i += 1
                    if f[i] == UInt8(ascii: "@") {
                        outByte(UInt8(ascii: "@"))
                    } else {
                        let now = clock ?? Clock.now()
                        clock = now
                        if f[i] == UInt8(ascii: "N") {
                            outPrintf("%09ld", now.nanoseconds)
                        } else if let text = now.format("%" + String(UnicodeScalar(f[i]))) {
                            text.withUnsafeBufferPointer { outString($0.baseAddress!) }
                        }
                    }
                }
            } else if c == UInt8(ascii: "\\") {
                if i < len - 1 {
                    i += 1
                    switch f[i] {
                    case UInt8(ascii: "\\"): outByte(92)
                    case UInt8(ascii: "0"): outByte(0)
                    case UInt8(ascii: "a"): outByte(7)
                    case UInt8(ascii: "e"): outByte(27)
                    case UInt8(ascii: "n"): outByte(10)
                    case UInt8(ascii: "r"): outByte(13)
                    case UInt8(ascii: "t"): outByte(9)
                    case UInt8(ascii: "v"): outByte(11)
                    default: break
                    }
                }
            } else {
                outByte(c)
            }
            i += 1
        }
        if config.endOfLine { outByte(10) }
        fflush(cStdout)
    }

    static func printInt(_ value: Int32, _ field: Field) {
        if field.width == 0 {
            outPrintf("%d", value)
        } else if field.align == UInt8(ascii: "-") {
            outPrintf("%-*d", field.width, value)
        } else if field.pad == UInt8(ascii: "0") {
            outPrintf("%0*d", field.width, value)
        } else {
            outPrintf("%*d", field.width, value)
        }
    }

    static func printString(_ value: UnsafePointer<CChar>, _ field: Field) {
        let left = field.align == UInt8(ascii: "-")
        if field.width == 0 && field.precision == -1 {
            outString(value)
        } else if field.precision == -1 {
            outPrintf(left ? "%-*s" : "%*s", field.width, value)
        } else if field.width == 0 {
            outPrintf(left ? "%-.*s" : "%.*s", field.precision, value)
        } else {
            outPrintf(left ? "%-*.*s" : "%*.*s", field.width, field.precision, value)
        }
    }

    static func printBlank(_ field: Field) {
        var k: Int32 = 0
        while k < field.width {
            outByte(field.pad)
            k += 1
        }
    }

    /// mosquitto's `write_payload`: raw (`hex` 0), lower-case hex (1) or upper-case hex (2), with the field's
    /// width, alignment, padding and, for hex, a separator every `precision` digits.
    static func writePayload(_ payload: UnsafeRawPointer?, _ length: Int32, hex: Int, _ field: Field) {
        var payloadLength = length
        let padLength: Int32
        if field.width > 0 {
            if payloadLength > field.width { payloadLength = field.width }
            padLength = hex > 0 ? field.width - payloadLength &* 2 : field.width - payloadLength
        } else {
            padLength = field.width - payloadLength
        }
        func separator(_ position: Int32) {
            if field.precision > 0 && position % field.precision == field.precision - 1 { outByte(field.separator) }
        }
        var position: Int32 = 0
        if field.align != UInt8(ascii: "-") {
            var k: Int32 = 0
            while k < padLength {
                outByte(field.pad)
                if hex > 0 { separator(position) }
                position += 1
                k += 1
            }
        }
        if hex == 0 {
            outWrite(payload, Int(payloadLength))
        } else if let payload {
            let digits: StaticString = "0123456789ABCDEF"
            let caseBit: UInt8 = hex == 1 ? 0x20 : 0
            let bytes = payload.assumingMemoryBound(to: UInt8.self)
            var k: Int32 = 0
            while k < payloadLength {
                let b = bytes[Int(k)]
                outByte(digits.utf8Start[Int(b >> 4)] | caseBit)
                separator(position)
                position += 1
                outByte(digits.utf8Start[Int(b & 15)] | caseBit)
                if k < payloadLength - 1 {
                    separator(position)
                    position += 1
                }
                k += 1
            }
        }
        if field.align == UInt8(ascii: "-") {
            outPrintf("%*s", padLength, staticC(""))
        }
    }

    /// `%f` (4-byte float) and `%d` (8-byte double) payloads; false when the payload is not that size.
    static func printFloat(_ payload: UnsafeRawPointer?, _ length: Int32, double: Bool, _ field: Field) -> Bool {
        let value: Double
        if double {
            guard length == 8, let payload else { return false }
            value = payload.loadUnaligned(as: Double.self)
        } else {
            guard length == 4, let payload else { return false }
            value = Double(payload.loadUnaligned(as: Float.self))
        }
        if field.width == 0 {
            outPrintf("%.*f", field.precision, value)
        } else if field.align == UInt8(ascii: "-") {
            outPrintf("%-*.*f", field.width, field.precision, value)
        } else if field.pad == UInt8(ascii: "0") {
            outPrintf("%0*.*f", field.width, field.precision, value)
        } else {
            outPrintf("%*.*f", field.width, field.precision, value)
        }
        return true
    }

    /// One `%` specifier (mosquitto's `formatted_print_percent`).
    static func percent(_ config: ClientConfig, _ m: mosquitto_message, _ properties: OpaquePointer?, _ spec: UInt8, _ field: Field) {
        var i8: UInt8 = 0
        var i16: UInt16 = 0
        var i32: UInt32 = 0
        switch spec {
        case UInt8(ascii: "%"):
            outByte(UInt8(ascii: "%"))
        case UInt8(ascii: "A"):
            if mosquitto_property_read_int16(properties, Int32(MQTT_PROP_TOPIC_ALIAS.rawValue), &i16, false) != nil {
                printInt(Int32(i16), field)
            } else {
                printBlank(field)
            }
        case UInt8(ascii: "C"):
            var value: CStr?
            if mosquitto_property_read_string(properties, Int32(MQTT_PROP_CONTENT_TYPE.rawValue), &value, false) != nil, let value {
                printString(value, field)
                free(value)
            } else {
                printBlank(field)
            }
        case UInt8(ascii: "D"):
            var value: UnsafeMutableRawPointer?
            if mosquitto_property_read_binary(properties, Int32(MQTT_PROP_CORRELATION_DATA.rawValue), &value, &i16, false) != nil {
                outWrite(value, Int(i16))
                free(value)
            }
        case UInt8(ascii: "E"):
            if mosquitto_property_read_int32(properties, Int32(MQTT_PROP_MESSAGE_EXPIRY_INTERVAL.rawValue), &i32, false) != nil {
                printInt(Int32(bitPattern: i32), field)
            } else {
                printBlank(field)
            }
        case UInt8(ascii: "F"):
            if mosquitto_property_read_byte(properties, Int32(MQTT_PROP_PAYLOAD_FORMAT_INDICATOR.rawValue), &i8, false) != nil {
                printInt(Int32(i8), field)
            } else {
                printBlank(field)
            }
        case UInt8(ascii: "I"):
            if let text = Clock.now().format("%FT%T%z") {
                text.withUnsafeBufferPointer { printString($0.baseAddress!, field) }
            } else {
                printBlank(field)
            }
        case UInt8(ascii: "j"), UInt8(ascii: "J"):
            let escaped = spec == UInt8(ascii: "j")
            guard let json = mosquittoJSON(m, properties, escaped: escaped, clock: .now()) else {
                config.errPrintf("Error: Message payload is not valid JSON on topic %s.\n", m.topic)
                return
            }
            var out: [UInt8] = []
            json.print(into: &out, pretty: config.pretty)
            outBytes(out)
        case UInt8(ascii: "l"):
            printInt(m.payloadlen, field)
        case UInt8(ascii: "m"):
            printInt(m.mid, field)
        case UInt8(ascii: "P"):
            var name: CStr?
            var value: CStr?
            var p = mosquitto_property_read_string_pair(properties, Int32(MQTT_PROP_USER_PROPERTY.rawValue), &name, &value, false)
            while p != nil {
                outPrintf("%s:%s", name!, value!)
                free(name)
                free(value)
                name = nil
                value = nil
                p = mosquitto_property_read_string_pair(p, Int32(MQTT_PROP_USER_PROPERTY.rawValue), &name, &value, true)
                if p != nil { outByte(32) }
            }
            free(name)
            free(value)
        case UInt8(ascii: "p"):
            writePayload(m.payload, m.payloadlen, hex: 0, field)
        case UInt8(ascii: "q"):
            outByte(UInt8(truncatingIfNeeded: m.qos + 48))
        case UInt8(ascii: "R"):
            var value: CStr?
            if mosquitto_property_read_string(properties, Int32(MQTT_PROP_RESPONSE_TOPIC.rawValue), &value, false) != nil, let value {
                printString(value, field)
                free(value)
            }
        case UInt8(ascii: "r"):
            outByte(m.retain ? UInt8(ascii: "1") : UInt8(ascii: "0"))
        case UInt8(ascii: "S"):
            if mosquitto_property_read_varint(properties, Int32(MQTT_PROP_SUBSCRIPTION_IDENTIFIER.rawValue), &i32, false) != nil {
                printInt(Int32(bitPattern: i32), field)
            } else {
                printBlank(field)
            }
        case UInt8(ascii: "t"):
            printString(m.topic, field)
        case UInt8(ascii: "U"):
            let now = Clock.now()
            if let text = now.format("%s") {
                text.withUnsafeBufferPointer { outPrintf("%s.%09ld", $0.baseAddress!, now.nanoseconds) }
            }
        case UInt8(ascii: "x"):
            writePayload(m.payload, m.payloadlen, hex: 1, field)
        case UInt8(ascii: "X"):
            writePayload(m.payload, m.payloadlen, hex: 2, field)
        case UInt8(ascii: "f"):
            if !printFloat(m.payload, m.payloadlen, double: false, field) {
                config.errPrintf("requested float printing, but non-float data received")
            }
        case UInt8(ascii: "d"):
            if !printFloat(m.payload, m.payloadlen, double: true, field) {
                config.errPrintf("requested double printing, but non-double data received")
            }
        default:
            break
        }
    }

    /// The `"tst"` of `%j`/`%J`: local time with microseconds and the UTC offset, `2020-05-06T21:48:00.123456+0100`.
    static func timestamp(_ clock: Clock) -> [UInt8] {
        var out: [UInt8] = []
        if let base = clock.format("%Y-%m-%dT%H:%M:%S") { out += base.dropLast().map { UInt8(bitPattern: $0) } }
        var micros = [CChar](repeating: 0, count: 16)
        _ = withVaList([Int32(clock.nanoseconds / 1000)]) { vsnprintf(&micros, 16, ".%06d", $0) }
        out += micros.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
        if let zone = clock.format("%z") { out += zone.dropLast().map { UInt8(bitPattern: $0) } }
        return out
    }

    /// The bytes of a C string up to its NUL (what cJSON copies).
    static func cTruncated(_ p: UnsafeRawPointer?, _ length: Int) -> [UInt8] {
        guard let p, length > 0 else { return [] }
        let bytes = UnsafeBufferPointer(start: p.assumingMemoryBound(to: UInt8.self), count: length)
        if let nul = bytes.firstIndex(of: 0) { return Array(bytes[..<nul]) }
        return Array(bytes)
    }
}
