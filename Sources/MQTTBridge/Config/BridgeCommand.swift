import ArgumentParser
import Foundation
import Logging
import Mosquitto
import MosquittoCLI
import ServiceLifecycle
import UnixSignals

/// The `mqtt-bridge` command line: a configuration file (`--config`, `--check`) or one route from flags, plus the
/// broker options of `mqtt-pub` (`-h`, `-p`, `-L`, `-u`, `-P`, TLS, …).
///
/// ```
/// mqtt-bridge --tcp-listen 127.0.0.1:7000 --topic 'feeds/{peer}' -h broker.local
/// mqtt-bridge --config /etc/mqtt-bridge.conf
/// mqtt-bridge --config /etc/mqtt-bridge.conf --check
/// ```
///
/// SIGTERM and SIGINT drain and stop; SIGHUP reloads the configuration file.
public struct BridgeCommand: AsyncParsableCommand, Sendable {
    public static let configuration = CommandConfiguration(
        commandName: "mqtt-bridge",
        abstract: "Forward between MQTT topics and TCP/UDP feeds without losing frames.",
        discussion: """
            Feed to MQTT is at-least-once through a durable on-disk spool; when the spool is full the bridge stops \
            reading the feed so TCP pushes back on the sender. Topic templates: {feed} {peer} {peer_port} {conn} \
            {field:N} {regex:N} {json:/pointer}.
            """,
        helpNames: [.long])

    /// The configuration file.
    @Option(name: .customLong("config"), help: "A mosquitto.conf-style configuration file.")
    var configFile: String?

    /// Only validate the configuration.
    @Flag(name: .customLong("check"), help: "Check the configuration file, print line-numbered errors, and exit.")
    var check = false

    @OptionGroup var connection: ConnectionOptions

    @Option(name: .customLong("tcp-listen"), help: "One route: accept feeds on host:port (loopback unless told otherwise).")
    var tcpListen: String?
    @Option(name: .customLong("tcp-connect"), help: "One route: dial the feed at host:port (repeat for failover).")
    var tcpConnect: [String] = []
    @Option(name: .customLong("udp-listen"), help: "One route: receive datagrams on host:port.")
    var udpListen: String?
    @Option(name: .customLong("udp-target"), help: "One route: send MQTT messages as datagrams to host:port.")
    var udpTarget: [String] = []
    @Option(name: .customLong("allow"), help: "One route: a peer allowed to connect or send (IP or CIDR; repeatable; default all).")
    var allow: [String] = []
    @Option(name: .customLong("max-connections"), help: "One route: the most concurrent feed connections (default 1024).")
    var maxConnections = 1024
    @Option(name: .customLong("idle-timeout"), help: "One route: close feed connections idle this many seconds (default 0 = never).")
    var idleTimeout = 0.0
    @Option(name: .customLong("topic"), help: "Feed to MQTT topic template.")
    var topic: String?
    @Option(name: .customLong("subscribe"), help: "MQTT to feed: a topic filter (repeatable).")
    var subscribe: [String] = []
    @Option(name: .customLong("share-group"), help: "Share the subscriptions across bridge instances ($share/<group>/...).")
    var shareGroup: String?
    @Option(name: .customLong("framing"), help: "lf, crlf, 'delimiter 0x03', 'fixed 64', 'length 2 be', raw.")
    var framing = "lf"
    @Option(name: .customLong("max-frame"), help: "The largest frame (default 64KiB).")
    var maxFrame = "64KiB"
    @Option(name: [.customShort("q"), .customLong("qos")], help: "QoS for publishing and subscribing (default 1).")
    var qos = 1
    @Flag(name: [.customShort("r"), .customLong("retain")], help: "Publish frames retained.")
    var retain = false
    @Option(name: .customLong("route-name"), help: "The route name (default 'feed').")
    var routeName = "feed"
    @Option(name: .customLong("spool-dir"), help: "Spool directory (default ./mqtt-bridge-spool).")
    var spoolDir: String?
    @Option(name: .customLong("metrics"), help: "Serve /metrics, /healthz and /readyz on host:port.")
    var metrics: String?
    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error.")
    var logLevel = "info"

    public init() {}

    public mutating func run() async throws {
        if check {
            guard let configFile else { throw ValidationError("--check needs --config FILE") }
            let text = try String(contentsOfFile: configFile, encoding: .utf8)
            let issues = ConfigParser.check(text, file: configFile)
            if issues.isEmpty {
                print("\(configFile): OK")
                return
            }
            for i in issues { print(i.line > 0 ? "\(configFile):\(i.line): \(i.message)" : "\(configFile): \(i.message)") }
            throw ExitCode(3)
        }
        var mutableLogger = Logger(label: "mqtt-bridge")
        mutableLogger.logLevel = Logger.Level(rawValue: logLevel) ?? .info
        let logger = mutableLogger
        let configuration = try makeConfiguration(logger: logger)
        let bridge = BridgeService(configuration: configuration, logger: logger)
        let group = ServiceGroup(configuration: .init(services: [bridge], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        let file = configFile
        let base = self
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            if let file {
                tasks.addTask {
                    for await _ in await UnixSignalsSequence(trapping: .sighup) {
                        do {
                            let new = try base.makeConfiguration(logger: logger, file: file)
                            try await bridge.reload(new)
                            logger.info("Reloaded \(file)")
                        } catch {
                            logger.error("Reload of \(file) failed, keeping the running configuration: \(error)")
                        }
                    }
                }
            }
            try await tasks.next()
            tasks.cancelAll()
        }
    }

    func makeConfiguration(logger: Logger, file: String? = nil) throws -> BridgeConfiguration {
        var mqtt = try connection.makeConfiguration(defaultProtocol: .v5, logger: logger)
        if mqtt.clientID == nil {
            let host = ProcessInfo.processInfo.hostName.split(separator: ".").first.map(String.init) ?? "host"
            mqtt.clientID = "mqtt-bridge-\(host)-\(routeName)"
        }
        if case .clean = mqtt.session { mqtt.session = .persistent(expiry: 86400) }
        var base = BridgeConfiguration(mqtt: mqtt, spoolDirectory: spoolDir ?? "mqtt-bridge-spool")
        if let metrics {
            guard let a = SocketAddressSpec(parsing: metrics) else { throw ValidationError("--metrics needs host:port") }
            base.metricsAddress = a
        }
        if let path = file ?? configFile {
            let text = try String(contentsOfFile: path, encoding: .utf8)
            var c = try ConfigParser.parse(text, file: path, base: base)
            if let spoolDir { c.spoolDirectory = spoolDir }
            return c
        }
        // One route from flags.
        let mode: FeedConfiguration.Mode
        var addresses: [SocketAddressSpec] = []
        if let tcpListen {
            mode = .tcpServer
            guard let a = SocketAddressSpec(parsing: tcpListen) else { throw ValidationError("--tcp-listen needs host:port") }
            addresses = [a]
        } else if !tcpConnect.isEmpty {
            mode = .tcpClient
            for t in tcpConnect {
                guard let a = SocketAddressSpec(parsing: t) else { throw ValidationError("--tcp-connect needs host:port") }
                addresses.append(a)
            }
        } else if let udpListen {
            mode = .udp
            guard let a = SocketAddressSpec(parsing: udpListen) else { throw ValidationError("--udp-listen needs host:port") }
            addresses = [a]
        } else {
            throw ValidationError("Give --config FILE, or one of --tcp-listen, --tcp-connect, --udp-listen.")
        }
        let targets = try udpTarget.map { t -> SocketAddressSpec in
            guard let a = SocketAddressSpec(parsing: t) else { throw ValidationError("--udp-target needs host:port") }
            return a
        }
        guard let q = QoS(rawValue: UInt8(clamping: qos)), (0...2).contains(qos) else { throw ValidationError("-q must be 0, 1 or 2") }
        let framingValue: Framing
        switch ConfigParser.framing(framing) {
        case .success(let f): framingValue = f
        case .failure(let e): throw ValidationError(e.message)
        }
        guard let max = ConfigParser.size(maxFrame), max > 0 else { throw ValidationError("--max-frame needs a size") }
        let direction: RouteDirection = topic != nil && !subscribe.isEmpty ? .both : (subscribe.isEmpty ? .toMQTT : .toFeed)
        if direction.readsFeed && topic == nil { throw ValidationError("--topic is required to publish feed frames") }
        for a in allow where !IPAllowList.isValidEntry(a) { throw ValidationError("--allow '\(a)' is not an IP address or CIDR block") }
        guard maxConnections > 0 else { throw ValidationError("--max-connections must be > 0") }
        guard idleTimeout >= 0 else { throw ValidationError("--idle-timeout must be >= 0 seconds") }
        var template: TopicTemplate?
        if let topic {
            do { template = try TopicTemplate(topic) } catch { throw ValidationError(error.message) }
        }
        base.routes = [RouteConfiguration(
            name: routeName, direction: direction,
            feed: FeedConfiguration(mode: mode, addresses: addresses, udpTargets: targets, allow: allow, maxConnections: maxConnections,
                                    idleTimeout: .milliseconds(Int64(idleTimeout * 1000))),
            framing: framingValue, maxFrame: max, topic: template, subscriptions: subscribe, shareGroup: shareGroup,
            qos: q, retain: retain)]
        return base
    }
}
