#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CMosquitto
import CMosquittoIO
import Synchronization

/// libmosquitto's socket I/O in large blocks (the CMosquittoIO module): one `read` fills 64 KiB, the
/// acknowledgements of a burst leave in one `send`, and libmosquitto's wake-up byte per queued packet is skipped.
/// mosquitto_sub makes four `read`s, three `write`s and a `pselect` per QoS 1 message; with this, the stdout
/// `write` that mosquitto_sub also makes is most of what is left.
enum Batching {
    /// A buffer set bound to this thread, or nil when batching is off: another libmosquitto than the tested
    /// 2.0.11, `MOSQUITTO_SWIFT_SOCKET_BATCHING=off` (or `0`), or an installation that failed its self-check.
    static func start() -> OpaquePointer? {
        // The library's values too (SocketBatching.offSettings): one switch for both.
        if let setting = getenv("MOSQUITTO_SWIFT_SOCKET_BATCHING"), ["0", "off", "false", "no"].contains(String(cString: setting)) {
            return nil
        }
        var major: Int32 = 0, minor: Int32 = 0, revision: Int32 = 0
        mosquitto_lib_version(&major, &minor, &revision)
        guard major == 2 && minor == 0 && revision == 11 else { return nil }
        guard mosq_io_install() == 0, let io = mosq_io_create() else { return nil }
        mosq_io_bind_thread(io)
        return io
    }
}

/// The signal a batched loop has yet to act on (its handler only records it).
let pendingSignal = Atomic<Int32>(0)

/// mosquitto_loop_forever for plain TCP and Unix-socket connections, in one thread, with ``Batching`` when it is
/// available: the same callbacks in the same order, the same reconnects (one second apart), the same return codes.
///
/// Also the loop of every `--ws` connection, batched or not: mosquitto_loop_forever's reconnect would go back to the
/// Unix socket of a tunnel that is gone, while ``reconnect`` makes a new tunnel.
final class BatchedLoop {
    let mosq: OpaquePointer
    /// The batching buffers, or nil for libmosquitto's own reads and writes.
    let io: OpaquePointer?
    /// Set by the owner whenever it asks libmosquitto to disconnect (mosquitto_loop_forever reads the client's
    /// state for this).
    var disconnecting = false
    /// Set by the owner in its CONNACK callback; the connection is attached to the buffers after that packet.
    var connackArrived = false
    private var attached = false
    /// Called with a signal the handler recorded, between passes.
    var onSignal: (Int32) -> Void = { _ in }
    /// Reconnects a lost connection (`mosquitto_reconnect`; over WebSockets a new tunnel, see `ClientConfig.reconnect`).
    var reconnect: (OpaquePointer) -> Int32 = { mosquitto_reconnect($0) }
    /// Called once a second between passes, when set (`--message-rate`).
    var everySecond: (() -> Void)?
    private var nextSecond = monotonicMilliseconds() + 1000

    init(mosq: OpaquePointer, io: OpaquePointer?) {
        self.mosq = mosq
        self.io = io
        if let io { mosq_io_set_connection(io, mosquitto_socket(mosq)) }
    }

    /// Asks libmosquitto to disconnect, letting the DISCONNECT leave the output buffer before the socket closes.
    func disconnect(reason: Int32, properties: OpaquePointer?) {
        disconnecting = true
        if let io { mosq_io_set_linger(io, 2000) }
        _ = mosquitto_disconnect_v5(mosq, reason, properties)
    }

    private func handleSignals() {
        let signal = pendingSignal.exchange(0, ordering: .relaxed)
        if signal != 0 { onSignal(signal) }
    }

    func run() -> Int32 {
        var rc: Int32 = 0
        while true {
            repeat { rc = pass() } while rc == 0
            if let io { mosq_io_detach(io) }
            attached = false
            switch rc {
            case MOSQ_ERR_NOMEM.rawValue, MOSQ_ERR_PROTOCOL.rawValue, MOSQ_ERR_INVAL.rawValue, MOSQ_ERR_NOT_FOUND.rawValue,
                 MOSQ_ERR_TLS.rawValue, MOSQ_ERR_PAYLOAD_SIZE.rawValue, MOSQ_ERR_NOT_SUPPORTED.rawValue, MOSQ_ERR_AUTH.rawValue,
                 MOSQ_ERR_ACL_DENIED.rawValue, MOSQ_ERR_UNKNOWN.rawValue, MOSQ_ERR_EAI.rawValue, MOSQ_ERR_PROXY.rawValue:
                return rc
            default:
                break
            }
            // A connection that ended without being asked to: reconnect a second later, as libmosquitto does.
            repeat {
                handleSignals()
                if disconnecting { return 0 }
                var second = timespec(tv_sec: 1, tv_nsec: 0)
                var left = timespec()
                while nanosleep(&second, &left) != 0 && errno == EINTR {
                    second = left
                    handleSignals()
                    if disconnecting { return 0 }
                }
                connackArrived = false
                rc = reconnect(mosq)
                if let io { mosq_io_set_connection(io, mosquitto_socket(mosq)) }
            } while rc != 0
        }
    }

    /// One pass, as `mosquitto_loop(mosq, -1, 1)`: wait for the socket (at most a second), read every packet that
    /// arrived, write what they made libmosquitto queue, send the buffer, run the keepalive.
    private func pass() -> Int32 {
        handleSignals()
        var wait: Int32 = 1000
        if let everySecond {
            var now = monotonicMilliseconds()
            if now >= nextSecond {
                everySecond()
                nextSecond += 1000
                if nextSecond <= now { nextSecond = now + 1000 }
                now = monotonicMilliseconds()
            }
            wait = Int32(max(0, min(1000, nextSecond - now)))
        }
        let fd = mosquitto_socket(mosq)
        if fd < 0 { return MOSQ_ERR_NO_CONN.rawValue }
        let buffered = io.map { mosq_io_pending_input($0) > 0 } ?? false
        var events = Int16(POLLIN)
        if mosquitto_want_write(mosq) || (io.map { mosq_io_pending_output($0) > 0 } ?? false) { events |= Int16(POLLOUT) }
        var socket = pollfd(fd: fd, events: events, revents: 0)
        let n = poll(&socket, 1, buffered ? 0 : wait)
        if n < 0 {
            if errno == EINTR {
                handleSignals()
                return 0
            }
            return MOSQ_ERR_ERRNO.rawValue
        }
        if socket.revents != 0 || buffered {
            var packets = 0
            repeat {
                let rc = mosquitto_loop_read(mosq, 1)
                if rc != 0 || mosquitto_socket(mosq) < 0 { return rc }
                if connackArrived && !attached, let io {
                    attached = mosq_io_attach(io) == 0
                }
                if mosquitto_want_write(mosq) {
                    let w = mosquitto_loop_write(mosq, 1)
                    if w != 0 || mosquitto_socket(mosq) < 0 { return w }
                }
                packets += 1
            } while attached && packets < 1000 && (io.map { mosq_io_pending_input($0) > 0 } ?? false)
        }
        if mosquitto_want_write(mosq) {
            let w = mosquitto_loop_write(mosq, 1)
            if w != 0 || mosquitto_socket(mosq) < 0 { return w }
        }
        if attached, let io, mosq_io_flush(io) < 0 { return MOSQ_ERR_CONN_LOST.rawValue }
        return mosquitto_loop_misc(mosq)
    }
}

/// CLOCK_MONOTONIC in milliseconds.
func monotonicMilliseconds() -> Int {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
}
