import Foundation
import Mosquitto

/// What a connection contributes to a topic template.
package struct ConnectionContext: Sendable, Hashable {
    /// The route (feed) name.
    package var feed: String
    /// The peer's IP address, or the dialled host for a TCP client.
    package var peerAddress: String
    /// The peer's port.
    package var peerPort: Int
    /// A connection id, unique within the process.
    package var connectionID: UInt64

    /// Creates a context.
    package init(feed: String, peerAddress: String, peerPort: Int, connectionID: UInt64) {
        self.feed = feed
        self.peerAddress = peerAddress
        self.peerPort = peerPort
        self.connectionID = connectionID
    }
}

/// A topic made from a template such as `feeds/{feed}/{peer}/{field:0}`.
///
/// Placeholders:
/// - `{feed}`: the route name; `{peer}`: the peer's IP address; `{peer_port}`; `{conn}`: the connection id;
/// - `{field:N}`: field N (from 0) of the frame, split at the route's field separator (default `,`);
/// - `{regex:N}`: capture group N of the route's `topic_regex` matched against the frame (UTF-8);
/// - `{json:/pointer}`: the value at a JSON pointer (RFC 6901) in the frame.
///
/// Values taken from data are untrusted: a value that holds `+`, `#`, NUL, invalid UTF-8, is empty or too long,
/// or a finished topic that is not a valid MQTT topic name (or starts with `$`), makes the frame go to the route's
/// dead-letter topic instead. Nothing invalid is ever sent to the broker.
public struct TopicTemplate: Sendable, Hashable {
    enum Part: Sendable, Hashable {
        case literal(String)
        case feed, peer, peerPort, connection
        case field(Int)
        case regex(Int)
        case json(String)
    }

    /// Why a topic could not be built.
    public enum Failure: String, Sendable, Hashable, Error {
        /// The frame has no such field, capture group or JSON value.
        case missing
        /// A value from data holds `+`, `#`, NUL or `/`-free rules were broken, or it is not UTF-8.
        case invalidValue = "invalid_value"
        /// The finished topic is not a valid topic name.
        case invalidTopic = "invalid_topic"
    }

    let parts: [Part]
    /// The template text.
    public let text: String
    /// Whether any part depends on the frame's content (otherwise the topic is fixed per connection).
    public let dependsOnFrame: Bool

    /// Parses a template.
    /// - Throws: a message describing an unknown placeholder or an unclosed brace.
    public init(_ text: String) throws(TemplateError) {
        self.text = text
        var parts: [Part] = []
        var literal = ""
        var i = text.startIndex
        while i < text.endIndex {
            let c = text[i]
            if c == "{" {
                guard let close = text[i...].firstIndex(of: "}") else {
                    throw TemplateError("unclosed '{' in topic template '\(text)'")
                }
                let name = String(text[text.index(after: i)..<close])
                if !literal.isEmpty { parts.append(.literal(literal)); literal = "" }
                switch name {
                case "feed": parts.append(.feed)
                case "peer": parts.append(.peer)
                case "peer_port": parts.append(.peerPort)
                case "conn": parts.append(.connection)
                default:
                    if name.hasPrefix("field:"), let n = Int(name.dropFirst(6)), n >= 0 {
                        parts.append(.field(n))
                    } else if name.hasPrefix("regex:"), let n = Int(name.dropFirst(6)), n >= 0 {
                        parts.append(.regex(n))
                    } else if name.hasPrefix("json:") {
                        let pointer = String(name.dropFirst(5))
                        guard pointer.isEmpty || pointer.hasPrefix("/") else {
                            throw TemplateError("JSON pointer '\(pointer)' must start with '/'")
                        }
                        parts.append(.json(pointer))
                    } else {
                        throw TemplateError("unknown placeholder '{\(name)}' (use {feed}, {peer}, {peer_port}, {conn}, {field:N}, {regex:N} or {json:/pointer})")
                    }
                }
                i = text.index(after: close)
            } else {
                literal.append(c)
                i = text.index(after: i)
            }
        }
        if !literal.isEmpty { parts.append(.literal(literal)) }
        self.parts = parts
        dependsOnFrame = parts.contains {
            switch $0 {
            case .field, .regex, .json: return true
            default: return false
            }
        }
        // A template's literal parts must make a valid topic on their own.
        let literals = parts.compactMap { if case .literal(let l) = $0 { return l } else { return nil } }.joined()
        if literals.contains("+") || literals.contains("#") {
            throw TemplateError("topic template '\(text)' holds a wildcard (+ or #); a publish topic cannot")
        }
    }

    /// Whether the template uses `{regex:N}`.
    public var usesRegex: Bool { parts.contains { if case .regex = $0 { return true } else { return false } } }

    /// Fills in the connection's values only; nil when the template also depends on the frame.
    package func resolve(connection: ConnectionContext) -> Result<String, Failure>? {
        if dependsOnFrame { return nil }
        return resolve(connection: connection, frame: [], options: .init())
    }

    /// Options for values taken from the frame.
    package struct FrameOptions {
        /// Separator for `{field:N}`.
        package var fieldSeparator: [UInt8]
        /// The pattern for `{regex:N}`.
        package var regex: Regex<AnyRegexOutput>?
        /// The longest value accepted from data.
        package var maximumValueLength: Int
        /// Creates options.
        package init(fieldSeparator: [UInt8] = [UInt8(ascii: ",")], regex: Regex<AnyRegexOutput>? = nil, maximumValueLength: Int = 1024) {
            self.fieldSeparator = fieldSeparator
            self.regex = regex
            self.maximumValueLength = maximumValueLength
        }
    }

    /// Builds the topic for one frame.
    package func resolve(connection: ConnectionContext, frame: [UInt8], options: FrameOptions) -> Result<String, Failure> {
        var out: [UInt8] = []
        var text: String?
        for part in parts {
            switch part {
            case .literal(let l): out.append(contentsOf: l.utf8)
            case .feed: out.append(contentsOf: connection.feed.utf8)
            case .peer: out.append(contentsOf: connection.peerAddress.utf8)
            case .peerPort: out.append(contentsOf: String(connection.peerPort).utf8)
            case .connection: out.append(contentsOf: String(connection.connectionID).utf8)
            case .field(let n):
                guard let v = Self.field(n, of: frame, separator: options.fieldSeparator) else { return .failure(.missing) }
                guard Self.acceptable(v, options) else { return .failure(.invalidValue) }
                out.append(contentsOf: v)
            case .regex(let n):
                guard let regex = options.regex else { return .failure(.missing) }
                if text == nil { text = String(validating: frame, as: UTF8.self) }
                guard let t = text else { return .failure(.invalidValue) }
                guard let m = try? regex.firstMatch(in: t), n < m.output.count, let sub = m.output[n].substring else {
                    return .failure(.missing)
                }
                let v = Array(sub.utf8)
                guard Self.acceptable(v, options) else { return .failure(.invalidValue) }
                out.append(contentsOf: v)
            case .json(let pointer):
                guard let v = Self.json(pointer, in: frame) else { return .failure(.missing) }
                guard Self.acceptable(v, options) else { return .failure(.invalidValue) }
                out.append(contentsOf: v)
            }
        }
        if out.first == UInt8(ascii: "$") { return .failure(.invalidTopic) }
        do {
            try MQTTTopic.validateName(bytes: out)
        } catch {
            return .failure(.invalidTopic)
        }
        return .success(String(decoding: out, as: UTF8.self))
    }

    static func acceptable(_ v: [UInt8], _ options: FrameOptions) -> Bool {
        if v.isEmpty || v.count > options.maximumValueLength { return false }
        for b in v where b == 0 || b == UInt8(ascii: "+") || b == UInt8(ascii: "#") { return false }
        return String(validating: v, as: UTF8.self) != nil
    }

    static func field(_ n: Int, of frame: [UInt8], separator: [UInt8]) -> [UInt8]? {
        guard !separator.isEmpty else { return n == 0 ? frame : nil }
        var index = 0
        var start = 0
        var i = 0
        while i <= frame.count - separator.count {
            if frame[i] == separator[0] && (separator.count == 1 || Array(frame[i..<i + separator.count]) == separator) {
                if index == n { return Array(frame[start..<i]) }
                index += 1
                i += separator.count
                start = i
            } else {
                i += 1
            }
        }
        return index == n ? Array(frame[start...]) : nil
    }

    static func json(_ pointer: String, in frame: [UInt8]) -> [UInt8]? {
        guard let root = try? JSONSerialization.jsonObject(with: Data(frame), options: [.fragmentsAllowed]) else { return nil }
        var node: Any = root
        if !pointer.isEmpty {
            for raw in pointer.dropFirst().split(separator: "/", omittingEmptySubsequences: false) {
                let key = raw.replacingOccurrences(of: "~1", with: "/").replacingOccurrences(of: "~0", with: "~")
                if let dict = node as? [String: Any], let next = dict[key] {
                    node = next
                } else if let array = node as? [Any], let i = Int(key), i >= 0, i < array.count {
                    node = array[i]
                } else {
                    return nil
                }
            }
        }
        switch node {
        case let s as String: return Array(s.utf8)
        case let n as NSNumber: return Array(n.stringValue.utf8)
        default: return nil
        }
    }
}

/// An invalid topic template.
public struct TemplateError: Error, Sendable, CustomStringConvertible {
    /// What is wrong.
    public var message: String
    init(_ message: String) { self.message = message }
    public var description: String { message }
}
