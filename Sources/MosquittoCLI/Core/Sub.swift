#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CMosquitto

/// `mqtt-sub`: mosquitto_sub, line for line, including `-d` and the order of everything it prints.
final class SubSession: Session {
    var processMessages = true
    var messageCount: Int32 = 0
    var rateCount: Int32 = 0
    var lastMid: Int32 = 0
    var timedOut = false
    var running = true
    /// `--no-reconnect`: the connection was lost and the loop was stopped.
    var lostWithoutReconnect = false
    /// The batched loop, for plain connections when batching is available (else mosquitto_loop_forever).
    var loop: BatchedLoop?

    init() { super.init(kind: .sub, defaultName: "mqtt-sub") }

    /// The session the signal handler acts on.
    nonisolated(unsafe) static var current: SubSession?

    func run() -> Int32 {
        loadOptions(usage: { Usage.sub(name) })
        if config.noRetain && config.retainedOnly {
            errorPrintf("\nError: Combining '-R' and '--retained-only' makes no sense.\n")
            return 1
        }
        let m = createHandle(invalidIDMessage: "Error: Invalid id and/or clean_session.\n")
        if !config.apply(to: m) { return 1 }
        installLogCallback(m)
        if config.messageRate {
            processMessages = false
            config.watch = false
        }
        mosquitto_subscribe_callback_set(m, SubSession.onSubscribe)
        mosquitto_connect_v5_callback_set(m, SubSession.onConnect)
        mosquitto_message_v5_callback_set(m, SubSession.onMessage)
        if config.noReconnect { mosquitto_disconnect_v5_callback_set(m, SubSession.onDisconnect) }
        outputInit(config)

        let connected = config.connect(m)
        if connected != 0 { return config.connectFailureStatus(connected) }

        SubSession.current = self
        var action = sigaction()
        action.__sigaction_handler.sa_handler = SubSession.onSignal
        sigemptyset(&action.sa_mask)
        action.sa_flags = 0
        for sig in [SIGALRM, SIGTERM, SIGINT] where sigaction(sig, &action, nil) == -1 {
            perror("sigaction")
            return 1
        }
        if config.timeout > 0 { alarm(config.timeout) }

        if !config.messageRate && (!config.usesTLS || config.webSockets) && config.socksHost == nil, let io = Batching.start() {
            loop = BatchedLoop(mosq: m, io: io)
        } else if config.webSockets {
            // Unbatched, but still this loop: libmosquitto's would reconnect to the socket of a tunnel that is gone.
            let l = BatchedLoop(mosq: m, io: nil)
            if config.messageRate {
                l.everySecond = { [unowned self] in
                    outPrintf("%d msgs/s\n", rateCount)
                    fflush(cStdout)
                    rateCount = 0
                }
            }
            loop = l
        }
        if let l = loop {
            l.onSignal = { [unowned self] signal in self.act(on: signal) }
            let config = self.config
            l.reconnect = { config.reconnect($0) }
        }

        var rc: Int32
        if let loop {
            rc = loop.run()
        } else if config.messageRate {
            rc = mosquitto_loop_start(m)
            if rc != 0 { return rc }
            while running {
                var second = timespec(tv_sec: 1, tv_nsec: 0)
                nanosleep(&second, nil)
                let count = rateCount
                rateCount = 0
                outPrintf("%d msgs/s\n", count)
                fflush(cStdout)
            }
        } else {
            rc = mosquitto_loop_forever(m, -1, 1)
        }
        mosquitto_destroy(m)
        if config.messageCount > 0 && rc == MOSQ_ERR_NO_CONN.rawValue { rc = 0 }
        if lostWithoutReconnect && rc == 0 { rc = Int32(MOSQ_ERR_CONN_LOST.rawValue) }
        if timedOut {
            config.errPrintf("Timed out\n")
            return Int32(MOSQ_ERR_TIMEOUT.rawValue)
        } else if rc != 0 {
            config.reportRuntimeError(rc, connackReceived: connackReceived)
        }
        return connackResult != 0 ? connackResult : rc
    }

    static func session(_ obj: UnsafeMutableRawPointer?) -> SubSession {
        Unmanaged<SubSession>.fromOpaque(obj!).takeUnretainedValue()
    }

    /// SIGINT, SIGTERM and `-W`'s SIGALRM: a DISCONNECT with reason 4 ("disconnect with will message") once
    /// connected, an immediate exit(-1) before, as mosquitto_sub does. The batched loop acts on it between passes
    /// (its buffers are not for a signal handler to touch); otherwise the handler disconnects, as mosquitto_sub's.
    static let onSignal: @convention(c) (Int32) -> Void = { signum in
        // Leave errno as the interrupted code had it (act(on:) calls libmosquitto), as mqtt-rr's handler does.
        let savedErrno = errno
        defer { errno = savedErrno }
        guard let s = SubSession.current else { exit(-1) }
        guard signum == SIGALRM || signum == SIGTERM || signum == SIGINT else { return }
        if !s.connackReceived { exit(-1) }
        if s.loop != nil {
            pendingSignal.store(signum, ordering: .relaxed)
        } else {
            s.act(on: signum)
        }
    }

    func act(on signum: Int32) {
        processMessages = false
        disconnect(Int32(MQTT_RC_DISCONNECT_WITH_WILL_MSG.rawValue))
        running = false
        if signum == SIGALRM { timedOut = true }
    }

    /// mosquitto_disconnect_v5 with the `-D disconnect` properties (through the batched loop when there is one).
    func disconnect(_ reason: Int32 = 0) {
        if let loop {
            loop.disconnect(reason: reason, properties: config.disconnectProperties)
        } else {
            _ = mosquitto_disconnect_v5(mosq, reason, config.disconnectProperties)
        }
    }

    static let onMessage: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?, UnsafePointer<mosquitto_message>?, OpaquePointer?) -> Void = { mosq, obj, message, properties in
        let s = session(obj)
        guard let mosq, let message else { return }
        let config = s.config
        s.rateCount += 1
        if !s.processMessages { return }
        let m = message.pointee
        if config.retainedOnly && !m.retain {
            s.processMessages = false
            if s.lastMid == 0 { s.disconnect() }
            return
        }
        if m.retain && config.noRetain { return }
        for filter in config.filterOuts {
            var matches = false
            _ = mosquitto_topic_matches_sub(filter, m.topic, &matches)
            if matches { return }
        }
        if config.removeRetained && m.retain {
            _ = mosquitto_publish(mosq, &s.lastMid, m.topic, 0, nil, 1, true)
        }
        MessagePrinter.print(config, message, properties)
        if ferror(cStdout) != 0 { s.disconnect() }
        if config.messageCount > 0 {
            s.messageCount += 1
            if s.messageCount == config.messageCount {
                s.processMessages = false
                if s.lastMid == 0 { s.disconnect() }
            }
        }
    }

    static let onConnect: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?, Int32, Int32, OpaquePointer?) -> Void = { mosq, obj, result, _, _ in
        let s = session(obj)
        guard let mosq else { return }
        let config = s.config
        s.connackReceived = true
        s.connackResult = result
        if result == 0 {
            s.loop?.connackArrived = true
            config.topics.withUnsafeBufferPointer { topics in
                topics.withMemoryRebound(to: UnsafeMutablePointer<CChar>?.self) { list in
                    _ = mosquitto_subscribe_multiple(mosq, nil, Int32(list.count), list.baseAddress, config.qos,
                                                     config.subscribeOptions, config.subscribeProperties)
                }
            }
            for topic in config.unsubscribeTopics {
                _ = mosquitto_unsubscribe_v5(mosq, nil, topic, config.unsubscribeProperties)
            }
        } else {
            config.reportConnack(result)
            s.disconnect()
        }
    }

    static let onSubscribe: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?, Int32, Int32, UnsafePointer<Int32>?) -> Void = { mosq, obj, mid, count, granted in
        let s = session(obj)
        guard let mosq, let granted, count > 0 else { return }
        let config = s.config
        var someAllowed = granted[0] < 128
        let shouldPrint = config.debug && !config.quiet
        if shouldPrint { outPrintf("Subscribed (mid: %d): %d", mid, granted[0]) }
        var k = 1
        while k < Int(count) {
            if shouldPrint { outPrintf(", %d", granted[k]) }
            someAllowed = someAllowed || granted[k] < 128
            k += 1
        }
        if shouldPrint { outPrintf("\n") }
        if !someAllowed {
            s.disconnect()
            config.errPrintf("All subscription requests were denied.\n")
        }
        if config.exitAfterSubscribe { s.disconnect() }
    }

    /// `--no-reconnect`: a lost connection ends the run (exit 7) instead of libmosquitto reconnecting.
    static let onDisconnect: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?, Int32, OpaquePointer?) -> Void = { mosq, obj, rc, _ in
        let s = session(obj)
        guard rc != 0, let mosq else { return }
        s.lostWithoutReconnect = true
        // Marks the client as disconnecting, so that the loop returns instead of reconnecting.
        s.loop?.disconnecting = true
        _ = mosquitto_disconnect(mosq)
    }
}

/// mosquitto's `output_init`: seeds the random filter; `-w` clears the screen.
func outputInit(_ config: ClientConfig) {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    srandom(UInt32(truncatingIfNeeded: ts.tv_nsec))
    if config.watch, let host = config.host { MessagePrinter.Watch.start(host: host) }
}
