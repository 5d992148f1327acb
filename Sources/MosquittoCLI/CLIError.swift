/// An error the command-line tools report as one line on standard error, then exit with ``exitCode``.
///
/// The text follows mosquitto's clients: it starts with `Error:` and says what to change.
/// When ``showsUsageHint`` is set (argument errors) the tools add mosquitto's
/// `Use 'mqtt-pub --help' to see usage.` line after a blank line.
package struct CLIError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The message, including the `Error:` prefix.
    package var message: String
    /// The process exit status.
    package var exitCode: Int32
    /// Whether the tool prints the `--help` hint after the message (argument errors do).
    package var showsUsageHint: Bool

    /// Creates an error.
    /// - Parameters:
    ///   - message: the full line, for example `Error: Invalid QoS given: 3`.
    ///   - exitCode: the exit status (1 unless mosquitto uses another code).
    ///   - showsUsageHint: whether to point at `--help`.
    package init(_ message: String, exitCode: Int32 = 1, showsUsageHint: Bool = false) {
        self.message = message
        self.exitCode = exitCode
        self.showsUsageHint = showsUsageHint
    }

    /// An argument error: exit code 1 and the `--help` hint, as mosquitto's clients do.
    package static func usage(_ message: String) -> CLIError {
        CLIError(message, exitCode: 1, showsUsageHint: true)
    }

    package var description: String { message }
}

/// C's `atoi`: optional blanks and sign, then as many digits as there are; anything else is ignored.
/// mosquitto parses most numeric options this way, so `-q 1x` is QoS 1.
func atoi(_ s: String) -> Int {
    var chars = Substring(s).drop { $0 == " " || $0 == "\t" || $0 == "\n" }
    var sign = 1
    if chars.first == "-" { sign = -1; chars = chars.dropFirst() } else if chars.first == "+" { chars = chars.dropFirst() }
    var value = 0
    for c in chars {
        guard let d = c.wholeNumberValue, c.isASCII else { break }
        value = value &* 10 &+ d
        if value > Int(Int32.max) + 1 { break }
    }
    return Int(Int32(truncatingIfNeeded: sign * value))
}

/// C's `atof` for the few float options (`--repeat-delay`, `--random-filter`).
func atof(_ s: String) -> Double {
    let trimmed = s.drop { $0 == " " || $0 == "\t" }
    var end = trimmed.startIndex
    var best: Double = 0
    while end < trimmed.endIndex {
        end = trimmed.index(after: end)
        if let v = Double(trimmed[trimmed.startIndex..<end]) { best = v }
    }
    return best
}
