import ArgumentParser
import Foundation
import Logging
import MQTTBridge
import Mosquitto
import MQTTOutbox
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
/// SIGTERM and SIGINT drain and stop; SIGHUP reloads the configuration file. `--help` prints ``helpText``.
package struct BridgeCommand: AsyncParsableCommand, Sendable {
    package static let configuration = CommandConfiguration(
        commandName: "mqtt-bridge",
        abstract: "Forward between MQTT topics and TCP/UDP feeds without losing frames.",
        usage: """
            mqtt-bridge [broker options] --config FILE [--check]
            mqtt-bridge [broker options] {--tcp-listen|--tcp-connect|--udp-listen} HOST:PORT [route options]
            """,
        discussion: examples,
        helpNames: [.long])

    /// The configuration file.
    @Option(name: .customLong("config"), help: ArgumentHelp("Routes and options from a mosquitto.conf-style file; SIGHUP rereads it.", valueName: "file"))
    var configFile: String?

    /// Only validate the configuration.
    @Flag(name: .customLong("check"), help: "Check --config FILE: print 'FILE: OK' or each problem with its line number, and exit (0 or 3).")
    var check = false

    @OptionGroup(title: "Broker") var connection: ConnectionOptions
    /// `--broker host[:port]`, repeatable: several brokers, tried in turn (instead of -h/-p/-L/--unix).
    @Option(name: .customLong("broker"), parsing: .unconditionalSingleValue,
            help: ArgumentHelp("A broker as host[:port]; repeat it for failover (instead of -h/-p/-L).", valueName: "host:port"))
    var brokers: [String] = []
    @OptionGroup(title: "Route (one route from flags)") var route: RouteOptions
    @OptionGroup(title: "Spool") var spool: SpoolOptions
    @OptionGroup(title: "Operations") var operations: OperationsOptions

    package init() {}

    /// Runs the command line: `--help` prints ``helpText`` (grouped like `mqtt-pub`'s, with the bridge's defaults);
    /// everything else goes to the argument parser. `mqtt-bridge`'s `main`.
    package static func runCommandLine(_ arguments: [String] = Array(CommandLine.arguments.dropFirst())) async {
        if arguments.prefix(while: { $0 != "--" }).contains("--help") {
            print(helpText)
            Self.exit()
        }
        await main(arguments)
    }

    package mutating func run() async throws {
        var mutableLogger = Logger(label: "mqtt-bridge")
        mutableLogger.logLevel = try operations.resolvedLogLevel(debug: connection.debug, quiet: connection.quiet)
        let logger = mutableLogger
        if check {
            guard let configFile else { throw ValidationError("--check needs --config FILE") }
            _ = try configurationOrExit(logger: logger)
            print("\(configFile): OK")
            return
        }
        let configuration = try configurationOrExit(logger: logger)
        let bridge = BridgeService(configuration: configuration, logger: logger)
        let group = ServiceGroup(configuration: .init(services: [bridge], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        let file = configFile
        let base = self
        do {
            try await runGroup(group, bridge: bridge, file: file, base: base, logger: logger)
        } catch let error as MQTTError where file == nil {
            // The library says what is wrong; the command line names the flags to look at (with --config, the
            // file's keys set the broker options, so there is no flag to name).
            throw CommandFailure(description: ConnectionOptions.messageWithFlagHint(for: error, configuration: configuration.mqtt))
        }
    }

    /// Runs the service group, and rereads `file` on SIGHUP.
    private func runGroup(_ group: ServiceGroup, bridge: BridgeService, file: String?, base: BridgeCommand, logger: Logger) async throws {
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

    /// ``makeConfiguration(logger:file:)``; a file that cannot be read or has problems is reported on standard
    /// error (`Error: Unable to open config file …`, or `FILE:LINE: problem` per problem) and ends with exit code 3,
    /// as mosquitto does.
    func configurationOrExit(logger: Logger) throws -> BridgeConfiguration {
        do {
            return try makeConfiguration(logger: logger)
        } catch let e as ConfigFileError {
            FileHandle.standardError.write(Data((e.message + "\n").utf8))
            throw ExitCode(3)
        } catch let e as ConfigErrors {
            FileHandle.standardError.write(Data((e.description + "\n").utf8))
            throw ExitCode(3)
        }
    }

    /// The route flags given on the command line, by their long names.
    package var routeFlagsGiven: [String] { route.given }

    /// The configuration these arguments describe: the file's (`--config`, or `file`), with the broker options,
    /// `--metrics`, `--spool-stall-timeout` and `--auth-failure-limit` as defaults its keys override and `--spool-dir`
    /// overriding `spool_dir`; or one route from the route flags.
    /// - Throws: `ValidationError` for a bad flag or route flags given with a file, ``ConfigFileError`` when the
    ///   file cannot be read, ``ConfigErrors`` for its problems, `CLIError` for bad broker options.
    package func makeConfiguration(logger: Logger, file: String? = nil) throws -> BridgeConfiguration {
        var mqtt = try connection.makeConfiguration(defaultProtocol: .v5, logger: logger)
        if mqtt.clientID == nil {
            let host = ProcessInfo.processInfo.hostName.split(separator: ".").first.map(String.init) ?? "host"
            mqtt.clientID = "mqtt-bridge-\(host)-\(route.routeName ?? "feed")"
        }
        // The bridge always keeps its session: a day unless -x (with or without -c) says otherwise.
        switch mqtt.session {
        case .clean: mqtt.session = .persistent(expiry: 86400)
        case .cleanStart(let expiry): mqtt.session = .persistent(expiry: expiry)
        default: break
        }
        if !brokers.isEmpty {
            if connection.host != nil || connection.url != nil || connection.unixSocket != nil {
                throw ValidationError("--broker lists the brokers itself: leave out -h, -L and --unix (or use one -h and -p without --broker)")
            }
            let defaultPort = if case .tcp(_, let port) = mqtt.endpoint { port } else { 1883 }
            mqtt.endpoints = try brokers.map { text in
                switch ConfigParser.address(text, defaultHost: "", defaultPort: defaultPort, minimumPort: 1) {
                case .success(let a) where !a.host.isEmpty: return .tcp(host: a.host, port: a.port)
                case .success: throw ValidationError("--broker: \(ConfigParser.quote(text)) has no host: use host[:port]")
                case .failure(let e): throw ValidationError("--broker: \(e.message)")
                }
            }
        }
        var base = BridgeConfiguration(mqtt: mqtt, spoolDirectory: spool.spoolDir ?? "mqtt-bridge-spool")
        if let m = connection.maxInflight { base.maxInflightMessages = Int(atoi(m)) }
        if let metrics = operations.metrics { base.metricsAddress = try Self.address(metrics, flag: "--metrics") }
        if let t = spool.spoolStallTimeout {
            guard let d = ConfigParser.seconds(t) else { throw ValidationError("--spool-stall-timeout must be seconds (0 = never), not \(ConfigParser.quote(t))") }
            base.spoolStallTimeout = d == .zero ? nil : d
        }
        if let n = operations.authFailureLimit {
            guard n >= 1 else { throw ValidationError("--auth-failure-limit must be 1 or more (leave it out to retry for ever)") }
            base.authFailureLimit = n
        }
        if let path = file ?? configFile {
            let flags = route.given
            if !flags.isEmpty {
                throw ValidationError("\(flags.joined(separator: ", ")) \(flags.count == 1 ? "describes" : "describe") one route from flags "
                                      + "and cannot be used with --config: put \(flags.count == 1 ? "it" : "them") in the file's route blocks")
            }
            let text = try ConfigParser.read(file: path)
            var c = try ConfigParser.parse(text, file: path, base: base)
            if let dir = spool.spoolDir { c.spoolDirectory = dir }
            return c
        }
        base.routes = [try route.makeRoute()]
        return base
    }

    /// Parses a `host:port` flag; the message names the flag and, for a port out of range, says so.
    static func address(_ text: String, flag: String, minimumPort: Int = 0) throws -> SocketAddressSpec {
        switch ConfigParser.address(text, minimumPort: minimumPort) {
        case .success(let a): return a
        case .failure(let e): throw ValidationError("\(flag): \(e.message)")
        }
    }
}

/// A library error that ended the command, with the flags to check added to its message.
struct CommandFailure: Error, CustomStringConvertible {
    var description: String
}

/// One route from flags.
struct RouteOptions: ParsableArguments, Sendable {
    @Option(name: .customLong("tcp-listen"), help: ArgumentHelp("Accept TCP feeds on host:port (host default 127.0.0.1).", valueName: "host:port"))
    var tcpListen: String?
    @Option(name: .customLong("tcp-connect"), help: ArgumentHelp("Dial the feed at host:port and redial with backoff (repeat for failover).", valueName: "host:port"))
    var tcpConnect: [String] = []
    @Option(name: .customLong("udp-listen"), help: ArgumentHelp("Receive datagrams on host:port.", valueName: "host:port"))
    var udpListen: String?
    @Option(name: .customLong("udp-target"), help: ArgumentHelp("Send MQTT messages as datagrams to host:port (repeatable).", valueName: "host:port"))
    var udpTarget: [String] = []
    @Option(name: .customLong("topic"), help: ArgumentHelp("Publish feed frames to this topic template.", valueName: "template"))
    var topic: String?
    @Option(name: .customLong("subscribe"), help: ArgumentHelp("Write messages matching this filter to the feed (repeatable).", valueName: "filter"))
    var subscribe: [String] = []
    @Option(name: .customLong("share-group"), help: ArgumentHelp("Subscribe as $share/<group>/<filter>, spreading the messages over bridges.", valueName: "group"))
    var shareGroup: String?
    @Option(name: .customLong("framing"), help: ArgumentHelp("lf (default), crlf, 'delimiter 0x03', 'fixed 64', 'length 2 be' or raw.", valueName: "framing"))
    var framing: String?
    @Option(name: .customLong("max-frame"), help: ArgumentHelp("The largest frame (default: 64KiB).", valueName: "size"))
    var maxFrame: String?
    @Option(name: [.customShort("q"), .customLong("qos")], help: ArgumentHelp("QoS for publishing and subscribing (default: 1).", valueName: "qos"))
    var qos: Int?
    @Flag(name: [.customShort("r"), .customLong("retain")], help: "Publish frames retained.")
    var retain = false
    @Option(name: .customLong("allow"), help: ArgumentHelp("Accept only this peer: an IP address or CIDR block (repeatable; default: all).", valueName: "ip|cidr"))
    var allow: [String] = []
    @Option(name: .customLong("max-connections"), help: ArgumentHelp("The most concurrent TCP feed connections (default: 1024).", valueName: "n"))
    var maxConnections: Int?
    @Option(name: .customLong("idle-timeout"), help: ArgumentHelp("Close a TCP connection idle this many seconds (default: 0 = never).", valueName: "seconds"))
    var idleTimeout: String?
    @Option(name: .customLong("transcode"), help: ArgumentHelp("none (default) or json_msgpack: JSON frames are published as MessagePack, MessagePack messages are written to the feed as JSON; what does not convert goes to the dead-letter topic.", valueName: "how"))
    var transcode: String?
    @Option(name: .customLong("route-name"), help: ArgumentHelp("The route's name in metrics, the spool and the default client id (default: feed).", valueName: "name"))
    var routeName: String?

    /// The flags given, by their long names.
    var given: [String] {
        var f: [String] = []
        if tcpListen != nil { f.append("--tcp-listen") }
        if !tcpConnect.isEmpty { f.append("--tcp-connect") }
        if udpListen != nil { f.append("--udp-listen") }
        if !udpTarget.isEmpty { f.append("--udp-target") }
        if topic != nil { f.append("--topic") }
        if !subscribe.isEmpty { f.append("--subscribe") }
        if shareGroup != nil { f.append("--share-group") }
        if framing != nil { f.append("--framing") }
        if maxFrame != nil { f.append("--max-frame") }
        if qos != nil { f.append("--qos") }
        if retain { f.append("--retain") }
        if !allow.isEmpty { f.append("--allow") }
        if maxConnections != nil { f.append("--max-connections") }
        if idleTimeout != nil { f.append("--idle-timeout") }
        if routeName != nil { f.append("--route-name") }
        if transcode != nil { f.append("--transcode") }
        return f
    }

    func makeRoute() throws -> RouteConfiguration {
        let mode: FeedConfiguration.Mode
        var addresses: [SocketAddressSpec] = []
        let modes = [tcpListen != nil, !tcpConnect.isEmpty, udpListen != nil].filter { $0 }.count
        if modes > 1 { throw ValidationError("Give one of --tcp-listen, --tcp-connect and --udp-listen.") }
        if let tcpListen {
            mode = .tcpServer
            addresses = [try BridgeCommand.address(tcpListen, flag: "--tcp-listen")]
        } else if !tcpConnect.isEmpty {
            mode = .tcpClient
            addresses = try tcpConnect.map { try BridgeCommand.address($0, flag: "--tcp-connect", minimumPort: 1) }
        } else if let udpListen {
            mode = .udp
            addresses = [try BridgeCommand.address(udpListen, flag: "--udp-listen")]
        } else {
            throw ValidationError("Give --config FILE, or one of --tcp-listen, --tcp-connect, --udp-listen.")
        }
        let targets = try udpTarget.map { try BridgeCommand.address($0, flag: "--udp-target", minimumPort: 1) }
        let qosValue = qos ?? 1
        guard (0...2).contains(qosValue), let q = QoS(rawValue: UInt8(qosValue)) else { throw ValidationError("-q must be 0, 1 or 2") }
        let framingValue: Framing
        switch ConfigParser.framing(framing ?? "lf") {
        case .success(let f): framingValue = f
        case .failure(let e): throw ValidationError("--framing: " + e.message)
        }
        guard let max = ConfigParser.size(maxFrame ?? "64KiB"), max > 0, max <= 256 << 20 else {
            throw ValidationError("--max-frame must be a size from 1 byte to 256MiB, not \(ConfigParser.quote(maxFrame ?? ""))")
        }
        let direction: RouteDirection = topic != nil && !subscribe.isEmpty ? .both : (subscribe.isEmpty ? .toMQTT : .toFeed)
        if direction.readsFeed && topic == nil { throw ValidationError("--topic is required to publish feed frames") }
        if mode == .udp && direction.writesFeed && targets.isEmpty { throw ValidationError("--subscribe with --udp-listen needs --udp-target") }
        for a in allow where !IPAllowList.isValidEntry(a) {
            throw ValidationError("--allow \(ConfigParser.quote(a)) is not an IP address or CIDR block")
        }
        for s in subscribe where !MQTTTopic.isValidFilter(s) {
            throw ValidationError("--subscribe \(ConfigParser.quote(s)) is not a valid topic filter")
        }
        let connections = maxConnections ?? 1024
        guard connections > 0 else { throw ValidationError("--max-connections must be > 0") }
        guard let idle = ConfigParser.seconds(idleTimeout ?? "0") else {
            throw ValidationError("--idle-timeout must be seconds (0 = never), not \(ConfigParser.quote(idleTimeout ?? ""))")
        }
        guard let transcoding = PayloadTranscoding(rawValue: transcode ?? "none") else {
            throw ValidationError("--transcode must be none or json_msgpack, not \(ConfigParser.quote(transcode ?? ""))")
        }
        var template: TopicTemplate?
        if let topic {
            do { template = try TopicTemplate(topic) } catch { throw ValidationError("--topic: " + ConfigParser.shorten(error.message)) }
        }
        return RouteConfiguration(
            name: routeName ?? "feed", direction: direction,
            feed: FeedConfiguration(mode: mode, addresses: addresses, udpTargets: targets, allow: allow, maxConnections: connections,
                                    idleTimeout: idle),
            framing: framingValue, maxFrame: max, topic: template, subscriptions: subscribe, shareGroup: shareGroup,
            qos: q, retain: retain, transcode: transcoding)
    }
}

/// Where and how the spool lives.
struct SpoolOptions: ParsableArguments, Sendable {
    @Option(name: .customLong("spool-dir"), help: ArgumentHelp("Where the spools live, one subdirectory per route (default: ./mqtt-bridge-spool).", valueName: "dir"))
    var spoolDir: String?
    @Option(name: .customLong("spool-stall-timeout"),
            help: ArgumentHelp("Not ready when the oldest unacknowledged record is older than this while connected (default: 60; 0 = never).", valueName: "seconds"))
    var spoolStallTimeout: String?
}

/// Health, limits and logging.
struct OperationsOptions: ParsableArguments, Sendable {
    @Option(name: .customLong("metrics"), help: ArgumentHelp("Serve /metrics, /healthz and /readyz on host:port.", valueName: "host:port"))
    var metrics: String?
    @Option(name: .customLong("auth-failure-limit"),
            help: ArgumentHelp("Stop after this many consecutive connections refused for the credentials (default: retry for ever).", valueName: "n"))
    var authFailureLimit: Int?
    @Option(name: .customLong("log-level"), help: ArgumentHelp("trace, debug, info (default), notice, warning, error or critical.", valueName: "level"))
    var logLevel: String?

    /// `--log-level`, else `-d` (trace) or `--quiet` (critical), else info.
    func resolvedLogLevel(debug: Bool, quiet: Bool) throws -> Logger.Level {
        if let logLevel {
            guard let l = Logger.Level(rawValue: logLevel) else {
                throw ValidationError("--log-level must be trace, debug, info, notice, warning, error or critical, not \(ConfigParser.quote(logLevel))")
            }
            return l
        }
        return debug ? .trace : (quiet ? .critical : .info)
    }
}

extension BridgeCommand {
    static let examples = """
        Examples:
          mqtt-bridge -h broker.local -i plant-bridge --tcp-listen 127.0.0.1:7000 --topic 'feeds/{peer}' --subscribe commands/plant
          mqtt-bridge --tcp-connect 10.0.0.5:4001 --tcp-connect 10.0.0.6:4001 --framing crlf --topic plant1/plc1/out
          mqtt-bridge --udp-listen 0.0.0.0:5140 --allow 10.0.0.0/8 --framing raw --topic 'plant1/udp/{peer}'
          mqtt-bridge --config /etc/mqtt-bridge.conf --check
          mqtt-bridge --config /etc/mqtt-bridge.conf --metrics 127.0.0.1:9100
        """

    /// The `--help` text, grouped the way `mqtt-pub`'s is: broker, route, spool, operations, then examples.
    package static let helpText = """
        mqtt-bridge forwards between MQTT topics and TCP/UDP feeds. Feed to MQTT is at least once, through an on-disk
        spool that survives broker and bridge restarts; MQTT to the feed uses MQTT 5 no-local, so a route both ways
        does not echo its own publications. It publishes 1/0 on the retained topic mqtt-bridge/<client id>/state.

        Usage: mqtt-bridge [broker options] --config FILE [--check]
               mqtt-bridge [broker options] {--tcp-listen|--tcp-connect|--udp-listen} HOST:PORT [route options]

        Configuration file:
              --config FILE          routes and options from a mosquitto.conf-style file; SIGHUP rereads it
              --check                check FILE: print "FILE: OK" (exit 0) or each problem with its line (exit 3)
          With --config, the file's keys override the broker options, --metrics, --spool-stall-timeout and
          --auth-failure-limit; --spool-dir overrides spool_dir; route flags are an error.

        Broker:
          -h, --host HOST            broker host (default: localhost)
          -p, --port PORT            broker port (default: 1883, 8883 with --cafile/--capath/--psk)
              --broker HOST[:PORT]   a broker; repeat for failover: after a failure the bridge moves to the next
                                     and stays on a working one (file: address a:1883 b:1883); replaces -h and -L
              --unix PATH            connect through a Unix domain socket
          -L, --url URL              mqtt(s)://[user[:password]@]host[:port]/ (a topic in the URL is not used);
                                     ws(s):// for MQTT over WebSockets
              --ws                   connect over WebSockets (HTTP path /mqtt; wss with the TLS options), for
                                     brokers reachable only through a web port (in a file: address ws://host:port/path)
          -V, --protocol-version V   mqttv5 (default), mqttv311 or mqttv31
          -i, --id ID                the bridge's client id, also in its state topic mqtt-bridge/ID/state
                                     (default: mqtt-bridge-<host name>-<route name>)
          -I, --id-prefix P          client id = P + process id (a new session on every start)
          -k, --keepalive SECONDS    5..65535 (default: 60)
          -x SECONDS                 how long the broker keeps the session after a disconnect (default: 86400;
                                     -1 or ∞ for never); the bridge always keeps its session
          -c, --disable-clean-session   session expiry never, unless -x (needs -i)
          -A ADDRESS                 bind to this local address
          -M N                       maximum QoS 1/2 messages in flight (default: 32)
              --nodelay              disable Nagle's algorithm (the bridge does by default: tcp_nodelay)
              --proxy socks5h://[user[:password]@]host[:port]
          -D, --property CMD NAME VALUE
                                     MQTT 5 property, e.g. -D connect user-property site plant1
              --will-topic TOPIC  --will-payload TEXT  --will-qos 0|1|2  --will-retain
                                     a will of your own, used only with 'notifications false' in --config
                                     (the bridge's will is 0 on its state topic)

        Authentication (keep passwords off the command line):
          -u, --username USER
              --password-file PATH   read the password from the first line of PATH
              --password-env VAR     read the password from environment variable VAR
              --password-prompt      ask on the terminal (also: -P as the last argument)
          -P, --pw PASSWORD          password on the command line (visible in 'ps')

        TLS:
              --cafile FILE  --capath DIR     trusted CAs (turns TLS on)
              --cert FILE  --key FILE         client certificate and key (PEM)
              --tls-version tlsv1.3|tlsv1.2|tlsv1.1   --ciphers LIST   --tls-alpn PROTO
              --tls-use-os-certs              trust the system CA store
              --insecure                      do not check the broker's host name (testing only)
              --psk HEX  --psk-identity ID    TLS pre-shared key instead of certificates
              --tls-engine ID  --keyform pem|engine  --tls-engine-kpass-sha1 SHA1   OpenSSL engine keys

        Route (one route from flags):
              --tcp-listen HOST:PORT     accept TCP feeds (HOST default 127.0.0.1; 0.0.0.0 for every interface)
              --tcp-connect HOST:PORT    dial the feed, redial with backoff (repeat for failover)
              --udp-listen HOST:PORT     receive datagrams
              --udp-target HOST:PORT     send MQTT messages as datagrams to HOST:PORT (repeatable)
              --topic TEMPLATE           publish feed frames to TEMPLATE: {feed} {peer} {peer_port} {conn}
                                         {field:N} {regex:N} {json:/pointer}
              --subscribe FILTER         write messages matching FILTER to the feed (repeatable)
              --share-group GROUP        subscribe as $share/GROUP/FILTER, to spread messages over bridges
              --framing F                lf (default), crlf, 'delimiter 0x03', 'fixed 64', 'length 2 be', raw
              --max-frame SIZE           the largest frame (default: 64KiB)
          -q, --qos 0|1|2                QoS for publishing and subscribing (default: 1)
          -r, --retain                   publish frames retained
              --allow IP|CIDR            accept only these peers (repeatable; default: all)
              --max-connections N        concurrent TCP feed connections (default: 1024)
              --idle-timeout SECONDS     close a TCP connection idle that long (default: 0 = never)
              --route-name NAME          the route's name in metrics, the spool and the client id (default: feed)
              --transcode json_msgpack   JSON frames are published as MessagePack, MessagePack messages are written
                                         to the feed as JSON; what does not convert goes to the dead-letter topic
          --topic alone forwards feed to MQTT, --subscribe alone MQTT to the feed, both go both ways.

        Spool:
              --spool-dir DIR            one subdirectory per route (default: ./mqtt-bridge-spool)
              --spool-stall-timeout SECONDS
                                         /readyz fails when the oldest unacknowledged record is older than this
                                         while connected (default: 60; 0 = never)

        Operations:
              --metrics HOST:PORT        serve /metrics, /healthz and /readyz
              --auth-failure-limit N     stop after N consecutive connections refused for the credentials
                                         (default: retry for ever)
              --log-level LEVEL          trace, debug, info (default), notice, warning, error, critical
          -d, --debug                    --log-level trace: libmosquitto's messages too
              --quiet                    --log-level critical
              --help                     this text
          SIGTERM and SIGINT drain the spools and stop; SIGHUP rereads --config FILE.

        \(examples)
        """
}
