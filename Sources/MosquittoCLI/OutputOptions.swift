import ArgumentParser

/// How `mqtt-sub` and `mqtt-rr` print messages: mosquitto's `-v`, `-N`, `-F`, `--pretty`, plus `--json`.
public struct OutputOptions: ParsableArguments, Sendable {
    /// `-v`, `--verbose`: print `topic payload`.
    @Flag(name: [.customShort("v"), .customLong("verbose")], help: "Print the topic before each payload.")
    public var verbose = false

    /// `-N`: no newline after each message.
    @Flag(name: .customShort("N"), help: "Do not print a newline after each message.")
    public var noEndOfLine = false

    /// `-F`: a mosquitto output format (overrides `-v`).
    @Option(name: .customShort("F"), parsing: .unconditional, help: ArgumentHelp("Output format, e.g. '%t %p' or '%j'.", valueName: "format"))
    public var format: String?

    /// `--pretty`: multi-line JSON for `%j`/`%J`.
    @Flag(name: .customLong("pretty"), help: "Pretty-print the JSON of %j/%J.")
    public var pretty = false

    /// `--json`: one JSON object per line with every property and a binary-safe payload.
    @Flag(name: .customLong("json"), help: "One JSON object per message and line: base64 for binary payloads, every MQTT 5 property.")
    public var jsonLines = false

    /// Creates the defaults.
    public init() {}

    /// The formatter these options describe.
    public func makeFormatter(subscriptionIdentifier: UInt32? = nil) throws -> MessageFormatter {
        let style: MessageFormatter.Style
        if jsonLines {
            if format != nil { throw CLIError.usage("Error: --json and -F cannot be used together; choose one output format.") }
            style = .jsonLines
        } else if let format {
            style = .format(format)
        } else if verbose {
            style = .verbose
        } else {
            style = .payload
        }
        return try MessageFormatter(style: style, endOfLine: !noEndOfLine, pretty: pretty, subscriptionIdentifier: subscriptionIdentifier)
    }
}
