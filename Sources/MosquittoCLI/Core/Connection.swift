#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CMosquitto

/// Setting up the libmosquitto handle and connecting, as mosquitto's `client_opts_set` and `client_connect` do,
/// and the messages for what went wrong.
extension ClientConfig {
    /// `clientid_generate`: `-I prefix` becomes `prefix` + the process id.
    func generateClientID() {
        if let idPrefix {
            id = cString(String(cString: idPrefix) + String(getpid()))
        }
    }

    /// Applies every option to the handle (`client_opts_set`). False after printing an error.
    func apply(to mosq: OpaquePointer) -> Bool {
        _ = mosquitto_int_option(mosq, MOSQ_OPT_PROTOCOL_VERSION, protocolVersion)
        if let willTopic,
           mosquitto_will_set_v5(mosq, willTopic, willPayloadLength, willPayload, willQoS, willRetain, willProperties) != 0 {
            errPrintf("Error: Problem setting will.\n")
            return false
        }
        willProperties = nil  // the handle owns them now
        if (username != nil || password != nil) && mosquitto_username_pw_set(mosq, username, password) != 0 {
            errPrintf("Error: Problem setting username and/or password.\n")
            return false
        }
        if !applyTLS(to: mosq) { return false }
        _ = mosquitto_max_inflight_messages_set(mosq, maxInflight)
        if let socksHost {
            let rc = mosquitto_socks5_set(mosq, socksHost, socksPort, socksUsername, socksPassword)
            if rc != 0 { return false }
        }
        if tcpNoDelay { _ = mosquitto_int_option(mosq, MOSQ_OPT_TCP_NODELAY, 1) }
        if messageCount > 0 && messageCount < 20 {
            // libmosquitto's receive maximum is 20: without this, more than -C messages could arrive before the
            // client disconnects.
            _ = mosquitto_int_option(mosq, MOSQ_OPT_RECEIVE_MAXIMUM, messageCount)
        }
        return true
    }

    var usesTLS: Bool { !noTLS && (caFile != nil || caPath != nil || psk != nil || tlsUseOSCerts || port == 8883) }

    private func applyTLS(to mosq: OpaquePointer) -> Bool {
        // Over WebSockets, TLS (wss) is the tunnel's: libmosquitto speaks plain MQTT to the tunnel's Unix socket.
        if noTLS || webSockets { return true }
        // A TLS context of our own, with libmosquitto's defaults applied to it, when there is something to add:
        // the broker's host name checked by OpenSSL itself (so that a wrong name fails the handshake with the
        // "bad certificate" alert, as mosquitto 2.1 does), the reason a certificate was refused, and --tls-keylog.
        // (Not with --psk: libmosquitto 2.0.11 only registers its per-connection TLS data when it creates the
        // context itself, and its PSK callback needs that data.)
        if (caFile != nil || caPath != nil), let ctx = TLSContext.make(config: self) {
            _ = mosquitto_void_option(mosq, MOSQ_OPT_SSL_CTX, UnsafeMutableRawPointer(ctx))
            _ = mosquitto_int_option(mosq, MOSQ_OPT_SSL_CTX_WITH_DEFAULTS, 1)
        } else if tlsKeylog != nil && usesTLS {
            errPrintf("Warning: --tls-keylog needs --cafile or --capath with libmosquitto 2.0.11; no keys are logged.\n")
        }
        if caFile != nil || caPath != nil {
            let rc = mosquitto_tls_set(mosq, caFile, caPath, certFile, keyFile, nil)
            if rc != 0 {
                if rc == MOSQ_ERR_INVAL.rawValue {
                    errPrintf("Error: Problem setting TLS options: File not found.\n")
                } else {
                    errPrintf("Error: Problem setting TLS options: %s.\n", mosquitto_strerror(rc))
                }
                return false
            }
        } else if let psk {
            if mosquitto_tls_psk_set(mosq, psk, pskIdentity, nil) != 0 {
                errPrintf("Error: Problem setting TLS-PSK options.\n")
                return false
            }
        } else if port == 8883 {
            _ = mosquitto_int_option(mosq, MOSQ_OPT_TLS_USE_OS_CERTS, 1)
        }
        if tlsUseOSCerts { _ = mosquitto_int_option(mosq, MOSQ_OPT_TLS_USE_OS_CERTS, 1) }
        if insecure && mosquitto_tls_insecure_set(mosq, true) != 0 {
            errPrintf("Error: Problem setting TLS insecure option.\n")
            return false
        }
        if let tlsEngine, mosquitto_string_option(mosq, MOSQ_OPT_TLS_ENGINE, tlsEngine) != 0 {
            errPrintf("Error: Problem setting TLS engine, is %s a valid engine?\n", tlsEngine)
            return false
        }
        if let keyForm, mosquitto_string_option(mosq, MOSQ_OPT_TLS_KEYFORM, keyForm) != 0 {
            errPrintf("Error: Problem setting key form, it must be one of 'pem' or 'engine'.\n")
            return false
        }
        if let sha = tlsEngineKeyPasswordSHA1, mosquitto_string_option(mosq, MOSQ_OPT_TLS_ENGINE_KPASS_SHA1, sha) != 0 {
            errPrintf("Error: Problem setting TLS engine key pass sha, is it a 40 character hex string?\n")
            return false
        }
        if let tlsALPN, mosquitto_string_option(mosq, MOSQ_OPT_TLS_ALPN, tlsALPN) != 0 {
            errPrintf("Error: Problem setting TLS ALPN protocol.\n")
            return false
        }
        if (tlsVersion != nil || ciphers != nil) && mosquitto_tls_opts_set(mosq, insecure ? 0 : 1, tlsVersion, ciphers) != 0 {
            errPrintf("Error: Problem setting TLS options, check the options are valid.\n")
            return false
        }
        return true
    }

    /// The port to connect to: given, or 8883 with --cafile, --capath or --psk, else 1883.
    var effectivePort: Int32 {
        if port != -1 { return port }
        return (caFile != nil || caPath != nil || psk != nil) ? 8883 : 1883
    }

    /// `client_connect`: the blocking connect. Returns libmosquitto's code; a failure is already reported.
    func connect(_ mosq: OpaquePointer) -> Int32 {
        signal(SIGPIPE, SIG_IGN)
        if webSockets { return connectWebSocket(mosq) }
        let rc = mosquitto_connect_bind_v5(mosq, host, effectivePort, keepalive, bindAddress, connectProperties)
        if rc > 0 {
            if rc == MOSQ_ERR_ERRNO.rawValue {
                errPrintf("Error: %s\n", strerror(errno))
            } else if rc == MOSQ_ERR_TLS.rawValue {
                // A handshake that fails inside the connect: the same report, and the same exit code 8, as when it
                // fails a moment later in the loop (mosquitto_pub exits 1 or 8 depending on that timing).
                reportRuntimeError(rc, connackReceived: false)
            } else {
                errPrintf("Unable to connect (%s).\n", mosquitto_strerror(rc))
            }
        }
        return rc
    }

    /// The exit status for a failed connect: 8 for TLS (always), 13 for a refused WebSocket upgrade (mosquitto 2.1's
    /// clients end with MOSQ_ERR_UNKNOWN there), else 1 as mosquitto's clients.
    func connectFailureStatus(_ rc: Int32) -> Int32 {
        rc == MOSQ_ERR_TLS.rawValue || rc == MOSQ_ERR_UNKNOWN.rawValue ? rc : 1
    }

    /// Reconnects after a lost connection: over WebSockets with a new tunnel (a fresh upgrade; the old socket file
    /// is gone), else `mosquitto_reconnect`.
    func reconnect(_ mosq: OpaquePointer) -> Int32 {
        webSockets ? connectWebSocket(mosq, quiet: true) : mosquitto_reconnect(mosq)
    }

    /// `--ws` and `ws(s)://`: libmosquitto 2.0.11 cannot frame WebSockets, so a tunnel (``WebSocketHelper``, the
    /// `mqtt-ws-tunnel` program) performs the upgrade (path /mqtt, subprotocol mqtt, TLS for wss) and libmosquitto
    /// connects to its private Unix socket. Returns libmosquitto's code, or for a failed upgrade the code mosquitto
    /// 2.1's clients exit with: 1 when the connection is refused (MOSQ_ERR_ERRNO), 8 for TLS, 13 (MOSQ_ERR_UNKNOWN)
    /// when the server refuses the upgrade.
    private func connectWebSocket(_ mosq: OpaquePointer, quiet: Bool = false) -> Int32 {
        WebSocketConnection.tunnel?.close()
        WebSocketConnection.tunnel = nil
        if psk != nil {
            errPrintf("Error: TLS-PSK is not available over WebSockets; use --cafile or --capath.\n")
            return Int32(MOSQ_ERR_NOT_SUPPORTED.rawValue)
        }
        let tunnel: WebSocketHelper
        switch WebSocketHelper.open(arguments: webSocketArguments) {
        case .success(let t): tunnel = t
        case .failure(let failure):
            if !quiet { failure.message.withCString { errPrintf("Error: %s\n", $0) } }
            switch failure.kind {
            case "connectionFailed", "system":
                if failure.number != 0 { errno = failure.number }
                return Int32(MOSQ_ERR_ERRNO.rawValue)
            case "tls": return Int32(MOSQ_ERR_TLS.rawValue)
            case "invalidConfiguration": return Int32(MOSQ_ERR_INVAL.rawValue)
            case "missing": return Int32(MOSQ_ERR_NOT_SUPPORTED.rawValue)
            default: return Int32(MOSQ_ERR_UNKNOWN.rawValue)  // rejected, notWebSocket, closedWithoutAnswer, timeout
            }
        }
        WebSocketConnection.tunnel = tunnel
        let rc = mosquitto_connect_bind_v5(mosq, tunnel.socketPath, 0, keepalive, nil, connectProperties)
        if rc > 0 && !quiet { errPrintf("Unable to connect (%s).\n", mosquitto_strerror(rc)) }
        return rc
    }

    /// Where `--ws` connects, as `mqtt-ws-tunnel`'s arguments: the host and port given (1883, or 8883 with
    /// --cafile/--capath), path /mqtt, and the TLS options when TLS is on.
    var webSocketArguments: [String] {
        func s(_ c: CStr?) -> String? { c.map { String(cString: $0) } }
        var a = ["--host", s(host) ?? "localhost", "--port", String(effectivePort), "--path", "/mqtt",
                 "--timeout-ms", String(Int(max(keepalive, 10)) * 1000)]
        if usesTLS {
            a.append("--tls")
            func add(_ flag: String, _ value: CStr?) { if let v = s(value) { a += [flag, v] } }
            add("--cafile", caFile)
            add("--capath", caPath)
            add("--cert", certFile)
            add("--key", keyFile)
            if insecure { a.append("--insecure") }
            if tlsUseOSCerts || (caFile == nil && caPath == nil) { a.append("--os-certs") }
            add("--tls-version", tlsVersion)
            add("--ciphers", ciphers)
            add("--alpn", tlsALPN)
        }
        return a
    }

    /// mosquitto's final `Error: <mosquitto_strerror(rc)>` line, with what actually failed for TLS errors and for a
    /// connection lost before the broker answered.
    func reportRuntimeError(_ rc: Int32, connackReceived: Bool) {
        if rc == MOSQ_ERR_TLS.rawValue {
            errPrintf("Error: A TLS error occurred: %s\n", cString(TLSDiagnosis.explain(config: self)))
        } else if rc == MOSQ_ERR_CONN_LOST.rawValue && !connackReceived && !usesTLS && effectivePort != 0 {
            errPrintf("Error: The connection was lost before the broker answered the CONNECT: if port %d is a TLS listener, give --cafile, --capath or --tls-use-os-certs.\n",
                      effectivePort)
        } else {
            errPrintf("Error: %s\n", mosquitto_strerror(rc))
        }
    }

    /// The text for a refused CONNACK.
    func reportConnack(_ result: Int32, rr: Bool = false) {
        if rr {
            errPrintf("Connection error: %s\n", mosquitto_reason_string(result))
        } else if isV5 {
            if result == Int32(MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION.rawValue) {
                errPrintf("Connection error: %s. Try connecting to an MQTT v5 broker, or use MQTT v3.x mode.\n", mosquitto_reason_string(result))
            } else {
                errPrintf("Connection error: %s\n", mosquitto_reason_string(result))
            }
        } else {
            errPrintf("Connection error: %s\n", mosquitto_connack_string(result))
        }
    }
}

/// libmosquitto's log lines: printed with `-d` (`printf("%s\n", line)`, as mosquitto's clients), and the
/// OpenSSL errors among them kept to say why a TLS connection failed.
let logCallback: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?, Int32, UnsafePointer<CChar>?) -> Void = { _, obj, _, line in
    guard let line else { return }
    if let obj, Unmanaged<Session>.fromOpaque(obj).takeUnretainedValue().config.debug {
        outString(line)
        outByte(10)
    }
    if strncmp(line, "OpenSSL Error", 13) == 0 { TLSDiagnosis.openSSLErrors.append(String(cString: line)) }
}

/// Why a TLS connection failed.
enum TLSDiagnosis {
    nonisolated(unsafe) static var openSSLErrors: [String] = []
    /// The certificate check's error (X509_V_ERR_*), 0 when none failed.
    nonisolated(unsafe) static var verifyError: Int32 = 0
    nonisolated(unsafe) static var verifyErrorText: String = ""

    static func explain(config: ClientConfig) -> String {
        let host = config.host.map { String(cString: $0) } ?? "localhost"
        if verifyError != 0 {
            let reason = verifyErrorText
            switch verifyError {
            case 62, 64:  // X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
                return "the broker's certificate is not for \"\(host)\" (\(reason)); connect with a name the certificate was issued for, or use --insecure for testing only."
            case 10:  // X509_V_ERR_CERT_HAS_EXPIRED
                return "the broker's certificate has expired (\(reason))."
            case 9:  // X509_V_ERR_CERT_NOT_YET_VALID
                return "the broker's certificate is not valid yet (\(reason)); check the clocks."
            default:
                return "the broker's certificate is not trusted (\(reason)); check that --cafile or --capath holds the CA that signed it."
            }
        }
        let all = Array(openSSLErrors.joined(separator: " ").utf8)
        func mentions(_ text: String) -> Bool { find(Array(text.utf8), in: all) != nil }
        // "OpenSSL Error[0]: error:0A00010B:SSL routines::wrong version number" -> "wrong version number"
        let detail = openSSLErrors.last.map { line -> String in
            let bytes = Array(line.utf8)
            var start = 0
            var k = 0
            while let found = find(Array("::".utf8), in: Array(bytes[k...])) {
                start = k + found + 2
                k = start
            }
            return String(decoding: bytes[start...], as: UTF8.self)
        }
        if mentions("wrong version number") || mentions("unexpected eof") || mentions("packet length too long")
            || mentions("record layer failure") || openSSLErrors.isEmpty {
            let port = config.effectivePort
            return "the broker at \(host) port \(port) did not answer in TLS\(detail.map { " (\($0))" } ?? ""); is it a plain MQTT port? Use the broker's TLS port, or leave out --cafile/--capath/--psk."
        }
        if mentions("certificate verify failed") {
            return "the broker's certificate was refused (\(detail ?? "certificate verify failed")); check --cafile/--capath and the host name."
        }
        if mentions("alert") {
            return "the broker refused the TLS handshake (\(detail ?? "alert")); check --cert/--key, --tls-version and --ciphers."
        }
        return "\(detail ?? "handshake failed")."
    }

    /// Where `needle` starts in `haystack`.
    static func find(_ needle: [UInt8], in haystack: [UInt8]) -> Int? {
        guard !needle.isEmpty, haystack.count >= needle.count else { return nil }
        var k = 0
        while k + needle.count <= haystack.count {
            if haystack[k] == needle[0] && Array(haystack[k..<k + needle.count]) == needle { return k }
            k += 1
        }
        return nil
    }
}

/// The optional OpenSSL context (functions looked up at run time in the libssl that libmosquitto loaded).
enum TLSContext {
    typealias NewContext = @convention(c) (OpaquePointer?) -> OpaquePointer?
    typealias ClientMethod = @convention(c) () -> OpaquePointer?
    typealias GetParameters = @convention(c) (OpaquePointer?) -> OpaquePointer?
    typealias SetHost = @convention(c) (OpaquePointer?, UnsafePointer<CChar>?, Int) -> Int32
    typealias SetIP = @convention(c) (OpaquePointer?, UnsafePointer<CChar>?) -> Int32
    typealias VerifyCallback = @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?) -> Int32
    typealias SetVerifyCallback = @convention(c) (OpaquePointer?, VerifyCallback?, UnsafeMutableRawPointer?) -> Void
    typealias VerifyCertificate = @convention(c) (OpaquePointer?) -> Int32
    typealias GetError = @convention(c) (OpaquePointer?) -> Int32
    typealias ErrorString = @convention(c) (Int) -> UnsafePointer<CChar>?
    typealias ChainCallback = @convention(c) (Int32, OpaquePointer?) -> Int32
    typealias SetChainCallback = @convention(c) (OpaquePointer?, ChainCallback?) -> Void
    typealias KeylogCallback = @convention(c) (OpaquePointer?, UnsafePointer<CChar>?) -> Void
    typealias SetKeylogCallback = @convention(c) (OpaquePointer?, KeylogCallback?) -> Void

    static func function<T>(_ name: String, _ type: T.Type) -> T? {
        guard let p = dlsym(nil, name) else { return nil }
        return unsafeBitCast(p, to: T.self)
    }

    nonisolated(unsafe) static var keylogPath: CStr?

    /// A new context for `config`, or nil (then libmosquitto makes its own, as before).
    static func make(config: ClientConfig) -> OpaquePointer? {
        guard let new = function("SSL_CTX_new", NewContext.self),
              let method = function("TLS_client_method", ClientMethod.self),
              let ctx = new(method()) else { return nil }
        if !config.insecure && config.psk == nil, let host = config.host,
           let parameters = function("SSL_CTX_get0_param", GetParameters.self).map({ $0(ctx) }) {
            var v4 = in_addr()
            var v6 = in6_addr()
            if inet_pton(AF_INET, host, &v4) == 1 || inet_pton(AF_INET6, host, &v6) == 1 {
                _ = function("X509_VERIFY_PARAM_set1_ip_asc", SetIP.self)?(parameters, host)
            } else {
                _ = function("X509_VERIFY_PARAM_set1_host", SetHost.self)?(parameters, host, 0)
            }
        }
        if let setVerify = function("SSL_CTX_set_cert_verify_callback", SetVerifyCallback.self) {
            setVerify(ctx, verifyCertificate, nil)
        }
        if let path = config.tlsKeylog, let setKeylog = function("SSL_CTX_set_keylog_callback", SetKeylogCallback.self) {
            keylogPath = path
            setKeylog(ctx, keylog)
        }
        return ctx
    }

    /// Runs OpenSSL's own certificate check (chain, validity, and the host name set on the context) and keeps the
    /// reason it failed. libmosquitto 2.0.11's own per-certificate callback is replaced for this check: it looks up
    /// its client through TLS data that it only registers for contexts it creates, so with this context it would
    /// refuse every certificate.
    static let verifyCertificate: VerifyCallback = { store, _ in
        guard let verify = function("X509_verify_cert", VerifyCertificate.self) else { return 0 }
        function("X509_STORE_CTX_set_verify_cb", SetChainCallback.self)?(store, acceptOpenSSLVerdict)
        let ok = verify(store)
        if ok != 1, let getError = function("X509_STORE_CTX_get_error", GetError.self) {
            let e = getError(store)
            TLSDiagnosis.verifyError = e
            if let text = function("X509_verify_cert_error_string", ErrorString.self)?(Int(e)) {
                TLSDiagnosis.verifyErrorText = String(cString: text)
            }
        }
        return ok
    }

    /// Keeps OpenSSL's verdict for each certificate of the chain.
    static let acceptOpenSSLVerdict: ChainCallback = { ok, _ in ok }

    /// `--tls-keylog`: appends each key line (NSS key log format) to the file, as mosquitto 2.1 does.
    static let keylog: KeylogCallback = { _, line in
        guard let line, let path = TLSContext.keylogPath, let file = fopen(path, "at") else { return }
        fputs(line, file)
        fputc(10, file)
        fclose(file)
    }
}

