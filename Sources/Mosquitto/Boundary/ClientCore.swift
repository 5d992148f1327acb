import CMosquitto
import DequeModule
import Foundation
import Logging
import Synchronization

/// The one place where libmosquitto meets Swift.
///
/// Invariants (read these before changing anything here):
/// 1. `mosq` is created in `init` and destroyed exactly once, by `destroyHandle()`: on the network thread after it
///    left its loop, or on the caller's thread when the network thread never started. Before destroying,
///    `handleClosed` is set and every other thread's C call has left the gate (`activeCalls == 0`).
/// 2. Every libmosquitto call made from a thread other than the network thread is bracketed by
///    `enterGate()`/`leaveGate()`. Callbacks run on the network thread and call C without the gate.
/// 3. `state` is never locked across a call into libmosquitto, a continuation resume, a buffer push or a
///    semaphore wait. Work is decided under the lock and carried out after it.
/// 4. The C callbacks are the file-scope `@convention(c)` functions at the bottom; each copies what it needs out
///    of C memory before returning. `userdata` is `Unmanaged.passUnretained(self)`: valid because callbacks only
///    run inside `mosquitto_*` calls made by the network thread (which holds a strong reference to the core) or,
///    for `on_log`, inside gated calls made by a thread that holds a reference.
/// 5. No callback setter, `loop_stop` or `destroy` is ever called from a callback. The client never uses
///    `mosquitto_loop_start`; it owns its network thread and its reconnect loop.
final class ClientCore: @unchecked Sendable {
    let mosq: OpaquePointer
    let config: MQTTConfiguration
    let logger: Logger
    let state = Mutex(CoreState())
    /// Wakes the network thread from a reconnect back-off sleep.
    let wakeup = DispatchSemaphore(value: 0)
    let isV5: Bool
    let responseTopic: String

    init(configuration: MQTTConfiguration) throws(MQTTError) {
        try configuration.validate()
        MosquittoLibrary.ensureInitialized()
        self.config = configuration
        self.logger = configuration.logger
        self.isV5 = configuration.protocolVersion == .v5
        let token = (0..<12).map { _ in String(UInt8.random(in: 0...35), radix: 36) }.joined()
        self.responseTopic = "\(configuration.responseTopicPrefix)/\(token)"
        let clean: Bool
        if case .persistent = configuration.session { clean = false } else { clean = true }
        guard let handle = mosquitto_new(configuration.clientID, clean, nil) else {
            throw MQTTError(.invalidArgument, "Could not create the MQTT client: \(String(cString: strerror(errno))).")
        }
        self.mosq = handle
        // On failure the object is fully initialised, so deinit runs and destroys the handle.
        try configureHandle()
        mosquitto_user_data_set(handle, Unmanaged.passUnretained(self).toOpaque())
        installCallbacks()
    }

    deinit {
        // Reached only when no network thread holds the core: the handle is either destroyed or idle.
        let needsDestroy = state.withLock { s -> Bool in
            if s.handleDestroyed { return false }
            s.handleDestroyed = true
            return true
        }
        if needsDestroy { mosquitto_destroy(mosq) }
    }

    // MARK: Configuration of the handle (before any thread exists)

    private func configureHandle() throws(MQTTError) {
        func check(_ rc: Int32, _ what: String) throws(MQTTError) {
            if rc != MOSQ_ERR_SUCCESS.rawValue { throw MQTTError.fromLibrary(rc, context: what) }
        }
        try check(mosquitto_int_option(mosq, MOSQ_OPT_PROTOCOL_VERSION, isV5 ? MQTT_PROTOCOL_V5 : MQTT_PROTOCOL_V311), "Setting the protocol version")
        try check(mosquitto_threaded_set(mosq, true), "Setting threaded mode")
        let inflight = config.maximumInflightMessages
        try check(mosquitto_int_option(mosq, MOSQ_OPT_SEND_MAXIMUM, Int32(clamping: inflight)), "Setting the in-flight window")
        // libmosquitto's own receive quota (20 by default) counts a QoS 2 message until PUBREL, while mosquitto
        // brokers stop counting it at PUBREC; with both QoS in flight the broker overruns the quota and
        // libmosquitto drops the connection with a protocol error. Advertise a quota the broker can honour.
        if isV5 {
            try check(mosquitto_int_option(mosq, MOSQ_OPT_RECEIVE_MAXIMUM, Int32(config.receiveMaximum)), "Setting the receive maximum")
        }
        if config.tcpNoDelay {
            try check(mosquitto_int_option(mosq, MOSQ_OPT_TCP_NODELAY, 1), "Setting TCP_NODELAY")
        }
        if let creds = config.credentials {
            try check(mosquitto_username_pw_set(mosq, creds.username, creds.password), "Setting the user name and password")
        }
        if let will = config.will {
            let m = will.message
            var props = isV5 ? try CPropertyList.publish(m.properties, willDelay: will.delayInterval) : CPropertyList()
            let rc: Int32 = m.payload.withUnsafeBytes { buf in
                if isV5 {
                    return mosquitto_will_set_v5(mosq, m.topic, Int32(buf.count), buf.baseAddress, Int32(m.qos.rawValue), m.retain, props.head)
                }
                return mosquitto_will_set(mosq, m.topic, Int32(buf.count), buf.baseAddress, Int32(m.qos.rawValue), m.retain)
            }
            // will_set_v5 takes ownership of the list on success only.
            if rc != MOSQ_ERR_SUCCESS.rawValue { props.free() }
            try check(rc, "Setting the will")
        }
        if let tls = config.tls {
            if let identity = tls.pskIdentity {
                try check(mosquitto_tls_psk_set(mosq, tls.pskHexKey ?? "", identity, tls.ciphers), "Setting the TLS pre-shared key")
            } else {
                var caDir = tls.caDirectory
                if tls.useSystemCertificates {
                    // Work around libmosquitto 2.0.11 #2288: OS certificates alone break reconnects.
                    try check(mosquitto_int_option(mosq, MOSQ_OPT_TLS_USE_OS_CERTS, 1), "Enabling the system CA store")
                    if caDir == nil && tls.caFile == nil { caDir = "/etc/ssl/certs" }
                }
                if tls.caFile == nil && caDir == nil {
                    throw MQTTError(.tls, "TLS needs trusted CA certificates: give a CA file (--cafile), a CA directory (--capath) or use the system store.")
                }
                for (path, what) in [(tls.caFile, "CA file"), (tls.certificateFile, "certificate file"), (tls.keyFile, "key file")] {
                    if let path, !FileManager.default.isReadableFile(atPath: path) {
                        throw MQTTError(.tls, "Cannot read the TLS \(what) '\(path)': check that it exists and is readable.")
                    }
                }
                if (tls.certificateFile == nil) != (tls.keyFile == nil) {
                    throw MQTTError(.tls, "Mutual TLS needs both a certificate (--cert) and its private key (--key).")
                }
                let rc = mosquitto_tls_set(mosq, tls.caFile, caDir, tls.certificateFile, tls.keyFile, nil)
                if rc != MOSQ_ERR_SUCCESS.rawValue {
                    throw MQTTError(.tls, "libmosquitto rejected the TLS files (\(MQTTError.libraryText(rc))): check the CA, certificate and key paths and that the key matches the certificate.")
                }
                try check(mosquitto_tls_opts_set(mosq, 1, tls.version, tls.ciphers), "Setting TLS options (version must be tlsv1.3, tlsv1.2 or tlsv1.1)")
            }
            if tls.insecure {
                logger.warning("TLS host name verification is OFF (insecure): anyone can impersonate the broker. Use only for testing.")
                try check(mosquitto_tls_insecure_set(mosq, true), "Disabling host name verification")
            }
            if let alpn = tls.alpn {
                try check(mosquitto_string_option(mosq, MOSQ_OPT_TLS_ALPN, alpn), "Setting ALPN")
            }
        }
        if let proxy = config.socks5Proxy {
            try check(mosquitto_socks5_set(mosq, proxy.host, Int32(proxy.port), proxy.username, proxy.password), "Setting the SOCKS5 proxy")
        }
        if let bind = config.bindAddress {
            try check(mosquitto_string_option(mosq, MOSQ_OPT_BIND_ADDRESS, bind), "Setting the bind address")
        }
    }

    private func installCallbacks() {
        mosquitto_connect_v5_callback_set(mosq, onConnectTrampoline)
        mosquitto_disconnect_v5_callback_set(mosq, onDisconnectTrampoline)
        mosquitto_publish_v5_callback_set(mosq, onPublishTrampoline)
        mosquitto_message_v5_callback_set(mosq, onMessageTrampoline)
        mosquitto_subscribe_v5_callback_set(mosq, onSubscribeTrampoline)
        mosquitto_unsubscribe_v5_callback_set(mosq, onUnsubscribeTrampoline)
        if logger.logLevel <= .debug {
            mosquitto_log_callback_set(mosq, onLogTrampoline)
        }
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
    }

    /// Runs `body` with the handle if it is still open; returns nil otherwise.
    func withHandle<R>(_ body: (OpaquePointer) throws(MQTTError) -> R) throws(MQTTError) -> R? {
        guard enterGate() else { return nil }
        defer { leaveGate() }
        return try body(mosq)
    }

    // MARK: Network thread

    /// Starts the network thread once. Returns false when it already started.
    func startNetworkThreadIfNeeded() {
        let start = state.withLock { s -> Bool in
            if s.threadStarted || s.handleClosed { return false }
            s.threadStarted = true
            return true
        }
        guard start else { return }
        let thread = Thread { [self] in self.networkMain() }
        thread.name = "mosquitto-network"
        thread.stackSize = 1 << 20
        thread.start()
    }

    private func connectOnce() -> Int32 {
        let host: String
        let port: Int32
        switch config.endpoint {
        case .tcp(let h, let p): host = h; port = Int32(p)
        case .unixSocket(let path): host = path; port = 0
        }
        let keepalive = Int32(config.keepAlive)
        if isV5 {
            var props = CPropertyList()
            defer { props.free() }
            if case .persistent(let expiry) = config.session {
                try? props.add(int32: MQTT_PROP_SESSION_EXPIRY_INTERVAL, expiry)
            }
            for u in config.connectUserProperties { try? props.add(userProperty: u) }
            return mosquitto_connect_bind_v5(mosq, host, port, keepalive, config.bindAddress, props.head)
        }
        return mosquitto_connect_bind(mosq, host, port, keepalive, config.bindAddress)
    }

    private func networkMain() {
        cmosquitto_set_thread_name("mosquitto-net")
        let tid = cmosquitto_thread_id()
        state.withLock { $0.networkThreadID = tid }
        var attempt = 0
        var finalError: MQTTError?
        outer: while true {
            if state.withLock({ $0.shutdownRequested }) { break }
            state.withLock { s in
                s.connectedThisAttempt = false
                s.lastRefusal = nil
            }
            let rc = connectOnce()
            var loopError: MQTTError?
            if rc == MOSQ_ERR_SUCCESS.rawValue {
                while true {
                    let lrc = mosquitto_loop(mosq, 1000, 1)
                    if state.withLock({ $0.shutdownRequested }) {
                        finishGracefully()
                        break outer
                    }
                    if lrc != MOSQ_ERR_SUCCESS.rawValue {
                        loopError = MQTTError.fromLibrary(lrc, context: "Connection to \(config.endpoint)")
                        break
                    }
                }
            } else {
                loopError = MQTTError.fromLibrary(rc, context: "Connecting to \(config.endpoint)")
            }
            // The connection is over (or never came up).
            let (error, wasConnected, everConnected) = state.withLock { s -> (MQTTError, Bool, Bool) in
                let e = s.lastRefusal ?? loopError ?? MQTTError(.connectionLost, "Connection to \(config.endpoint) closed.")
                s.lastRefusal = nil
                return (e, s.connectedThisAttempt, s.everConnected)
            }
            if state.withLock({ $0.shutdownRequested }) { break }
            if wasConnected { attempt = 0 }
            handleConnectionEnded(error)
            let policy = config.reconnect
            if !everConnected && !policy.retryInitialConnect {
                finalError = error
                break
            }
            if !policy.enabled {
                finalError = error
                break
            }
            if policy.giveUpOnFatalErrors && error.isFatalForReconnect {
                finalError = error
                break
            }
            attempt += 1
            if let max = policy.maximumAttempts, attempt > max {
                finalError = MQTTError(.gaveUp, "Gave up reconnecting to \(config.endpoint) after \(max) attempts. Last error: \(error.message)", reasonCode: error.reasonCode)
                break
            }
            let delay = policy.delay(forAttempt: attempt)
            logger.notice("MQTT connection to \(config.endpoint) unavailable (\(error.message)); reconnecting in \(delay) (attempt \(attempt))")
            emit(.reconnecting(after: delay, attempt: attempt))
            let ns = Int(max(0, delay / .nanoseconds(1)))
            _ = wakeup.wait(timeout: .now() + .nanoseconds(ns))
        }
        teardown(error: finalError)
    }

    /// After a shutdown request: send DISCONNECT and let libmosquitto write it before closing.
    private func finishGracefully() {
        _ = mosquitto_disconnect_v5(mosq, 0, nil)
        let deadline = ContinuousClock.now + .seconds(2)
        while mosquitto_socket(mosq) != -1 && ContinuousClock.now < deadline {
            if mosquitto_loop(mosq, 100, 1) != MOSQ_ERR_SUCCESS.rawValue { break }
        }
    }

    /// Fails everything, destroys the handle and wakes the joiners. Runs on the network thread at its end.
    private func teardown(error: MQTTError?) {
        // Close the gate and wait for other threads' C calls to leave it.
        state.withLock { $0.handleClosed = true }
        while state.withLock({ $0.activeCalls }) > 0 { usleep(1000) }
        let destroy = state.withLock { s -> Bool in
            if s.handleDestroyed { return false }
            s.handleDestroyed = true
            return true
        }
        if destroy { mosquitto_destroy(mosq) }
        finishEverything(error: error)
    }

    /// Resolves every waiter and ends every stream. Safe to call more than once.
    func finishEverything(error: MQTTError?) {
        let failure = error.map { e in
            MQTTError(e.code == .gaveUp ? .gaveUp : e.code, e.message, reasonCode: e.reasonCode, systemErrno: e.systemErrno)
        }
        let shutdownError = failure ?? MQTTError(.shutDown, "The MQTT client was shut down.")
        let work = state.withLock { s -> CoreState.Teardown in
            s.connection = .shutDown
            s.finalError = failure
            return s.takeEverything()
        }
        for c in work.connectWaiters { c.resume(throwing: shutdownError) }
        for c in work.slotWaiters { c.resume(throwing: shutdownError) }
        for (mid, p) in work.pending {
            p.waiter?.resume(throwing: MQTTError(shutdownError.code, "Message \(mid) was not acknowledged by the broker before the client ended: \(shutdownError.message)", reasonCode: shutdownError.reasonCode))
        }
        for w in work.subacks { w.resume(throwing: shutdownError) }
        for c in work.unsubacks { c.resume(throwing: shutdownError) }
        for c in work.requests { c.resume(throwing: shutdownError) }
        for b in work.buffers { b.finish(error: failure) }
        for c in work.drainWaiters { c.resume() }
        for e in work.events {
            if let failure { e.yield(.gaveUp(failure)) }
            e.yield(.shutDown)
            e.finish()
        }
        for j in work.joinWaiters { j.resume() }
        withExtendedLifetime(work.responseStream) {}
    }

    /// Requests shutdown; returns true when a network thread is running and will finish it.
    func requestShutdown() -> Bool {
        let (running, alreadyRequested) = state.withLock { s -> (Bool, Bool) in
            let already = s.shutdownRequested
            s.shutdownRequested = true
            return (s.threadStarted && !s.threadExited, already)
        }
        if running {
            if !alreadyRequested {
                // Wakes mosquitto_loop (libmosquitto pokes its internal socketpair) and queues DISCONNECT.
                _ = try? withHandle { h in mosquitto_disconnect_v5(h, 0, nil) }
            }
            wakeup.signal()
        }
        return running
    }

    func shutdown() async {
        if requestShutdown() {
            await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
                let done = state.withLock { s -> Bool in
                    if s.threadExited { return true }
                    s.joinWaiters.append(c)
                    return false
                }
                if done { c.resume() }
            }
        } else {
            let destroy = state.withLock { s -> Bool in
                s.handleClosed = true
                if s.handleDestroyed || s.threadStarted { return false }
                s.handleDestroyed = true
                return true
            }
            if destroy {
                while state.withLock({ $0.activeCalls }) > 0 { usleep(1000) }
                mosquitto_destroy(mosq)
            }
            finishEverything(error: nil)
        }
    }

    /// Closes the TCP socket under libmosquitto, as a network failure would (tests of wills and reconnects).
    func severConnectionForTesting() {
        _ = try? withHandle { h in
            let fd = mosquitto_socket(h)
            if fd >= 0 { _ = closeSocketForTesting(fd) }
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
            if s.connection == .shutDown { return nil }
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

    // MARK: Callback handlers (network thread)

    fileprivate func handleConnect(rc: Int32, flags: Int32, props: OpaquePointer?) {
        guard rc == 0 else {
            let error = MQTTError.connectRefused(rc, protocolVersion: config.protocolVersion)
            logger.error("\(error.message)")
            state.withLock { $0.lastRefusal = error }
            return
        }
        let ack = PropertyReader.connAck(flags: flags, props)
        let (waiters, resend) = state.withLock { s -> ([CheckedContinuation<ConnAck, any Error>], [CoreState.FilterEntry]) in
            s.connectedThisAttempt = true
            s.everConnected = true
            s.connection = .connected(ack)
            if !ack.sessionPresent {
                for k in s.filters.keys { s.filters[k]!.confirmed = false }
            }
            let resend = s.filters.values.filter { !$0.confirmed }
            let w = Array(s.connectWaiters.values)
            s.connectWaiters.removeAll()
            return (w, resend)
        }
        logger.info("Connected to \(config.endpoint) (session present: \(ack.sessionPresent))")
        for w in waiters { w.resume(returning: ack) }
        emit(.connected(ack))
        // Re-subscribe: libmosquitto never does it, and subscribe calls made while offline were not queued.
        for entry in resend {
            var mid: Int32 = 0
            let rc = sendSubscribe(mosq, entry: entry, mid: &mid)
            if rc == MOSQ_ERR_SUCCESS.rawValue {
                state.withLock { $0.subackWaiters[UInt16(truncatingIfNeeded: mid)] = .resubscribe(entry.filter) }
            } else {
                logger.error("Re-subscribing to '\(entry.filter)' failed: \(MQTTError.libraryText(rc))")
            }
        }
    }

    fileprivate func handleDisconnect(rc: Int32) {
        let error: MQTTError? = {
            if rc == 0 { return nil }
            if isV5 && rc >= 0x80 && rc <= 0xFF {
                return MQTTError(.connectionLost, "The broker closed the connection: \(MQTTError.reasonText(UInt8(rc))) (reason 0x\(String(rc, radix: 16))).", reasonCode: UInt8(rc))
            }
            return MQTTError.fromLibrary(rc, context: "Connection to \(config.endpoint)")
        }()
        let lost = state.withLock { s -> [(UInt16, CoreState.PendingPublish)] in
            s.epoch &+= 1
            if case .connected = s.connection { s.connection = .disconnected }
            // QoS 0 messages still queued in libmosquitto are discarded by it when the connection goes.
            var lost: [(UInt16, CoreState.PendingPublish)] = []
            for (mid, p) in s.pending where p.qos == .atMostOnce {
                lost.append((mid, p))
            }
            for (mid, _) in lost { s.pending.removeValue(forKey: mid) }
            return lost
        }
        for (mid, p) in lost {
            p.waiter?.resume(throwing: MQTTError(.connectionLost, "QoS 0 message \(mid) was not sent: the connection was lost. Use QoS 1 or 2 to have messages kept until the connection returns."))
            releaseSlot()
        }
        // SUBACKs that will not come: the subscriptions are re-sent on reconnect.
        let subWaiters = state.withLock { s -> [CoreState.SubackWaiter] in
            let all = Array(s.subackWaiters.values)
            s.subackWaiters.removeAll()
            s.earlySubacks.removeAll()
            return all
        }
        for w in subWaiters { w.resumeOffline() }
        if let error {
            logger.warning("Disconnected from \(config.endpoint): \(error.message)")
        }
        emit(.disconnected(error))
    }

    /// Called when the connection ended, before the reconnect decision.
    private func handleConnectionEnded(_ error: MQTTError) {
        state.withLock { s in
            if case .connected = s.connection { s.connection = .disconnected }
        }
    }

    fileprivate func handlePublished(mid: Int32, reason: Int32) {
        let id = UInt16(truncatingIfNeeded: mid)
        let r = UInt8(truncatingIfNeeded: reason)
        let waiter = state.withLock { s -> CheckedContinuation<UInt8, any Error>?? in
            if let p = s.pending.removeValue(forKey: id) { return .some(p.waiter) }
            s.earlyAcks[id] = r
            return .none
        }
        switch waiter {
        case .some(let w):
            w?.resume(returning: r)
            releaseSlot()
        case .none:
            releaseSlot()
        }
    }

    fileprivate func handleSubscribed(mid: Int32, codes: [UInt8]) {
        let id = UInt16(truncatingIfNeeded: mid)
        let waiter = state.withLock { s -> CoreState.SubackWaiter? in
            if let w = s.subackWaiters.removeValue(forKey: id) {
                if case .resubscribe(let filter) = w, let code = codes.first {
                    if code < 0x80 { s.filters[filter]?.confirmed = true }
                }
                if case .user(let filter, _) = w, let code = codes.first, code < 0x80 {
                    s.filters[filter]?.confirmed = true
                }
                return w
            }
            s.earlySubacks[id] = codes
            return nil
        }
        guard let waiter else { return }
        switch waiter {
        case .user(_, let c): c.resume(returning: codes)
        case .resubscribe(let filter):
            if let code = codes.first, code >= 0x80 {
                logger.error("The broker rejected the re-subscription to '\(filter)': \(MQTTError.reasonText(code))")
                failFilter(filter, MQTTError(.subscriptionRejected, "The broker rejected the re-subscription to '\(filter)' after reconnecting: \(MQTTError.reasonText(code)).", reasonCode: code))
            }
        }
    }

    fileprivate func handleUnsubscribed(mid: Int32) {
        let id = UInt16(truncatingIfNeeded: mid)
        let c = state.withLock { s -> CheckedContinuation<Void, any Error>? in
            if let c = s.unsubackWaiters.removeValue(forKey: id) { return c }
            s.earlyUnsubacks.insert(id)
            return nil
        }
        c?.resume()
    }

    fileprivate func handleMessage(_ message: MQTTMessage) {
        let (targets, request) = state.withLock { s -> ([MessageBuffer], CheckedContinuation<MQTTMessage, any Error>?) in
            var streamIDs = Set<UInt64>()
            let ids = message.properties.subscriptionIdentifiers
            if !ids.isEmpty {
                for id in ids {
                    if let f = s.filtersByID[id], let e = s.filters[f] { streamIDs.formUnion(e.streams) }
                }
            } else {
                for e in s.filters.values where MQTTTopic.matches(filter: e.filter, topic: message.topic) {
                    streamIDs.formUnion(e.streams)
                }
            }
            var targets = streamIDs.compactMap { s.streams[$0] }
            targets.append(contentsOf: s.firehoses.values)
            var request: CheckedContinuation<MQTTMessage, any Error>?
            if message.topic == responseTopic, let corr = message.properties.correlationData {
                request = s.requests.removeValue(forKey: corr)
            }
            s.messagesReceived += 1
            return (targets, request)
        }
        for t in targets { t.push(message) }
        request?.resume(returning: message)
    }

    /// Ends the streams of a filter the broker refused.
    private func failFilter(_ filter: String, _ error: MQTTError) {
        let buffers = state.withLock { s -> [MessageBuffer] in
            guard let e = s.filters.removeValue(forKey: filter) else { return [] }
            s.filtersByID.removeValue(forKey: e.id)
            return e.streams.compactMap { s.streams[$0] }
        }
        for b in buffers { b.finish(error: error) }
    }

    // MARK: Publishing

    func releaseSlot() {
        let (next, drained) = state.withLock { s -> (CheckedContinuation<Void, any Error>?, [CheckedContinuation<Void, Never>]) in
            if let w = s.slotWaiters.popFirst() { return (w.continuation, []) }
            s.slotsInUse -= 1
            if s.slotsInUse == 0 {
                let d = s.drainWaiters
                s.drainWaiters.removeAll()
                return (nil, d)
            }
            return (nil, [])
        }
        next?.resume()
        for d in drained { d.resume() }
    }

    func acquireSlot() async throws {
        let limit = config.maximumQueuedMessages
        let fast = state.withLock { s -> Result<Bool, MQTTError> in
            if s.handleClosed || s.shutdownRequested { return .failure(s.closedError) }
            if s.slotsInUse < limit && s.slotWaiters.isEmpty {
                s.slotsInUse += 1
                return .success(true)
            }
            return .success(false)
        }
        if try fast.get() { return }
        let id = state.withLock { $0.nextID() }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
                let immediate = state.withLock { s -> Result<Void, any Error>? in
                    if s.handleClosed || s.shutdownRequested { return .failure(s.closedError) }
                    if Task.isCancelled { return .failure(CancellationError()) }
                    if s.slotsInUse < limit && s.slotWaiters.isEmpty {
                        s.slotsInUse += 1
                        return .success(())
                    }
                    s.slotWaiters.append(.init(id: id, continuation: c))
                    return nil
                }
                if let immediate { c.resume(with: immediate) }
            }
        } onCancel: {
            let c = state.withLock { s -> CheckedContinuation<Void, any Error>? in
                guard let i = s.slotWaiters.firstIndex(where: { $0.id == id }) else { return nil }
                return s.slotWaiters.remove(at: i).continuation
            }
            c?.resume(throwing: CancellationError())
        }
    }

    func publish(_ message: MQTTMessage, completion: PublishCompletion) async throws -> PublishReceipt {
        try MQTTTopic.validateName(message.topic)
        if message.payload.count > 268_435_455 {
            throw MQTTError(.payloadTooLarge, "The payload is \(message.payload.count) bytes; MQTT allows at most 268,435,455.")
        }
        var props = CPropertyList()
        if isV5 && !message.properties.isEmpty {
            props = try CPropertyList.publish(message.properties)
        }
        defer { props.free() }
        if message.qos == .atMostOnce {
            let online = state.withLock { s -> Bool in
                if case .connected = s.connection { return true }
                return false
            }
            if !online {
                throw MQTTError(.notConnected, "QoS 0 message to '\(message.topic)' not sent: the client is offline. Use QoS 1 or 2 to have it queued until the connection returns.")
            }
        }
        try await acquireSlot()
        var mid: Int32 = 0
        var epoch: UInt64 = 0
        let rc: Int32? = message.payload.withUnsafeBytes { buf in
            guard enterGate() else { return nil }
            defer { leaveGate() }
            epoch = state.withLock { $0.epoch }
            return mosquitto_publish_v5(mosq, &mid, message.topic, Int32(buf.count), buf.baseAddress,
                                        Int32(message.qos.rawValue), message.retain, props.head)
        }
        guard let rc else {
            releaseSlot()
            throw state.withLock { $0.closedError }
        }
        let offline = rc == MOSQ_ERR_NO_CONN.rawValue
        if rc != MOSQ_ERR_SUCCESS.rawValue && !(offline && message.qos != .atMostOnce) {
            releaseSlot()
            if offline {
                throw MQTTError(.notConnected, "QoS 0 message to '\(message.topic)' not sent: the client is offline. Use QoS 1 or 2 to have it queued until the connection returns.")
            }
            throw MQTTError.fromLibrary(rc, context: "Publishing to '\(message.topic)'")
        }
        let id = UInt16(truncatingIfNeeded: mid)
        let qos = message.qos

        enum Registration { case early(UInt8), lost, registered }
        func register(_ waiter: CheckedContinuation<UInt8, any Error>?) -> Registration {
            state.withLock { s in
                if let r = s.earlyAcks.removeValue(forKey: id) { return .early(r) }
                if qos == .atMostOnce && s.epoch != epoch { return .lost }
                s.pending[id] = .init(qos: qos, waiter: waiter)
                return .registered
            }
        }
        let lostError = MQTTError(.connectionLost, "QoS 0 message to '\(message.topic)' may not have been sent: the connection was lost. Use QoS 1 or 2 to have messages kept until the connection returns.")

        if completion == .enqueued {
            switch register(nil) {
            case .early(let r):
                try checkReason(r, topic: message.topic)
                return PublishReceipt(messageID: id, reasonCode: r, queuedWhileOffline: offline, completed: true)
            case .lost:
                releaseSlot()
                throw lostError
            case .registered:
                return PublishReceipt(messageID: id, reasonCode: 0, queuedWhileOffline: offline, completed: false)
            }
        }
        let reason: UInt8 = try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<UInt8, any Error>) in
                switch register(c) {
                case .early(let r): c.resume(returning: r)
                case .lost:
                    releaseSlot()
                    c.resume(throwing: lostError)
                case .registered:
                    if Task.isCancelled { detachWaiter(id) }
                }
            }
        } onCancel: {
            detachWaiter(id)
        }
        try checkReason(reason, topic: message.topic)
        return PublishReceipt(messageID: id, reasonCode: reason, queuedWhileOffline: offline, completed: true)
    }

    /// Stops waiting for message `id`'s acknowledgement (the message itself stays queued: libmosquitto cannot
    /// take it back).
    private func detachWaiter(_ id: UInt16) {
        let c = state.withLock { s -> CheckedContinuation<UInt8, any Error>? in
            let c = s.pending[id]?.waiter
            s.pending[id]?.waiter = nil
            return c
        }
        c?.resume(throwing: CancellationError())
    }

    private func checkReason(_ r: UInt8, topic: String) throws {
        guard r >= 0x80 else { return }
        let text = MQTTError.reasonText(r)
        if r == 0x87 {
            throw MQTTError(.notAuthorized, "The broker refused the message to '\(topic)': \(text) (reason 0x87). Check the broker's ACL for this user and topic.", reasonCode: r)
        }
        throw MQTTError(.publishRejected, "The broker refused the message to '\(topic)': \(text) (reason 0x\(String(r, radix: 16))).", reasonCode: r)
    }

    func waitUntilAllPublished() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let done = state.withLock { s -> Bool in
                if s.slotsInUse == 0 || s.handleClosed { return true }
                s.drainWaiters.append(c)
                return false
            }
            if done { c.resume() }
        }
    }

    // MARK: Subscribing

    func sendSubscribe(_ h: OpaquePointer, entry: CoreState.FilterEntry, mid: inout Int32) -> Int32 {
        if isV5 {
            var props = CPropertyList()
            defer { props.free() }
            try? props.add(varint: MQTT_PROP_SUBSCRIPTION_IDENTIFIER, entry.id)
            return mosquitto_subscribe_v5(h, &mid, entry.filter, Int32(entry.qos.rawValue), entry.options, props.head)
        }
        return mosquitto_subscribe(h, &mid, entry.filter, Int32(entry.qos.rawValue))
    }

    func subscribe(_ subscriptions: [Subscription], buffer policy: SubscriptionBuffer, internalFilter: Bool = false) async throws -> MessageStream {
        guard !subscriptions.isEmpty else { throw MQTTError(.invalidArgument, "Subscribe needs at least one filter.") }
        for s in subscriptions { try MQTTTopic.validateFilter(s.filter) }
        if !isV5 && subscriptions.contains(where: { $0.optionBits != 0 }) {
            throw MQTTError(.requiresMQTT5, "No-local, retain-as-published and retain handling need MQTT 5: connect with protocolVersion .v5 (-V mqttv5).")
        }
        let streamID = state.withLock { $0.nextID() }
        let buffer = MessageBuffer(policy: policy) { [weak self] in self?.removeStream(streamID) }
        let toSend = try state.withLock { s throws(MQTTError) -> [CoreState.FilterEntry] in
            if s.handleClosed || s.shutdownRequested { throw s.closedError }
            s.streams[streamID] = buffer
            var out: [CoreState.FilterEntry] = []
            for sub in subscriptions {
                if var e = s.filters[sub.filter] {
                    e.streams.insert(streamID)
                    if sub.qos > e.qos || sub.optionBits != e.options {
                        e.qos = max(e.qos, sub.qos)
                        e.options = sub.optionBits
                        out.append(e)
                    }
                    s.filters[sub.filter] = e
                } else {
                    let id = s.nextSubscriptionID
                    s.nextSubscriptionID = s.nextSubscriptionID >= 268_435_455 ? 1 : s.nextSubscriptionID + 1
                    let e = CoreState.FilterEntry(filter: sub.filter, id: id, qos: sub.qos, options: sub.optionBits, streams: [streamID])
                    s.filters[sub.filter] = e
                    s.filtersByID[id] = sub.filter
                    out.append(e)
                }
            }
            return out
        }
        var granted: [String: QoS?] = [:]
        do {
            for entry in toSend {
                var mid: Int32 = 0
                guard let rc = try withHandle({ h in sendSubscribe(h, entry: entry, mid: &mid) }) else {
                    throw state.withLock { $0.closedError }
                }
                if rc == MOSQ_ERR_NO_CONN.rawValue {
                    granted[entry.filter] = .some(nil)  // sent on reconnect
                    continue
                }
                if rc != MOSQ_ERR_SUCCESS.rawValue {
                    throw MQTTError.fromLibrary(rc, context: "Subscribing to '\(entry.filter)'")
                }
                let codes = try await awaitSuback(UInt16(truncatingIfNeeded: mid), filter: entry.filter)
                guard let codes else {
                    granted[entry.filter] = .some(nil)
                    continue
                }
                if let code = codes.first, code >= 0x80 {
                    let text = isV5 ? MQTTError.reasonText(code) : "failure"
                    if code == 0x87 {
                        throw MQTTError(.notAuthorized, "The broker refused the subscription to '\(entry.filter)': \(text) (reason 0x87). Check the broker's ACL.", reasonCode: code)
                    }
                    throw MQTTError(.subscriptionRejected, "The broker refused the subscription to '\(entry.filter)': \(text) (reason 0x\(String(code, radix: 16))).", reasonCode: code)
                }
                granted[entry.filter] = codes.first.flatMap { QoS(rawValue: $0) }
            }
        } catch {
            buffer.finish()
            removeStream(streamID)
            throw error
        }
        let filters = subscriptions.map(\.filter)
        let grants: [QoS?] = filters.map { f in
            if let g = granted[f] { return g }
            return state.withLock { s in s.filters[f].map { $0.confirmed ? $0.qos : nil } ?? nil }
        }
        return MessageStream(buffer: buffer, filters: filters, grantedQoS: grants)
    }

    /// Waits for the SUBACK of `mid`; nil when the connection dropped first (re-sent on reconnect).
    private func awaitSuback(_ mid: UInt16, filter: String) async throws -> [UInt8]? {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<[UInt8]?, any Error>) in
            let early = state.withLock { s -> [UInt8]?? in
                if let codes = s.earlySubacks.removeValue(forKey: mid) {
                    if let code = codes.first, code < 0x80 { s.filters[filter]?.confirmed = true }
                    return .some(codes)
                }
                if s.handleClosed { return .some(nil) }
                s.subackWaiters[mid] = .user(filter, c)
                return .none
            }
            if case .some(let codes) = early { c.resume(returning: codes) }
        }
    }

    /// Removes a stream and unsubscribes the filters no other stream uses.
    func removeStream(_ streamID: UInt64) {
        let gone = state.withLock { s -> [String] in
            guard s.streams.removeValue(forKey: streamID) != nil else { return [] }
            var gone: [String] = []
            for (f, var e) in s.filters where e.streams.contains(streamID) {
                e.streams.remove(streamID)
                if e.streams.isEmpty && !e.isInternal {
                    s.filters.removeValue(forKey: f)
                    s.filtersByID.removeValue(forKey: e.id)
                    gone.append(f)
                } else {
                    s.filters[f] = e
                }
            }
            return gone
        }
        for f in gone {
            _ = try? withHandle { h in mosquitto_unsubscribe(h, nil, f) }
        }
    }

    func unsubscribe(_ filters: [String]) async throws {
        let buffers = state.withLock { s -> [MessageBuffer] in
            var out: [MessageBuffer] = []
            for f in filters {
                if let e = s.filters.removeValue(forKey: f) {
                    s.filtersByID.removeValue(forKey: e.id)
                    out += e.streams.compactMap { s.streams[$0] }
                }
            }
            return out
        }
        for f in filters {
            var mid: Int32 = 0
            guard let rc = try withHandle({ h in mosquitto_unsubscribe(h, &mid, f) }) else { throw state.withLock { $0.closedError } }
            if rc == MOSQ_ERR_NO_CONN.rawValue { continue }
            if rc != MOSQ_ERR_SUCCESS.rawValue { throw MQTTError.fromLibrary(rc, context: "Unsubscribing from '\(f)'") }
            let id = UInt16(truncatingIfNeeded: mid)
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
                let early = state.withLock { s -> Bool in
                    if s.earlyUnsubacks.remove(id) != nil { return true }
                    s.unsubackWaiters[id] = c
                    return false
                }
                if early { c.resume() }
            }
        }
        // Streams whose every filter is gone end.
        for b in buffers {
            let stillUsed = state.withLock { s in s.filters.values.contains { e in e.streams.contains { s.streams[$0] === b } } }
            if !stillUsed { b.finish() }
        }
    }

    func makeFirehose(buffer policy: SubscriptionBuffer) -> MessageStream {
        let id = state.withLock { $0.nextID() }
        let buffer = MessageBuffer(policy: policy) { [weak self] in
            _ = self?.state.withLock { $0.firehoses.removeValue(forKey: id) }
        }
        let closed = state.withLock { s -> Bool in
            if s.handleClosed { return true }
            s.firehoses[id] = buffer
            return false
        }
        if closed { buffer.finish() }
        return MessageStream(buffer: buffer, filters: ["#"], grantedQoS: [])
    }

    // MARK: Request/response

    func ensureResponseSubscription() async throws {
        let needed = state.withLock { s -> Bool in
            if s.responseSubscribed { return false }
            s.responseSubscribed = true
            return true
        }
        guard needed else { return }
        // An internal stream keeps the filter alive; replies are routed by correlation data.
        let stream = try await subscribe([Subscription(responseTopic, qos: .atLeastOnce)], buffer: .init(capacity: 1, overflow: .dropNewest))
        state.withLock { s in
            s.filters[responseTopic]?.isInternal = true
            s.responseStream = stream
        }
    }

    func request(_ message: MQTTMessage, timeout: Duration) async throws -> MQTTMessage {
        guard isV5 else {
            throw MQTTError(.requiresMQTT5, "Request/response needs MQTT 5 (response topic and correlation data): use protocolVersion .v5.")
        }
        try await ensureResponseSubscription()
        var m = message
        let corr = m.properties.correlationData ?? (0..<16).map { _ in UInt8.random(in: 0...255) }
        m.properties.correlationData = corr
        m.properties.responseTopic = responseTopic
        return try await withThrowingTaskGroup(of: MQTTMessage?.self) { group in
            group.addTask {
                try await withTaskCancellationHandler {
                    try await withCheckedThrowingContinuation { (c: CheckedContinuation<MQTTMessage, any Error>) in
                        let closed = self.state.withLock { s -> MQTTError? in
                            if s.handleClosed || s.shutdownRequested { return s.closedError }
                            if Task.isCancelled { return MQTTError(.timeout, "cancelled") }
                            s.requests[corr] = c
                            return nil
                        }
                        if let closed { c.resume(throwing: closed) }
                    }
                } onCancel: {
                    let c = self.state.withLock { $0.requests.removeValue(forKey: corr) }
                    c?.resume(throwing: CancellationError())
                }
            }
            group.addTask {
                try await Task.sleep(for: timeout)
                return nil
            }
            _ = try await publish(m, completion: .acknowledged)
            defer { group.cancelAll() }
            guard let first = try await group.next(), let reply = first else {
                throw MQTTError(.timeout, "No reply on '\(responseTopic)' within \(timeout) to the request on '\(message.topic)'. Is a responder subscribed to that topic?")
            }
            return reply
        }
    }
}

/// What `publish` waits for before it returns.
public enum PublishCompletion: Sendable, Hashable {
    /// Wait for the broker's acknowledgement (PUBACK for QoS 1, PUBCOMP for QoS 2) or, at QoS 0, for the
    /// write to the socket.
    case acknowledged
    /// Return as soon as the message is in the client's bounded outgoing queue, so that one publisher keeps
    /// many messages in flight. Suspends only while the queue is full.
    case enqueued
}

// MARK: - State

struct CoreState: ~Copyable {
    struct PendingPublish {
        var qos: QoS
        var waiter: CheckedContinuation<UInt8, any Error>?
    }
    struct SlotWaiter {
        var id: UInt64
        var continuation: CheckedContinuation<Void, any Error>
    }
    struct FilterEntry {
        var filter: String
        var id: UInt32
        var qos: QoS
        var options: Int32
        var streams: Set<UInt64>
        var confirmed = false
        var isInternal = false
    }
    enum SubackWaiter {
        case user(String, CheckedContinuation<[UInt8]?, any Error>)
        case resubscribe(String)

        func resumeOffline() {
            if case .user(_, let c) = self { c.resume(returning: nil) }
        }
        func resume(throwing e: MQTTError) {
            if case .user(_, let c) = self { c.resume(throwing: e) }
        }
    }
    struct Teardown {
        var connectWaiters: [CheckedContinuation<ConnAck, any Error>] = []
        var slotWaiters: [CheckedContinuation<Void, any Error>] = []
        var pending: [(UInt16, PendingPublish)] = []
        var subacks: [SubackWaiter] = []
        var unsubacks: [CheckedContinuation<Void, any Error>] = []
        var requests: [CheckedContinuation<MQTTMessage, any Error>] = []
        var buffers: [MessageBuffer] = []
        var drainWaiters: [CheckedContinuation<Void, Never>] = []
        var events: [AsyncStream<ConnectionEvent>.Continuation] = []
        var joinWaiters: [CheckedContinuation<Void, Never>] = []
        /// Released after unlocking: dropping a stream ends it, which takes the lock again.
        var responseStream: MessageStream?
    }

    var connection: ConnectionState = .idle
    var threadStarted = false
    var threadExited = false
    /// Kernel thread id of the network thread (Linux), for tests and diagnostics.
    var networkThreadID: Int = -1
    var shutdownRequested = false
    var handleClosed = false
    var handleDestroyed = false
    var activeCalls = 0
    var connectedThisAttempt = false
    var everConnected = false
    var lastRefusal: MQTTError?
    var finalError: MQTTError?
    var epoch: UInt64 = 0
    var idCounter: UInt64 = 0

    var connectWaiters: [UInt64: CheckedContinuation<ConnAck, any Error>] = [:]
    var joinWaiters: [CheckedContinuation<Void, Never>] = []
    var events: [UInt64: AsyncStream<ConnectionEvent>.Continuation] = [:]

    var slotsInUse = 0
    var slotWaiters = Deque<SlotWaiter>()
    var pending: [UInt16: PendingPublish] = [:]
    var earlyAcks: [UInt16: UInt8] = [:]
    var drainWaiters: [CheckedContinuation<Void, Never>] = []

    var filters: [String: FilterEntry] = [:]
    var filtersByID: [UInt32: String] = [:]
    var nextSubscriptionID: UInt32 = 1
    var streams: [UInt64: MessageBuffer] = [:]
    var firehoses: [UInt64: MessageBuffer] = [:]
    var subackWaiters: [UInt16: SubackWaiter] = [:]
    var earlySubacks: [UInt16: [UInt8]] = [:]
    var unsubackWaiters: [UInt16: CheckedContinuation<Void, any Error>] = [:]
    var earlyUnsubacks: Set<UInt16> = []
    var messagesReceived = 0

    var requests: [[UInt8]: CheckedContinuation<MQTTMessage, any Error>] = [:]
    var responseSubscribed = false
    var responseStream: MessageStream?

    mutating func nextID() -> UInt64 {
        idCounter += 1
        return idCounter
    }

    var closedError: MQTTError {
        finalError ?? MQTTError(.shutDown, "The MQTT client was shut down; create a new client to connect again.")
    }

    mutating func takeEverything() -> Teardown {
        var t = Teardown()
        threadExited = true
        handleClosed = true
        t.connectWaiters = Array(connectWaiters.values); connectWaiters.removeAll()
        t.slotWaiters = slotWaiters.map(\.continuation); slotWaiters.removeAll()
        t.pending = pending.compactMap { $0.value.waiter == nil ? nil : ($0.key, $0.value) }; pending.removeAll()
        t.subacks = Array(subackWaiters.values); subackWaiters.removeAll()
        t.unsubacks = Array(unsubackWaiters.values); unsubackWaiters.removeAll()
        t.requests = Array(requests.values); requests.removeAll()
        t.buffers = Array(streams.values) + Array(firehoses.values); streams.removeAll(); firehoses.removeAll()
        filters.removeAll(); filtersByID.removeAll()
        t.drainWaiters = drainWaiters; drainWaiters.removeAll()
        t.events = Array(events.values); events.removeAll()
        t.joinWaiters = joinWaiters; joinWaiters.removeAll()
        slotsInUse = 0
        t.responseStream = responseStream
        responseStream = nil
        return t
    }
}

// MARK: - Library initialisation

enum MosquittoLibrary {
    /// `mosquitto_lib_init` is not thread-safe; a static `let` runs it exactly once.
    private static let initialized: Bool = {
        mosquitto_lib_init()
        return true
    }()

    static func ensureInitialized() { _ = initialized }

    /// The libmosquitto version, for example "2.0.11".
    static var version: String {
        var major: Int32 = 0, minor: Int32 = 0, rev: Int32 = 0
        mosquitto_lib_version(&major, &minor, &rev)
        return "\(major).\(minor).\(rev)"
    }
}

// MARK: - C callbacks: the single entry point from libmosquitto into Swift

@inline(__always)
private func core(_ obj: UnsafeMutableRawPointer?) -> ClientCore? {
    guard let obj else { return nil }
    return Unmanaged<ClientCore>.fromOpaque(obj).takeUnretainedValue()
}

private let onConnectTrampoline: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?, Int32, Int32, OpaquePointer?) -> Void = { _, obj, rc, flags, props in
    core(obj)?.handleConnect(rc: rc, flags: flags, props: props)
}

private let onDisconnectTrampoline: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?, Int32, OpaquePointer?) -> Void = { _, obj, rc, _ in
    core(obj)?.handleDisconnect(rc: rc)
}

private let onPublishTrampoline: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?, Int32, Int32, OpaquePointer?) -> Void = { _, obj, mid, reason, _ in
    core(obj)?.handlePublished(mid: mid, reason: reason)
}

private let onSubscribeTrampoline: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?, Int32, Int32, UnsafePointer<Int32>?, OpaquePointer?) -> Void = { _, obj, mid, count, granted, _ in
    var codes: [UInt8] = []
    if let granted, count > 0 {
        codes = (0..<Int(count)).map { UInt8(truncatingIfNeeded: granted[$0]) }
    }
    core(obj)?.handleSubscribed(mid: mid, codes: codes)
}

private let onUnsubscribeTrampoline: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?, Int32, OpaquePointer?) -> Void = { _, obj, mid, _ in
    core(obj)?.handleUnsubscribed(mid: mid)
}

private let onMessageTrampoline: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?, UnsafePointer<mosquitto_message>?, OpaquePointer?) -> Void = { _, obj, msg, props in
    guard let c = core(obj), let m = msg?.pointee else { return }
    // Copy everything out of C memory now: it is freed when this callback returns.
    let topic = m.topic.map { String(cString: $0) } ?? ""
    let payload: [UInt8] = (m.payload != nil && m.payloadlen > 0)
        ? Array(UnsafeRawBufferPointer(start: m.payload, count: Int(m.payloadlen))) : []
    let properties = props == nil ? MessageProperties() : PropertyReader.messageProperties(props)
    var message = MQTTMessage(topic: topic, payload: payload, qos: QoS(rawValue: UInt8(clamping: m.qos)) ?? .atMostOnce,
                              retain: m.retain, properties: properties)
    message.messageID = UInt16(truncatingIfNeeded: m.mid)
    c.handleMessage(message)
}

private let onLogTrampoline: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?, Int32, UnsafePointer<CChar>?) -> Void = { _, obj, level, text in
    guard let c = core(obj), let text else { return }
    let line = String(cString: text)
    if level == MOSQ_LOG_DEBUG {
        c.logger.trace("libmosquitto: \(line)")
    } else {
        c.logger.debug("libmosquitto: \(line)")
    }
}

#if canImport(Glibc)
import Glibc
private func closeSocketForTesting(_ fd: Int32) -> Int32 { Glibc.shutdown(fd, Int32(SHUT_RDWR)) }
#elseif canImport(Darwin)
import Darwin
private func closeSocketForTesting(_ fd: Int32) -> Int32 { Darwin.shutdown(fd, SHUT_RDWR) }
#endif
