/// Offline helpers for MQTT topic names and subscription filters.
///
/// They follow the MQTT specification and agree with libmosquitto 2.0.11 (`mosquitto_pub_topic_check`,
/// `mosquitto_sub_topic_check`, `mosquitto_validate_utf8`, `mosquitto_topic_matches_sub`), with one deliberate
/// difference: ``matches(filter:topic:)`` understands shared subscriptions, so `$share/group/a/#` matches `a/b`
/// (libmosquitto's helper answers false).
///
/// ```swift
/// try MQTTTopic.validateName("sensors/kitchen/temperature")
/// MQTTTopic.matches(filter: "sensors/+/temperature", topic: "sensors/kitchen/temperature") // true
/// MQTTTopic.matches(filter: "#", topic: "$SYS/broker/uptime")                               // false
/// ```
public enum MQTTTopic {
    /// The longest topic or filter MQTT can carry, in UTF-8 bytes.
    public static let maximumLength = 65535

    /// Throws ``MQTTError/Code/invalidTopic`` unless `topic` is a valid topic name to publish to:
    /// not empty, at most 65,535 bytes, no `+` or `#`, and valid MQTT UTF-8 (no NUL, no control
    /// characters, no non-characters).
    public static func validateName(_ topic: String) throws(MQTTError) {
        // Validate in place when the string is contiguous UTF-8 (the usual case): publishing calls this per message.
        if let problem = topic.utf8.withContiguousStorageIfAvailable({ nameProblem($0) }) {
            if let problem { throw problem }
            return
        }
        try validateName(bytes: Array(topic.utf8))
    }

    /// Byte form of ``validateName(_:)`` for topics built from untrusted data (checks UTF-8 too).
    public static func validateName(bytes: [UInt8]) throws(MQTTError) {
        if let problem = bytes.withUnsafeBufferPointer({ nameProblem($0) }) { throw problem }
    }

    static func nameProblem(_ bytes: UnsafeBufferPointer<UInt8>) -> MQTTError? {
        if bytes.isEmpty {
            return MQTTError(.invalidTopic, "Invalid topic: a topic name cannot be empty.")
        }
        if bytes.count > maximumLength {
            return MQTTError(.invalidTopic, "Invalid topic: \(bytes.count) bytes is longer than MQTT's limit of 65535.")
        }
        var ascii = true
        for b in bytes {
            if b == UInt8(ascii: "+") || b == UInt8(ascii: "#") {
                return MQTTError(.invalidTopic, "Invalid topic '\(printable(Array(bytes)))': the wildcard '\(Character(Unicode.Scalar(b)))' is only allowed in subscription filters, not in a topic you publish to.")
            }
            if b >= 0x80 || b < 0x20 || b == 0x7F { ascii = false }
        }
        if !ascii, let problem = utf8Problem(Array(bytes)) {
            return MQTTError(.invalidTopic, "Invalid topic '\(printable(Array(bytes)))': \(problem).")
        }
        return nil
    }

    /// Throws ``MQTTError/Code/invalidFilter`` unless `filter` is a valid subscription filter: not empty,
    /// at most 65,535 bytes, `+` alone in its level, `#` alone in the last level, valid MQTT UTF-8, and a
    /// well-formed `$share/<group>/<filter>` when shared.
    public static func validateFilter(_ filter: String) throws(MQTTError) {
        try validateFilter(bytes: Array(filter.utf8))
    }

    /// Byte form of ``validateFilter(_:)``.
    public static func validateFilter(bytes: [UInt8]) throws(MQTTError) {
        if bytes.isEmpty {
            throw MQTTError(.invalidFilter, "Invalid subscription filter: a filter cannot be empty. Use '#' for everything.")
        }
        if bytes.count > maximumLength {
            throw MQTTError(.invalidFilter, "Invalid subscription filter: \(bytes.count) bytes is longer than MQTT's limit of 65535.")
        }
        if let problem = utf8Problem(bytes) {
            throw MQTTError(.invalidFilter, "Invalid subscription filter '\(printable(bytes))': \(problem).")
        }
        if let problem = wildcardProblem(bytes) {
            throw MQTTError(.invalidFilter, "Invalid subscription filter '\(printable(bytes))': \(problem).")
        }
        let share = Array("$share/".utf8)
        if bytes.starts(with: share) {
            let rest = bytes.dropFirst(share.count)
            guard let slash = rest.firstIndex(of: UInt8(ascii: "/")) else {
                throw MQTTError(.invalidFilter, "Invalid shared subscription '\(printable(bytes))': expected $share/<group>/<filter>.")
            }
            let group = rest[rest.startIndex..<slash]
            if group.isEmpty || group.contains(UInt8(ascii: "+")) || group.contains(UInt8(ascii: "#")) {
                throw MQTTError(.invalidFilter, "Invalid shared subscription '\(printable(bytes))': the group name must be non-empty and contain no wildcards.")
            }
            if slash + 1 >= bytes.endIndex {
                throw MQTTError(.invalidFilter, "Invalid shared subscription '\(printable(bytes))': the filter after the group is empty.")
            }
        }
    }

    /// True when `topic` is a valid topic name (see ``validateName(_:)``).
    public static func isValidName(_ topic: String) -> Bool {
        (try? validateName(topic)) != nil
    }

    /// True when `filter` is a valid subscription filter (see ``validateFilter(_:)``).
    public static func isValidFilter(_ filter: String) -> Bool {
        (try? validateFilter(filter)) != nil
    }

    /// The number of levels in a topic or filter (one more than its `/` separators).
    public static func levelCount(_ topic: String) -> Int {
        var n = 1
        for b in topic.utf8 where b == UInt8(ascii: "/") { n += 1 }
        return n
    }

    /// Splits a shared subscription `$share/<group>/<filter>` into its group and filter.
    /// Returns nil for a filter that is not shared.
    public static func shareGroup(of filter: String) -> (group: String, filter: String)? {
        guard filter.hasPrefix("$share/") else { return nil }
        let rest = filter.dropFirst("$share/".count)
        guard let slash = rest.firstIndex(of: "/") else { return nil }
        return (String(rest[..<slash]), String(rest[rest.index(after: slash)...]))
    }

    /// True when a message published to `topic` is delivered to a subscription with `filter`.
    ///
    /// `+` matches exactly one level (possibly empty), `#` matches the parent level and everything below,
    /// topics starting with `$` are not matched by a filter starting with a wildcard, and `$share/<group>/`
    /// is stripped before matching.
    public static func matches(filter: String, topic: String) -> Bool {
        var f = filter
        if let shared = shareGroup(of: filter) { f = shared.filter }
        return matches(filter: Array(f.utf8), topic: Array(topic.utf8))
    }

    /// Byte form of ``matches(filter:topic:)`` without `$share/` handling. Comparison is byte-wise, as MQTT requires.
    static func matches(filter: [UInt8], topic: [UInt8]) -> Bool {
        let slash = UInt8(ascii: "/")
        if topic.first == UInt8(ascii: "$"), let f0 = filter.first, f0 == UInt8(ascii: "+") || f0 == UInt8(ascii: "#") {
            return false
        }
        let f = filter.split(separator: slash, omittingEmptySubsequences: false)
        let t = topic.split(separator: slash, omittingEmptySubsequences: false)
        for (i, level) in f.enumerated() {
            if level.count == 1 && level.first == UInt8(ascii: "#") { return true }
            if i >= t.count { return false }
            if level.count == 1 && level.first == UInt8(ascii: "+") { continue }
            if level != t[i] { return false }
        }
        return f.count == t.count
    }

    /// Describes why `bytes` is not valid MQTT UTF-8, or nil when it is. Mirrors `mosquitto_validate_utf8`.
    static func utf8Problem(_ bytes: [UInt8]) -> String? {
        var i = 0
        let n = bytes.count
        while i < n {
            let b = bytes[i]
            var cp: UInt32
            var len: Int
            if b == 0 { return "it contains a NUL byte" }
            if b <= 0x7F { cp = UInt32(b); len = 1 }
            else if b & 0xE0 == 0xC0 {
                if b == 0xC0 || b == 0xC1 { return "it is not valid UTF-8 (overlong encoding)" }
                cp = UInt32(b & 0x1F); len = 2
            } else if b & 0xF0 == 0xE0 { cp = UInt32(b & 0x0F); len = 3 }
            else if b & 0xF8 == 0xF0 {
                if b > 0xF4 { return "it is not valid UTF-8" }
                cp = UInt32(b & 0x07); len = 4
            } else { return "it is not valid UTF-8 (byte 0x\(String(b, radix: 16)) at offset \(i))" }
            if i + len > n { return "it is not valid UTF-8 (truncated sequence at the end)" }
            for j in 1..<len {
                let c = bytes[i + j]
                if c & 0xC0 != 0x80 { return "it is not valid UTF-8 (bad continuation byte at offset \(i + j))" }
                cp = (cp << 6) | UInt32(c & 0x3F)
            }
            if cp >= 0xD800 && cp <= 0xDFFF { return "it is not valid UTF-8 (a UTF-16 surrogate)" }
            if (len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) || (len == 2 && cp < 0x80) {
                return "it is not valid UTF-8 (overlong or out of range)"
            }
            if (cp >= 0xFDD0 && cp <= 0xFDEF) || cp & 0xFFFF == 0xFFFE || cp & 0xFFFF == 0xFFFF {
                return "it contains the Unicode non-character U+\(String(cp, radix: 16, uppercase: true))"
            }
            if cp <= 0x1F || (cp >= 0x7F && cp <= 0x9F) {
                return "it contains the control character U+\(String(format4(cp)))"
            }
            i += len
        }
        return nil
    }

    static func wildcardProblem(_ bytes: [UInt8]) -> String? {
        let slash = UInt8(ascii: "/")
        for (i, b) in bytes.enumerated() {
            let prev: UInt8? = i > 0 ? bytes[i - 1] : nil
            let next: UInt8? = i + 1 < bytes.count ? bytes[i + 1] : nil
            if b == UInt8(ascii: "+") {
                if (prev != nil && prev != slash) || (next != nil && next != slash) {
                    return "'+' must fill a whole level, as in 'a/+/c'"
                }
            } else if b == UInt8(ascii: "#") {
                if (prev != nil && prev != slash) || next != nil {
                    return "'#' must be the whole last level, as in 'a/b/#'"
                }
            }
        }
        return nil
    }

    static func format4(_ cp: UInt32) -> String {
        let s = String(cp, radix: 16, uppercase: true)
        return String(repeating: "0", count: max(0, 4 - s.count)) + s
    }

    static func printable(_ bytes: [UInt8]) -> String {
        let limited = bytes.count > 80 ? Array(bytes.prefix(80)) : bytes
        var s = ""
        for b in limited {
            if b >= 0x20 && b < 0x7F { s.append(Character(Unicode.Scalar(b))) } else { s += "\\x" + (b < 16 ? "0" : "") + String(b, radix: 16) }
        }
        return bytes.count > 80 ? s + "…" : s
    }
}
