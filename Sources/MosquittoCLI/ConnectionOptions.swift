import ArgumentParser
import FoundationEssentials
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Logging
import Mosquitto
import MQTTURLParser

/// The broker connection options shared by `mqtt-pub`, `mqtt-sub`, `mqtt-rr` and `mqtt-bridge`.
///
/// The spellings, defaults and checks are those of mosquitto 2.0.11's clients (`-h -p --unix -L -i -I -k -c -x
/// -V -u -P -A --nodelay -M -d --quiet -D --will-* --cafile --capath --cert --key --ciphers --tls-* --insecure
/// --psk --psk-identity --proxy`), plus ways to keep the password off the command line
/// (`--password-file`, `--password-env`, `--password-prompt`).
///
/// Use it as an option group and turn it into a configuration once the arguments are parsed:
///
/// ```swift
/// struct Tool: AsyncParsableCommand {
///     @OptionGroup var connection: ConnectionOptions
///     mutating func run() async throws {
///         let configuration = try connection.makeConfiguration()
///         let client = try MQTTClient(configuration: configuration)
///         try await client.connect()
///     }
/// }
/// ```
///
/// Numbers are kept as the strings the user typed and read the way mosquitto reads them (C `atoi`), so that
/// the errors are mosquitto's (`Error: Invalid port given: 70000`). Every check throws ``CLIError``.
package struct ConnectionOptions: ParsableArguments, Sendable {
    // MARK: Where

    /// `-h`, `--host`: the broker host (default `localhost`).
    @Option(name: [.customShort("h"), .customLong("host")], parsing: .unconditional,
            help: ArgumentHelp("Broker host name or address (default: localhost).", valueName: "host"))
    package var host: String?

    /// `-p`, `--port`: the broker port (default 1883, or 8883 with `--cafile`, `--capath` or `--psk`).
    @Option(name: [.customShort("p"), .customLong("port")], parsing: .unconditional,
            help: ArgumentHelp("Broker port (default: 1883, or 8883 for TLS).", valueName: "port"))
    package var port: String?

    /// `--unix`: connect through a Unix domain socket instead of TCP.
    @Option(name: .customLong("unix"), parsing: .unconditional,
            help: ArgumentHelp("Connect through a Unix domain socket, e.g. /tmp/mosquitto.sock.", valueName: "path"))
    package var unixSocket: String?

    /// `-L`, `--url`: `mqtt(s)://[username[:password]@]host[:port]/topic`, or `ws(s)://` for WebSockets.
    @Option(name: [.customShort("L"), .customLong("url")], parsing: .unconditional,
            help: ArgumentHelp("User, password, host, port and topic as one URL: mqtt(s)://[user[:password]@]host[:port]/topic (or ws(s):// for WebSockets)",
                               valueName: "URL"))
    package var url: String?

    /// `-A`: the local address to bind the outgoing socket to.
    @Option(name: .customShort("A"), parsing: .unconditional,
            help: ArgumentHelp("Bind the outgoing socket to this local address.", valueName: "address"))
    package var bindAddress: String?

    /// `--nodelay`: disable Nagle's algorithm.
    @Flag(name: .customLong("nodelay"), help: "Disable Nagle's algorithm (TCP_NODELAY).")
    package var noDelay = false

    /// `--ws`: MQTT over WebSockets (HTTP path `/mqtt`, subprotocol `mqtt`; wss with the TLS options), as in
    /// mosquitto 2.1's clients. `-L ws://…` and `-L wss://…` choose it too.
    @Flag(name: .customLong("ws"), help: "Connect using WebSockets (path /mqtt; wss with --cafile, --capath or --tls-use-os-certs).")
    package var webSockets = false

    /// `--proxy`: a SOCKS5 proxy, `socks5h://[username[:password]@]host[:port]`.
    @Option(name: .customLong("proxy"), parsing: .unconditional,
            help: ArgumentHelp("SOCKS5 proxy: socks5h://[user[:password]@]host[:port].", valueName: "socks-url"))
    package var proxy: String?

    // MARK: Who

    /// `-i`, `--id`: the client id.
    @Option(name: [.customShort("i"), .customLong("id")], parsing: .unconditional,
            help: ArgumentHelp("Client id (default: mqtt-pub/mqtt-sub/mqtt-rr let the broker choose; mqtt-bridge uses mqtt-bridge-<host>-<route>).", valueName: "id"))
    package var clientID: String?

    /// `-I`, `--id-prefix`: the client id is this prefix followed by the process id.
    @Option(name: [.customShort("I"), .customLong("id-prefix")], parsing: .unconditional,
            help: ArgumentHelp("Client id = this prefix + the process id.", valueName: "prefix"))
    package var clientIDPrefix: String?

    /// `-u`, `--username`.
    @Option(name: [.customShort("u"), .customLong("username")], parsing: .unconditional,
            help: ArgumentHelp("User name.", valueName: "username"))
    package var username: String?

    /// `-P`, `--pw`: the password on the command line (visible to other users in `ps`; prefer the others).
    @Option(name: [.customShort("P"), .customLong("pw")], parsing: .unconditional,
            help: ArgumentHelp("Password (visible in 'ps': prefer --password-file, --password-env or --password-prompt).",
                               valueName: "password"))
    package var password: String?

    /// `--password-file`: read the password from the first line of this file.
    @Option(name: .customLong("password-file"), parsing: .unconditional,
            help: ArgumentHelp("Read the password from the first line of this file.", valueName: "path"))
    package var passwordFile: String?

    /// `--password-env`: read the password from this environment variable.
    @Option(name: .customLong("password-env"), parsing: .unconditional,
            help: ArgumentHelp("Read the password from this environment variable.", valueName: "variable"))
    package var passwordEnvironmentVariable: String?

    /// `--password-prompt`: ask for the password on the terminal (also: `-P` as the last argument).
    @Flag(name: .customLong("password-prompt"), help: "Ask for the password on the terminal, without echo.")
    package var passwordPrompt = false

    // MARK: Session

    /// `-k`, `--keepalive`: seconds, 5…65535 (default 60).
    @Option(name: [.customShort("k"), .customLong("keepalive")], parsing: .unconditional,
            help: ArgumentHelp("Keepalive in seconds, 5 to 65535 (default: 60).", valueName: "seconds"))
    package var keepalive: String?

    /// `-c`, `--disable-clean-session`: keep the session (needs `-i`).
    @Flag(name: [.customShort("c"), .customLong("disable-clean-session")],
          help: "Keep the session on the broker between connections (needs -i).")
    package var disableCleanSession = false

    /// `-x`: MQTT 5 session expiry interval: 0…4294967295, or `-1`/`∞` for never.
    @Option(name: .customShort("x"), parsing: .unconditional,
            help: ArgumentHelp("MQTT 5 session expiry interval in seconds; -1 or ∞ for never.", valueName: "session-expiry"))
    package var sessionExpiry: String?

    /// `-V`, `--protocol-version`: `mqttv31`/`31`, `mqttv311`/`311` or `mqttv5`/`5`.
    @Option(name: [.customShort("V"), .customLong("protocol-version")], parsing: .unconditional,
            help: ArgumentHelp("MQTT version: mqttv5, mqttv311 or mqttv31 (default: mqttv311; mqtt-rr and mqtt-bridge: mqttv5).", valueName: "version"))
    package var protocolVersion: String?

    /// `-M`: the most QoS 1/2 messages in flight (default 20).
    @Option(name: .customShort("M"), parsing: .unconditional,
            help: ArgumentHelp("Maximum QoS 1/2 messages in flight (default: 20).", valueName: "max-inflight"))
    package var maxInflight: String?

    /// `-D`, `--property`: MQTT 5 properties as `command name value` (or `command user-property key value`).
    ///
    /// On the command line the tools take mosquitto's form, `-D publish content-type text/plain`, and pass each
    /// one here as a single string. A string written by hand may separate the words with spaces.
    @Option(name: [.customShort("D"), .customLong("property")], parsing: .unconditionalSingleValue,
            help: ArgumentHelp("MQTT 5 property: -D <command> <name> <value>, e.g. -D publish content-type text/plain.",
                               valueName: "command name value"))
    package var properties: [String] = []

    // MARK: Will

    /// `--will-topic`.
    @Option(name: .customLong("will-topic"), parsing: .unconditional,
            help: ArgumentHelp("Topic of the will the broker publishes if this client dies.", valueName: "topic"))
    package var willTopic: String?

    /// `--will-payload`.
    @Option(name: .customLong("will-payload"), parsing: .unconditional,
            help: ArgumentHelp("Payload of the will (default: empty).", valueName: "payload"))
    package var willPayload: String?

    /// `--will-qos`.
    @Option(name: .customLong("will-qos"), parsing: .unconditional,
            help: ArgumentHelp("QoS of the will (default: 0).", valueName: "qos"))
    package var willQoS: String?

    /// `--will-retain`.
    @Flag(name: .customLong("will-retain"), help: "Retain the will.")
    package var willRetain = false

    // MARK: TLS

    /// `--cafile`: trusted CA certificates (PEM); turns TLS on.
    @Option(name: .customLong("cafile"), parsing: .unconditional,
            help: ArgumentHelp("PEM file of trusted CA certificates; turns TLS on.", valueName: "file"))
    package var caFile: String?

    /// `--capath`: a directory of trusted CA certificates; turns TLS on.
    @Option(name: .customLong("capath"), parsing: .unconditional,
            help: ArgumentHelp("Directory of trusted CA certificates (c_rehash'ed); turns TLS on.", valueName: "dir"))
    package var caPath: String?

    /// `--cert`: client certificate (PEM).
    @Option(name: .customLong("cert"), parsing: .unconditional,
            help: ArgumentHelp("Client certificate (PEM); needs --key.", valueName: "file"))
    package var certificateFile: String?

    /// `--key`: client private key (PEM).
    @Option(name: .customLong("key"), parsing: .unconditional,
            help: ArgumentHelp("Client private key (PEM); needs --cert.", valueName: "file"))
    package var keyFile: String?

    /// `--keyform`: `pem` or `engine`.
    @Option(name: .customLong("keyform"), parsing: .unconditional,
            help: ArgumentHelp("Key type: pem (a file) or engine (a key held by --tls-engine).", valueName: "keyform"))
    package var keyForm: String?

    /// `--ciphers`: an OpenSSL cipher list.
    @Option(name: .customLong("ciphers"), parsing: .unconditional,
            help: ArgumentHelp("OpenSSL cipher list.", valueName: "ciphers"))
    package var ciphers: String?

    /// `--tls-version`: `tlsv1.3`, `tlsv1.2` or `tlsv1.1`.
    @Option(name: .customLong("tls-version"), parsing: .unconditional,
            help: ArgumentHelp("tlsv1.3, tlsv1.2 or tlsv1.1.", valueName: "version"))
    package var tlsVersion: String?

    /// `--tls-alpn`: the ALPN protocol to offer.
    @Option(name: .customLong("tls-alpn"), parsing: .unconditional,
            help: ArgumentHelp("ALPN protocol to offer.", valueName: "protocol"))
    package var tlsALPN: String?

    /// `--tls-engine`: an OpenSSL engine, by id.
    @Option(name: .customLong("tls-engine"), parsing: .unconditional,
            help: ArgumentHelp("OpenSSL engine for TLS (for example a hardware key store).", valueName: "engine"))
    package var tlsEngine: String?

    /// `--tls-engine-kpass-sha1`: SHA-1 of the engine key's password (40 hex digits).
    @Option(name: .customLong("tls-engine-kpass-sha1"), parsing: .unconditional,
            help: ArgumentHelp("SHA1 of the engine key password (needs --tls-engine and --keyform).", valueName: "sha1"))
    package var tlsEngineKeyPasswordSHA1: String?

    /// `--tls-use-os-certs`: trust the operating system's CA store; turns TLS on.
    @Flag(name: .customLong("tls-use-os-certs"), help: "Trust the operating system's CA certificates; turns TLS on.")
    package var tlsUseOSCertificates = false

    /// `--insecure`: do not check the broker's host name against its certificate.
    @Flag(name: .customLong("insecure"), help: "Do not check the broker's host name against its certificate (testing only).")
    package var insecure = false

    /// `--psk`: TLS pre-shared key in hex (no `0x`).
    @Option(name: .customLong("psk"), parsing: .unconditional,
            help: ArgumentHelp("TLS pre-shared key in hexadecimal (no 0x); needs --psk-identity.", valueName: "hex-key"))
    package var psk: String?

    /// `--psk-identity`.
    @Option(name: .customLong("psk-identity"), parsing: .unconditional,
            help: ArgumentHelp("TLS-PSK identity.", valueName: "identity"))
    package var pskIdentity: String?

    // MARK: Diagnostics

    /// `-d`, `--debug`: print libmosquitto's log lines on standard output.
    @Flag(name: [.customShort("d"), .customLong("debug")], help: "Print debug messages (libmosquitto's log) on standard output.")
    package var debug = false

    /// `--quiet`: do not print runtime errors (argument errors are still printed).
    @Flag(name: .customLong("quiet"), help: "Do not print runtime error messages.")
    package var quiet = false

    /// Creates the defaults (everything unset).
    package init() {}

    // MARK: Derived values

    /// The topic given in the `-L` URL, if any.
    package func urlTopic() throws -> String? {
        guard let url else { return nil }
        return try BrokerURL.parse(url).topic
    }

    /// The MQTT version chosen with `-V`, or `defaultVersion`.
    /// - Throws: ``CLIError`` for an unknown version or for MQTT 3.1, which libmosquitto's Swift wrapper does not speak.
    package func resolvedProtocolVersion(default defaultVersion: MQTTProtocolVersion = .v3_1_1) throws -> MQTTProtocolVersion {
        guard let v = protocolVersion else { return defaultVersion }
        switch v {
        case "mqttv5", "5": return .v5
        case "mqttv311", "311": return .v3_1_1
        case "mqttv31", "31": return .v3_1
        default:
            throw CLIError.usage("Error: Invalid protocol version argument given.")
        }
    }

    /// The password from `-P`, `--password-file`, `--password-env` or the terminal prompt, in that order.
    ///
    /// - Parameter environment: the process environment (injectable for tests).
    /// - Throws: ``CLIError`` when the file cannot be read, the variable is unset, or no terminal is available.
    package func resolvedPassword(environment: [String: String]? = nil) throws -> String? {
        let sources = [password != nil, passwordFile != nil, passwordEnvironmentVariable != nil, passwordPrompt].filter { $0 }.count
        if sources > 1 {
            throw CLIError.usage("Error: Give the password one way only: -P, --password-file, --password-env or --password-prompt.")
        }
        if let password { return password }
        if let passwordFile {
            guard let data = FileManager.default.contents(atPath: passwordFile) else {
                throw CLIError.usage("Error: Unable to read the password file \"\(passwordFile)\": check the path and its permissions.")
            }
            var text = String(decoding: data, as: UTF8.self)
            if let nl = text.firstIndex(where: { $0 == "\n" || $0 == "\r\n" || $0 == "\r" }) { text = String(text[..<nl]) }
            return text
        }
        if let name = passwordEnvironmentVariable {
            guard let value = environmentValue(name, in: environment) else {
                throw CLIError.usage("Error: The environment variable \(name) given with --password-env is not set.")
            }
            return value
        }
        if passwordPrompt {
            return try PasswordPrompt.read(prompt: "Password: ")
        }
        return nil
    }

    /// Checks the combinations mosquitto checks after parsing, with mosquitto's messages.
    package func validateCombinations() throws {
        if clientID != nil && clientIDPrefix != nil {
            throw CLIError.usage("Error: -i and -I argument cannot be used together.")
        }
        if let k = keepalive {
            let v = atoi(k)
            if v < 5 || v > 65535 {
                throw CLIError.usage("Error: Invalid keepalive given, it must be between 5 and 65535 inclusive.")
            }
        }
        if let p = port {
            let v = atoi(p)
            if v < 0 || v > 65535 { throw CLIError.usage("Error: Invalid port given: \(v)") }
        }
        if let m = maxInflight, atoi(m) < 1 {
            throw CLIError.usage("Error: Maximum inflight messages must be greater than 0.")
        }
        if let q = willQoS {
            let v = atoi(q)
            if v < 0 || v > 2 { throw CLIError.usage("Error: Invalid will QoS \(v).") }
        }
        if let x = sessionExpiry { _ = try Self.parseSessionExpiry(x) }
        if let url { _ = try BrokerURL.parse(url) }
        if (willPayload != nil || willRetain) && willTopic == nil {
            throw CLIError.usage(willPayload != nil ? "Error: Will payload given, but no will topic given."
                                                    : "Error: Will retain given, but no will topic given.")
        }
        if let t = willTopic, !MQTTTopic.isValidName(t) {
            throw CLIError.usage("Error: Invalid will topic '\(t)', does it contain '+' or '#'?")
        }
        if (certificateFile == nil) != (keyFile == nil) {
            throw CLIError.usage("Error: Both certfile and keyfile must be provided if one of them is set.")
        }
        if keyForm != nil && keyFile == nil {
            throw CLIError.usage("Error: If keyform is set, keyfile must be also specified.")
        }
        if let f = keyForm, f != "pem" && f != "engine" {
            throw CLIError("Error: Problem setting key form, it must be one of 'pem' or 'engine'.")
        }
        if tlsEngineKeyPasswordSHA1 != nil && (tlsEngine == nil || keyForm == nil) {
            throw CLIError.usage("Error: when using tls-engine-kpass-sha1, both tls-engine and keyform must also be provided.")
        }
        if psk != nil {
            if caFile != nil || caPath != nil {
                throw CLIError.usage("Error: Only one of --psk or --cafile/--capath may be used at once.")
            }
            if pskIdentity == nil { throw CLIError.usage("Error: --psk-identity required if --psk used.") }
        }
        if let v = tlsVersion, !["tlsv1.3", "tlsv1.2", "tlsv1.1"].contains(v) {
            throw CLIError("Error: Problem setting TLS options, check the options are valid (--tls-version must be tlsv1.3, tlsv1.2 or tlsv1.1).")
        }
        if let proxy { _ = try SOCKSURL.parse(proxy) }
    }

    /// Reads `-x`: a number 0…4294967295, `-1` or `∞` (never expires). Whole-argument parse, hex allowed, as mosquitto's `strtol(…, 0)`.
    package static func parseSessionExpiry(_ s: String) throws -> UInt32 {
        if s == "∞" || s == "-1" { return UInt32.max }
        let value: Int64?
        if s.hasPrefix("0x") || s.hasPrefix("0X") { value = Int64(s.dropFirst(2), radix: 16) }
        else if s.count > 1 && s.hasPrefix("0") { value = Int64(s.dropFirst(), radix: 8) }
        else { value = Int64(s) }
        guard let v = value else { throw CLIError.usage("Error: session-expiry-interval not a number.") }
        guard v >= 0 && v <= Int64(UInt32.max) else {
            throw CLIError.usage("Error: session-expiry-interval out of range.")
        }
        return UInt32(v)
    }

    /// Builds the client configuration these options describe.
    ///
    /// Applies mosquitto's rules: `-L` first and the explicit options over it; port 8883 when `--cafile`,
    /// `--capath` or `--psk` is given; `-I` appends the process id; `-c` keeps the session (forever on MQTT 5
    /// unless `-x` says otherwise) and needs a client id; `-D connect …` and `-D will …` properties.
    ///
    /// - Parameters:
    ///   - defaultProtocol: the MQTT version without `-V` (3.1.1 for pub and sub, 5 for rr). A `-D` option before
    ///     any `-V` makes the tools pass `-V 5` themselves, as mosquitto does.
    ///   - environment: where `--password-env` reads from.
    ///   - logger: the client's logger; by default ``makeLogger()``.
    /// - Returns: a configuration ready for `MQTTClient(configuration:)`.
    /// - Throws: ``CLIError`` with mosquitto's message and exit code 1.
    package func makeConfiguration(defaultProtocol: MQTTProtocolVersion = .v3_1_1,
                                  environment: [String: String]? = nil,
                                  logger: Logger? = nil) throws -> MQTTConfiguration {
        try validateCombinations()
        let version = try resolvedProtocolVersion(default: defaultProtocol)
        let props = try PropertyOptions.parse(properties)

        var hostName = "localhost"
        var portNumber: Int?
        var user: String?
        var pass: String?
        var systemCerts = false
        var overWebSockets = webSockets
        if let url {
            let u = try BrokerURL.parse(url)
            if u.isWebSockets { overWebSockets = true }
            hostName = u.host
            portNumber = u.port
            user = u.username
            pass = u.password
            systemCerts = u.isTLS
        }
        if let host { hostName = host }
        if let port { portNumber = atoi(port) }
        if let username { user = username }
        if let p = try resolvedPassword(environment: environment) { pass = p }
        let usesTLSFiles = caFile != nil || caPath != nil || psk != nil
        let finalPort = portNumber ?? (usesTLSFiles ? 8883 : 1883)
        if finalPort == 8883 && !usesTLSFiles { systemCerts = true }

        var configuration: MQTTConfiguration
        if let unixSocket {
            if overWebSockets { throw CLIError.usage("Error: --ws and --unix cannot be used together.") }
            configuration = MQTTConfiguration(endpoint: .unixSocket(path: unixSocket), protocolVersion: version)
        } else {
            configuration = MQTTConfiguration(host: hostName, port: finalPort, protocolVersion: version)
        }
        if overWebSockets {
            if psk != nil { throw CLIError.usage("Error: TLS-PSK is not available over WebSockets; use --cafile or --capath.") }
            configuration.transport = .webSockets(.init())
        }

        // Client id.
        if let clientID { configuration.clientID = clientID }
        if let clientIDPrefix { configuration.clientID = clientIDPrefix + String(getpid()) }
        let hasExplicitID = clientID != nil

        // Session.
        if disableCleanSession {
            let expiry: UInt32 = try sessionExpiry.map(Self.parseSessionExpiry) ?? UInt32.max
            if version == .v5 {
                if expiry == UInt32.max && !hasExplicitID {
                    throw CLIError.usage("Error: You must provide a client id if you are using an infinite session expiry interval.")
                }
                if !hasExplicitID && clientIDPrefix == nil {
                    throw CLIError.usage("Error: You must provide a client id if you are using the -c option.")
                }
            } else if !hasExplicitID {
                throw CLIError.usage("Error: You must provide a client id if you are using the -c option.")
            }
            configuration.session = .persistent(expiry: version == .v5 ? expiry : UInt32.max)
        } else if version == .v5, let expiry = try sessionExpiry.map(Self.parseSessionExpiry) ?? props.sessionExpiryInterval, expiry > 0 {
            // -x without -c: a clean start whose new session the broker keeps for `expiry` seconds.
            configuration.session = .cleanStart(expiry: expiry)
        } else {
            configuration.session = .clean
        }

        if let keepalive { configuration.keepAlive = atoi(keepalive) }
        if let maxInflight { configuration.maximumInflightMessages = atoi(maxInflight) }
        configuration.tcpNoDelay = noDelay
        configuration.bindAddress = bindAddress

        // Credentials.
        if let user {
            configuration.credentials = .init(username: user, password: pass)
        } else if let pass {
            if version == .v5 {
                configuration.credentials = .init(username: "", password: pass)
            } else {
                throw CLIError("Error: Problem setting username and/or password.")
            }
        }

        // Will.
        if let willTopic {
            var message = MQTTMessage(topic: willTopic, payload: Array((willPayload ?? "").utf8),
                                      qos: QoS(rawValue: UInt8(atoi(willQoS ?? "0"))) ?? .atMostOnce, retain: willRetain)
            message.properties = props.will
            configuration.will = .init(message, delayInterval: props.willDelayInterval)
        }

        // TLS.
        if let psk, let pskIdentity {
            configuration.tls = .psk(identity: pskIdentity, hexKey: psk, version: tlsVersion, ciphers: ciphers)
            configuration.tls?.alpn = tlsALPN
            configuration.tls?.insecure = insecure
        } else if caFile != nil || caPath != nil || tlsUseOSCertificates || systemCerts || certificateFile != nil {
            var tls = MQTTConfiguration.TLS(caFile: caFile, caDirectory: caPath, certificateFile: certificateFile,
                                            keyFile: keyFile, insecure: insecure, version: tlsVersion, ciphers: ciphers,
                                            alpn: tlsALPN, useSystemCertificates: tlsUseOSCertificates || systemCerts)
            if tls.caFile == nil && tls.caDirectory == nil { tls.useSystemCertificates = true }
            tls.engine = tlsEngine
            tls.keyForm = keyForm == "engine" ? .engine : .pem
            tls.engineKeyPasswordSHA1 = tlsEngineKeyPasswordSHA1
            for (path, _) in [(caFile, "cafile"), (certificateFile, "cert"), (keyForm == "engine" ? nil : keyFile, "key")] {
                if let path, !FileManager.default.isReadableFile(atPath: path) {
                    throw CLIError("Error: Problem setting TLS options: File not found. Check that \"\(path)\" exists and is readable.")
                }
            }
            configuration.tls = tls
        }

        if let proxy {
            let s = try SOCKSURL.parse(proxy)
            configuration.socks5Proxy = .init(host: s.host, port: s.port, username: s.username, password: s.password)
        }

        // MQTT 5 CONNECT properties.
        configuration.connectUserProperties = props.connectUserProperties
        if let r = props.receiveMaximum { configuration.receiveMaximum = r }
        configuration.connectProperties = props.connect

        configuration.logger = logger ?? makeLogger()
        // The tools decide themselves whether to reconnect.
        configuration.reconnect = .init(enabled: true, initialDelay: .milliseconds(500), maximumDelay: .seconds(10))
        return configuration
    }

    /// A logger that prints libmosquitto's log lines on standard output with `-d` and nothing otherwise.
    package func makeLogger(label: String = "mqtt") -> Logger {
        let debugOn = debug
        var logger = Logger(label: label) { _ in DebugLogHandler(enabled: debugOn) }
        logger.logLevel = debugOn ? .trace : .critical
        return logger
    }
}

/// A parsed `-L` URL.
///
/// `mqtt(s)://[username[:password]@]host[:port]/topic`, read by the parser the library and mqtt-pub/sub/rr use
/// (`MQTTURLComponents`): mosquitto 2.0.11's grammar with our extensions (an IPv6 host in brackets, a password that
/// contains `@`); an empty host or a port that is not 1...65535, which mosquitto would misread, is refused.
package struct BrokerURL: Sendable, Hashable {
    /// `mqtts://`.
    package var isTLS: Bool
    /// True for `ws://` and `wss://` (MQTT over WebSockets, as in mosquitto 2.1's clients).
    package var isWebSockets: Bool
    /// User name, if any.
    package var username: String?
    /// Password, if any.
    package var password: String?
    /// Host.
    package var host: String
    /// Port (1883, or 8883 for `mqtts`, unless given).
    package var port: Int
    /// The topic after the first `/`.
    package var topic: String

    /// Parses a `-L` argument.
    /// - Throws: ``CLIError`` with mosquitto's messages.
    package static func parse(_ url: String) throws -> BrokerURL {
        let u: MQTTURLComponents
        do {
            u = try MQTTURLComponents(parsing: url, requireTopic: true)
        } catch {
            switch error {
            case .unsupportedScheme: throw CLIError.usage("Error: unsupported URL scheme.")
            case .missingTopic: throw CLIError.usage("Error: Invalid URL for -L argument specified - topic missing.")
            case .missingHost: throw CLIError.usage("Error: Invalid URL for -L argument specified - host missing.")
            case .invalidIPv6Literal:
                throw CLIError.usage("Error: Invalid URL for -L argument specified - write an IPv6 address in brackets, as in mqtt://[::1]:1883/topic.")
            case .invalidPort:
                throw CLIError.usage("Error: Invalid URL for -L argument specified - the port must be a number from 1 to 65535.")
            }
        }
        let text = { (bytes: [UInt8]) in String(decoding: bytes, as: UTF8.self) }
        return BrokerURL(isTLS: u.scheme.isTLS, isWebSockets: u.scheme.isWebSockets, username: u.username.map(text),
                         password: u.password.map(text), host: u.hostString, port: u.port, topic: text(u.topic ?? []))
    }
}

/// A parsed `--proxy` URL: `socks5h://[username[:password]@]host[:port]`, user and password percent-decoded
/// (`%25`, `%3A` and, unlike mosquitto 2.0.11 which turns it into `:`, `%40` as `@`).
package struct SOCKSURL: Sendable, Hashable {
    /// Proxy host.
    package var host: String
    /// Proxy port (default 1080).
    package var port: Int
    /// User name.
    package var username: String?
    /// Password.
    package var password: String?

    /// Parses a `--proxy` argument.
    package static func parse(_ url: String) throws -> SOCKSURL {
        guard url.hasPrefix("socks5h://") else { throw CLIError.usage("Error: Unsupported proxy protocol: \(url)") }
        var rest = Substring(url).dropFirst("socks5h://".count)
        var username: String?
        var password: String?
        if let at = rest.lastIndex(of: "@") {
            let info = rest[..<at]
            rest = rest[rest.index(after: at)...]
            if let colon = info.firstIndex(of: ":") {
                username = decode(info[..<colon])
                password = decode(info[info.index(after: colon)...])
            } else {
                username = decode(info)
            }
        }
        var port = 1080
        var host = String(rest)
        if let colon = rest.lastIndex(of: ":") {
            host = String(rest[..<colon])
            port = atoi(String(rest[rest.index(after: colon)...]))
        }
        if host.isEmpty { throw CLIError.usage("Error: Invalid proxy url: the host is empty.") }
        return SOCKSURL(host: host, port: port, username: username, password: password)
    }

    private static func decode(_ s: Substring) -> String {
        String(s.replacing("%3A", with: ":").replacing("%3a", with: ":").replacing("%40", with: "@").replacing("%25", with: "%"))
    }
}
