#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import MosquittoPOSIX

/// `--ws`: the WebSocket tunnel runs in `mqtt-ws-tunnel`, a helper program next to the tool, so that the tools'
/// plain-MQTT path does not load SwiftNIO and BoringSSL (`WebSocketTunnelHelper` in MQTTWebSocket has the other
/// side of the conversation).
///
/// The tool starts the helper with the endpoint as arguments and reads one line: `OK <socket path>`, where
/// libmosquitto then connects, or `ERR <kind> <number> <sentence>`. The tools connect and reconnect from one thread.
final class WebSocketHelper {
    /// Why the tunnel could not be opened: the helper's kind name, its errno or HTTP status, and its sentence.
    struct Failure: Error {
        var kind: String
        var number: Int32
        var message: String
    }

    let pid: pid_t
    /// The Unix socket libmosquitto connects to.
    let socketPath: String

    private init(pid: pid_t, socketPath: String) {
        self.pid = pid
        self.socketPath = socketPath
    }

    /// The helper program: `mqtt-ws-tunnel` in the directory of this program's executable (symbolic links resolved).
    static var helperPath: String {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard n > 0 else { return "mqtt-ws-tunnel" }
        let exe = String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        guard let slash = exe.lastIndex(of: "/") else { return "mqtt-ws-tunnel" }
        return String(exe[..<slash]) + "/mqtt-ws-tunnel"
    }

    /// Starts the helper and waits for its answer (it enforces the upgrade's timeout itself).
    static func open(arguments: [String]) -> Result<WebSocketHelper, Failure> {
        let path = helperPath
        guard access(path, X_OK) == 0 else {
            return .failure(Failure(kind: "missing", number: errno, message: "--ws needs the program mqtt-ws-tunnel next to this one (\(path): \(String(cString: strerror(errno)))); scripts/build-cli.sh --install DIR installs it with the tools."))
        }
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else {
            return .failure(Failure(kind: "system", number: errno, message: "Could not start mqtt-ws-tunnel: \(String(cString: strerror(errno)))."))
        }
        // Its standard output is the pipe, its standard error ours; nothing else of this process's is inherited (an
        // outbox's lock, say, which a helper outliving a killed tool would hold).
        let pid: pid_t
        do throws(SpawnError) {
            pid = try spawnChild(path, arguments, standardOutputDescriptor: fds[1], standardErrorDescriptor: STDERR_FILENO)
        } catch {
            closeDescriptor(fds[1])
            closeDescriptor(fds[0])
            return .failure(Failure(kind: "system", number: error.code, message: "Could not start \(path): \(String(cString: strerror(error.code)))."))
        }
        closeDescriptor(fds[1])
        // One line: read until the newline or the end.
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while true {
            let n = read(fds[0], &byte, 1)
            if n == 1 {
                if byte == UInt8(ascii: "\n") { break }
                line.append(byte)
            } else if n < 0 && errno == EINTR {
                continue
            } else {
                break
            }
        }
        closeDescriptor(fds[0])
        let text = String(decoding: line, as: UTF8.self)
        if text.hasPrefix("OK "), text.count > 3 {
            return .success(WebSocketHelper(pid: pid, socketPath: String(text.dropFirst(3))))
        }
        let helper = WebSocketHelper(pid: pid, socketPath: "")
        helper.close()
        let parts = text.split(separator: " ", maxSplits: 3, omittingEmptySubsequences: false)
        if parts.count == 4, parts[0] == "ERR", let number = Int32(parts[2]) {
            return .failure(Failure(kind: String(parts[1]), number: number, message: String(parts[3])))
        }
        return .failure(Failure(kind: "system", number: 0, message: "mqtt-ws-tunnel ended without opening the WebSocket connection (\(helper.exitDescription))."))
    }

    private var status: Int32?

    /// How the helper ended, for messages.
    private var exitDescription: String {
        guard let status else { return "still running" }
        if status & 0x7f == 0 { return "exit status \((status >> 8) & 0xff)" }
        return "signal \(status & 0x7f)"
    }

    /// Ends the helper now (a new connection replaces this one, or the tool gave up on it).
    func close() {
        guard status == nil else { return }
        kill(pid, SIGKILL)
        reap(block: true)
    }

    /// Lets the helper carry what libmosquitto wrote last (DISCONNECT) and end by itself (at most `seconds`), then
    /// ends it: exiting at once dropped the DISCONNECT, and the broker then published the client's will. The default
    /// outlasts the helper's own wait for the broker's close (the tunnel's `finish`, 11 s), so the helper is killed
    /// only when the broker never answered; a loaded machine can make a broker take seconds to close.
    func finish(seconds: Int = 12) {
        let deadline = time(nil) + seconds
        while status == nil && time(nil) <= deadline {
            reap(block: false)
            if status == nil { usleep(5_000) }
        }
        close()
    }

    private func reap(block: Bool) {
        var s: Int32 = 0
        while true {
            let r = waitpid(pid, &s, block ? 0 : WNOHANG)
            if r == pid { status = s; return }
            if r < 0 && errno == EINTR { continue }
            if r < 0 { status = -1 }
            return
        }
    }
}

/// `close(2)`, out of reach of ``WebSocketHelper/close()``'s name.
private func closeDescriptor(_ fd: Int32) {
    _ = close(fd)
}

/// The WebSocket tunnel of the current connection (`--ws`). The tools connect and reconnect from one thread.
enum WebSocketConnection {
    nonisolated(unsafe) static var tunnel: WebSocketHelper?

    /// Lets the tunnel carry what libmosquitto wrote last (DISCONNECT) before the process exits: exiting at once
    /// dropped it, and the broker then published the client's will.
    static func finish() {
        tunnel?.finish()
        tunnel = nil
    }
}
