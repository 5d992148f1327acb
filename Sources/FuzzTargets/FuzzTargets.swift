import CMosquitto
import Foundation
import MessagePack
import MQTTBridge
import Mosquitto
import MosquittoCLI

/// Everything that parses untrusted bytes, as libFuzzer targets.
///
/// Each target feeds arbitrary bytes to one parser and checks properties that must hold for every input
/// (not just "does not crash"): the topic validators agree with libmosquitto's C checks, a frame decoder
/// reassembles what an encoder wrote however the stream is sliced, a filled topic template is always a
/// valid topic, and so on. A violated property traps, which libFuzzer reports as a crash.
///
/// `Fuzz/run.sh TARGET SECONDS` fuzzes one target; `FuzzRegressionTests` replays every committed corpus
/// and crash file in the normal test run.
package enum FuzzTarget: String, CaseIterable, Sendable {
    case topics
    case url
    case framing
    case template
    case bridgeConfig = "bridge-config"
    case format
    case properties
    case msgpack

    /// Runs one input through the target.
    package func run(_ data: [UInt8]) {
        switch self {
        case .topics: fuzzTopics(data)
        case .url: fuzzURL(data)
        case .framing: fuzzFraming(data)
        case .template: fuzzTemplate(data)
        case .bridgeConfig: fuzzBridgeConfig(data)
        case .format: fuzzFormat(data)
        case .properties: fuzzProperties(data)
        case .msgpack: fuzzMessagePack(data)
        }
    }
}

func check(_ condition: Bool, _ message: @autoclosure () -> String) {
    if !condition { fatalError("fuzz property violated: \(message())") }
}

/// Topic names and filters: our validators against libmosquitto's, and matching against
/// `mosquitto_topic_matches_sub` for every pair both sides accept.
func fuzzTopics(_ data: [UInt8]) {
    let bytes = Array(data.prefix(300))
    // Split at the first 0x00 into filter and topic (NUL itself is invalid in both, tested separately).
    let parts = bytes.split(separator: 0, maxSplits: 1, omittingEmptySubsequences: false).map(Array.init)
    for candidate in parts {
        let cstr = candidate + [0]
        let cUTF8 = cstr.withUnsafeBufferPointer { p in
            p.withMemoryRebound(to: CChar.self) { mosquitto_validate_utf8($0.baseAddress, Int32(candidate.count)) == 0 }
        }
        let cFilter = !candidate.isEmpty && cUTF8 && cstr.withUnsafeBufferPointer { p in
            p.withMemoryRebound(to: CChar.self) { mosquitto_sub_topic_check($0.baseAddress) == 0 }
        }
        let cTopic = !candidate.isEmpty && cUTF8 && cstr.withUnsafeBufferPointer { p in
            p.withMemoryRebound(to: CChar.self) { mosquitto_pub_topic_check($0.baseAddress) == 0 }
        }
        let share = Array("$share/".utf8)
        let oursFilter = (try? MQTTTopic.validateFilter(bytes: candidate)) != nil
        let oursTopic = (try? MQTTTopic.validateName(bytes: candidate)) != nil
        check(oursTopic == cTopic, "topic validity differs from libmosquitto for \(candidate)")
        if !candidate.starts(with: share) {
            check(oursFilter == cFilter, "filter validity differs from libmosquitto for \(candidate)")
        } else if oursFilter {
            check(cFilter, "accepted a $share filter libmosquitto refuses: \(candidate)")
        }
    }
    guard parts.count == 2,
          let filter = String(validating: parts[0], as: UTF8.self),
          let topic = String(validating: parts[1], as: UTF8.self),
          MQTTTopic.isValidFilter(filter), MQTTTopic.isValidName(topic), !filter.hasPrefix("$share/") else { return }
    var result = false
    let rc = mosquitto_topic_matches_sub(filter, topic, &result)
    check(rc == 0, "libmosquitto refused a pair we accept: \(filter) / \(topic)")
    check(MQTTTopic.matches(filter: filter, topic: topic) == result, "matching differs for filter \(filter) topic \(topic)")
}

/// `mqtt://` URLs: parsing never crashes, and what it accepts is well-formed.
func fuzzURL(_ data: [UInt8]) {
    let text = String(decoding: data.prefix(512), as: UTF8.self)
    guard let url = try? MQTTURL(text) else { return }
    check((1...65535).contains(url.port), "port out of range: \(url.port)")
    check(!url.host.isEmpty, "empty host accepted")
    // The parser reads bytes: compare bytes (ASCII case folded), not Characters, or a combining mark after the
    // second '/' would make a valid URL look unchecked.
    let scheme = text.utf8.prefix(8).map { $0 >= 0x41 && $0 <= 0x5A ? $0 | 0x20 : $0 }
    check(scheme.starts(with: Array("mqtt://".utf8)) || scheme.starts(with: Array("mqtts://".utf8)), "scheme not checked")
}

/// Framing: frames written by the encoder come back byte-exact however the stream is sliced, and an
/// arbitrary stream never yields a frame larger than the maximum.
func fuzzFraming(_ data: [UInt8]) {
    guard data.count >= 3 else { return }
    let framings: [Framing] = [.lf, .crlf, .delimiter([0xFF, 0x00]), .delimiter([UInt8(ascii: "|")]), .fixed(Int(data[1] % 16) + 1),
                               .lengthPrefixed(width: 1, byteOrder: .bigEndian), .lengthPrefixed(width: 2, byteOrder: .littleEndian),
                               .lengthPrefixed(width: 4, byteOrder: .bigEndian), .raw]
    let framing = framings[Int(data[0]) % framings.count]
    let maxFrame = 32
    let policy = OversizePolicy.allCases[Int(data[2]) % OversizePolicy.allCases.count]
    let body = Array(data.dropFirst(3).prefix(4096))

    // 1. Arbitrary bytes, sliced by the input itself: no frame exceeds the maximum.
    var decoder = FrameDecoder(framing: framing, maxFrame: maxFrame, oversize: policy)
    var i = 0
    var step = 1
    while i < body.count {
        step = Int(body[i] % 7) + 1
        let chunk = Array(body[i..<min(body.count, i + step)])
        decoder.decode(chunk) { event in
            switch event {
            case .frame(let p), .truncated(let p): check(p.count <= maxFrame || framing == .raw && p.count <= maxFrame, "frame of \(p.count) bytes > max \(maxFrame)")
            default: break
            }
        }
        i += step
    }
    _ = decoder.finish()

    // 2. Round trip: payloads cut from the input, encoded, then decoded from 1-byte writes.
    if framing == .raw { return }
    let encoder = FrameEncoder(framing: framing)
    var payloads: [[UInt8]] = []
    var stream: [UInt8] = []
    var j = 0
    while j < body.count {
        let n = Int(body[j] % UInt8(maxFrame + 1))
        var p = Array(body[min(body.count, j + 1)..<min(body.count, j + 1 + n)])
        j += 1 + n
        if case .fixed(let size) = framing { p = Array((p + [UInt8](repeating: 0x20, count: size)).prefix(size)) }
        if let d = framing.delimiterBytes, contains(p, d) { continue }
        if case .crlf = framing, p.last == 0x0D { continue }  // "...\r" + "\r\n" is ambiguous by design
        guard (try? encoder.encode(p, into: &stream)) != nil else { continue }
        payloads.append(p)
    }
    var roundTrip = FrameDecoder(framing: framing, maxFrame: maxFrame, oversize: .discard)
    var decoded: [[UInt8]] = []
    for b in stream {
        roundTrip.decode([b]) { event in
            if case .frame(let p) = event { decoded.append(p) }
        }
    }
    check(decoded == payloads, "round trip through \(framing) changed the frames: \(payloads) -> \(decoded)")
}

func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
    guard !needle.isEmpty, haystack.count >= needle.count else { return false }
    for start in 0...(haystack.count - needle.count) where haystack[start..<start + needle.count].elementsEqual(needle) {
        return true
    }
    return false
}

/// Topic templates: parsing never crashes, and whatever a template produces from hostile frame data is a
/// valid MQTT topic (or a reported failure that sends the frame to the dead-letter topic).
func fuzzTemplate(_ data: [UInt8]) {
    let parts = data.split(separator: 0, maxSplits: 1, omittingEmptySubsequences: false)
    let text = String(decoding: parts.first ?? [], as: UTF8.self)
    let frame = parts.count > 1 ? Array(parts[1]) : []
    guard let template = try? TopicTemplate(text) else { return }
    let connection = ConnectionContext(feed: "feed", peerAddress: "127.0.0.1", peerPort: 4000, connectionID: 7)
    if case .success(let topic) = template.resolve(connection: connection, frame: frame, options: .init()) {
        check(MQTTTopic.isValidName(topic), "template \(text) produced an invalid topic \(Array(topic.utf8))")
    }
}

/// Bridge configuration files: `--check` and the parser agree, and neither crashes.
func fuzzBridgeConfig(_ data: [UInt8]) {
    let text = String(decoding: data.prefix(4096), as: UTF8.self)
    let issues = ConfigParser.check(text)
    let parsed: Bool
    do {
        _ = try ConfigParser.parse(text)
        parsed = true
    } catch {
        parsed = false
        check(!error.description.isEmpty, "empty error text")
    }
    check(parsed == issues.isEmpty, "--check and the parser disagree (\(issues.count) issues, parsed: \(parsed))")
    for issue in issues {
        check(issue.line >= 0, "negative line number")
    }
}

/// `mqtt-sub -F` formats: validation never crashes, and a valid format renders any message.
func fuzzFormat(_ data: [UInt8]) {
    let parts = data.split(separator: 0, maxSplits: 1, omittingEmptySubsequences: false)
    let format = String(decoding: (parts.first ?? []).prefix(256), as: UTF8.self)
    guard let formatter = try? MessageFormatter(style: .format(format)) else { return }
    let payload = parts.count > 1 ? Array(parts[1]) : []
    var props = MessageProperties()
    props.userProperties = [UserProperty("k", "v")]
    props.correlationData = payload
    let message = MQTTMessage(topic: "fuzz/topic", payload: payload, qos: .atLeastOnce, retain: true, properties: props)
    var out: [UInt8] = []
    _ = formatter.append(message, to: &out)
}

/// `-D command property value` lists: parsing never crashes.
func fuzzProperties(_ data: [UInt8]) {
    let text = String(decoding: data.prefix(1024), as: UTF8.self)
    let words = text.split(separator: " ", omittingEmptySubsequences: false).map(String.init)
    _ = try? PropertyOptions.parse(words)
}

/// MessagePack: every input decodes or throws; what decodes re-encodes to a canonical form no longer than the
/// input that decodes to the same value and re-encodes to itself; its JSON rendering parses, and gives the same value
/// back when the value is plain JSON. The same bytes read as JSON text parse or throw, and what parses round-trips
/// through MessagePack.
func fuzzMessagePack(_ data: [UInt8]) {
    if let value = try? MessagePackValue(decoding: data) {
        let canonical = value.encoded()
        check(canonical.count <= data.count, "canonical form longer than the input \(data)")
        guard let again = try? MessagePackValue(decoding: canonical) else {
            fatalError("fuzz property violated: canonical bytes of \(data) do not decode")
        }
        check(again == value, "canonical bytes of \(data) decode to another value")
        check(again.encoded() == canonical, "canonical form of \(data) is not stable")
        for style in [MessagePackValue.JSONStyle.python, .compact] {
            let json = value.jsonText(style: style)
            guard let parsed = try? MessagePackValue(json: json, maximumDepth: 2 * MessagePackReader.defaultMaximumDepth) else {
                fatalError("fuzz property violated: JSON rendering of \(data) does not parse: \(json)")
            }
            if isPlainJSON(value) { check(parsed == value, "JSON of \(data) parses to another value") }
        }
    }
    if let value = try? MessagePackValue(jsonUTF8: data) {
        let bytes = value.encoded()
        check((try? MessagePackValue(decoding: bytes, maximumDepth: 2 * MessagePackReader.defaultMaximumDepth)) == value, "JSON \(data) does not round-trip")
    }
}

/// A value that JSON text represents exactly: no binary, extension, timestamp, float 32 or NaN; unique string keys.
private func isPlainJSON(_ value: MessagePackValue) -> Bool {
    switch value {
    case .nil, .bool, .int, .uint, .string: return true
    case .double(let d): return !d.isNaN
    case .float, .binary, .ext, .timestamp: return false
    case .array(let a): return a.allSatisfy(isPlainJSON)
    case .map(let m):
        return Set(m.map(\.key)).count == m.count
            && m.allSatisfy { if case .string = $0.key { return isPlainJSON($0.value) } else { return false } }
    }
}
