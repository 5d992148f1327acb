import CMosquitto
import CMosquittoIO
internal import MQTTWebSocket
import MosquittoPOSIX
import DequeModule
import Dispatch
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Logging
import Synchronization

/// The one place where libmosquitto meets Swift.
///
/// Invariants, referred to by name (read these before changing anything here; the state itself lives in the
/// machines of `StateMachines/`, which this class runs under `state` and whose actions it performs after unlocking):
/// - **One handle, destroyed once.** `mosq` (a ``MosquittoHandle``, the only holder of the C pointer and the one file
///    with the engine's `mosquitto_*` calls) is created in `init` and destroyed exactly once (`teardown`, or `shutdown` when no thread started): on the network thread after it
///    left its loop, or on the caller's thread when the network thread never started. Before destroying,
///    `handleClosed` is set and every other thread's C call has left the gate (`activeCalls == 0`).
/// - **The gate.** Every libmosquitto call made from a thread other than the network thread is bracketed by
///    `enterGate()`/`leaveGate()`. Callbacks run on the network thread and call C without the gate.
/// - **No lock across C.** `state` is never locked across a call into libmosquitto, a continuation resume, a buffer push or a
///    semaphore wait. Work is decided under the lock and carried out after it.
/// - **The single entry from C.** The C callbacks are the file-scope `@convention(c)` functions at the bottom; each copies what it needs out
///    of C memory before returning. `userdata` is `Unmanaged.passUnretained(self)`: valid because callbacks only
///    run inside `mosquitto_*` calls made by the network thread (which holds a strong reference to the core) or,
///    for `on_log`, inside gated calls made by a thread that holds a reference.
/// - **Nothing re-entrant from callbacks.** No callback setter, `loop_stop` or `destroy` is ever called from a callback. The client never uses
///    `mosquitto_loop_start`; it owns its network thread and its reconnect loop.
/// - **Executor jobs.** Tasks that prefer ``executor`` run on the network thread between loop passes (and, while a subscription
///    buffer is full, from inside `on_message`); they call libmosquitto like any other thread.
/// - **Our own poll.** The network thread never calls `mosquitto_loop`, whose `pselect` cannot watch a descriptor numbered 1024 or
///    more: it polls the socket and the executor's wake pipe itself (``pollPass(wakeFD:)``). libmosquitto only
///    pokes its internal socket pair, which nothing watches, so every C call that queues a packet from another
///    thread is followed by `executor.wakeIfSleeping()` (in `leaveGate` and `publish`).
/// - **Batched socket I/O.** `io` (batched socket I/O, `Sources/CMosquittoIO`) is bound to the network thread for its whole life and used
///    only there: libmosquitto's reads and writes of the connection go through its buffers once CONNACK arrived
///    (plain TCP and Unix sockets; not TLS). The loop flushes the output buffer after every pass's reads, jobs and
///    writes, polls for POLLOUT while output is buffered, and does not sleep while input is buffered.
final class ClientCore: @unchecked Sendable {
    /// The libmosquitto handle (see "One handle, destroyed once").
    let mosq: MosquittoHandle
    let config: MQTTConfiguration
    let logger: Logger
    let state: LockedValue<CoreState>
    /// Wakes the network thread from a reconnect back-off sleep.
    let wakeup = DispatchSemaphore(value: 0)
    let isV5: Bool
    let responseTopic: String
    /// Streams with messages queued for a consumer that has not been woken yet. Network thread only:
    /// filled by `handleMessage` (in callbacks) and flushed by `flushWakes()` after each loop pass.
    var pendingWakes: [MessageBuffer] = []
    /// Suppresses libmosquitto 2.0.11's duplicate QoS 2 deliveries after a session resumes. Network thread only.
    var qos2Deduplicator = QoS2Deduplicator()
    /// True between CONNACK and the end of the connection: the socket is connected, so reading it without a
    /// readiness check is safe. Network thread only (set and cleared in the callbacks).
    var sessionUp = false
    /// The last received topic (see `receivedTopic(_:)`). Network thread only.
    var lastTopic = ""
    /// Runs tasks on the network thread (see ``MQTTClient/executor``).
    let executor = NetworkExecutor()
    /// `pthread_self()` of the network thread while it runs (0 before and after), for ``assertOnNetworkThread()``.
    let networkThread = Atomic<UInt>(0)
    /// Set once shutdown is requested, before the network thread is woken: a loop pass that is about to sleep
    /// reads it after declaring the sleep (the executor's sleep protocol), so it does not sleep through the wake.
    let closingHint = Atomic<Bool>(false)
    /// When ``pollPass(wakeFD:)`` next calls `mosquitto_loop_misc` (keepalive). Network thread only.
    var nextHousekeeping = ContinuousClock.now
    /// The most packets read in one pass (see ``drainReadable()``).
    static let readBatch = 256
    /// The WebSocket transport (nil for plain TCP): each connection attempt opens a tunnel with it.
    let webSocket: WebSocketTransport?
    /// Cancelled by shutdown: a WebSocket upgrade the network thread waits for ends at once, not at its timeout.
    let upgradeCancellation = WebSocketUpgradeCancellation()
    /// Buffers for libmosquitto's socket reads and writes (see "Batched socket I/O" above); nil when batching is off or
    /// unavailable.
    let io: OpaquePointer?

    init(configuration: MQTTConfiguration) throws(MQTTError) {
        try configuration.validate()
        MosquittoLibrary.ensureInitialized()
        self.config = configuration
        self.logger = configuration.logger
        self.isV5 = configuration.protocolVersion == .v5
        self.state = LockedValue(CoreState(lifecycle: ConnectionStateMachine(policy: configuration.reconnect, endpoints: configuration.endpoints,
                                                                                  maximumRedirects: configuration.followsRedirects ? configuration.maximumRedirects : 0),
                                           queueLimit: configuration.maximumQueuedMessages))
        let token = (0..<12).map { _ in String(UInt8.random(in: 0...35), radix: 36) }.joined()
        self.responseTopic = "\(configuration.responseTopicPrefix)/\(token)"
        let clean: Bool
        if case .persistent = configuration.session { clean = false } else { clean = true }
        guard let handle = MosquittoHandle.create(clientID: configuration.clientID, cleanSession: clean) else {
            throw MQTTError(.invalidArgument, "Could not create the MQTT client: \(String(cString: strerror(errno))).")
        }
        self.mosq = handle
        self.webSocket = WebSocketTransport(configuration)
        self.io = configuration.batchesSocketIO && SocketBatching.isAvailable(logger: configuration.logger) ? mosq_io_create() : nil
        // On failure the object is fully initialised, so deinit runs and destroys the handle.
        try configureHandle()
        guard executor.enable() else {
            throw MQTTError(.system, "Could not create the MQTT client's wake-up pipe: \(String(cString: strerror(errno))). The process may have too many open files: close some, or raise the limit (ulimit -n).")
        }
        handle.setUserData(Unmanaged.passUnretained(self).toOpaque())
        installCallbacks()
    }

    deinit {
        // Reached only when no network thread holds the core: the handle is either destroyed or idle.
        let needsDestroy = state.withLock { s -> Bool in
            if s.handleDestroyed { return false }
            s.handleDestroyed = true
            return true
        }
        if needsDestroy { mosq.destroy() }
        if let io { mosq_io_destroy(io) }
    }

    // MARK: Configuration of the handle (before any thread exists)

    private func configureHandle() throws(MQTTError) {
        func check(_ rc: Int32, _ what: String) throws(MQTTError) {
            if rc != MOSQ_ERR_SUCCESS.rawValue { throw MQTTError.fromLibrary(rc, context: what) }
        }
        let level: Int32
        switch config.protocolVersion {
        case .v3_1: level = MQTT_PROTOCOL_V31
        case .v3_1_1: level = MQTT_PROTOCOL_V311
        case .v5: level = MQTT_PROTOCOL_V5
        }
        try check(mosq.setOption(MOSQ_OPT_PROTOCOL_VERSION, level), "Setting the protocol version")
        try check(mosq.setThreaded(true), "Setting threaded mode")
        let inflight = config.maximumInflightMessages
        try check(mosq.setOption(MOSQ_OPT_SEND_MAXIMUM, Int32(clamping: inflight)), "Setting the in-flight window")
        // libmosquitto's own receive quota (20 by default) counts a QoS 2 message until PUBREL, while mosquitto
        // brokers stop counting it at PUBREC; with both QoS in flight the broker overruns the quota and
        // libmosquitto drops the connection with a protocol error. Advertise a quota the broker can honour.
        if isV5 {
            try check(mosq.setOption(MOSQ_OPT_RECEIVE_MAXIMUM, Int32(config.receiveMaximum)), "Setting the receive maximum")
        }
        if config.tcpNoDelay {
            try check(mosq.setOption(MOSQ_OPT_TCP_NODELAY, 1), "Setting TCP_NODELAY")
        }
        if let creds = config.credentials {
            try check(mosq.setCredentials(username: creds.username, password: creds.password), "Setting the user name and password")
        }
        if let will = config.will {
            let m = will.message
            var props = isV5 ? try CPropertyList.publish(m.properties, willDelay: will.delayInterval) : CPropertyList()
            let rc: Int32 = m.payload.withUnsafeBytes { buf in
                mosq.setWill(topic: m.topic, payload: buf, qos: Int32(m.qos.rawValue), retain: m.retain, properties: props.head, v5: isV5)
            }
            // will_set_v5 takes ownership of the list on success only.
            if rc != MOSQ_ERR_SUCCESS.rawValue { props.free() }
            try check(rc, "Setting the will")
        }
        // Over WebSockets, TLS (wss) is the tunnel's: libmosquitto speaks plain MQTT to its Unix socket.
        if let tls = config.tls, webSocket == nil {
            if let identity = tls.pskIdentity {
                try check(mosq.setTLSPSK(hexKey: tls.pskHexKey ?? "", identity: identity, ciphers: tls.ciphers), "Setting the TLS pre-shared key")
            } else {
                var caDir = tls.caDirectory
                if tls.useSystemCertificates {
                    // Work around libmosquitto 2.0.11 #2288: OS certificates alone break reconnects.
                    try check(mosq.setOption(MOSQ_OPT_TLS_USE_OS_CERTS, 1), "Enabling the system CA store")
                    if caDir == nil && tls.caFile == nil { caDir = "/etc/ssl/certs" }
                }
                if tls.caFile == nil && caDir == nil {
                    throw MQTTError(.tls, "TLS needs trusted CA certificates: set TLS.caFile, TLS.caDirectory or TLS.useSystemCertificates.")
                }
                let keyPath = tls.keyForm == .engine ? nil : tls.keyFile  // an engine key is named, not read from a file
                for (path, what) in [(tls.caFile, "CA file"), (tls.certificateFile, "certificate file"), (keyPath, "key file")] {
                    if let path, access(path, R_OK) != 0 {
                        throw MQTTError(.tls, "Cannot read the TLS \(what) '\(path)': check that it exists and is readable.")
                    }
                }
                if (tls.certificateFile == nil) != (tls.keyFile == nil) {
                    throw MQTTError(.tls, "Mutual TLS needs both a client certificate (TLS.certificateFile) and its private key (TLS.keyFile).")
                }
                let rc = mosq.setTLS(caFile: tls.caFile, caDirectory: caDir, certificateFile: tls.certificateFile, keyFile: tls.keyFile)
                if rc != MOSQ_ERR_SUCCESS.rawValue {
                    throw MQTTError(.tls, "libmosquitto rejected the TLS files (\(MQTTError.libraryText(rc))): check the CA, certificate and key paths and that the key matches the certificate.")
                }
                try check(mosq.setTLSOptions(verifyPeer: true, version: tls.version, ciphers: tls.ciphers), "Setting TLS options (version must be tlsv1.3, tlsv1.2 or tlsv1.1)")
                if let engine = tls.engine, mosq.setOption(MOSQ_OPT_TLS_ENGINE, engine) != MOSQ_ERR_SUCCESS.rawValue {
                    throw MQTTError(.tls, "Problem setting TLS engine, is \(engine) a valid engine?")
                }
                if tls.keyForm == .engine, mosq.setOption(MOSQ_OPT_TLS_KEYFORM, "engine") != MOSQ_ERR_SUCCESS.rawValue {
                    throw MQTTError(.tls, "Problem setting key form, it must be one of 'pem' or 'engine'.")
                }
                if let sha = tls.engineKeyPasswordSHA1,
                   mosq.setOption(MOSQ_OPT_TLS_ENGINE_KPASS_SHA1, sha) != MOSQ_ERR_SUCCESS.rawValue {
                    throw MQTTError(.tls, "Problem setting TLS engine key pass sha, is it a 40 character hex string?")
                }
            }
            if tls.insecure {
                logger.warning("TLS host name verification is OFF (insecure): anyone can impersonate the broker. Use only for testing.")
                try check(mosq.setTLSInsecure(true), "Disabling host name verification")
            }
            if let alpn = tls.alpn {
                try check(mosq.setOption(MOSQ_OPT_TLS_ALPN, alpn), "Setting ALPN")
            }
        }
        if webSocket != nil, config.tls?.insecure == true {
            logger.warning("TLS host name verification is OFF (insecure): anyone can impersonate the broker. Use only for testing.")
        }
        if let proxy = config.socks5Proxy {
            try check(mosq.setSOCKS5(host: proxy.host, port: Int32(proxy.port), username: proxy.username, password: proxy.password), "Setting the SOCKS5 proxy")
        }
        if let bind = config.bindAddress {
            try check(mosq.setOption(MOSQ_OPT_BIND_ADDRESS, bind), "Setting the bind address")
        }
    }

    /// Debug builds stop here when network-thread-only code (the C callbacks, the poll loop and what they call)
    /// runs on another thread; release builds compile it away.
    @inline(__always)
    func assertOnNetworkThread(_ function: StaticString = #function) {
        assert(networkThread.load(ordering: .acquiring) == UInt(bitPattern: Int(bitPattern: pthread_self())),
               "\(function) must run on the client's network thread")
    }

    // MARK: Gate

    /// Registers a C call from a non-network thread. Returns false when the handle is closed.
    func enterGate() -> Bool {
        state.withLock { s in
            if s.handleClosed { return false }
            s.activeCalls += 1
            return true
        }
    }

    func leaveGate() {
        state.withLock { $0.activeCalls -= 1 }
        // A packet queued from this thread must not wait for the poll loop's timeout.
        executor.wakeIfSleeping()
    }

    /// Runs `body` with the handle if it is still open; returns nil otherwise.
    func withHandle<R>(_ body: (MosquittoHandle) throws(MQTTError) -> R) throws(MQTTError) -> R? {
        guard enterGate() else { return nil }
        defer { leaveGate() }
        return try body(mosq)
    }

    // MARK: Network thread

    /// Starts the network thread (``ConnectionStateMachine/ConnectAction/startNetworkThread`` says when: once).
    func startNetworkThread() {
        let rc = startDetachedThread { [self] in self.networkMain() }
        if rc != 0 {
            // No thread to own the handle: end the client here, as the network thread would have.
            let reason = String(cString: strerror(rc))
            teardown(error: MQTTError(.system, "Could not start the MQTT network thread: \(reason). The process is out of threads or memory; close other clients or raise the limit (ulimit -u)."))
        }
    }

    /// Connects libmosquitto (blocking): to `endpoint`, or to `tunnelSocket`, the Unix socket of this attempt's
    /// WebSocket tunnel.
    private func connectOnce(to endpoint: MQTTConfiguration.Endpoint, tunnelSocket: String?) -> Int32 {
        var host: String
        var port: Int32
        switch endpoint {
        case .tcp(let h, let p): host = h; port = Int32(p)
        case .unixSocket(let path): host = path; port = 0
        }
        if let tunnelSocket { host = tunnelSocket; port = 0 }
        let keepalive = Int32(config.keepAlive)
        var props = CPropertyList()
        defer { props.free() }
        if isV5 {
            switch config.session {
            case .persistent(let expiry), .cleanStart(let expiry):
                if expiry > 0 { try? props.add(int32: MQTT_PROP_SESSION_EXPIRY_INTERVAL, expiry) }
            case .clean: break
            }
            let cp = config.connectProperties
            if let v = cp.maximumPacketSize { try? props.add(int32: MQTT_PROP_MAXIMUM_PACKET_SIZE, v) }
            if let v = cp.topicAliasMaximum { try? props.add(int16: MQTT_PROP_TOPIC_ALIAS_MAXIMUM, v) }
            if let v = cp.requestProblemInformation { try? props.add(byte: MQTT_PROP_REQUEST_PROBLEM_INFORMATION, v ? 1 : 0) }
            if let v = cp.requestResponseInformation { try? props.add(byte: MQTT_PROP_REQUEST_RESPONSE_INFORMATION, v ? 1 : 0) }
            if let v = cp.authenticationMethod { try? props.add(string: MQTT_PROP_AUTHENTICATION_METHOD, v) }
            if let v = cp.authenticationData { try? props.add(binary: MQTT_PROP_AUTHENTICATION_DATA, v) }
            for u in config.connectUserProperties { try? props.add(userProperty: u) }
        }
        return mosq.connect(host: host, port: port, keepalive: keepalive, bindAddress: config.bindAddress, properties: props.head, v5: isV5)
    }

    private func networkMain() {
        cmosquitto_set_thread_name("mosquitto-net")
        if let io { mosq_io_bind_thread(io) }
        defer { mosq_io_bind_thread(nil) }
        let tid = cmosquitto_thread_id()
        state.withLock { $0.networkThreadID = tid }
        networkThread.store(UInt(bitPattern: Int(bitPattern: pthread_self())), ordering: .releasing)
        defer { networkThread.store(0, ordering: .releasing) }
        var finalError: MQTTError?
        // The WebSocket tunnel of the current attempt (WebSockets transport only): opened before libmosquitto
        // connects, closed when the attempt ends, so each attempt makes a fresh upgrade.
        var tunnel: WebSocketTunnel?
        defer { tunnel?.close() }
        outer: while true {
            guard case .connect(let endpoint) = state.withLock({ $0.lifecycle.attemptStarting() }) else { break }
            sessionUp = false
            var loopError: MQTTError?
            var rc = MOSQ_ERR_SUCCESS.rawValue
            if let webSocket {
                do {
                    tunnel = try webSocket.open(to: endpoint, logger: logger, cancellation: upgradeCancellation)
                } catch {
                    loopError = error
                    rc = MOSQ_ERR_CONN_REFUSED.rawValue
                }
            }
            if loopError == nil {
                rc = connectOnce(to: endpoint, tunnelSocket: tunnel?.socketPath)
                // libmosquitto 2.0.11 opens its socket without close-on-exec: a program this process starts would
                // keep a copy, and the connection would outlive our close (the broker sees no end, a tunnel no EOF).
                if mosq.socket >= 0 { _ = fcntl(mosq.socket, F_SETFD, FD_CLOEXEC) }
                if let io { mosq_io_set_connection(io, mosq.socket) }
            }
            if loopError != nil {
                // The WebSocket upgrade failed: libmosquitto was not involved.
            } else if rc == MOSQ_ERR_SUCCESS.rawValue {
                while true {
                    // Tasks that prefer the executor run here only once the session is up (see NetworkExecutor,
                    // "jobs run only on a live session"); until then the pass only drives the handshake.
                    let wakeFD = sessionUp ? executor.beginPolling() : executor.wakeDescriptor
                    guard let wakeFD else { preconditionFailure("the executor's pipe is made in init") }
                    let lrc = pollPass(wakeFD: wakeFD)
                    if state.withLock({ $0.lifecycle.isClosing }) {
                        executor.endPolling()
                        finishGracefully()
                        flushWakes()
                        break outer
                    }
                    if lrc != MOSQ_ERR_SUCCESS.rawValue {
                        loopError = MQTTError.fromLibrary(lrc, context: "Connection to \(endpoint)")
                        if !sessionUp, isV5, lrc == MOSQ_ERR_CONN_LOST.rawValue, let e = loopError {
                            // Closed with no CONNACK at all: what a broker does with a protocol version it does not
                            // speak (RabbitMQ 3.x's MQTT plugin, mosquitto 1.x), rather than refusing it.
                            loopError = MQTTError(e.code, e.message + " The broker closed it before answering CONNECT, as a broker that does not speak MQTT 5 does (RabbitMQ 3.x, mosquitto 1.x): try protocolVersion .v3_1_1 (mqtt-pub: -V mqttv311).")
                        }
                        break
                    }
                }
                executor.endPolling()
            } else {
                loopError = MQTTError.fromLibrary(rc, context: "Connecting to \(endpoint)")
            }
            tunnel?.close()
            tunnel = nil
            // The connection is over (or never came up): the lifecycle decides what comes next.
            let (next, shortConnections) = state.withLock { ($0.lifecycle.attemptEnded(loopError: loopError), $0.lifecycle.shortConnections) }
            switch next {
            case .stop:
                break outer
            case .giveUp(let error, let reportDisconnected):
                handleConnectionEnded(error)
                // Every ended attempt is reported, also those libmosquitto's on_disconnect does not cover
                // (refused TCP, DNS failures).
                if reportDisconnected { emit(.disconnected(error)) }
                finalError = error
                break outer
            case .reconnect(let error, let delay, let attempt, let reportDisconnected):
                handleConnectionEnded(error)
                if reportDisconnected { emit(.disconnected(error)) }
                let next = state.withLock { $0.lifecycle.currentEndpoint }
                let target = next == endpoint ? "" : " to \(next)"
                let who = config.clientID.map { " (another client with the client ID '\($0)'?)" } ?? ""
                let flapping = shortConnections > 1 ? "; the broker accepted and then ended the last \(shortConnections) connections within \(config.reconnect.backoffResetAfter) each\(who), so the delay grows" : ""
                logger.notice("MQTT connection to \(endpoint) unavailable (\(error.message)); reconnecting\(target) in \(delay) (attempt \(attempt))\(flapping)")
                emit(.reconnecting(after: delay, attempt: attempt))
                let ns = Int(max(0, delay / .nanoseconds(1)))
                _ = wakeup.wait(timeout: .now() + .nanoseconds(ns))
            case .redirect(let error, let target, let reportDisconnected):
                handleConnectionEnded(error)
                if reportDisconnected { emit(.disconnected(error)) }
                logger.notice("MQTT broker \(endpoint) redirected this client (\(error.message)); connecting to \(target)")
            }
        }
        // After a graceful end libmosquitto has written DISCONNECT and closed its socket: let the tunnel carry it
        // to the broker before the joiners learn that the client ended (else the broker may publish the will).
        tunnel?.finish()
        tunnel = nil
        teardown(error: finalError)
    }

    /// Reads the packets already waiting on the socket, up to ``readBatch``.
    ///
    /// `mosquitto_loop_read` reads only as many packets as libmosquitto has QoS 1/2 messages queued (one at QoS 0):
    /// a stream of QoS 0 messages would cost a `poll` and a consumer wake-up each. Reading on while data is there
    /// (a read that finds none ends with `EAGAIN`) lets one wake-up deliver a burst. Only while the session is up
    /// (before CONNACK, reads drive the TLS handshake, where `EAGAIN` says nothing about the socket).
    private func drainReadable() -> Int32 {
        var n = 0
        while sessionUp && n < Self.readBatch && mosq.socket != -1 {
            errno = 0
            let rc = mosq.loopRead()
            if rc != MOSQ_ERR_SUCCESS.rawValue { return rc }
            if errno == EAGAIN || errno == EWOULDBLOCK { break }
            // Something to send (a PUBACK or PUBREC for what was just read, or the next queued PUBLISH that an
            // acknowledgement released): write it now, before waking any consumer, so that the broker's in-flight
            // window keeps moving, and read on. With batching this fills the output buffer, which `writeQueued`
            // sends right after the drain, still before any consumer is woken. A socket that takes no more waits
            // for the next poll's writability check.
            if mosq.wantsWrite {
                let wrc = mosq.loopWrite()
                if wrc != MOSQ_ERR_SUCCESS.rawValue { return wrc }
            }
            n += 1
        }
        return MOSQ_ERR_SUCCESS.rawValue
    }

    /// One pass of the connected loop, in place of `mosquitto_loop`: `poll` on the socket and the executor's wake
    /// pipe (no `FD_SETSIZE` limit), read what arrived, write what is queued, wake the consumers, run the tasks'
    /// jobs queued on this thread, and write what they queued.
    ///
    /// Before CONNACK a socket event gets one `mosquitto_loop_read`, readable or writable: in libmosquitto 2.0.11
    /// the TLS handshake advances from there (`mosquitto_loop_write` returns early until it is done), and so do
    /// the SOCKS5 exchange and the CONNACK itself.
    ///
    /// libmosquitto writes a byte to its internal socket pair for every packet it queues, which nothing reads here.
    /// With batching ("Batched socket I/O" above) the byte is skipped; without it the pair fills and the writes fail with `EAGAIN`,
    /// as libmosquitto expects of a full pair, until the next `connect` replaces the pair.
    private func pollPass(wakeFD: Int32) -> Int32 {
        assertOnNetworkThread()
        let fd = mosq.socket
        if fd < 0 { return MOSQ_ERR_NO_CONN.rawValue }
        let now = ContinuousClock.now
        if now >= nextHousekeeping {
            // Keepalive: PINGREQ when due (written in this pass: it is queued before POLLOUT is decided), and the
            // end of a connection whose PINGRESP never came.
            nextHousekeeping = now + .seconds(1)
            let rc = mosq.loopMisc()
            if rc != MOSQ_ERR_SUCCESS.rawValue { return rc }
        }
        // Order matters (see NetworkExecutor, "Sleep first"): declare the sleep, then look for output.
        let bufferedInput = io.map { mosq_io_pending_input($0) > 0 } ?? false
        let declaredSleep = executor.prepareToSleep()
        let mayWait = declaredSleep && !closingHint.load(ordering: .sequentiallyConsistent)
        var socketEvents = Int16(POLLIN)
        if hasPendingOutput { socketEvents |= Int16(POLLOUT) }
        var fds = (pollfd(fd: fd, events: socketEvents, revents: 0), pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0))
        let n = withUnsafeMutableBytes(of: &fds) { raw in
            poll(raw.baseAddress!.assumingMemoryBound(to: pollfd.self), 2, mayWait && !bufferedInput ? config.pollIdleTimeoutMilliseconds : 0)
        }
        let pollErrno = errno
        executor.awake(wasSleeping: declaredSleep, pipeReadable: n > 0 && fds.1.revents != 0, readFD: wakeFD)
        if n < 0 {
            return pollErrno == EINTR ? MOSQ_ERR_SUCCESS.rawValue : MOSQ_ERR_ERRNO.rawValue
        }
        var rc = MOSQ_ERR_SUCCESS.rawValue
        if fds.0.revents != 0 || bufferedInput {
            rc = sessionUp ? drainReadable() : mosq.loopRead()
        }
        if rc == MOSQ_ERR_SUCCESS.rawValue {
            rc = writeQueued()
        }
        flushWakes()
        if executor.runJobs() && rc == MOSQ_ERR_SUCCESS.rawValue {
            // What the jobs published goes out now, not after another poll.
            rc = writeQueued()
        }
        return rc
    }

    /// What the batching saved so far (tests): nil when batching is off.
    var socketIOCounters: (wakeupsSkipped: UInt64, socketReads: UInt64, socketSends: UInt64)? {
        guard let io else { return nil }
        let c = mosq_io_get_counters(io)
        return (UInt64(c.wakeups_skipped), UInt64(c.socket_reads), UInt64(c.socket_sends))
    }

    /// True when output waits for the socket: packets queued in libmosquitto, or bytes in the batching's buffer
    /// ("Batched socket I/O" above).
    private var hasPendingOutput: Bool {
        mosq.wantsWrite || (io.map { mosq_io_pending_output($0) > 0 } ?? false)
    }

    /// Hands libmosquitto's queued packets to the socket: with batching, into the output buffer and then to the
    /// socket in one `send`.
    private func writeQueued() -> Int32 {
        if mosq.wantsWrite {
            let rc = mosq.loopWrite()
            if rc != MOSQ_ERR_SUCCESS.rawValue { return rc }
        }
        if let io, mosq_io_flush(io) < 0 {
            return MOSQ_ERR_CONN_LOST.rawValue
        }
        return MOSQ_ERR_SUCCESS.rawValue
    }

    /// Wakes the consumers of the messages the last loop pass delivered (one wake per stream per pass).
    private func flushWakes() {
        guard !pendingWakes.isEmpty else { return }
        let wakes = pendingWakes
        pendingWakes.removeAll(keepingCapacity: true)
        for b in wakes { b.wakeConsumer() }
    }

    /// After a shutdown request: send DISCONNECT and let libmosquitto write it before closing.
    private func finishGracefully() {
        assertOnNetworkThread()
        let (reason, properties) = state.withLock { ($0.lifecycle.disconnectReason, $0.lifecycle.disconnectProperties) }
        // libmosquitto closes the socket as soon as DISCONNECT is written, with batching into the output buffer:
        // let that close wait for the buffer to leave.
        if let io { mosq_io_set_linger(io, 2000) }
        _ = sendDisconnect(mosq, reason: reason, properties: properties)
        // The first pass runs whatever the clock says: a thread descheduled for 2 s right here (possible on a loaded
        // machine) must still write DISCONNECT before the socket closes.
        let deadline = ContinuousClock.now + .seconds(2)
        var firstPass = true
        while mosq.socket != -1 && (firstPass || ContinuousClock.now < deadline) {
            firstPass = false
            // Write before reading: a read error (a broker reply such as an UNSUBACK arriving as the connection
            // winds down) would end the loop without writing the queued DISCONNECT. libmosquitto closes the socket
            // once DISCONNECT is written.
            if hasPendingOutput {
                if writeQueued() != MOSQ_ERR_SUCCESS.rawValue || mosq.socket == -1 { break }
                if !hasPendingOutput { continue }
            }
            // The socket took only part of what is queued (or the handshake is not over): wait until it takes
            // more or the broker says something.
            var events = Int16(POLLIN)
            if hasPendingOutput { events |= Int16(POLLOUT) }
            var socket = pollfd(fd: mosq.socket, events: events, revents: 0)
            let n = poll(&socket, 1, 100)
            if n < 0 && errno != EINTR { break }
            if n > 0 && socket.revents & Int16(POLLIN | POLLERR | POLLHUP) != 0,
               mosq.loopRead() != MOSQ_ERR_SUCCESS.rawValue {
                break
            }
        }
    }

    /// Fails everything, destroys the handle and wakes the joiners. Runs on the network thread at its end.
    private func teardown(error: MQTTError?) {
        flushWakes()
        executor.endPolling()
        // Close the gate and wait for other threads' C calls to leave it.
        state.withLock { $0.handleClosed = true }
        while state.withLock({ $0.activeCalls }) > 0 { usleep(1000) }
        let destroy = state.withLock { s -> Bool in
            if s.handleDestroyed { return false }
            s.handleDestroyed = true
            return true
        }
        if destroy { mosq.destroy() }
        finishEverything(error: error)
    }

    /// Resolves every waiter and ends every stream. Safe to call more than once.
    func finishEverything(error: MQTTError?) {
        let failure = error.map { e in
            MQTTError(e.code == .gaveUp ? .gaveUp : e.code, e.message, reasonCode: e.reasonCode, systemErrno: e.systemErrno, httpStatus: e.httpStatus)
        }
        let shutdownError = failure ?? MQTTError(.shutDown, "The MQTT client was shut down.")
        let work = state.withLock { s -> CoreState.Teardown in s.takeEverything(error: failure) }
        for c in work.connectWaiters { c.resume(throwing: shutdownError) }
        for c in work.slotWaiters { c.resume(throwing: shutdownError) }
        for (mid, p) in work.pending {
            p.fail(MQTTError(shutdownError.code, "Message \(mid) was not acknowledged by the broker before the client ended: \(shutdownError.message)", reasonCode: shutdownError.reasonCode))
        }
        for w in work.subacks { w.userWaiter?.resume(throwing: shutdownError) }
        for c in work.unsubacks { c.resume(throwing: shutdownError) }
        for w in work.requests { w.fail(shutdownError) }
        for b in work.buffers { b.finish(error: failure) }
        for c in work.drainWaiters { c.resume() }
        for e in work.events {
            if let failure { e.yield(.gaveUp(failure)) }
            e.yield(.shutDown)
            e.finish()
        }
        withExtendedLifetime(work.responseStream) {}
        // Only now may shutdown() return: its caller reads what the callbacks above recorded.
        let joiners = work.isFirst ? work.joinWaiters + state.withLock { $0.endedAfterFinishing() } : work.joinWaiters
        for j in joiners { j.resume() }
    }

    /// Requests shutdown; returns what the lifecycle says to do (drain the running network thread, finish here
    /// when there is none, or join a shutdown under way).
    func requestShutdown(disconnectReason: UInt8 = 0, properties: DisconnectProperties = .init()) -> ConnectionStateMachine<CheckedContinuation<ConnAck, any Error>>.ShutdownAction {
        let action = state.withLock { $0.lifecycle.shutdownRequested(reason: disconnectReason, properties: properties) }
        if action == .drain {
            // Only finishGracefully (network thread) queues DISCONNECT, after it set the batching's linger. Queued
            // from here, a loop pass could write it first: libmosquitto closes the socket as soon as DISCONNECT is
            // written, and that close flushed the output buffer with no linger, dropping what a full socket did not
            // take (up to 64 KiB of the last messages: 19,973 of 20,000 QoS 0 messages arrived under load). It also
            // sent DISCONNECT twice. Wake the thread if it sleeps in poll or in a back-off.
            closingHint.store(true, ordering: .sequentiallyConsistent)
            executor.wakeIfSleeping()
            wakeup.signal()
            if webSocket != nil { upgradeCancellation.cancel() }
        }
        return action
    }

    /// Sends DISCONNECT with its MQTT 5 reason code and properties (both ignored on MQTT 3.x).
    func sendDisconnect(_ h: MosquittoHandle, reason: UInt8, properties: DisconnectProperties) -> Int32 {
        guard isV5 else { return h.disconnect(reason: 0, properties: nil, v5: false) }
        var props = CPropertyList()
        defer { props.free() }
        if let v = properties.sessionExpiryInterval { try? props.add(int32: MQTT_PROP_SESSION_EXPIRY_INTERVAL, v) }
        if let v = properties.reasonString { try? props.add(string: MQTT_PROP_REASON_STRING, v) }
        for u in properties.userProperties { try? props.add(userProperty: u) }
        return h.disconnect(reason: Int32(reason), properties: props.head, v5: true)
    }

    func shutdown(disconnectReason: UInt8 = 0, properties: DisconnectProperties = .init()) async {
        switch requestShutdown(disconnectReason: isV5 ? disconnectReason : 0, properties: properties) {
        case .drain, .join:
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let done = state.withLock { s -> Bool in
                    if s.ended { return true }
                    s.joinWaiters.append(c)
                    return false
                }
                if done { c.resume() }
            }
        case .finishHere:
            let destroy = state.withLock { s -> Bool in
                s.handleClosed = true
                if s.handleDestroyed { return false }
                s.handleDestroyed = true
                return true
            }
            if destroy {
                while state.withLock({ $0.activeCalls }) > 0 { usleep(1000) }
                mosq.destroy()
            }
            finishEverything(error: nil)
        }
    }

    /// Closes the TCP socket under libmosquitto, as a network failure would (tests of wills and reconnects).
    func severConnectionForTesting() {
        _ = try? withHandle { h in
            let fd = h.socket
            if fd >= 0 { _ = closeSocketForTesting(fd) }
        }
    }

    // MARK: Connecting (the facade's entry; the rules live in ConnectionStateMachine)

    /// Where the connection stands now.
    var connectionState: ConnectionState { state.withLock { $0.lifecycle.connectionState } }

    /// Connects and waits for the CONNACK (``MQTTClient/connect()``); starts the network thread on the first call.
    func connect() async throws -> ConnAck {
        let id = state.withLock { $0.nextID() }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<ConnAck, any Error>) in
                let action = state.withLock { s in
                    s.handleClosed ? .fail(s.closedError) : s.lifecycle.connect(id, waiter: c)
                }
                switch action {
                case .connected(let ack): c.resume(returning: ack)
                case .fail(let error): c.resume(throwing: error)
                case .wait: break
                case .startNetworkThread: startNetworkThread()
                }
            }
        } onCancel: {
            let c = state.withLock { $0.lifecycle.cancelConnect(id) }
            c?.resume(throwing: CancellationError())
        }
    }

    // MARK: Events

    func emit(_ event: ConnectionEvent) {
        let sinks = state.withLock { Array($0.events.values) }
        for s in sinks { s.yield(event) }
    }

    func makeEvents() -> AsyncStream<ConnectionEvent> {
        let (stream, continuation) = AsyncStream<ConnectionEvent>.makeStream(bufferingPolicy: .bufferingNewest(256))
        let id = state.withLock { s -> UInt64? in
            if s.lifecycle.isShutDown { return nil }
            let id = s.nextID()
            s.events[id] = continuation
            return id
        }
        guard let id else {
            continuation.yield(.shutDown)
            continuation.finish()
            return stream
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLock { $0.events.removeValue(forKey: id) }
        }
        return stream
    }
}

// MARK: - Batched socket I/O

/// Whether libmosquitto's reads and writes go through the clients' buffers in this process (the article
/// "libmosquitto 2.0.11 workarounds", section "Socket batching", says why and how it is pinned).
///
/// Decided once per process, when the first client that wants batching asks, in this order: the switch
/// `MOSQUITTO_SWIFT_SOCKET_BATCHING=0` (or `off`; for comparisons, and for ruling batching out when chasing a problem) turns it
/// off; a libmosquitto other than the ``testedVersions`` turns it off before anything is patched; then
/// `mosq_io_install` patches every slot or none and checks the result. When it is off, one debug line per process
/// says why.
enum SocketBatching {
    /// The values of `MOSQUITTO_SWIFT_SOCKET_BATCHING` that turn batching off, here and in the CLIs.
    static let offSettings: Set<String> = ["0", "off", "false", "no"]

    /// The libmosquitto versions whose `read`/`write`/`close` calls the redirection was tested against.
    static let testedVersions: Set<String> = ["2.0.11"]

    enum Decision: Equatable, Sendable {
        case on
        case off(reason: String)
    }

    /// True when batching is on. The first call that finds it off logs why, at debug level, with a logger labelled
    /// like a client's default one.
    static var isAvailable: Bool { isAvailable(logger: Logger(label: "mosquitto.client")) }

    /// As ``isAvailable``, logging that one line (if it is still due) with `logger`, such as the asking client's.
    static func isAvailable(logger: @autoclosure () -> Logger) -> Bool {
        announce(decision, to: logger(), once: announced)
        return decision == .on
    }

    private static let decision: Decision = {
        // libmosquitto is initialised before the first call into it, whoever asks first.
        MosquittoLibrary.ensureInitialized()
        return decide(libraryVersion: MosquittoLibrary.version,
                      switchSetting: getenv("MOSQUITTO_SWIFT_SOCKET_BATCHING").map { String(cString: $0) },
                      install: { mosq_io_install() == 0 ? nil : mosq_io_install_failure().map { String(cString: $0) } ?? "unknown" })
    }()

    private static let announced = LockedValue(false)

    /// The decision from its inputs. `install` patches libmosquitto and returns nil, or why it could not; it is
    /// called only when the switch and the version allow. The process's decision passes the real inputs; tests
    /// pass another version or a failing installation here, and see whether `install` was called at all.
    static func decide(libraryVersion: String, switchSetting: String?, install: () -> String?) -> Decision {
        if let setting = switchSetting, SocketBatching.offSettings.contains(setting) {
            return .off(reason: "Socket batching is off: MOSQUITTO_SWIFT_SOCKET_BATCHING=\(setting). The client uses libmosquitto's own socket I/O.")
        }
        guard testedVersions.contains(libraryVersion) else {
            let tested = testedVersions.sorted().joined(separator: ", ")
            return .off(reason: "Socket batching is off: it was tested with libmosquitto \(tested) only, and this is \(libraryVersion). The client uses libmosquitto's own socket I/O.")
        }
        if let failure = install() {
            return .off(reason: "Socket batching is off: \(failure). The client uses libmosquitto's own socket I/O.")
        }
        return .on
    }

    /// Logs why batching is off, the first time only: `flag` remembers that the line was written.
    static func announce(_ decision: Decision, to logger: @autoclosure () -> Logger, once flag: LockedValue<Bool>) {
        guard case .off(let reason) = decision else { return }
        let first = flag.withLock { written in
            defer { written = true }
            return !written
        }
        if first { logger().debug("\(reason)") }
    }
}
