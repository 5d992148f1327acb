#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CMosquitto

/// `mqtt-rr`: mosquitto_rr. It subscribes to the response topic, publishes the request (MQTT 5: with the response
/// topic property and whatever `-D publish …` adds, correlation data only when asked for), prints the first
/// message that arrives on the response topic, and exits.
final class RRSession: Session {
    enum State { case new, connected, subscribed, readyToPublish, waitForResponse, disconnect }

    var state = State.new
    var processMessages = true
    var timedOut = false
    var midSent: Int32 = -1
    var sendTime = timespec()
    var receiveTime = timespec()

    nonisolated(unsafe) static var current: RRSession?

    init() { super.init(kind: .rr, defaultName: "mqtt-rr") }

    func run() -> Int32 {
        loadOptions(usage: { Usage.rr(name) })
        if config.publishMode == .stdinFile {
            if !loadStandardInput() {
                config.errPrintf("Error loading input from stdin.\n")
                return 1
            }
        } else if let file = config.fileInput {
            if !loadFile(file) {
                config.errPrintf("Error loading input file \"%s\".\n", file)
                return 1
            }
        }
        if config.topic == nil || config.publishMode == .none || config.responseTopic == nil {
            errorPrintf("Error: All of topic, message, and response topic must be supplied.\n")
            usageHintAndExit()
        }
        if mosquitto_property_add_string(&config.publishProperties, Int32(MQTT_PROP_RESPONSE_TOPIC.rawValue), config.responseTopic) != 0 {
            errorPrintf("Error adding property RESPONSE_TOPIC.\n")
            return 1
        }
        if mosquitto_property_check_all(Int32(CMD_PUBLISH), config.publishProperties) != 0 {
            config.errPrintf("Error in PUBLISH properties: Duplicate response topic.\n")
            return 1
        }
        outputInit(config)
        let m = createHandle(invalidIDMessage: "Error: Invalid id and/or clean_session.\n")
        if !config.apply(to: m) { return 1 }
        installLogCallback(m)
        mosquitto_connect_v5_callback_set(m, RRSession.onConnect)
        mosquitto_subscribe_callback_set(m, RRSession.onSubscribe)
        mosquitto_message_v5_callback_set(m, RRSession.onMessage)
        let connected = config.connect(m)
        if connected != 0 { return config.connectFailureStatus(connected) }

        RRSession.current = self
        var action = sigaction()
        action.__sigaction_handler.sa_handler = RRSession.onAlarm
        sigemptyset(&action.sa_mask)
        action.sa_flags = 0
        if sigaction(SIGALRM, &action, nil) == -1 {
            perror("sigaction")
            return 1
        }
        if config.timeout > 0 { alarm(config.timeout) }

        var rc: Int32
        repeat {
            rc = mosquitto_loop(m, -1, 1)
            if state == .readyToPublish {
                state = .waitForResponse
                switch config.publishMode {
                case .command, .file, .stdinFile: rc = publish(m, config.message, config.messageLength)
                case .null: rc = publish(m, nil, 0)
                default: break
                }
            }
        } while rc == 0 && state != .disconnect
        reportLatency()
        mosquitto_destroy(m)
        if config.messageCount > 0 && rc == MOSQ_ERR_NO_CONN.rawValue { rc = 0 }
        if timedOut {
            config.errPrintf("Timed out\n")
            return Int32(MOSQ_ERR_TIMEOUT.rawValue)
        } else if rc != 0 {
            config.reportRuntimeError(rc, connackReceived: connackReceived)
        }
        return connackResult != 0 ? connackResult : rc
    }

    func publish(_ m: OpaquePointer, _ payload: UnsafeRawPointer?, _ length: Int32) -> Int32 {
        clock_gettime(CLOCK_REALTIME, &sendTime)
        let properties = config.isV5 ? config.publishProperties : nil
        return mosquitto_publish_v5(m, &midSent, config.topic, length, payload, config.qos, config.retain, properties)
    }

    /// `--latency`: the time from the request to the response.
    func reportLatency() {
        guard config.measureLatency else { return }
        var s = receiveTime.tv_sec - sendTime.tv_sec
        var ns = receiveTime.tv_nsec - sendTime.tv_nsec
        if ns < 0 {
            s -= 1
            ns += 1_000_000_000
        }
        if s > 0 {
            outPrintf("Latency: %ld.%09ld\n", s, ns)
        } else if ns < 1000 {
            outPrintf("Latency: %ldns\n", ns)
        } else if ns < 1_000_000 {
            outPrintf("Latency: %fµs\n", Double(ns) / 1000.0)
        } else {
            outPrintf("Latency: %fms\n", Double(ns) / 1_000_000.0)
        }
    }

    static func session(_ obj: UnsafeMutableRawPointer?) -> RRSession {
        Unmanaged<RRSession>.fromOpaque(obj!).takeUnretainedValue()
    }

    static let onAlarm: @convention(c) (Int32) -> Void = { signum in
        // A signal handler must leave errno as it found it: the interrupted code may be about to read it
        // (ThreadSanitizer: "signal handler spoils errno", and mqtt-rr exited 66 under it).
        let savedErrno = errno
        defer { errno = savedErrno }
        guard signum == SIGALRM, let s = RRSession.current else { return }
        s.processMessages = false
        _ = mosquitto_disconnect_v5(s.mosq, Int32(MQTT_RC_DISCONNECT_WITH_WILL_MSG.rawValue), s.config.disconnectProperties)
        s.timedOut = true
    }

    static let onMessage: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?, UnsafePointer<mosquitto_message>?, OpaquePointer?) -> Void = { _, obj, message, properties in
        let s = session(obj)
        guard let message else { return }
        if !s.processMessages { return }
        if message.pointee.retain && s.config.noRetain { return }
        clock_gettime(CLOCK_REALTIME, &s.receiveTime)
        MessagePrinter.print(s.config, message, properties)
        switch s.config.publishMode {
        case .command, .file, .stdinFile, .null: s.state = .disconnect
        case .stdinLine: s.state = .readyToPublish
        case .none: break
        }
    }

    static let onConnect: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?, Int32, Int32, OpaquePointer?) -> Void = { mosq, obj, result, _, _ in
        let s = session(obj)
        guard let mosq else { return }
        s.connackResult = result
        if result == 0 {
            s.connackReceived = true
            s.state = .connected
            _ = mosquitto_subscribe_v5(mosq, nil, s.config.responseTopic, s.config.qos, s.config.subscribeOptions, s.config.subscribeProperties)
        } else {
            s.state = .disconnect
            s.config.reportConnack(result, rr: true)
            _ = mosquitto_disconnect_v5(mosq, 0, s.config.disconnectProperties)
        }
    }

    static let onSubscribe: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?, Int32, Int32, UnsafePointer<Int32>?) -> Void = { mosq, obj, _, _, granted in
        let s = session(obj)
        guard let mosq, let granted else { return }
        if granted[0] < 128 {
            s.state = .readyToPublish
        } else {
            s.state = .disconnect
            s.config.errPrintf("%s\n", mosquitto_reason_string(granted[0]))
            _ = mosquitto_disconnect_v5(mosq, 0, s.config.disconnectProperties)
        }
    }
}
