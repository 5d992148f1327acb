import MosquittoSync
import ArgumentParser
import FoundationEssentials
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Mosquitto

/// `mqtt-sub`: subscribes and prints what arrives — a drop-in for `mosquitto_sub` 2.0.11, with a JSON-lines
/// output (`--json`) and an explicit reconnect policy (`--no-reconnect` fails fast instead of resuming).
public struct SubCommand: MosquittoTool {
    /// The command's configuration (help is `--help` only: `-h` is the host, as in mosquitto).
    public static let configuration = CLIRunner.configuration(
        commandName: "mqtt-sub",
        abstract: "Subscribe to MQTT topics and print the messages (mosquitto_sub compatible)."
    )
    public static let toolName = "mqtt-sub"
    public static let mosquittoName = "mosquitto_sub"
    public static var helpText: String { HelpText.sub }

    /// Broker connection options.
    @OptionGroup public var connection: ConnectionOptions
    /// Output options.
    @OptionGroup public var output: OutputOptions

    /// `-t`, `--topic` (repeatable).
    @Option(name: [.customShort("t"), .customLong("topic")], parsing: .unconditionalSingleValue, help: ArgumentHelp(valueName: "topic"))
    public var topics: [String] = []
    /// `-T`, `--filter-out` (repeatable).
    @Option(name: [.customShort("T"), .customLong("filter-out")], parsing: .unconditionalSingleValue, help: ArgumentHelp(valueName: "filter_out"))
    public var filterOut: [String] = []
    /// `-U`, `--unsubscribe` (repeatable).
    @Option(name: [.customShort("U"), .customLong("unsubscribe")], parsing: .unconditionalSingleValue, help: ArgumentHelp(valueName: "topic"))
    public var unsubscribe: [String] = []
    /// `-q`, `--qos`.
    @Option(name: [.customShort("q"), .customLong("qos")], parsing: .unconditional, help: ArgumentHelp(valueName: "qos"))
    public var qos: String?
    /// `-C`: exit after this many messages.
    @Option(name: .customShort("C"), parsing: .unconditional, help: ArgumentHelp(valueName: "msg_count"))
    public var count: String?
    /// `-E`: exit once subscribed.
    @Flag(name: .customShort("E")) public var exitAfterSubscribe = false
    /// `-R`: ignore retained messages.
    @Flag(name: .customShort("R")) public var noRetained = false
    /// `--retained-only`.
    @Flag(name: .customLong("retained-only")) public var retainedOnly = false
    /// `--remove-retained`.
    @Flag(name: .customLong("remove-retained")) public var removeRetained = false
    /// `--retain-as-published`.
    @Flag(name: .customLong("retain-as-published")) public var retainAsPublished = false
    /// `-W`: timeout in seconds.
    @Option(name: .customShort("W"), parsing: .unconditional, help: ArgumentHelp(valueName: "timeout_secs"))
    public var timeout: String?
    /// `--random-filter`: print about this percentage of messages.
    @Option(name: .customLong("random-filter"), parsing: .unconditional, help: ArgumentHelp(valueName: "chance"))
    public var randomFilter: String?
    /// `--no-reconnect`: exit with an error when the connection is lost instead of reconnecting.
    @Flag(name: .customLong("no-reconnect")) public var noReconnect = false

    /// Creates the command with defaults.
    public init() {}

    struct Plan: Sendable {
        var filters: [String]
        var filterOut: [String] = []
        var unsubscribe: [String] = []
        var exitAfterSubscribe = false
        var noRetained = false
        var retainedOnly = false
        var removeRetained = false
        var retainAsPublished = false
        var noReconnect = false
        var qos: QoS
        var count: Int?
        var timeout: Int?
        var randomPerTenThousand: Int
    }

    /// Checks everything before connecting, with mosquitto's messages.
    func plan() throws -> Plan {
        var q = QoS.atMostOnce
        if let qos {
            let v = atoi(qos)
            guard v >= 0, let parsed = QoS(rawValue: UInt8(clamping: v)) else { throw CLIError.usage("Error: Invalid QoS given: \(v)") }
            q = parsed
        }
        var c: Int?
        if let count {
            let v = atoi(count)
            if v < 1 { throw CLIError.usage("Error: Invalid message count \"\(count)\".") }
            c = v
        }
        var w: Int?
        if let timeout {
            let v = atoi(timeout)
            if v < 1 { throw CLIError.usage("Error: Invalid timeout \"\(timeout)\".") }
            w = v
        }
        var random = 10000
        if let randomFilter {
            let v = atof(randomFilter)
            if v < 0.1 || v > 100 { throw CLIError.usage("Error: --random-filter chance must be between 0.1-100.0") }
            random = Int(v * 100)
        }
        var filters: [String] = []
        if let t = try connection.urlTopic() { filters.append(t) }
        filters += topics
        for f in filters where !MQTTTopic.isValidFilter(f) {
            throw CLIError.usage("Error: Invalid subscription topic '\(f)', are all '+' and '#' wildcards correct?")
        }
        for f in filterOut where !MQTTTopic.isValidFilter(f) {
            throw CLIError.usage("Error: Invalid filter topic '\(f)', are all '+' and '#' wildcards correct?")
        }
        for f in unsubscribe where !MQTTTopic.isValidFilter(f) {
            throw CLIError.usage("Error: Invalid unsubscribe topic '\(f)', are all '+' and '#' wildcards correct?")
        }
        if noRetained && retainedOnly {
            throw CLIError.usage("Error: Combining '-R' and '--retained-only' makes no sense.")
        }
        try connection.validateCombinations()
        if filters.isEmpty { throw CLIError.usage("Error: You must specify a topic to subscribe to.") }
        var plan = Plan(filters: filters, qos: q, count: c, timeout: w, randomPerTenThousand: random)
        plan.filterOut = filterOut
        plan.unsubscribe = unsubscribe
        plan.exitAfterSubscribe = exitAfterSubscribe
        plan.noRetained = noRetained
        plan.retainedOnly = retainedOnly
        plan.removeRetained = removeRetained
        plan.retainAsPublished = retainAsPublished
        plan.noReconnect = noReconnect
        return plan
    }

    /// Runs the command.
    public mutating func run() async throws {
        let plan = try plan()
        let props = try PropertyOptions.parse(connection.properties)
        let formatter = try output.makeFormatter(subscriptionIdentifier: props.subscriptionIdentifier)
        var configuration = try connection.makeConfiguration()
        let v5 = configuration.protocolVersion == .v5
        if let x = props.sessionExpiryInterval, connection.sessionExpiry == nil, case .persistent = configuration.session {
            configuration.session = .persistent(expiry: x)
        }
        if let c = plan.count, c < 20, v5, props.receiveMaximum == nil { configuration.receiveMaximum = UInt16(c) }
        if noReconnect { configuration.reconnect = .never }
        let signals = SignalWatcher([SIGINT, SIGTERM])
        defer { signals.cancel() }
        // The stream exists before the connection, so that a resumed session's queued messages are not missed.
        let firehose = Locked<MessageStream?>(nil)
        let connectTask = Task {
            try await ClientSession.connect(configuration) { client in
                firehose.set(client.allMessages(buffer: .init(capacity: 8192, overflow: .backpressure(maxWait: .seconds(3600)))))
            }
        }
        let client: MQTTClient
        let early = Task {
            if await signals.next() != nil { connectTask.cancel() }
        }
        do {
            client = try await connectTask.value
            early.cancel()
        } catch {
            early.cancel()
            if connectTask.isCancelled { throw CLIError("", exitCode: 255) }
            throw error
        }
        guard let all = firehose.get() else { throw CLIError("Error: internal: no message stream.") }
        // The subscription streams live until the client is shut down: dropping them earlier would UNSUBSCRIBE,
        // and mosquitto_sub leaves its subscriptions in a persistent session (-c) when it exits.
        let keep = Locked<[MessageStream]>([])
        let interrupted = Locked(false)
        let result = await Self.receive(client: client, all: all, keep: keep, plan: plan, formatter: formatter, signals: signals,
                                        interrupted: interrupted, v5: v5, properties: props, quiet: connection.quiet)
        StandardOutput.shared.flush()
        // Like mosquitto_sub: a signal or -W ends with reason 4, "disconnect with will message" (MQTT 5).
        await client.shutdown(disconnectReason: interrupted.get() ? 4 : 0, properties: props.disconnect)
        withExtendedLifetime(keep) {}
        if let result { throw result }
    }

    enum Ending: Sendable { case done, failed(CLIError) }

    /// Subscribes, prints, and ends on `-C`, `-E`, `--retained-only`, `-W`, a signal or a lost connection.
    static func receive(client: MQTTClient, all: MessageStream, keep: Locked<[MessageStream]>, plan: Plan, formatter: MessageFormatter, signals: SignalWatcher,
                        interrupted: Locked<Bool>, v5: Bool, properties: PropertyOptions, quiet: Bool) async -> CLIError? {
        let options = plan
        let events = client.events
        return await withTaskGroup(of: CLIError?.self) { group in
            group.addTask {
                // Subscriptions: one per filter, so that a refused filter does not hide the others.
                var denied = 0
                for f in plan.filters {
                    let sub = Subscription(f, qos: plan.qos, retainAsPublished: v5 && options.retainAsPublished,
                                           retainHandling: v5 && options.noRetained ? .never : .sendAlways)
                    do {
                        let stream = try await client.subscribe([sub], buffer: .init(capacity: 1, overflow: .dropNewest),
                                                                userProperties: v5 ? properties.subscribeUserProperties : [])
                        keep.set(keep.get() + [stream])
                    } catch let e as MQTTError where e.code == .subscriptionRejected || e.code == .notAuthorized {
                        denied += 1
                    } catch {
                        return ClientSession.runtimeError(error)
                    }
                }
                if denied == plan.filters.count {
                    if !quiet { printError("All subscription requests were denied.") }
                    return nil
                }
                for f in options.unsubscribe {
                    do {
                        try await client.unsubscribe([f], userProperties: v5 ? properties.unsubscribeUserProperties : [])
                    } catch {
                        return ClientSession.runtimeError(error)
                    }
                }
                if options.exitAfterSubscribe { return nil }
                var received = 0
                var pending = 0
                var out: [UInt8] = []
                out.reserveCapacity(4096)
                do {
                    for try await m in all {
                        pending += 1
                        if options.retainedOnly && !m.retain { break }
                        if options.noRetained && m.retain { continue }
                        if options.filterOut.contains(where: { MQTTTopic.matches(filter: $0, topic: m.topic) }) { continue }
                        if options.removeRetained && m.retain {
                            _ = try? await client.publish(MQTTMessage(topic: m.topic, payload: [], qos: .atLeastOnce, retain: true),
                                                          completion: .enqueued)
                        }
                        if plan.randomPerTenThousand >= 10000 || Int.random(in: 0..<10000) < plan.randomPerTenThousand {
                            out.removeAll(keepingCapacity: true)
                            if let error = formatter.append(m, to: &out), !quiet { printError(error) }
                            StandardOutput.shared.append(out)
                        }
                        // Flush when nothing else is waiting: one write per burst, none held back.
                        if all.receivedCount <= pending { StandardOutput.shared.flush() }
                        if StandardOutput.shared.failed { return nil }
                        received += 1
                        if let c = plan.count, received >= c { break }
                    }
                } catch {
                    return ClientSession.runtimeError(error)
                }
                return nil
            }
            group.addTask {
                // SIGINT/SIGTERM: disconnect and exit 0. When cancelled (the run ended otherwise), wait no more.
                if await signals.next() != nil { interrupted.set(true) }
                return nil
            }
            if let w = plan.timeout {
                group.addTask {
                    try? await Task.sleep(for: .seconds(w))
                    if Task.isCancelled { return nil }
                    interrupted.set(true)
                    if !quiet { printError("Timed out") }
                    return CLIError("", exitCode: 27)
                }
            }
            group.addTask {
                // A client that gave up (after --no-reconnect, or on a fatal refusal) ends the run with its error.
                for await event in events {
                    switch event {
                    case .gaveUp(let e): return ClientSession.runtimeError(e)
                    case .disconnected(let e?) where !quiet && !options.noReconnect:
                        printError("Warning: \(e.message) Reconnecting; the subscriptions are resumed.")
                    default: continue
                    }
                }
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            all.cancel()
            return first
        }
    }
}

/// A value shared between tasks behind a lock.
final class Locked<T: Sendable>: Sendable {
    private let value: LockedValue<T>
    init(_ v: T) { value = LockedValue(v) }
    func get() -> T { value.withLock { $0 } }
    func set(_ v: T) { value.withLock { $0 = v } }
}
