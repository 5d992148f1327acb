#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// `mqtt-ws-tunnel`: a ``WebSocketTunnel`` in a process of its own, for `mqtt-pub`, `mqtt-sub` and `mqtt-rr --ws`.
///
/// The tools start it only for `--ws` and `ws://` URLs, so that their plain-MQTT path does not load SwiftNIO and
/// BoringSSL (the program is five times the size, and its start-up time grows with it). The conversation:
/// - the tool passes the endpoint as arguments (``usage``);
/// - the helper performs the upgrade and prints one line on its standard output: `OK <socket path>`, or
///   `ERR <kind> <number> <sentence>` with a ``WebSocketFailure/Kind`` name and its errno or HTTP status (0 when
///   none), then exits 1;
/// - libmosquitto connects to the socket path, and the helper carries the bytes until either side ends, then exits.
///
/// It ignores SIGINT, SIGTERM and SIGHUP, which a terminal or a service manager sends to the whole process group:
/// the tool decides when the connection ends (its DISCONNECT must still leave through the tunnel), and ends the
/// helper with SIGKILL. When the tool dies, the helper ends within half a second.
package enum WebSocketTunnelHelper {
    /// The helper's program name, found next to the tool's own executable.
    package static let programName = "mqtt-ws-tunnel"

    package static let usage = """
        usage: mqtt-ws-tunnel --host HOST --port PORT [--path PATH] [--timeout-ms N]
                              [--tls [--cafile FILE] [--capath DIR] [--cert FILE] [--key FILE] [--insecure]
                                     [--os-certs] [--tls-version VERSION] [--ciphers LIST] [--alpn PROTOCOL]]

        The WebSocket tunnel of mqtt-pub, mqtt-sub and mqtt-rr (--ws, ws:// and wss://), which start it; not meant to be
        run by hand. It performs the WebSocket upgrade (subprotocol mqtt) with the broker, prints "OK <unix socket
        path>" or "ERR <kind> <number> <reason>", and carries the bytes of the one connection made to that socket.

        """

    /// Runs the helper; returns the exit status.
    package static func run(arguments: [String]) -> Int32 {
        let parent = getppid()
        for s in [SIGINT, SIGTERM, SIGHUP] { signal(s, SIG_IGN) }
        signal(SIGPIPE, SIG_IGN)
        if arguments.contains("--help") || arguments.contains("-h") {
            writeAll(STDOUT_FILENO, usage)
            return 0
        }
        let endpoint: WebSocketEndpoint
        switch parse(arguments) {
        case .success(let e): endpoint = e
        case .failure(let failure):
            answer(failure: failure)
            writeAll(STDERR_FILENO, usage)
            return 2
        }
        let tunnel: WebSocketTunnel
        do {
            tunnel = try WebSocketTunnel.open(to: endpoint)
        } catch {
            answer(failure: error)
            return 1
        }
        answer("OK \(tunnel.socketPath)")
        // Nothing more goes to the tool: it waits for this line only.
        close(STDOUT_FILENO)
        // A tool killed with SIGKILL cannot end its helper: the helper notices that its parent is gone.
        tunnel.waitUntilClosed(checkingEvery: .milliseconds(500)) { getppid() == parent }
        return 0
    }

    /// The arguments of an endpoint, as ``run(arguments:)`` reads them.
    package static func arguments(for endpoint: WebSocketEndpoint) -> [String] {
        var a = ["--host", endpoint.host, "--port", String(endpoint.port), "--path", endpoint.path,
                 "--timeout-ms", String(endpoint.timeout / .milliseconds(1))]
        if let tls = endpoint.tls {
            a.append("--tls")
            func add(_ flag: String, _ value: String?) { if let value { a += [flag, value] } }
            add("--cafile", tls.caFile)
            add("--capath", tls.caDirectory)
            add("--cert", tls.certificateFile)
            add("--key", tls.keyFile)
            if !tls.verifyHostname { a.append("--insecure") }
            if tls.useSystemCertificates { a.append("--os-certs") }
            add("--tls-version", tls.minimumVersion)
            add("--ciphers", tls.ciphers)
            add("--alpn", tls.alpn)
        }
        return a
    }

    static func parse(_ arguments: [String]) -> Result<WebSocketEndpoint, WebSocketFailure> {
        var host: String?, port: Int?, path = "/mqtt", timeoutMS = 30_000
        var tls: WebSocketTLS?
        var i = 0
        func bad(_ why: String) -> Result<WebSocketEndpoint, WebSocketFailure> {
            .failure(WebSocketFailure(.invalidConfiguration, "mqtt-ws-tunnel: \(why)"))
        }
        while i < arguments.count {
            let flag = arguments[i]
            let takesValue = !["--tls", "--insecure", "--os-certs"].contains(flag)
            let value: String? = takesValue && i + 1 < arguments.count ? arguments[i + 1] : nil
            if takesValue && value == nil { return bad("\(flag) needs a value") }
            switch flag {
            case "--host": host = value
            case "--port":
                guard let p = Int(value ?? ""), (1...65535).contains(p) else { return bad("--port needs 1-65535, not '\(value ?? "")'") }
                port = p
            case "--path": path = value ?? path
            case "--timeout-ms":
                guard let t = Int(value ?? ""), t > 0 else { return bad("--timeout-ms needs a positive number") }
                timeoutMS = t
            case "--tls": tls = tls ?? WebSocketTLS()
            case "--cafile": tls = tls ?? WebSocketTLS(); tls?.caFile = value
            case "--capath": tls = tls ?? WebSocketTLS(); tls?.caDirectory = value
            case "--cert": tls = tls ?? WebSocketTLS(); tls?.certificateFile = value
            case "--key": tls = tls ?? WebSocketTLS(); tls?.keyFile = value
            case "--insecure": tls = tls ?? WebSocketTLS(); tls?.verifyHostname = false
            case "--os-certs": tls = tls ?? WebSocketTLS(); tls?.useSystemCertificates = true
            case "--tls-version": tls = tls ?? WebSocketTLS(); tls?.minimumVersion = value
            case "--ciphers": tls = tls ?? WebSocketTLS(); tls?.ciphers = value
            case "--alpn": tls = tls ?? WebSocketTLS(); tls?.alpn = value
            default: return bad("unknown option '\(flag)'")
            }
            i += takesValue ? 2 : 1
        }
        guard let host, let port else { return bad("--host and --port are required") }
        return .success(WebSocketEndpoint(host: host, port: port, path: path, tls: tls, timeout: .milliseconds(timeoutMS)))
    }

    /// The `ERR` line of a failure: its kind's name, the errno or HTTP status (0 when none), and the sentence.
    static func answer(failure: WebSocketFailure) {
        let (name, number): (String, Int) = switch failure.kind {
        case .connectionFailed(let e): ("connectionFailed", Int(e ?? 0))
        case .rejected(let status): ("rejected", status)
        case .notWebSocket: ("notWebSocket", 0)
        case .closedWithoutAnswer: ("closedWithoutAnswer", 0)
        case .tls: ("tls", 0)
        case .timeout: ("timeout", 0)
        case .invalidConfiguration: ("invalidConfiguration", 0)
        case .system(let e): ("system", Int(e ?? 0))
        case .cancelled: ("cancelled", 0)
        }
        let sentence = failure.message.split(whereSeparator: \.isNewline).joined(separator: " ")
        answer("ERR \(name) \(number) \(sentence)")
    }

    private static func answer(_ line: String) {
        writeAll(STDOUT_FILENO, line + "\n")
    }

    private static func writeAll(_ fd: Int32, _ text: String) {
        var bytes = Array(text.utf8)[...]
        while !bytes.isEmpty {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return }
            bytes = bytes.dropFirst(n)
        }
    }
}
