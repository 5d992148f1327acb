import ArgumentParser
import FoundationEssentials
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Mosquitto

/// `mqtt-rr`: sends one MQTT 5 request and prints the matching reply — a drop-in for `mosquitto_rr` 2.0.11.
///
/// The request carries the response topic (`-e`) and correlation data (random unless given with
/// `-D publish correlation-data`); a reply whose correlation data differs is ignored. Unlike 2.0.11, `-f` and
/// `-s` really send the file or standard input, and `-R` is honoured.
public struct RRCommand: MosquittoTool {
    /// The command's configuration (help is `--help` only: `-h` is the host, as in mosquitto).
    public static let configuration = CLIRunner.configuration(
        commandName: "mqtt-rr",
        abstract: "Send an MQTT 5 request and print the reply (mosquitto_rr compatible)."
    )
    public static let toolName = "mqtt-rr"
    public static let mosquittoName = "mosquitto_rr"
    public static var helpText: String { HelpText.rr }

    /// Broker connection options.
    @OptionGroup public var connection: ConnectionOptions
    /// Output options.
    @OptionGroup public var output: OutputOptions

    /// `-t`, `--topic`: the request topic.
    @Option(name: [.customShort("t"), .customLong("topic")], parsing: .unconditional, help: ArgumentHelp(valueName: "topic"))
    public var topic: String?
    /// `-e`: the response topic.
    @Option(name: [.customShort("e"), .customLong("response-topic")], parsing: .unconditional, help: ArgumentHelp(valueName: "response-topic"))
    public var responseTopic: String?
    /// `-m`, `--message`.
    @Option(name: [.customShort("m"), .customLong("message")], parsing: .unconditional, help: ArgumentHelp(valueName: "message"))
    public var message: String?
    /// `-f`, `--file`.
    @Option(name: [.customShort("f"), .customLong("file")], parsing: .unconditional, help: ArgumentHelp(valueName: "file"))
    public var file: String?
    /// `-s`, `--stdin-file`.
    @Flag(name: [.customShort("s"), .customLong("stdin-file")]) public var stdinFile = false
    /// `-n`, `--null-message`.
    @Flag(name: [.customShort("n"), .customLong("null-message")]) public var nullMessage = false
    /// `-q`, `--qos`.
    @Option(name: [.customShort("q"), .customLong("qos")], parsing: .unconditional, help: ArgumentHelp(valueName: "qos"))
    public var qos: String?
    /// `-R`: ignore retained replies.
    @Flag(name: .customShort("R")) public var noRetained = false
    /// `--retain-as-published`.
    @Flag(name: .customLong("retain-as-published")) public var retainAsPublished = false
    /// `-W`: timeout in seconds.
    @Option(name: .customShort("W"), parsing: .unconditional, help: ArgumentHelp(valueName: "timeout_secs"))
    public var timeout: String?

    /// Creates the command with defaults.
    public init() {}

    /// Runs the command.
    public mutating func run() async throws {
        let sources = [message != nil, file != nil, stdinFile, nullMessage].filter { $0 }.count
        if sources > 1 { throw CLIError.usage("Error: Only one type of message can be sent at once.") }
        var q = QoS.atMostOnce
        if let qos {
            let v = atoi(qos)
            guard v >= 0, let parsed = QoS(rawValue: UInt8(clamping: v)) else { throw CLIError.usage("Error: Invalid QoS given: \(v)") }
            q = parsed
        }
        var seconds: Int?
        if let timeout {
            let v = atoi(timeout)
            if v < 1 { throw CLIError.usage("Error: Invalid timeout \"\(timeout)\".") }
            seconds = v
        }
        try connection.validateCombinations()
        let requestTopic = try topic ?? connection.urlTopic()
        if let t = requestTopic, !MQTTTopic.isValidName(t) {
            throw CLIError.usage("Error: Invalid publish topic '\(t)', does it contain '+' or '#'?")
        }
        if let e = responseTopic, !MQTTTopic.isValidName(e) {
            throw CLIError.usage("Error: Invalid response topic '\(e)', does it contain '+' or '#'?")
        }
        guard let requestTopic, let responseTopic, sources == 1 else {
            throw CLIError.usage("Error: All of topic, message, and response topic must be supplied.")
        }
        let props = try PropertyOptions.parse(connection.properties)
        if props.publish.responseTopic != nil { throw CLIError("Error in PUBLISH properties: Duplicate response topic.") }
        let formatter = try output.makeFormatter(subscriptionIdentifier: props.subscriptionIdentifier)
        var configuration = try connection.makeConfiguration(defaultProtocol: .v5)
        let v5 = configuration.protocolVersion == .v5
        if v5 && props.receiveMaximum == nil { configuration.receiveMaximum = 1 }

        // Read the payload before connecting: nothing is sent after an input error.
        var payload: [UInt8] = []
        if let message { payload = Array(message.utf8) }
        if let file {
            guard let data = FileManager.default.contents(atPath: file) else {
                throw CLIError("Error: Unable to open file \"\(file)\"; check the path given to -f.")
            }
            payload = Array(data)
        }
        if stdinFile {
            var reader = StdinReader()
            payload = reader.readAll()
            if payload.isEmpty { throw CLIError("Error: Zero length input: -s read nothing from standard input.") }
        }

        var properties = props.publish
        properties.responseTopic = responseTopic
        let correlation = properties.correlationData ?? (0..<16).map { _ in UInt8.random(in: 0...255) }
        if v5 { properties.correlationData = correlation } else { properties = MessageProperties() }

        let quiet = connection.quiet
        let (qosValue, requestPayload, requestProperties) = (q, payload, properties)
        let noRetained = self.noRetained
        let retainAsPublished = self.retainAsPublished
        let subscribeProperties = props.subscribeUserProperties
        let client = try await ClientSession.connect(configuration)
        let result: CLIError? = await withTaskGroup(of: CLIError?.self) { group in
            group.addTask {
                do {
                    let sub = Subscription(responseTopic, qos: qosValue, retainAsPublished: v5 && retainAsPublished)
                    let replies = try await client.subscribe([sub], buffer: .init(capacity: 64, overflow: .dropOldest),
                                                             userProperties: v5 ? subscribeProperties : [])
                    try await client.publish(MQTTMessage(topic: requestTopic, payload: requestPayload, qos: qosValue, properties: requestProperties))
                    for try await reply in replies {
                        if noRetained && reply.retain { continue }
                        if v5, let c = reply.properties.correlationData, c != correlation { continue }
                        var out: [UInt8] = []
                        if let e = formatter.append(reply, to: &out), !quiet { printError(e) }
                        StandardOutput.shared.append(out)
                        StandardOutput.shared.flush()
                        return nil
                    }
                    return nil
                } catch {
                    return ClientSession.runtimeError(error)
                }
            }
            if let seconds {
                group.addTask {
                    try? await Task.sleep(for: .seconds(seconds))
                    if Task.isCancelled { return nil }
                    if !quiet { printError("Timed out") }
                    return CLIError("", exitCode: 27)
                }
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
        await client.shutdown(properties: props.disconnect)
        if let result { throw result }
    }
}
