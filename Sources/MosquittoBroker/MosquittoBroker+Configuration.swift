extension MosquittoBroker {
    /// How to configure the private broker.
    ///
    /// Every broker listens on `127.0.0.1` only, on a free port chosen when it first starts. The
    /// other settings map onto `mosquitto.conf` options; the generated file is at
    /// ``MosquittoBroker/configurationFile``.
    ///
    /// ```swift
    /// var configuration = MosquittoBroker.Configuration(users: ["alice": "secret"], tls: true)
    /// configuration.maxQueuedMessages = 0 // no limit
    /// let broker = try MosquittoBroker(configuration: configuration)
    /// ```
    public struct Configuration: Sendable {
        /// Whether the broker keeps its in-memory database on disk.
        ///
        /// When `true`, the generated configuration has `persistence true` and
        /// `persistence_location` set to ``MosquittoBroker/dataDirectory``. mosquitto writes
        /// `mosquitto.db` there when it stops cleanly (``MosquittoBroker/stop()``) and every
        /// ``autosaveInterval`` seconds, and reads it back on ``MosquittoBroker/restart()``.
        /// A broker killed with ``MosquittoBroker/kill()`` loses whatever changed since the last save.
        /// Defaults to `false`.
        public var persistence: Bool

        /// Seconds between automatic saves of the persistence database (`autosave_interval`).
        ///
        /// `nil` keeps the mosquitto default of 1800 seconds; `0` saves only when the broker exits.
        /// Only used when ``persistence`` is `true`.
        public var autosaveInterval: Int?

        /// Usernames mapped to passwords.
        ///
        /// When not empty, the broker gets a `password_file` made with `mosquitto_passwd -b`, and
        /// anonymous clients are refused on every listener whatever ``allowAnonymous`` says.
        /// Usernames must not contain `:` or line breaks, and passwords must not contain line breaks.
        public var users: [String: String]

        /// Whether clients may connect without a username (`allow_anonymous`).
        ///
        /// Defaults to `true`. Ignored (treated as `false`) when ``users`` is not empty.
        public var allowAnonymous: Bool

        /// The contents of an access control list file (`acl_file`), or `nil` for no ACL.
        ///
        /// The text is written unchanged; see `man mosquitto.conf` for the format, for example
        /// `"user alice\ntopic readwrite alice/#\n"`.
        public var aclFileContents: String?

        /// Whether to add a TLS listener.
        ///
        /// When `true`, the first ``MosquittoBroker/start()`` generates with `openssl` a test CA, a
        /// server certificate for `CN=localhost` with subject alternative names `DNS:localhost` and
        /// `IP:127.0.0.1`, a client certificate signed by the same CA and an unrelated "wrong" CA
        /// for negative tests (see ``MosquittoBroker/TLSFiles``), and listens for TLS on
        /// ``MosquittoBroker/tlsPort``. Defaults to `false`.
        public var tls: Bool

        /// Whether to add an MQTT-over-WebSockets listener (`protocol websockets`) on ``MosquittoBroker/webSocketsPort``,
        /// and, when ``tls`` is on too, a WebSockets-over-TLS listener on ``MosquittoBroker/webSocketsTLSPort`` with
        /// the same test certificates. Both listen on `127.0.0.1` beside the plain listener (mosquitto 2.0.11 will
        /// not start with a websockets listener alone). mosquitto accepts the upgrade on any path. Defaults to `false`.
        public var webSockets: Bool

        /// Whether the TLS listener demands a client certificate signed by the test CA
        /// (`require_certificate`). Defaults to `false`. Only used when ``tls`` is `true`.
        public var requireClientCertificate: Bool

        /// The broker's `max_inflight_messages`: outgoing QoS 1 and 2 messages in flight per client.
        ///
        /// `nil` keeps the mosquitto default of 20. `0` means no limit and `1` guarantees in-order delivery.
        public var maxInflightMessages: Int?

        /// The broker's `max_queued_messages`: QoS 1 and 2 messages queued per client beyond those in flight.
        ///
        /// `nil` keeps the mosquitto default of 1000; messages beyond the limit are dropped silently,
        /// which matters for throughput tests. `0` means no limit, but mosquitto 2.0.11 then disconnects every
        /// client whose publish its ACL refuses (after the PUBACK with reason 0x87 it compares the client's
        /// outgoing queue with the limit, and any queue is at least 0): with an ACL, use a large number instead.
        public var maxQueuedMessages: Int?

        /// Raw lines appended to the end of the generated configuration, after the listeners.
        ///
        /// Global options (for example `max_keepalive 60`) work anywhere. Listener options apply to
        /// the last listener written, which is the TLS listener when ``tls`` is `true`; to
        /// configure a listener of your own, start with its `listener` line.
        public var extraConfiguration: [String]

        /// How long ``MosquittoBroker/start()`` waits for the broker to accept connections. Defaults to 10 seconds.
        public var startTimeout: Duration

        /// How long ``MosquittoBroker/stop()`` waits after `SIGTERM` before it sends `SIGKILL`. Defaults to 10 seconds.
        public var stopTimeout: Duration

        /// The `mosquitto` executable to run, or `nil` to search for it.
        ///
        /// The search order is `$MOSQUITTO_BINARY`, then each directory in `$PATH`, then
        /// `/usr/sbin`, `/usr/local/sbin` and `/opt/homebrew/sbin`.
        public var executablePath: String?

        /// Creates a configuration. Settings not among the parameters take their default values.
        ///
        /// - Parameters:
        ///   - persistence: Whether the broker keeps its database on disk across restarts.
        ///   - users: Usernames mapped to passwords; when not empty, anonymous clients are refused.
        ///   - tls: Whether to generate test certificates and add a TLS listener.
        public init(persistence: Bool = false, users: [String: String] = [:], tls: Bool = false) {
            self.persistence = persistence
            self.autosaveInterval = nil
            self.users = users
            self.allowAnonymous = true
            self.aclFileContents = nil
            self.tls = tls
            self.webSockets = false
            self.requireClientCertificate = false
            self.maxInflightMessages = nil
            self.maxQueuedMessages = nil
            self.extraConfiguration = []
            self.startTimeout = .seconds(10)
            self.stopTimeout = .seconds(10)
            self.executablePath = nil
        }

        /// Whether anonymous clients are allowed once ``users`` is taken into account.
        public var effectiveAllowAnonymous: Bool {
            users.isEmpty && allowAnonymous
        }
    }

    /// Paths of the certificates and keys generated for a broker with ``Configuration/tls`` enabled.
    ///
    /// All files are PEM encoded and readable by the owner only. They exist once the first
    /// ``MosquittoBroker/start()`` has returned.
    public struct TLSFiles: Sendable, Hashable {
        /// The test CA certificate. Pass it to clients as their trusted CA (`--cafile`).
        public var caFile: String
        /// The private key of the test CA, for signing further certificates in tests.
        public var caKey: String
        /// The broker's certificate: `CN=localhost`, subject alternative names `DNS:localhost` and
        /// `IP:127.0.0.1`, signed by ``caFile``.
        public var serverCertificate: String
        /// The private key of ``serverCertificate``.
        public var serverKey: String
        /// A client certificate (`CN=mosquitto-broker-test-client`) signed by ``caFile``.
        public var clientCertificate: String
        /// The private key of ``clientCertificate``.
        public var clientKey: String
        /// The certificate of an unrelated CA that signed nothing the broker uses. Clients that
        /// trust only this CA must fail to connect.
        public var wrongCAFile: String

        /// Creates a set of paths.
        ///
        /// - Parameters:
        ///   - caFile: The CA certificate.
        ///   - caKey: The CA private key.
        ///   - serverCertificate: The server certificate.
        ///   - serverKey: The server private key.
        ///   - clientCertificate: The client certificate.
        ///   - clientKey: The client private key.
        ///   - wrongCAFile: The certificate of an unrelated CA.
        public init(
            caFile: String,
            caKey: String,
            serverCertificate: String,
            serverKey: String,
            clientCertificate: String,
            clientKey: String,
            wrongCAFile: String
        ) {
            self.caFile = caFile
            self.caKey = caKey
            self.serverCertificate = serverCertificate
            self.serverKey = serverKey
            self.clientCertificate = clientCertificate
            self.clientKey = clientKey
            self.wrongCAFile = wrongCAFile
        }

        init(certificateDirectory directory: String) {
            self.init(
                caFile: directory + "/ca.crt",
                caKey: directory + "/ca.key",
                serverCertificate: directory + "/server.crt",
                serverKey: directory + "/server.key",
                clientCertificate: directory + "/client.crt",
                clientKey: directory + "/client.key",
                wrongCAFile: directory + "/wrong-ca.crt"
            )
        }
    }
}
