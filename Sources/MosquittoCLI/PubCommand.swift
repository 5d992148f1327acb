import ArgumentParser
import FoundationEssentials
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Mosquitto

/// `mqtt-pub`: publishes one message, a repeated message, or one message per line of standard input —
/// a drop-in for `mosquitto_pub` 2.0.11.
///
/// With `-l` at QoS 1 and 2 every line is delivered, in order, before the process exits: the publisher holds at
/// most a bounded number of unacknowledged messages, waits for all of them at the end, and exits 0 only when
/// the broker acknowledged every line.
public struct PubCommand: MosquittoTool {
    /// The command's configuration (help is `--help` only: `-h` is the host, as in mosquitto).
    public static let configuration = CLIRunner.configuration(
        commandName: "mqtt-pub",
        abstract: "Publish a message to an MQTT broker (mosquitto_pub compatible)."
    )
    public static let toolName = "mqtt-pub"
    public static let mosquittoName = "mosquitto_pub"
    public static var helpText: String { HelpText.pub }

    /// Broker connection options.
    @OptionGroup public var connection: ConnectionOptions

    /// `-t`, `--topic`.
    @Option(name: [.customShort("t"), .customLong("topic")], parsing: .unconditional, help: ArgumentHelp(valueName: "topic"))
    public var topic: String?
    /// `-m`, `--message`.
    @Option(name: [.customShort("m"), .customLong("message")], parsing: .unconditional, help: ArgumentHelp(valueName: "message"))
    public var message: String?
    /// `-f`, `--file`.
    @Option(name: [.customShort("f"), .customLong("file")], parsing: .unconditional, help: ArgumentHelp(valueName: "file"))
    public var file: String?
    /// `-s`, `--stdin-file`.
    @Flag(name: [.customShort("s"), .customLong("stdin-file")]) public var stdinFile = false
    /// `-l`, `--stdin-line`.
    @Flag(name: [.customShort("l"), .customLong("stdin-line")]) public var stdinLine = false
    /// `-n`, `--null-message`.
    @Flag(name: [.customShort("n"), .customLong("null-message")]) public var nullMessage = false
    /// `-q`, `--qos`.
    @Option(name: [.customShort("q"), .customLong("qos")], parsing: .unconditional, help: ArgumentHelp(valueName: "qos"))
    public var qos: String?
    /// `-r`, `--retain`.
    @Flag(name: [.customShort("r"), .customLong("retain")]) public var retain = false
    /// `--repeat`.
    @Option(name: .customLong("repeat"), parsing: .unconditional, help: ArgumentHelp(valueName: "count"))
    public var repeatCount: String?
    /// `--repeat-delay`.
    @Option(name: .customLong("repeat-delay"), parsing: .unconditional, help: ArgumentHelp(valueName: "seconds"))
    public var repeatDelay: String?

    /// Creates the command with defaults.
    public init() {}

    enum Source { case message([UInt8]), stdinLines }

    /// Checks everything that can be checked before connecting; returns the validated pieces.
    func prepare() throws -> (topic: String, qos: QoS, count: Int, delay: Double) {
        let sources = [message != nil, file != nil, stdinFile, stdinLine, nullMessage].filter { $0 }.count
        if sources > 1 { throw CLIError.usage("Error: Only one type of message can be sent at once.") }
        var q = QoS.atMostOnce
        if let qos {
            let v = atoi(qos)
            guard let parsed = QoS(rawValue: UInt8(clamping: max(0, v))), v >= 0 else {
                throw CLIError.usage("Error: Invalid QoS given: \(v)")
            }
            q = parsed
        }
        var count = 1
        if let repeatCount {
            count = atoi(repeatCount)
            if count < 1 { throw CLIError.usage("Error: --repeat argument must be >0.") }
        }
        var delay = 0.0
        if let repeatDelay {
            delay = atof(repeatDelay)
            if delay < 0 { throw CLIError.usage("Error: --repeat-delay argument must be >=0.0.") }
        }
        try connection.validateCombinations()
        let t = try topic ?? connection.urlTopic()
        if let t, !MQTTTopic.isValidName(t) {
            throw CLIError.usage("Error: Invalid publish topic '\(t)', does it contain '+' or '#'?")
        }
        guard let t, sources == 1 else {
            throw CLIError.usage("Error: Both topic and message must be supplied.")
        }
        return (t, q, count, delay)
    }

    /// Reads the message before connecting, so that nothing is sent after an input error.
    func loadSource() throws -> Source {
        if let message { return .message(Array(message.utf8)) }
        if nullMessage { return .message([]) }
        if stdinLine { return .stdinLines }
        if let file {
            guard let data = FileManager.default.contents(atPath: file) else {
                let why = FileManager.default.fileExists(atPath: file) ? "it is not readable" : "it does not exist"
                throw CLIError("Error: Unable to open file \"\(file)\": \(why); check the path given to -f.")
            }
            if data.count > 268_435_455 { throw CLIError("Error: File must be less than 268435455 bytes.") }
            return .message(Array(data))
        }
        var reader = StdinReader()
        let all = reader.readAll()
        if all.isEmpty { throw CLIError("Error: Zero length input: -s read nothing from standard input.") }
        return .message(all)
    }

    /// Runs the command.
    public mutating func run() async throws {
        let (topic, qos, count, delay) = try prepare()
        let props = try PropertyOptions.parse(connection.properties)
        var configuration = try connection.makeConfiguration()
        if let x = props.sessionExpiryInterval, connection.sessionExpiry == nil, case .persistent = configuration.session {
            configuration.session = .persistent(expiry: x)
        }
        let source = try loadSource()
        // Publishing waits for the acknowledgements itself; reconnecting keeps QoS 1/2 messages alive.
        configuration.maximumQueuedMessages = 1000
        let client = try await ClientSession.connect(configuration)
        var properties = configuration.protocolVersion == .v5 ? props.publish : MessageProperties()
        if configuration.protocolVersion != .v5 { properties = MessageProperties() }
        do {
            switch source {
            case .message(let payload):
                let m = MQTTMessage(topic: topic, payload: payload, qos: qos, retain: retain, properties: properties)
                for i in 0..<count {
                    if i > 0 && delay > 0 { try await Task.sleep(for: .milliseconds(Int(delay * 1000))) }
                    do {
                        try await client.publish(m, completion: .acknowledged)
                    } catch let e as MQTTError where e.code == .publishRejected || e.code == .notAuthorized {
                        if !connection.quiet {
                            printError("Warning: Publish \(i + 1) failed: \(e.reasonCode.map { ClientSession.reasonString($0) } ?? e.message).")
                        }
                    }
                }
            case .stdinLines:
                try await publishLines(client, topic: topic, qos: qos, properties: properties)
            }
        } catch {
            await client.shutdown(properties: props.disconnect)
            throw ClientSession.runtimeError(error)
        }
        await client.shutdown(properties: props.disconnect)
    }

    /// `-l`: one message per line, in order, every one acknowledged before returning.
    func publishLines(_ client: MQTTClient, topic: String, qos: QoS, properties: MessageProperties) async throws {
        var reader = StdinReader()
        while let line = reader.nextLine() {
            let m = MQTTMessage(topic: topic, payload: line, qos: qos, retain: retain, properties: properties)
            try await client.publish(m, completion: .enqueued)
        }
        await client.waitUntilAllPublished()
        if case .shutDown = client.state {
            throw MQTTError(.connectionLost, "The connection to the broker was lost before every line was acknowledged.")
        }
    }
}

/// Reads standard input in large blocks.
struct StdinReader {
    private var buffer: [UInt8] = []
    private var start = 0
    private var eof = false

    /// Everything up to end of file.
    mutating func readAll() -> [UInt8] {
        var out: [UInt8] = []
        while fill() {}
        out = Array(buffer[start...])
        return out
    }

    /// The next line without its `\n` (a `\r` is kept, as mosquitto does); the last line may lack the `\n`.
    mutating func nextLine() -> [UInt8]? {
        var scanned = 0
        while true {
            if let nl = buffer[(start + scanned)...].firstIndex(of: 10) {
                let line = Array(buffer[start..<nl])
                start = nl + 1
                return line
            }
            scanned = buffer.count - start
            if !fill() {
                if start < buffer.count {
                    let line = Array(buffer[start...])
                    start = buffer.count
                    return line
                }
                return nil
            }
        }
    }

    /// Reads one block; false at end of file.
    private mutating func fill() -> Bool {
        if eof { return false }
        if start > 0 && start >= buffer.count / 2 {
            buffer.removeFirst(start)
            start = 0
        }
        let chunk = 1 << 16
        let old = buffer.count
        buffer.reserveCapacity(old + chunk)
        var n = 0
        buffer.append(contentsOf: repeatElement(0, count: chunk))
        buffer.withUnsafeMutableBytes { raw in
            repeat { n = read(0, raw.baseAddress! + old, chunk) } while n < 0 && errno == EINTR
        }
        buffer.removeLast(chunk - max(0, n))
        if n <= 0 { eof = true; return false }
        return true
    }
}
