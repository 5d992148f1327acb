#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CMosquitto
import Logging
import MQTTOutbox

/// `mqtt-pub --outbox DIR`: every message is stored in a durable outbox (the client library's and mqtt-bridge's
/// format, one implementation) before it is published, and leaves it when the broker acknowledged it.
///
/// - `-m`, `-f`, `-s`, `-n`: the message is stored, then sent. If the broker cannot be reached it stays stored and
///   the exit status is ``storedExitStatus``; a later run or `--drain` sends it, before anything new.
/// - `-l`: each line read is stored before it is published, so `kill -9` loses nothing that was read. Lines are
///   read into the outbox even while the broker is away.
/// - `--drain` (no message): sends what the outbox holds, and exits 0 once the broker acknowledged all of it.
///
/// Messages go out in the order they were stored, at their QoS. A QoS 1/2 message stays in libmosquitto's queue
/// across a reconnect; a QoS 0 one (only from a library outbox) that was not written when the connection dropped is
/// sent again after it.
final class OutboxSender {
    /// The exit status when messages stay stored because the broker could not be reached (sysexits' EX_TEMPFAIL:
    /// try again later). mosquitto_pub's own statuses are 0, 1 and libmosquitto's error codes (below 30).
    static let storedExitStatus: Int32 = 75

    let spool: Spool
    let directory: String
    unowned let session: PubSession
    /// Sequence numbers handed to libmosquitto and not yet settled, in order (`head` is the first live one).
    private var order: [UInt64] = []
    private var head = 0
    private var settled = Set<UInt64>()
    private var byMid: [Int32: UInt64] = [:]
    /// QoS 0 records in flight: a dropped connection may lose them unwritten, and they are then sent again.
    private var atMostOnce: [UInt64: SpoolRecord] = [:]
    /// The connection dropped since the last CONNACK: resend the QoS 0 records still in flight.
    var resendAfterReconnect = false
    private var lastFlush = timespec()

    init(spool: Spool, directory: String, session: PubSession) {
        self.spool = spool
        self.directory = directory
        self.session = session
    }

    /// Opens the outbox, saying clearly what is wrong when it cannot be (exits 1).
    static func open(_ directory: String, config: ClientConfig) -> Spool? {
        var logger = Logger(label: "mqtt-pub.outbox")
        logger.logLevel = .error
        do {
            let spool = try Spool(configuration: SpoolConfiguration(directory: directory, fsync: .interval(.seconds(1))), logger: logger)
            if spool.corruptBytes > 0 {
                directory.withCString {
                    config.errPrintf("Warning: the outbox %s ended in a torn record (%d bytes, a crash in the middle of a write); it was cut off, and every whole message before it is kept.\n",
                                     $0, Int32(spool.corruptBytes))
                }
            }
            return spool
        } catch {
            "\(error)".withCString { config.errPrintf("Error: --outbox: %s\n", $0) }
            return nil
        }
    }

    /// Stores one message to publish at the run's topic, QoS and retain flag.
    func store(_ payload: UnsafeRawBufferPointer) -> Bool {
        store([SpoolRecord(topic: String(cString: session.config.topic!), payload: Array(payload),
                           qosLevel: UInt8(session.config.qos), flags: session.config.retain ? .retain : [])])
    }

    func store(_ records: [SpoolRecord]) -> Bool {
        do {
            try spool.append(records)
            return true
        } catch {
            "\(error)".withCString { session.config.errPrintf("Error: --outbox: the message could not be stored: %s. Nothing was sent.\n", $0) }
            return false
        }
    }

    /// The broker could not be reached: what is stored stays, and the run says so.
    func reportKept() -> Int32 {
        try? spool.flushDone()
        let held = spool.depth.records
        if held == 0 { return 1 }
        let text = "\(held) message\(held == 1 ? "" : "s") kept in the outbox \(directory); a later run, or mqtt-pub --outbox \(directory) --drain, sends \(held == 1 ? "it" : "them").\n"
        text.withCString { session.config.errPrintf("%s: %s", session.name, $0) }
        return Self.storedExitStatus
    }

    /// A message was acknowledged (PUBACK, PUBCOMP, or written at QoS 0): the settled prefix leaves the outbox.
    func published(mid: Int32) {
        guard let seq = byMid.removeValue(forKey: mid) else { return }
        atMostOnce.removeValue(forKey: seq)
        settled.insert(seq)
        var through: UInt64?
        while head < order.count, settled.remove(order[head]) != nil {
            through = order[head]
            head += 1
        }
        if head > 4096 && head * 2 > order.count {
            order.removeFirst(head)
            head = 0
        }
        if let through { spool.acknowledge(through: through) }
    }

    private var inFlight: Int { order.count - head - settled.count }

    private func send(_ m: OpaquePointer, _ r: SpoolRecord) -> Int32 {
        var mid: Int32 = 0
        let rc = r.payload.withUnsafeBytes { p in
            mosquitto_publish_v5(m, &mid, r.topic, Int32(p.count), p.baseAddress, Int32(r.qosLevel), r.flags.contains(.retain),
                                 session.config.publishProperties)
        }
        if rc == 0 {
            byMid[mid] = r.sequence
            if r.qosLevel == 0 { atMostOnce[r.sequence] = r }
        }
        return rc
    }

    /// Publishes what the outbox holds (and, with `-l`, stores each line read first) until it is empty and, with
    /// `-l`, the input has ended; then disconnects. Reconnects a second after a lost connection.
    func run(_ m: OpaquePointer) -> Int32 {
        let config = session.config
        let window = max(1000, Int(config.maxInflight) * 2)
        let readsInput = config.publishMode == .stdinLine
        var reader = LineReader()
        var inputFinished = !readsInput
        var reconnectAt: timespec?
        var rc: Int32 = 0
        clock_gettime(CLOCK_MONOTONIC, &lastFlush)
        while true {
            if session.status == .noHope {
                _ = reportKept()
                return session.connackResult != 0 ? session.connackResult : Int32(MOSQ_ERR_CONN_REFUSED.rawValue)
            }
            if session.status == .disconnected { return 0 }
            let socket = mosquitto_socket(m)
            if socket < 0 {
                if session.disconnectSent { return 0 }
                var now = timespec()
                clock_gettime(CLOCK_MONOTONIC, &now)
                if let at = reconnectAt, now.tv_sec < at.tv_sec || (now.tv_sec == at.tv_sec && now.tv_nsec < at.tv_nsec) {
                    if readsInput && !inputFinished {
                        inputFinished = storeInput(&reader, wait: 100)
                    } else {
                        var pause = timespec(tv_sec: 0, tv_nsec: 100_000_000)
                        nanosleep(&pause, nil)
                    }
                    continue
                }
                reconnectAt = nil
                session.status = .connecting
                resendAfterReconnect = true
                if config.reconnect(m) != 0 {
                    reconnectAt = timespec(tv_sec: now.tv_sec + 1, tv_nsec: now.tv_nsec)
                }
                continue
            }
            let readStdin = readsInput && !inputFinished && !spool.isFull
            var fds = [pollfd(fd: socket, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: 0, events: Int16(POLLIN), revents: 0)]
            if mosquitto_want_write(m) { fds[0].events |= Int16(POLLOUT) }
            let ready = poll(&fds, readStdin ? 2 : 1, 20)
            if ready < 0 && errno != EINTR { return Int32(MOSQ_ERR_ERRNO.rawValue) }
            if fds[0].revents & Int16(POLLIN | POLLERR | POLLHUP) != 0 {
                rc = mosquitto_loop_read(m, 1)
                if rc != 0 { lost(&reconnectAt); continue }
            }
            if mosquitto_want_write(m) {
                rc = mosquitto_loop_write(m, 1)
                if rc != 0 { lost(&reconnectAt); continue }
            }
            rc = mosquitto_loop_misc(m)
            if rc != 0 && rc != MOSQ_ERR_NO_CONN.rawValue { lost(&reconnectAt); continue }
            if readStdin && fds[1].revents != 0 {
                inputFinished = storeInput(&reader, wait: 0)
            }
            if session.status == .connackReceived && !session.disconnectSent {
                if resendAfterReconnect {
                    resendAfterReconnect = false
                    for (seq, r) in atMostOnce.sorted(by: { $0.key < $1.key }) {
                        if let old = byMid.first(where: { $0.value == seq })?.key { byMid.removeValue(forKey: old) }
                        _ = send(m, r)
                    }
                }
                let room = window - inFlight
                if room > 0, let records = try? spool.readBatch(maxRecords: min(room, 4096)) {
                    for r in records {
                        order.append(r.sequence)
                        let r2 = send(m, r)
                        if r2 != 0 && r2 != MOSQ_ERR_NO_CONN.rawValue {
                            config.errPrintf("Error: publishing from the outbox: %s\n", mosquitto_strerror(r2))
                        }
                    }
                }
            }
            flushIfDue()
            if inputFinished && spool.depth.records == 0 && session.status == .connackReceived && !session.disconnectSent {
                try? spool.flushDone()
                _ = mosquitto_disconnect_v5(m, 0, config.disconnectProperties)
                session.disconnectSent = true
            }
        }
    }

    /// Reads a block of standard input and stores its lines; returns true at the end of the input.
    private func storeInput(_ reader: inout LineReader, wait milliseconds: Int32) -> Bool {
        if milliseconds > 0 {
            var fd = pollfd(fd: 0, events: Int16(POLLIN), revents: 0)
            if poll(&fd, 1, milliseconds) <= 0 || spool.isFull { return false }
        }
        let eof = reader.fill()
        var records: [SpoolRecord] = []
        let topic = String(cString: session.config.topic!)
        while let line = reader.nextLine(final: eof) {
            var payload = Array(line)
            if session.config.encodeMessagePack {
                guard let encoded = session.encodeLine(line) else { continue }
                payload = encoded
            }
            records.append(SpoolRecord(topic: topic, payload: payload, qosLevel: UInt8(session.config.qos),
                                       flags: session.config.retain ? .retain : []))
        }
        if !records.isEmpty && !store(records) { exit(1) }
        return eof && !reader.hasPending
    }

    /// Reads all of standard input into the outbox (the broker is away).
    func storeAllInput() {
        var reader = LineReader()
        while !storeInput(&reader, wait: 0) {}
    }

    private func flushIfDue() {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let elapsed = (now.tv_sec - lastFlush.tv_sec) * 1000 + (now.tv_nsec - lastFlush.tv_nsec) / 1_000_000
        if elapsed >= 20 {
            lastFlush = now
            try? spool.flushDone()
            spool.syncIfDue()
        }
    }

    private func lost(_ reconnectAt: inout timespec?) {
        if session.disconnectSent { return }
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        reconnectAt = timespec(tv_sec: now.tv_sec + 1, tv_nsec: now.tv_nsec)
        session.status = .connecting
        resendAfterReconnect = true
    }
}

extension PubSession {
    /// `--outbox DIR`: checks the options, stores the message, connects and sends what the outbox holds.
    func runWithOutbox() -> Int32 {
        let directory = config.outboxDirectory!
        if config.drainOutbox {
            if config.publishMode != .none {
                config.errPrintf("Error: --drain sends what the outbox holds and takes no message; leave out -m, -f, -s, -l and -n.\n")
                return 1
            }
        } else {
            if config.topic == nil || config.publishMode == .none {
                errorPrintf("Error: Both topic and message must be supplied (or --drain, to send what the outbox holds).\n")
                Usage.pub(name)
                return 1
            }
            if config.qos == 0 {
                config.errPrintf("Error: --outbox needs -q 1 or -q 2: a QoS 0 message gets no acknowledgement, so the outbox could not tell when to let it go.\n")
                return 1
            }
            if config.repeatCount > 1 {
                config.errPrintf("Error: --repeat cannot be used with --outbox.\n")
                return 1
            }
        }
        if config.encodeMessagePack && !prepareMessagePack() { return 1 }
        guard let spool = OutboxSender.open(directory, config: config) else { return 1 }
        defer { spool.close() }
        let sender = OutboxSender(spool: spool, directory: directory, session: self)
        outbox = sender
        switch config.publishMode {
        case .command, .file, .stdinFile:
            let stored = sender.store(UnsafeRawBufferPointer(start: config.message, count: Int(config.messageLength)))
            if !stored { return 1 }
        case .null:
            if !sender.store(UnsafeRawBufferPointer(start: nil, count: 0)) { return 1 }
        default:
            break
        }
        guard let m = makeHandle() else { return 1 }
        if config.connect(m) != 0 {
            if config.publishMode == .stdinLine { sender.storeAllInput() }
            mosquitto_destroy(m)
            return sender.reportKept()
        }
        let rc = sender.run(m)
        mosquitto_destroy(m)
        if rc != 0 && status != .noHope {
            config.reportRuntimeError(rc, connackReceived: connackReceived)
            _ = sender.reportKept()
        }
        if rc == 0 && skippedLines > 0 { return 1 }
        return rc
    }
}
