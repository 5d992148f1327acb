import Logging
internal import MQTTURLParser

/// Everything a client needs to know before it connects.
///
/// ```swift
/// var config = MQTTConfiguration(host: "127.0.0.1", port: 1883)
/// config.clientID = "thermostat-1"
/// config.session = .persistent(expiry: 3600)
/// let client = try MQTTClient(configuration: config)
/// ```
public struct MQTTConfiguration: Sendable {
    /// Where the broker listens.
    public enum Endpoint: Sendable, Hashable, CustomStringConvertible {
        /// A TCP host name or address and port.
        case tcp(host: String, port: Int)
        /// A Unix domain socket path (libmosquitto connects with port 0).
        case unixSocket(path: String)

        /// The endpoint as `host:port` or `unix:<path>`, for logs and messages.
        public var description: String {
            switch self {
            case .tcp(let host, let port): return host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
            case .unixSocket(let path): return "unix:\(path)"
            }
        }

        /// The broker an MQTT 5 Server Reference names: `host`, `host:port` or `[v6-address]:port`, the first of
        /// several separated by spaces. Without a port, `defaultPort`. Nil when it names nothing usable.
        init?(serverReference: String, defaultPort: Int) {
            guard let first = serverReference.split(separator: " ").first.map(String.init), !first.isEmpty else { return nil }
            var host = first
            var port = defaultPort
            if first.hasPrefix("[") {
                guard let close = first.firstIndex(of: "]") else { return nil }
                host = String(first[first.index(after: first.startIndex)..<close])
                let rest = first[first.index(after: close)...]
                if !rest.isEmpty {
                    guard rest.hasPrefix(":"), let p = Int(rest.dropFirst()) else { return nil }
                    port = p
                }
            } else if let colon = first.lastIndex(of: ":"), first.firstIndex(of: ":") == colon {
                host = String(first[..<colon])
                guard let p = Int(first[first.index(after: colon)...]) else { return nil }
                port = p
            }
            guard !host.isEmpty, (1...65535).contains(port) else { return nil }
            self = .tcp(host: host, port: port)
        }
    }

    /// Whether the broker keeps the client's subscriptions and queued messages across connections.
    public enum Session: Sendable, Hashable {
        /// Start a fresh session (MQTT 3.1.1 clean session, MQTT 5 clean start with expiry 0).
        case clean
        /// MQTT 5: start a fresh session, and have the broker keep it for `expiry` seconds after the connection
        /// ends (clean start with a Session Expiry Interval: `mosquitto_sub -x` without `-c`). A reconnect starts
        /// fresh again. Same as ``clean`` on MQTT 3.x.
        case cleanStart(expiry: UInt32)
        /// Keep the session: MQTT 3.1.1 clean session false; MQTT 5 clean start false with a
        /// Session Expiry Interval of `expiry` seconds (0xFFFFFFFF = never expires). Needs a client id.
        case persistent(expiry: UInt32)
    }

    /// User name and password sent in CONNECT.
    public struct Credentials: Sendable, Hashable {
        /// The user name.
        public var username: String
        /// The password, if any.
        public var password: String?
        /// Creates credentials.
        public init(username: String, password: String? = nil) {
            self.username = username
            self.password = password
        }
    }

    /// The Last Will and Testament the broker publishes when the client dies without DISCONNECT.
    public struct Will: Sendable, Hashable {
        /// The will message (its MQTT 5 properties are sent as will properties).
        public var message: MQTTMessage
        /// MQTT 5 Will Delay Interval, in seconds.
        public var delayInterval: UInt32?
        /// Creates a will.
        public init(_ message: MQTTMessage, delayInterval: UInt32? = nil) {
            self.message = message
            self.delayInterval = delayInterval
        }
    }

    /// TLS settings. Server certificates and host names are verified unless ``insecure`` is set.
    public struct TLS: Sendable, Hashable {
        /// A PEM file of trusted CA certificates.
        public var caFile: String?
        /// A directory of trusted CA certificates (hashed names, as `c_rehash` makes).
        public var caDirectory: String?
        /// The client certificate (PEM) for mutual TLS.
        public var certificateFile: String?
        /// The client private key (PEM) for mutual TLS.
        public var keyFile: String?
        /// Skip the host name check of the broker's certificate. Prints a warning: use only for tests.
        public var insecure: Bool
        /// `tlsv1.3`, `tlsv1.2` or `tlsv1.1`; nil lets OpenSSL choose.
        public var version: String?
        /// An OpenSSL cipher list.
        public var ciphers: String?
        /// ALPN protocol to offer.
        public var alpn: String?
        /// Trust the operating system's CA store (in addition to `caFile`/`caDirectory`).
        public var useSystemCertificates: Bool
        /// An OpenSSL engine to use for TLS (for example a hardware key store), by id.
        public var engine: String?
        /// How ``keyFile`` is to be read.
        public var keyForm: KeyForm = .pem
        /// The SHA-1 (40 hex digits) of the password of an engine-held private key.
        public var engineKeyPasswordSHA1: String?

        /// How the private key is stored.
        public enum KeyForm: String, Sendable, Hashable {
            /// A PEM file.
            case pem
            /// A key held by the OpenSSL ``TLS/engine``; ``TLS/keyFile`` names it for the engine.
            case engine
        }
        /// Pre-shared-key TLS instead of certificates: identity and hex-encoded key.
        public var psk: (identity: String, hexKey: String)? {
            get { pskIdentity.map { ($0, pskHexKey ?? "") } }
            set { pskIdentity = newValue?.identity; pskHexKey = newValue?.hexKey }
        }
        var pskIdentity: String?
        var pskHexKey: String?

        /// Creates TLS settings that trust `caFile`.
        public init(caFile: String? = nil, caDirectory: String? = nil, certificateFile: String? = nil, keyFile: String? = nil,
                    insecure: Bool = false, version: String? = nil, ciphers: String? = nil, alpn: String? = nil,
                    useSystemCertificates: Bool = false) {
            self.caFile = caFile
            self.caDirectory = caDirectory
            self.certificateFile = certificateFile
            self.keyFile = keyFile
            self.insecure = insecure
            self.version = version
            self.ciphers = ciphers
            self.alpn = alpn
            self.useSystemCertificates = useSystemCertificates
        }

        /// Creates pre-shared-key TLS settings.
        public static func psk(identity: String, hexKey: String, version: String? = nil, ciphers: String? = nil) -> TLS {
            var t = TLS(version: version, ciphers: ciphers)
            t.pskIdentity = identity
            t.pskHexKey = hexKey
            return t
        }

        /// Two TLS settings are equal when every field, the pre-shared key included, is equal.
        public static func == (a: TLS, b: TLS) -> Bool {
            a.caFile == b.caFile && a.caDirectory == b.caDirectory && a.certificateFile == b.certificateFile && a.keyFile == b.keyFile
                && a.insecure == b.insecure && a.version == b.version && a.ciphers == b.ciphers && a.alpn == b.alpn
                && a.useSystemCertificates == b.useSystemCertificates && a.pskIdentity == b.pskIdentity && a.pskHexKey == b.pskHexKey
                && a.engine == b.engine && a.keyForm == b.keyForm && a.engineKeyPasswordSHA1 == b.engineKeyPasswordSHA1
        }
        /// Hashes the CA file, the certificate file and the PSK identity (enough to tell settings apart).
        public func hash(into h: inout Hasher) { h.combine(caFile); h.combine(certificateFile); h.combine(pskIdentity) }
    }

    /// How the client reconnects after it lost the connection.
    ///
    /// The delay before attempt *n* is `initialDelay · multiplier^(n-1)`, capped at `maximumDelay`, then
    /// spread by ±`jitter` (a fraction) so that many clients do not reconnect in lock step.
    public struct ReconnectPolicy: Sendable, Hashable {
        /// Whether to reconnect at all after a connection was lost.
        public var enabled: Bool
        /// The first delay.
        public var initialDelay: Duration
        /// The largest delay.
        public var maximumDelay: Duration
        /// Growth factor between attempts.
        public var multiplier: Double
        /// Random spread, as a fraction of the delay (0.2 = ±20 %).
        public var jitter: Double
        /// Give up after this many consecutive failed attempts; nil = never.
        public var maximumAttempts: Int?
        /// Also retry the very first connection (otherwise `connect()` throws at once when the broker is down).
        public var retryInitialConnect: Bool
        /// Stop at once on refusals that retrying cannot fix: bad credentials, not authorised, banned,
        /// bad client id, unsupported protocol, TLS failures.
        public var giveUpOnFatalErrors: Bool
        /// How long an accepted connection must last for the next delay to start again from ``initialDelay``.
        ///
        /// Connections that the broker accepts and then ends sooner, several in a row, keep growing the delay as
        /// failed attempts do: a broker that drops the client right after CONNACK, or two clients that keep taking
        /// the same client ID from each other, would otherwise reconnect every ``initialDelay`` forever. The first
        /// short connection in a row does not count, so one broker restart changes nothing. They do not count
        /// towards ``maximumAttempts``.
        public var backoffResetAfter: Duration

        /// Creates a policy.
        public init(enabled: Bool = true, initialDelay: Duration = .milliseconds(500), maximumDelay: Duration = .seconds(30),
                    multiplier: Double = 2, jitter: Double = 0.2, maximumAttempts: Int? = nil,
                    retryInitialConnect: Bool = false, giveUpOnFatalErrors: Bool = true,
                    backoffResetAfter: Duration = .seconds(10)) {
            self.enabled = enabled
            self.initialDelay = initialDelay
            self.maximumDelay = maximumDelay
            self.multiplier = multiplier
            self.jitter = jitter
            self.maximumAttempts = maximumAttempts
            self.retryInitialConnect = retryInitialConnect
            self.giveUpOnFatalErrors = giveUpOnFatalErrors
            self.backoffResetAfter = backoffResetAfter
        }

        /// Exponential backoff from 0.5 s to 30 s with ±20 % jitter, forever, giving up on fatal refusals.
        public static let `default` = ReconnectPolicy()
        /// Never reconnect: a lost connection ends the client.
        public static let never = ReconnectPolicy(enabled: false)

        /// The delay before attempt `attempt` (1-based), with jitter drawn from `random`.
        public func delay(forAttempt attempt: Int, random: Double = Double.random(in: -1...1)) -> Duration {
            let base = initialDelay / .seconds(1)
            let cap = maximumDelay / .seconds(1)
            let raw = min(cap, base * pow(multiplier, Double(max(0, attempt - 1))))
            let spread = raw * (1 + jitter * random)
            return .milliseconds(Int64(max(0, spread) * 1000))
        }
    }

    /// A SOCKS5 proxy to connect through (`mosquitto_pub --proxy socks5h://user:pass@host:port`).
    public struct SOCKS5Proxy: Sendable, Hashable {
        /// Proxy host.
        public var host: String
        /// Proxy port (1080 by default).
        public var port: Int
        /// Proxy user name.
        public var username: String?
        /// Proxy password.
        public var password: String?
        /// Creates proxy settings.
        public init(host: String, port: Int = 1080, username: String? = nil, password: String? = nil) {
            self.host = host
            self.port = port
            self.username = username
            self.password = password
        }
    }

    /// How the MQTT bytes travel to the broker: plain TCP (the default), or WebSockets.
    ///
    /// ```swift
    /// var config = MQTTConfiguration(host: "broker.example.com", port: 443)
    /// config.transport = .webSockets(.init(path: "/mqtt", headers: [.init(name: "Authorization", value: "Bearer …")]))
    /// config.tls = .init(useSystemCertificates: true)   // wss
    /// ```
    ///
    /// With ``webSockets(_:)`` and ``MQTTConfiguration/tls`` set, the connection is `wss`: the same certificate
    /// files, host name check and ``TLS/insecure`` setting apply.
    public enum Transport: Sendable, Hashable {
        /// MQTT over TCP (or TLS, or a Unix socket), as libmosquitto speaks it.
        case tcp
        /// MQTT over WebSockets (`ws://`, or `wss://` with ``MQTTConfiguration/tls``) to a ``Endpoint/tcp(host:port:)``.
        ///
        /// libmosquitto 2.0.11 has no WebSockets client, so each connection attempt first performs the WebSocket
        /// upgrade with the broker (HTTP/1.1, subprotocol `mqtt`), then lets libmosquitto connect to a private Unix
        /// socket (in a new directory only this user can enter, removed once connected) whose bytes travel in
        /// binary WebSocket frames. A refused upgrade fails that attempt with a clear ``MQTTError``: HTTP 401 as
        /// ``MQTTError/Code/badCredentials``, 403 as ``MQTTError/Code/notAuthorized``, any other status, a missing
        /// `mqtt` subprotocol or a server that is not a WebSocket one as ``MQTTError/Code/webSocketRejected``
        /// (with ``MQTTError/httpStatus``), TLS failures as ``MQTTError/Code/tls``, a server that closes the
        /// connection without answering as ``MQTTError/Code/connectionLost``. A WebSocket that dies is a lost
        /// connection: reconnects, queues and sessions work as over TCP.
        case webSockets(WebSockets)
    }

    /// Settings of the ``Transport/webSockets(_:)`` transport.
    public struct WebSockets: Sendable, Hashable {
        /// One HTTP header of the upgrade request.
        public struct Header: Sendable, Hashable {
            /// The header's name, for example `Authorization`.
            public var name: String
            /// The header's value.
            public var value: String
            /// Creates a header.
            public init(name: String, value: String) {
                self.name = name
                self.value = value
            }
        }
        /// The HTTP path of the upgrade request; `/mqtt` by default, as mosquitto's own clients use. (mosquitto's
        /// listeners accept any path; cloud brokers usually want `/mqtt`.)
        public var path: String
        /// Extra headers of the upgrade request, sent in this order (for example `Authorization` or a cookie a
        /// load balancer wants). `Host`, `Upgrade`, `Connection`, `Sec-WebSocket-Key`, `Sec-WebSocket-Version` and
        /// `Sec-WebSocket-Protocol: mqtt` are always sent.
        public var headers: [Header]
        /// How long the TCP connect, the TLS handshake and the upgrade of one attempt may take together.
        public var upgradeTimeout: Duration
        /// Creates WebSocket settings.
        public init(path: String = "/mqtt", headers: [Header] = [], upgradeTimeout: Duration = .seconds(30)) {
            self.path = path
            self.headers = headers
            self.upgradeTimeout = upgradeTimeout
        }
    }

    /// Plain TCP (the default) or WebSockets; see ``Transport``.
    public var transport: Transport = .tcp

    /// The brokers to connect to, in order of preference; never empty.
    ///
    /// The client connects to the first. After a failed attempt or a lost connection, the next attempt goes to the
    /// next endpoint in the list, after the usual ``ReconnectPolicy`` delay, wrapping around at the end: a client
    /// on the second broker stays there until that broker fails too. A persistent session resumes on whichever
    /// broker still holds it; on a broker that does not, the client re-subscribes by itself, as it does after any
    /// broker lost the session. Use brokers that share state (a cluster) or accept that each keeps its own sessions
    /// and retained messages.
    ///
    /// ```swift
    /// var config = MQTTConfiguration(endpoints: [.tcp(host: "mqtt-a", port: 1883), .tcp(host: "mqtt-b", port: 1883)])
    /// config.reconnect.retryInitialConnect = true   // also fail over when the first broker is down at start-up
    /// ```
    ///
    /// An empty list is refused when the client is created.
    public var endpoints: [Endpoint]
    /// The first of ``endpoints``: the broker the client connects to first. Setting it replaces the first entry.
    public var endpoint: Endpoint {
        get { endpoints.first ?? .tcp(host: "localhost", port: 1883) }
        set { if endpoints.isEmpty { endpoints = [newValue] } else { endpoints[0] = newValue } }
    }
    /// Whether the client follows MQTT 5 server redirects (default true).
    ///
    /// A CONNACK with reason 0x9C (use another server) or 0x9D (server moved) and a Server Reference property
    /// (`host`, `host:port` or `[v6]:port`; the first of several separated by spaces) sends the next attempt to
    /// that broker at once, without the reconnect delay. 0x9D also replaces the redirecting entry of ``endpoints``
    /// for the life of the client; after 0x9C the client returns to its list once the referenced broker fails. At
    /// most ``maximumRedirects`` redirects in a row without a successful connection are followed, so two brokers
    /// that point at each other cannot keep the client bouncing. Without a Server Reference, or with this set to
    /// false, the reason is an ordinary refusal.
    ///
    /// A DISCONNECT with those reasons cannot be followed: libmosquitto 2.0.11 frees a DISCONNECT's properties
    /// before it reports the disconnection, so the reference never reaches the client. It is a lost connection,
    /// and the next attempt goes to the next of ``endpoints``.
    public var followsRedirects: Bool = true
    /// How many MQTT 5 server redirects in a row are followed before the client treats the next one as a failure.
    public var maximumRedirects: Int = 5
    /// MQTT 5 by default.
    public var protocolVersion: MQTTProtocolVersion = .v5
    /// The client identifier; nil asks the broker to assign one (clean sessions only).
    public var clientID: String?
    /// Clean or persistent session.
    public var session: Session = .clean
    /// Keepalive interval in seconds: 0 (off) or 5…65535. mosquitto_pub's default is 60.
    public var keepAlive: Int = 60
    /// User name and password.
    public var credentials: Credentials?
    /// Last will.
    public var will: Will?
    /// TLS settings; nil for plain TCP.
    public var tls: TLS?
    /// Reconnect behaviour.
    public var reconnect: ReconnectPolicy = .default
    /// The most publications that may be queued or in flight at once (libmosquitto's own queue is unbounded).
    /// `publish` suspends while the queue is full. At most 65,000, so message ids never run out.
    public var maximumQueuedMessages: Int = 1000
    /// The highest QoS the client publishes at: a message with a higher QoS is sent at this one (its receipt says
    /// so). Default `.exactlyOnce`, no cap.
    ///
    /// For MQTT 3.1.1 brokers that cannot do QoS 2 and have no way to say so (MQTT 5 brokers say it in CONNACK,
    /// ``ConnAck/maximumQoS``, and libmosquitto then refuses such a publish at once). RabbitMQ's MQTT plugin
    /// answers a QoS 2 PUBLISH with a QoS 1 PUBACK, which MQTT forbids: libmosquitto drops the connection with a
    /// protocol error, and the message is sent again after every reconnect. Set `.atLeastOnce` for such a broker.
    public var maximumQoS: QoS = .exactlyOnce
    /// How many QoS 1/2 publications libmosquitto sends before it waits for acknowledgements
    /// (its `max_inflight_messages`, MQTT 5 Receive Maximum of the broker overrides it). 0 means 65,535.
    /// Bigger is not faster beyond a few dozen: libmosquitto 2.0.11 walks its whole in-flight list on every
    /// acknowledgement, so the cost per message grows with this number (measured by the bridge: 14 % of its CPU
    /// at 1,000).
    public var maximumInflightMessages: Int = 20
    /// MQTT 5 Receive Maximum: how many QoS 1/2 messages the broker may send before this client acknowledged
    /// them (1…65535). The broker's own `max_inflight_messages` applies too.
    public var receiveMaximum: UInt16 = 65535
    /// The deepest topic (in levels) the client sends. The mosquitto broker disconnects a client that
    /// publishes or subscribes deeper than 200 levels (its `TOPIC_HIERARCHY_LIMIT`), and a QoS 1/2 message
    /// would then be resent after every reconnect; the client refuses such a topic up front instead.
    public var maximumTopicLevels: Int = 200
    /// Connect through a SOCKS5 proxy.
    public var socks5Proxy: SOCKS5Proxy?
    /// Local address to bind the socket to.
    public var bindAddress: String?
    /// Disable Nagle's algorithm.
    public var tcpNoDelay: Bool = false
    /// Batch the connection's socket reads and writes (plain TCP and Unix sockets, once connected).
    ///
    /// libmosquitto reads each packet with at least three `read` calls and writes each with its own `write`, plus
    /// a wake-up byte to an internal socket pair. With batching on, its reads are served from a 64 KiB buffer
    /// filled by one `read`, and the packets one pass of the network thread produces leave in one `send`. The
    /// bytes on the wire and their order are unchanged. It works by pointing libmosquitto's own calls of `read`,
    /// `write` and `close` at the client's buffers (on Linux with libmosquitto as a shared library); where that is
    /// not possible, or with the environment variable `MOSQUITTO_SWIFT_SOCKET_BATCHING=0`, the client uses
    /// libmosquitto's I/O unchanged. TLS connections always do.
    public var batchesSocketIO: Bool = true
    /// MQTT 5 user properties sent in CONNECT.
    public var connectUserProperties: [UserProperty] = []
    /// Further MQTT 5 CONNECT properties (packet size limit, topic aliases, problem/response information,
    /// authentication method).
    public var connectProperties = ConnectProperties()
    /// Prefix of the private response topic used by ``MQTTClient/request(_:timeout:)``.
    public var responseTopicPrefix: String = "responses"
    /// How long the network thread's own poll loop (see ``MQTTClient/executor``) sleeps when nothing happens, in
    /// milliseconds; it also bounds how late a keepalive PINGREQ goes out. Tests stretch it so that a missed
    /// wake-up cannot hide behind a short timeout.
    var pollIdleTimeoutMilliseconds: Int32 = 1000
    /// A durable outbox: published messages are written to this directory before they are sent, and leave it when
    /// the broker acknowledged them, so they survive a restart of the process, `kill -9` or a reboot. nil (the
    /// default) keeps the outgoing queue in memory, as every MQTT client does. See ``Outbox``.
    public var outbox: Outbox?
    /// Where the client logs. libmosquitto's own log lines are forwarded at `.debug`/`.trace` when that level is on.
    public var logger: Logger = Logger(label: "mosquitto.client")

    /// Creates a configuration for a TCP broker.
    public init(host: String = "localhost", port: Int = 1883, clientID: String? = nil, protocolVersion: MQTTProtocolVersion = .v5) {
        self.endpoints = [.tcp(host: host, port: port)]
        self.clientID = clientID
        self.protocolVersion = protocolVersion
    }

    /// Creates a configuration for an endpoint.
    public init(endpoint: Endpoint, clientID: String? = nil, protocolVersion: MQTTProtocolVersion = .v5) {
        self.endpoints = [endpoint]
        self.clientID = clientID
        self.protocolVersion = protocolVersion
    }

    /// Creates a configuration for several brokers, tried in order (see ``endpoints``).
    public init(endpoints: [Endpoint], clientID: String? = nil, protocolVersion: MQTTProtocolVersion = .v5) {
        self.endpoints = endpoints
        self.clientID = clientID
        self.protocolVersion = protocolVersion
    }

    /// Creates a configuration from an `mqtt://`, `mqtts://`, `ws://` or `wss://` URL, read by the same parser as
    /// mqtt-pub's `-L`: `scheme://[username[:password]@]host[:port][/rest]` (see ``MQTTURL`` for the exact rules).
    ///
    /// The port defaults to 1883 (8883 for `mqtts` and `wss`), as in mosquitto's clients. `mqtts` and `wss` turn TLS
    /// on with the operating system's CA store. `ws` and `wss` choose the ``Transport/webSockets(_:)`` transport, and
    /// there the text after the host is the HTTP path (`wss://broker.example.com:443/mqtt`; `/mqtt` when there is
    /// none). For `mqtt` and `mqtts` that text (a topic, to mqtt-pub) is ignored here; use ``MQTTURL`` to read it.
    /// - Throws: ``MQTTError/Code/invalidArgument`` for a URL ``MQTTURL`` refuses.
    public init(url: String) throws(MQTTError) {
        let parsed = try MQTTURL(url)
        self.init(host: parsed.host, port: parsed.port)
        if let user = parsed.username { credentials = Credentials(username: user, password: parsed.password) }
        if parsed.isTLS { tls = TLS(useSystemCertificates: true) }
        if parsed.isWebSockets {
            let path = parsed.topic.map { "/" + $0 } ?? "/mqtt"
            transport = .webSockets(WebSockets(path: path))
        }
    }

    func validate() throws(MQTTError) {
        if keepAlive != 0 && !(5...65535).contains(keepAlive) {
            throw MQTTError(.invalidArgument, "Invalid keepalive \(keepAlive): use 0 (off) or 5 to 65535 seconds.")
        }
        if endpoints.isEmpty {
            throw MQTTError(.invalidArgument, "No broker endpoint: set endpoints to at least one broker.")
        }
        for case .tcp(let host, let port) in endpoints {
            if host.isEmpty { throw MQTTError(.invalidArgument, "Invalid host: the host name is empty.") }
            if !(1...65535).contains(port) { throw MQTTError(.invalidArgument, "Invalid port \(port): use 1 to 65535.") }
        }
        if maximumRedirects < 0 {
            throw MQTTError(.invalidArgument, "maximumRedirects must be 0 or more.")
        }
        if case .persistent = session, clientID == nil || clientID?.isEmpty == true {
            throw MQTTError(.invalidArgument, "A persistent session needs a client id: set clientID.")
        }
        if let id = clientID, id.utf8.count > 65535 {
            throw MQTTError(.invalidArgument, "The client id is longer than 65535 bytes.")
        }
        if receiveMaximum == 0 {
            throw MQTTError(.invalidArgument, "receiveMaximum must be between 1 and 65535.")
        }
        let cp = connectProperties
        if cp.maximumPacketSize == 0 {
            throw MQTTError(.invalidArgument, "maximumPacketSize must be at least 1 byte (leave it nil for no limit).")
        }
        if cp.authenticationData != nil && cp.authenticationMethod == nil {
            throw MQTTError(.invalidArgument, "authenticationData needs an authenticationMethod.")
        }
        if cp.authenticationData.map({ $0.count > 65535 }) == true {
            throw MQTTError(.invalidArgument, "authenticationData is longer than 65535 bytes.")
        }
        if maximumQueuedMessages < 1 || maximumQueuedMessages > 65000 {
            throw MQTTError(.invalidArgument, "maximumQueuedMessages must be between 1 and 65000 (message ids are 16 bits).")
        }
        if let will {
            try MQTTTopic.validateName(will.message.topic)
        }
        if let tls, tls.pskIdentity != nil, tls.caFile != nil || tls.caDirectory != nil || tls.certificateFile != nil {
            throw MQTTError(.invalidArgument, "TLS-PSK and certificate-based TLS cannot be used together: set a pre-shared key or CA and certificate files, not both.")
        }
        if case .webSockets(let ws) = transport {
            if endpoints.contains(where: { if case .unixSocket = $0 { true } else { false } }) {
                throw MQTTError(.invalidArgument, "WebSockets need a host and port (Endpoint.tcp), not a Unix socket.")
            }
            if !ws.path.hasPrefix("/") {
                throw MQTTError(.invalidArgument, "Invalid WebSocket path '\(ws.path)': it must start with '/'.")
            }
            if ws.path.contains(where: { $0 == " " || $0.isNewline }) || ws.headers.contains(where: { h in
                h.name.isEmpty || (h.name + h.value).contains(where: { $0.isNewline }) || h.name.contains(where: { $0 == ":" || $0 == " " })
            }) {
                throw MQTTError(.invalidArgument, "Invalid WebSocket path or header: no spaces or line breaks in the path, no line breaks in headers, and header names without ':' or spaces.")
            }
            if socks5Proxy != nil {
                throw MQTTError(.invalidArgument, "A SOCKS5 proxy cannot be combined with WebSockets.")
            }
            if bindAddress != nil {
                throw MQTTError(.invalidArgument, "A bind address cannot be combined with WebSockets.")
            }
            if let tls {
                if tls.pskIdentity != nil {
                    throw MQTTError(.invalidArgument, "TLS-PSK is not available over WebSockets (wss): use certificates.")
                }
                if tls.engine != nil || tls.keyForm == .engine {
                    throw MQTTError(.invalidArgument, "OpenSSL engines are not available over WebSockets (wss): use PEM files.")
                }
                if (tls.certificateFile == nil) != (tls.keyFile == nil) {
                    throw MQTTError(.tls, "Mutual TLS needs both a client certificate (TLS.certificateFile) and its private key (TLS.keyFile).")
                }
            }
        }
    }
}

/// A parsed `mqtt://`, `mqtts://`, `ws://` or `wss://` URL, read by the same parser as mqtt-pub's `-L` (here the
/// topic is optional).
///
/// `scheme://[username[:password]@]host[:port][/topic]`, read by the same parser as mqtt-pub's, mqtt-sub's and
/// mqtt-rr's `-L`:
/// - The scheme is `mqtt`, `mqtts`, `ws` or `wss`, in any case (`mqtts` and `wss` mean TLS, `ws` and `wss`
///   WebSockets).
/// - The port defaults to 1883, or 8883 for `mqtts` and `wss` (as mosquitto's clients have it); a given port must be a
///   number from 1 to 65535.
/// - The user information ends at the last `@`, so a password may contain `@`; the user name ends at the first `:`.
/// - The host is an IPv6 literal in brackets (`mqtt://[::1]:1883`), or ends at its only `:`; it must not be empty.
/// - The topic is everything after the first `/`, and is optional. Nothing is percent-decoded.
public struct MQTTURL: Sendable, Hashable {
    /// True for `mqtts://` and `wss://`.
    public var isTLS: Bool
    /// True for `ws://` and `wss://`.
    public var isWebSockets: Bool
    /// User name, if given.
    public var username: String?
    /// Password, if given.
    public var password: String?
    /// Host name or address (an IPv6 address without its brackets).
    public var host: String
    /// Port (default 1883, or 8883 for `mqtts`).
    public var port: Int
    /// The topic after the first `/`, if any.
    public var topic: String?

    /// Parses `scheme://[username[:password]@]host[:port][/topic]` (`mqtt`, `mqtts`, `ws` or `wss`).
    /// - Throws: ``MQTTError/Code/invalidArgument`` with a sentence that says what is wrong with the URL.
    public init(_ url: String) throws(MQTTError) {
        let parts: MQTTURLComponents
        do {
            parts = try MQTTURLComponents(parsing: url)
        } catch {
            switch error {
            case .unsupportedScheme:
                throw MQTTError(.invalidArgument, "Unsupported URL scheme in '\(url)': use mqtt://, mqtts://, ws:// or wss://.")
            case .missingTopic, .missingHost:
                throw MQTTError(.invalidArgument, "Invalid URL '\(url)': the host is empty.")
            case .invalidIPv6Literal:
                throw MQTTError(.invalidArgument, "Invalid URL '\(url)': an IPv6 address must be written in brackets, as in mqtt://[::1]:1883.")
            case .invalidPort:
                throw MQTTError(.invalidArgument, "Invalid URL '\(url)': the port must be a number from 1 to 65535.")
            }
        }
        isTLS = parts.scheme.isTLS
        isWebSockets = parts.scheme.isWebSockets
        username = parts.username.map { String(decoding: $0, as: UTF8.self) }
        password = parts.password.map { String(decoding: $0, as: UTF8.self) }
        host = parts.hostString
        port = parts.port
        topic = parts.topic.map { String(decoding: $0, as: UTF8.self) }
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
