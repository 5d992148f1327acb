import Logging
internal import MQTTWebSocket

/// The ``MQTTConfiguration/Transport/webSockets(_:)`` transport: what the network thread needs to open a
/// ``WebSocketTunnel`` for each connection attempt, and the mapping of its failures onto ``MQTTError``.
struct WebSocketTransport: Sendable {
    /// The upgrade's settings; host and port are filled in per attempt (the client may move between endpoints).
    let template: WebSocketEndpoint

    /// The tunnel settings of a configuration, or nil for plain TCP.
    init?(_ config: MQTTConfiguration) {
        guard case .webSockets(let ws) = config.transport else { return nil }
        let tls = config.tls.map { t in
            WebSocketTLS(caFile: t.caFile, caDirectory: t.caDirectory, certificateFile: t.certificateFile, keyFile: t.keyFile,
                         verifyHostname: !t.insecure, useSystemCertificates: t.useSystemCertificates,
                         minimumVersion: t.version, ciphers: t.ciphers, alpn: t.alpn)
        }
        template = WebSocketEndpoint(host: "", port: 0, path: ws.path,
                                     headers: ws.headers.map { WebSocketHeader(name: $0.name, value: $0.value) },
                                     tls: tls, timeout: ws.upgradeTimeout)
    }

    /// Opens a tunnel to `endpoint` (blocking: connect, TLS, upgrade); its socket path is where libmosquitto
    /// connects. `endpoint` is a TCP one: ``MQTTConfiguration`` refuses anything else with WebSockets.
    func open(to endpoint: MQTTConfiguration.Endpoint, logger: Logger,
              cancellation: WebSocketUpgradeCancellation) throws(MQTTError) -> WebSocketTunnel {
        guard case .tcp(let host, let port) = endpoint else {
            throw MQTTError(.invalidArgument, "MQTT over WebSockets needs a host and port, not \(endpoint).")
        }
        var target = template
        target.host = host
        target.port = port
        do {
            return try WebSocketTunnel.open(to: target, logger: logger, cancellation: cancellation)
        } catch {
            throw Self.mqttError(error)
        }
    }

    static func mqttError(_ failure: WebSocketFailure) -> MQTTError {
        switch failure.kind {
        case .connectionFailed(let e): return MQTTError(.connectionFailed, failure.message, systemErrno: e)
        case .rejected(status: 401): return MQTTError(.badCredentials, failure.message, httpStatus: 401)
        case .rejected(status: 403): return MQTTError(.notAuthorized, failure.message, httpStatus: 403)
        case .rejected(status: let status): return MQTTError(.webSocketRejected, failure.message, httpStatus: status)
        case .notWebSocket: return MQTTError(.webSocketRejected, failure.message)
        // Retried like a lost connection: a server going down closes connections too.
        case .closedWithoutAnswer: return MQTTError(.connectionLost, failure.message)
        case .tls: return MQTTError(.tls, failure.message)
        case .timeout: return MQTTError(.timeout, failure.message)
        case .invalidConfiguration: return MQTTError(.invalidArgument, failure.message)
        case .system(let e): return MQTTError(.system, failure.message, systemErrno: e)
        case .cancelled: return MQTTError(.shutDown, failure.message)
        }
    }
}
