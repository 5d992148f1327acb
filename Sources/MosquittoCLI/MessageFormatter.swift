import Mosquitto
import MosquittoCLICore

/// mqtt-sub's printing of a library message: the payload, `-v`, a `-F` format or `--json`, through the same code
/// the tool runs (``MessageRendering``), for programs and fuzzing that hold an `MQTTMessage`.
package struct MessageFormatter: Sendable {
    /// How messages are printed.
    package enum Style: Sendable, Hashable {
        /// The raw payload (mosquitto_sub's default).
        case payload
        /// `topic payload` (`-v`).
        case verbose
        /// A `-F` format.
        case format(String)
        /// One JSON object per line with every property and a binary-safe payload (`--json`).
        case jsonLines
    }

    /// The style.
    package let style: Style
    /// Whether a newline follows each message (`-N` turns it off).
    package let endOfLine: Bool
    /// Multi-line JSON for `%j`/`%J` (`--pretty`).
    package let pretty: Bool
    /// A subscription identifier to report with each message (`%S`, the JSON).
    package let subscriptionIdentifier: UInt32?

    /// Creates a formatter.
    /// - Throws: ``CLIError`` for an invalid `-F` format, with mqtt-sub's message.
    package init(style: Style, endOfLine: Bool = true, pretty: Bool = false, subscriptionIdentifier: UInt32? = nil) throws {
        if case .format(let f) = style, let error = MessageRendering.formatError(Array(f.utf8)) {
            var line = error
            while line.last == "\n" { line.removeLast() }
            throw CLIError.usage(line)
        }
        self.style = style
        self.endOfLine = endOfLine
        self.pretty = pretty
        self.subscriptionIdentifier = subscriptionIdentifier
    }

    /// Appends the printed form of `message` to `out`.
    /// - Returns: what mqtt-sub would print on standard error for it (a `%J` payload that is not JSON), or nil.
    @discardableResult
    package func append(_ message: MQTTMessage, to out: inout [UInt8]) -> String? {
        var format: [UInt8]?
        if case .format(let f) = style { format = Array(f.utf8) }
        let r = MessageRendering.render(format: format, verbose: style == .verbose, endOfLine: endOfLine, pretty: pretty,
                                        json: style == .jsonLines, topic: Array(message.topic.utf8), payload: message.payload,
                                        qos: Int32(message.qos.rawValue), retain: message.retain, mid: Int32(message.messageID),
                                        properties: Self.properties(message.properties, subscriptionIdentifier: subscriptionIdentifier))
        out += r.stdout
        if r.stderr.isEmpty { return nil }
        var line = String(decoding: r.stderr, as: UTF8.self)
        while line.last == "\n" { line.removeLast() }
        return line
    }

    /// The message's properties as the PUBLISH carried them.
    static func properties(_ p: MessageProperties, subscriptionIdentifier: UInt32?) -> [MessageRendering.Property] {
        var out: [MessageRendering.Property] = []
        if let v = p.payloadFormat { out.append(.byte(0x01, v.rawValue)) }
        if let v = p.messageExpiryInterval { out.append(.int32(0x02, v)) }
        if let v = p.contentType { out.append(.string(0x03, Array(v.utf8))) }
        if let v = p.responseTopic { out.append(.string(0x08, Array(v.utf8))) }
        if let v = p.correlationData { out.append(.binary(0x09, v)) }
        if let s = subscriptionIdentifier { out.append(.varint(0x0B, s)) }
        if let v = p.topicAlias { out.append(.int16(0x23, v)) }
        for u in p.userProperties { out.append(.pair(Array(u.name.utf8), Array(u.value.utf8))) }
        return out
    }
}
