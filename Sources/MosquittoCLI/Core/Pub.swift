#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CMosquitto

/// `mqtt-pub`: mosquitto_pub, message for message and byte for byte.
///
/// `-l` runs on one thread (mosquitto_pub uses libmosquitto's network thread): standard input and the socket are
/// polled together, lines are read in large blocks and published as they come, and at most a bounded number of
/// them wait for their acknowledgement, so that a fast producer never makes the process grow without end.
final class PubSession: Session {
    enum Status { case connecting, connackReceived, waiting, disconnecting, disconnected, noHope }

    var status = Status.connecting
    var firstPublish = true
    var midSent: Int32 = -1
    var lastMid: Int32 = -1
    var lastMidSent: Int32 = -1
    var disconnectSent = false
    var publishCount: Int32 = 0
    var readyForRepeat = false
    var nextPublish = timeval()
    /// Published, not yet reported by the publish callback (`-l`).
    var outstanding = 0
    /// `--outbox`: the durable outbox the messages go through.
    var outbox: OutboxSender?

    init() { super.init(kind: .pub, defaultName: "mqtt-pub") }

    func run() -> Int32 {
        loadOptions(usage: { Usage.pub(name) })
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
        if config.outboxDirectory != nil { return runWithOutbox() }
        if config.drainOutbox {
            config.errPrintf("Error: --drain sends what an outbox holds: give the outbox with --outbox DIR.\n")
            return 1
        }
        if config.topic == nil || config.publishMode == .none {
            errorPrintf("Error: Both topic and message must be supplied.\n")
            Usage.pub(name)
            return 1
        }
        if config.encodeMessagePack && !prepareMessagePack() { return 1 }
        guard let m = makeHandle() else { return 1 }
        let connected = config.connect(m)
        if connected != 0 { return config.connectFailureStatus(connected) }

        let rc = config.publishMode == .stdinLine ? lineLoop(m) : otherLoop(m)
        mosquitto_destroy(m)
        if rc != 0 { config.reportRuntimeError(rc, connackReceived: connackReceived) }
        if connackResult == 0 && rc == 0 && skippedLines > 0 { return 1 }
        return connackResult != 0 ? connackResult : rc
    }

    /// The libmosquitto handle with mqtt-pub's callbacks and the options applied; nil (reported) when an option
    /// cannot be applied.
    func makeHandle() -> OpaquePointer? {
        let m = createHandle(invalidIDMessage: "Error: Invalid id.\n")
        installLogCallback(m)
        mosquitto_connect_v5_callback_set(m, PubSession.onConnect)
        mosquitto_disconnect_v5_callback_set(m, PubSession.onDisconnect)
        mosquitto_publish_v5_callback_set(m, PubSession.onPublish)
        return config.apply(to: m) ? m : nil
    }

    /// `--encode msgpack`: the message (`-m`, `-f`, `-s`) is JSON text, sent as MessagePack; invalid JSON is an
    /// error before anything is sent. On MQTT 5 the content type is `application/msgpack` unless `-D` sets one.
    /// `-l` lines are encoded one by one as they are read (``encodeLine(_:)``).
    func prepareMessagePack() -> Bool {
        if config.isV5 {
            var existing: CStr?
            if mosquitto_property_read_string(config.publishProperties, Int32(MQTT_PROP_CONTENT_TYPE.rawValue), &existing, false) == nil {
                _ = mosquitto_property_add_string(&config.publishProperties, Int32(MQTT_PROP_CONTENT_TYPE.rawValue),
                                                  PayloadCoding.msgpackContentType)
            }
            free(existing)
        }
        switch config.publishMode {
        case .command, .file, .stdinFile:
            let json = config.message.map { Array(UnsafeRawBufferPointer(start: $0, count: Int(config.messageLength))) } ?? []
            switch PayloadCoding.encode(json: json) {
            case .success(let bytes):
                let buffer = malloc(max(1, bytes.count))!
                bytes.withUnsafeBytes { buffer.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
                config.message = buffer
                config.messageLength = Int32(bytes.count)
                return true
            case .failure(let error):
                error.description.withCString { config.errPrintf("Error: --encode msgpack: the message is not valid JSON: %s.\n", $0) }
                return false
            }
        default:
            return true
        }
    }

    /// Lines of `-l` that were not JSON with `--encode msgpack` (reported and skipped; the exit status is then 1).
    var skippedLines = 0
    var lineNumber = 0

    /// One `-l` line as MessagePack; nil (reported) when it is not JSON.
    func encodeLine(_ line: ArraySlice<UInt8>) -> [UInt8]? {
        lineNumber += 1
        switch PayloadCoding.encode(json: Array(line)) {
        case .success(let bytes): return bytes
        case .failure(let error):
            skippedLines += 1
            error.description.withCString {
                config.errPrintf("Error: --encode msgpack: line %d is not valid JSON (%s); not sent.\n", Int32(lineNumber), $0)
            }
            return nil
        }
    }

    static func session(_ obj: UnsafeMutableRawPointer?) -> PubSession {
        Unmanaged<PubSession>.fromOpaque(obj!).takeUnretainedValue()
    }

    /// mosquitto_pub's `my_publish`: with `-D publish topic-alias`, every publish after the first sends no topic.
    func publish(_ m: OpaquePointer, _ payload: UnsafeRawPointer?, _ length: Int32) -> Int32 {
        readyForRepeat = false
        if config.isV5 && config.haveTopicAlias && !firstPublish {
            return mosquitto_publish_v5(m, &midSent, nil, length, payload, config.qos, config.retain, config.publishProperties)
        }
        firstPublish = false
        return mosquitto_publish_v5(m, &midSent, config.topic, length, payload, config.qos, config.retain, config.publishProperties)
    }

    static let onConnect: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?, Int32, Int32, OpaquePointer?) -> Void = { mosq, obj, result, _, _ in
        let s = session(obj)
        guard let mosq else { return }
        s.connackResult = result
        if result == 0 {
            s.connackReceived = true
            s.firstPublish = true
            if s.outbox != nil {
                // The outbox's loop publishes what it holds.
                s.status = .connackReceived
                return
            }
            var rc: Int32 = 0
            switch s.config.publishMode {
            case .command, .file, .stdinFile:
                rc = s.publish(mosq, s.config.message, s.config.messageLength)
            case .null:
                rc = s.publish(mosq, nil, 0)
            case .stdinLine:
                s.status = .connackReceived
            case .none:
                break
            }
            if rc != 0 {
                switch rc {
                case MOSQ_ERR_INVAL.rawValue: s.config.errPrintf("Error: Invalid input. Does your topic contain '+' or '#'?\n")
                case MOSQ_ERR_NOMEM.rawValue: s.config.errPrintf("Error: Out of memory when trying to publish message.\n")
                case MOSQ_ERR_NO_CONN.rawValue: s.config.errPrintf("Error: Client not connected when trying to publish.\n")
                case MOSQ_ERR_PROTOCOL.rawValue: s.config.errPrintf("Error: Protocol error when communicating with broker.\n")
                case MOSQ_ERR_PAYLOAD_SIZE.rawValue: s.config.errPrintf("Error: Message payload is too large.\n")
                case MOSQ_ERR_QOS_NOT_SUPPORTED.rawValue: s.config.errPrintf("Error: Message QoS not supported on broker, try a lower QoS.\n")
                default: break
                }
                _ = mosquitto_disconnect_v5(mosq, 0, s.config.disconnectProperties)
            }
        } else {
            s.config.reportConnack(result)
            s.status = .noHope
        }
    }

    static let onDisconnect: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?, Int32, OpaquePointer?) -> Void = { _, obj, rc, _ in
        let s = session(obj)
        if rc == 0 {
            s.status = .disconnected
        } else if s.status != .noHope {
            s.status = .connecting
        }
    }

    static let onPublish: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?, Int32, Int32, OpaquePointer?) -> Void = { mosq, obj, mid, reason, properties in
        let s = session(obj)
        guard let mosq else { return }
        s.lastMidSent = mid
        s.outstanding -= 1
        if reason > 127 {
            s.config.errPrintf("Warning: Publish %d failed: %s.\n", mid, mosquitto_reason_string(reason))
            var text: CStr?
            _ = mosquitto_property_read_string(properties, Int32(MQTT_PROP_REASON_STRING.rawValue), &text, false)
            if let text {
                s.config.errPrintf("%s\n", text)
                free(text)
            }
        }
        s.publishCount += 1
        if let outbox = s.outbox {
            // Settled, acknowledged or refused (reported above): it leaves the outbox.
            outbox.published(mid: mid)
            return
        }
        if s.config.publishMode == .stdinLine {
            if mid == s.lastMid {
                _ = mosquitto_disconnect_v5(mosq, 0, s.config.disconnectProperties)
                s.disconnectSent = true
            }
        } else if s.publishCount < s.config.repeatCount {
            s.readyForRepeat = true
            s.setRepeatTime()
        } else if !s.disconnectSent {
            _ = mosquitto_disconnect_v5(mosq, 0, s.config.disconnectProperties)
            s.disconnectSent = true
        }
    }

    func setRepeatTime() {
        gettimeofday(&nextPublish, nil)
        nextPublish.tv_sec += config.repeatDelay.tv_sec
        nextPublish.tv_usec += config.repeatDelay.tv_usec
        nextPublish.tv_sec += nextPublish.tv_usec / 1_000_000
        nextPublish.tv_usec = nextPublish.tv_usec % 1_000_000
    }

    func repeatTimeReached() -> Bool {
        var now = timeval()
        gettimeofday(&now, nil)
        if now.tv_sec > nextPublish.tv_sec { return true }
        return now.tv_sec == nextPublish.tv_sec && now.tv_usec > nextPublish.tv_usec
    }

    /// `-m`, `-f`, `-s`, `-n` (with `--repeat`): mosquitto_pub's loop.
    func otherLoop(_ m: OpaquePointer) -> Int32 {
        var delay: Int32 = 1000
        if config.repeatCount > 1 && (config.repeatDelay.tv_sec == 0 || config.repeatDelay.tv_usec != 0) {
            delay = Int32(config.repeatDelay.tv_usec / 2000)
        }
        var rc: Int32
        repeat {
            rc = mosquitto_loop(m, delay, 1)
            if readyForRepeat && repeatTimeReached() {
                rc = 0
                switch config.publishMode {
                case .command, .file, .stdinFile: rc = publish(m, config.message, config.messageLength)
                case .null: rc = publish(m, nil, 0)
                default: break
                }
                if rc != 0 && rc != MOSQ_ERR_NO_CONN.rawValue {
                    config.errPrintf("Error sending repeat publish: %s", mosquitto_strerror(rc))
                }
            }
        // Until libmosquitto reports the connection gone, as mosquitto_pub's loop does: a DISCONNECT queued inside
        // the PUBACK/PUBCOMP callback is written by the next pass, and leaving at once lost it (the broker then
        // published the will).
        } while rc == 0
        return status == .disconnected ? 0 : rc
    }

    /// `-l`: one message per line of standard input, then a DISCONNECT once the last one is acknowledged.
    func lineLoop(_ m: OpaquePointer) -> Int32 {
        let window = max(1000, Int(config.maxInflight) * 2)
        var reader = LineReader()
        var stdinFinished = false
        var rc: Int32 = 0
        var reconnectAt: timespec?
        while true {
            if status == .noHope { return Int32(MOSQ_ERR_CONN_REFUSED.rawValue) }
            if status == .disconnected { return 0 }
            if disconnectSent && mosquitto_socket(m) < 0 { return status == .disconnected ? 0 : rc }

            let socket = mosquitto_socket(m)
            if socket < 0 {
                // The connection is gone: reconnect after a second, as libmosquitto's network thread would.
                var now = timespec()
                clock_gettime(CLOCK_MONOTONIC, &now)
                if let at = reconnectAt, now.tv_sec < at.tv_sec || (now.tv_sec == at.tv_sec && now.tv_nsec < at.tv_nsec) {
                    var pause = timespec(tv_sec: 0, tv_nsec: 100_000_000)
                    nanosleep(&pause, nil)
                    continue
                }
                reconnectAt = nil
                status = .connecting
                if config.reconnect(m) != 0 {
                    reconnectAt = timespec(tv_sec: now.tv_sec + 1, tv_nsec: now.tv_nsec)
                }
                continue
            }
            let readStdin = status == .connackReceived && !stdinFinished && outstanding < window
            var fds = [pollfd(fd: socket, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: 0, events: Int16(POLLIN), revents: 0)]
            if mosquitto_want_write(m) { fds[0].events |= Int16(POLLOUT) }
            let count: nfds_t = readStdin ? 2 : 1
            let ready = poll(&fds, count, 1000)
            if ready < 0 && errno != EINTR { return Int32(MOSQ_ERR_ERRNO.rawValue) }

            if fds[0].revents & Int16(POLLIN | POLLERR | POLLHUP) != 0 {
                rc = mosquitto_loop_read(m, 1)
                if rc != 0 { lost(rc, &reconnectAt); continue }
            }
            if mosquitto_want_write(m) {
                rc = mosquitto_loop_write(m, 1)
                if rc != 0 { lost(rc, &reconnectAt); continue }
            }
            rc = mosquitto_loop_misc(m)
            if rc != 0 && rc != MOSQ_ERR_NO_CONN.rawValue { lost(rc, &reconnectAt); continue }

            if readStdin && fds[1].revents != 0 {
                let eof = reader.fill()
                while status == .connackReceived, let line = reader.nextLine(final: eof) {
                    var encoded: [UInt8]?
                    if config.encodeMessagePack {
                        encoded = encodeLine(line)
                        if encoded == nil { continue }
                    }
                    let r = encoded.map { e in e.withUnsafeBytes { publish(m, $0.baseAddress, Int32($0.count)) } }
                        ?? line.withUnsafeBytes { publish(m, $0.baseAddress, Int32($0.count)) }
                    outstanding += 1
                    if r != 0 && r != MOSQ_ERR_NO_CONN.rawValue { return r }
                }
                if eof && !reader.hasPending {
                    if midSent == -1 {
                        _ = mosquitto_disconnect_v5(m, 0, config.disconnectProperties)
                        disconnectSent = true
                        status = .disconnecting
                    } else {
                        lastMid = midSent
                        status = .waiting
                    }
                    stdinFinished = true
                }
            }
            if stdinFinished && status == .connackReceived { status = .waiting }
            if status == .waiting && lastMidSent == lastMid && !disconnectSent {
                _ = mosquitto_disconnect_v5(m, 0, config.disconnectProperties)
                disconnectSent = true
            }
        }
    }

    /// A lost connection in `-l` mode: reconnect a second later, unless the DISCONNECT was already on its way.
    private func lost(_ rc: Int32, _ reconnectAt: inout timespec?) {
        if disconnectSent { return }
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        reconnectAt = timespec(tv_sec: now.tv_sec + 1, tv_nsec: now.tv_nsec)
        status = .connecting
        _ = rc
    }
}

/// Standard input split into lines as mosquitto_pub splits them: the `\n` is dropped, a `\r` stays, empty lines are
/// messages too, and a last line without `\n` is published at the end.
struct LineReader {
    private var buffer: [UInt8] = []
    private var start = 0
    private var scanned = 0

    var hasPending: Bool { start < buffer.count }

    /// Reads one block of standard input; true at end of input.
    mutating func fill() -> Bool {
        if start > 0 && start >= buffer.count / 2 {
            buffer.removeFirst(start)
            scanned -= start
            start = 0
        }
        let old = buffer.count
        let chunk = 65536
        buffer.append(contentsOf: repeatElement(0, count: chunk))
        var n = 0
        buffer.withUnsafeMutableBytes { raw in
            repeat { n = read(0, raw.baseAddress! + old, chunk) } while n < 0 && errno == EINTR
        }
        buffer.removeLast(chunk - max(0, n))
        return n <= 0
    }

    /// The next complete line, or at the end of input (`final`) what is left.
    mutating func nextLine(final: Bool) -> ArraySlice<UInt8>? {
        var k = max(scanned, start)
        let end = buffer.count
        while k < end {
            if buffer[k] == 10 {
                let line = buffer[start..<k]
                start = k + 1
                scanned = start
                return line
            }
            k += 1
        }
        scanned = end
        if final && start < end {
            let line = buffer[start..<end]
            start = end
            scanned = end
            return line
        }
        return nil
    }
}
