import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOWebSocket
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Where and how to reach a broker's MQTT-over-WebSockets listener.
package struct WebSocketEndpoint: Sendable, Hashable {
    /// The broker's host name or address.
    package var host: String
    /// The broker's WebSocket port.
    package var port: Int
    /// The HTTP path of the upgrade request (`/mqtt` by default, as mosquitto's clients use).
    package var path: String
    /// Extra HTTP headers of the upgrade request (for example `Authorization`), in order.
    package var headers: [WebSocketHeader]
    /// TLS (`wss`), or nil for `ws`.
    package var tls: WebSocketTLS?
    /// How long the TCP connect, the TLS handshake and the HTTP upgrade may take together.
    package var timeout: Duration

    package init(host: String, port: Int, path: String = "/mqtt", headers: [WebSocketHeader] = [],
                 tls: WebSocketTLS? = nil, timeout: Duration = .seconds(30)) {
        self.host = host
        self.port = port
        self.path = path
        self.headers = headers
        self.tls = tls
        self.timeout = timeout
    }

    /// `ws://host:port/path` or `wss://…`, for messages.
    package var url: String {
        let h = host.contains(":") ? "[\(host)]" : host
        return "\(tls == nil ? "ws" : "wss")://\(h):\(port)\(path)"
    }
}

/// One HTTP header of the upgrade request.
package struct WebSocketHeader: Sendable, Hashable {
    package var name: String
    package var value: String
    package init(name: String, value: String) {
        self.name = name
        self.value = value
    }
}

/// TLS settings of a `wss` connection, in libmosquitto's vocabulary (files in PEM).
package struct WebSocketTLS: Sendable, Hashable {
    package var caFile: String?
    package var caDirectory: String?
    package var certificateFile: String?
    package var keyFile: String?
    /// Check the broker's host name against its certificate (off only with `--insecure`).
    package var verifyHostname: Bool
    /// Trust the operating system's CA store (also used when no CA file or directory is given).
    package var useSystemCertificates: Bool
    /// `tlsv1.3`, `tlsv1.2` or `tlsv1.1`: the lowest version accepted.
    package var minimumVersion: String?
    /// An OpenSSL cipher list.
    package var ciphers: String?
    /// The ALPN protocol to offer.
    package var alpn: String?

    package init(caFile: String? = nil, caDirectory: String? = nil, certificateFile: String? = nil, keyFile: String? = nil,
                 verifyHostname: Bool = true, useSystemCertificates: Bool = false, minimumVersion: String? = nil,
                 ciphers: String? = nil, alpn: String? = nil) {
        self.caFile = caFile
        self.caDirectory = caDirectory
        self.certificateFile = certificateFile
        self.keyFile = keyFile
        self.verifyHostname = verifyHostname
        self.useSystemCertificates = useSystemCertificates
        self.minimumVersion = minimumVersion
        self.ciphers = ciphers
        self.alpn = alpn
    }
}

/// Why a WebSocket tunnel could not be opened: a kind to map onto the caller's error codes, and a sentence.
package struct WebSocketFailure: Error, Sendable, CustomStringConvertible {
    package enum Kind: Sendable, Hashable {
        /// TCP failed: refused, unreachable, or the name did not resolve (`errno` when the system gave one).
        case connectionFailed(errno: Int32?)
        /// The server answered the upgrade with this HTTP status instead of 101.
        case rejected(status: Int)
        /// The server did not complete a WebSocket upgrade for MQTT: not HTTP, no `mqtt` subprotocol, a bad
        /// `Sec-WebSocket-Accept`, or it closed the connection without an answer.
        case notWebSocket
        /// The server closed the connection without answering the upgrade (a plain MQTT port, a TLS port spoken to
        /// without TLS, or a server going down): possibly transient.
        case closedWithoutAnswer
        /// The TLS handshake failed, or a certificate or key file could not be used.
        case tls
        /// Connect, handshake and upgrade took longer than the endpoint's timeout.
        case timeout
        /// The settings cannot be used (for example an unknown TLS version).
        case invalidConfiguration
        /// The local socket could not be made.
        case system(errno: Int32?)
        /// ``WebSocketUpgradeCancellation/cancel()`` ended the attempt (the caller is shutting down).
        case cancelled
    }
    package var kind: Kind
    package var message: String
    package init(_ kind: Kind, _ message: String) {
        self.kind = kind
        self.message = message
    }
    package var description: String { message }
}

/// Ends a WebSocket connection attempt from another thread: the thread blocked in
/// ``WebSocketTunnel/open(to:logger:cancellation:)`` gets a ``WebSocketFailure/Kind/cancelled`` failure at once,
/// instead of waiting out the endpoint's timeout (30 s by default) for a server that accepted TCP and never answers
/// the upgrade. Cancelling is final: later attempts with it fail at once, as a client that is shutting down wants.
package final class WebSocketUpgradeCancellation: Sendable {
    private struct State {
        var cancelled = false
        var attempt: EventLoopPromise<Void>?
    }
    private let state = NIOLockedValueBox(State())

    package init() {}

    /// Fails the attempt under way, if any, and every later one.
    package func cancel() {
        let attempt = state.withLockedValue { s -> EventLoopPromise<Void>? in
            s.cancelled = true
            defer { s.attempt = nil }
            return s.attempt
        }
        attempt?.fail(Self.failure)
    }

    /// Whether ``cancel()`` was called.
    package var isCancelled: Bool { state.withLockedValue { $0.cancelled } }

    static let failure = WebSocketFailure(.cancelled, "The WebSocket connection attempt was abandoned: the client is shutting down.")

    /// Makes `attempt` the one ``cancel()`` fails; false when already cancelled.
    func begin(_ attempt: EventLoopPromise<Void>) -> Bool {
        state.withLockedValue { s in
            if s.cancelled { return false }
            s.attempt = attempt
            return true
        }
    }

    func end() {
        state.withLockedValue { $0.attempt = nil }
    }
}

/// A private tunnel that lets libmosquitto 2.0.11, which cannot frame WebSockets, speak MQTT over WebSockets.
///
/// ``open(to:logger:)`` first performs the WebSocket upgrade with the broker (HTTP/1.1 `GET`, subprotocol `mqtt`),
/// so that every refusal is reported before libmosquitto is involved. Then it listens on a Unix socket in a new
/// directory of mode 0700 (made with `mkdtemp`, so only this user can reach it) and returns its path: libmosquitto
/// connects there with port 0. The first connection accepted closes the listener and removes the socket file and its
/// directory, so nothing is left listening. From then on, every byte libmosquitto writes leaves as one masked binary
/// frame, and the payload of every binary, text or continuation frame from the broker is written to libmosquitto:
/// MQTT is a byte stream, so frame boundaries do not matter and a packet of any size survives fragmentation.
/// Pings are answered; a close frame is answered and ends the tunnel.
///
/// Either side ending ends the other: a dead WebSocket closes libmosquitto's socket, which then sees a lost
/// connection (and the caller reconnects, with a new tunnel and a new upgrade). Backpressure crosses the tunnel:
/// a side whose peer cannot take more stops reading.
package final class WebSocketTunnel: Sendable {
    /// The Unix socket libmosquitto connects to (host = this path, port = 0).
    package let socketPath: String
    private let webSocket: Channel
    private let server: Channel
    private let directory: String

    /// Set once libmosquitto's connection was accepted.
    private let accepted: AcceptedFlag

    private init(socketPath: String, webSocket: Channel, server: Channel, directory: String, accepted: AcceptedFlag) {
        self.socketPath = socketPath
        self.webSocket = webSocket
        self.server = server
        self.directory = directory
        self.accepted = accepted
    }

    final class AcceptedFlag: Sendable {
        let value = Atomic<Bool>(false)
    }

    /// How many frames all tunnels sent to brokers (for tests: a big message leaves as many frames).
    package static let framesSent = Atomic<Int>(0)
    /// How many data frames all tunnels received from brokers (for tests: mosquitto sends a big message in many).
    package static let framesReceived = Atomic<Int>(0)

    /// The largest WebSocket frame accepted from the broker: the largest MQTT packet (256 MiB) plus its header.
    static let maximumFrameSize = 268_435_455 + 5 + 14

    /// Connects to the broker, performs the WebSocket upgrade and opens the local socket. Blocks the calling thread,
    /// which must not be a SwiftNIO event loop, until the upgrade is done, fails, times out, or `cancellation` is
    /// cancelled.
    package static func open(to endpoint: WebSocketEndpoint, logger: Logger? = nil,
                             cancellation: WebSocketUpgradeCancellation? = nil) throws(WebSocketFailure) -> WebSocketTunnel {
        let sslContext: NIOSSLContext?
        if let tls = endpoint.tls { sslContext = try makeSSLContext(tls) } else { sslContext = nil }
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let upgraded = loop.makePromise(of: Void.self)
        let timeoutTask = loop.scheduleTask(in: .nanoseconds(Int64(endpoint.timeout / .nanoseconds(1)))) {
            upgraded.fail(WebSocketFailure(.timeout, "\(endpoint.url): no WebSocket upgrade within \(endpoint.timeout); is the broker reachable and is this its WebSocket port?"))
        }
        defer { timeoutTask.cancel() }
        let sniName = isIPAddress(endpoint.host) ? nil : endpoint.host
        let bootstrap = ClientBootstrap(group: loop)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.nanoseconds(Int64(endpoint.timeout / .nanoseconds(1))))
            .channelInitializer { channel in
                do {
                    let sync = channel.pipeline.syncOperations
                    if let sslContext {
                        try sync.addHandler(try NIOSSLClientHandler(context: sslContext, serverHostname: sniName))
                    }
                    let upgrader = NIOWebSocketClientUpgrader(
                        maxFrameSize: maximumFrameSize, automaticErrorHandling: false
                    ) { channel, response in
                        upgradeCompleted(channel: channel, response: response, endpoint: endpoint, promise: upgraded)
                    }
                    try sync.addHTTPClientHandlers(
                        leftOverBytesStrategy: .forwardBytes,
                        withClientUpgrade: (upgraders: [upgrader], completionHandler: { _ in })
                    )
                    try sync.addHandler(UpgradeWatcher(endpoint: endpoint, promise: upgraded), name: UpgradeWatcher.name)
                    return channel.eventLoop.makeSucceededVoidFuture()
                } catch {
                    return channel.eventLoop.makeFailedFuture(error)
                }
            }
        // One wait covers connect, TLS and upgrade, so that the timeout and a cancellation end any of them.
        let connecting = bootstrap.connect(host: endpoint.host, port: endpoint.port)
        connecting.whenComplete { result in
            switch result {
            case .failure(let error):
                upgraded.fail(connectFailure(error, endpoint: endpoint))
            case .success(let channel):
                var head = HTTPRequestHead(version: .http1_1, method: .GET, uri: endpoint.path)
                let hostHeader = endpoint.host.contains(":") ? "[\(endpoint.host)]" : endpoint.host
                head.headers.add(name: "Host", value: "\(hostHeader):\(endpoint.port)")
                head.headers.add(name: "Sec-WebSocket-Protocol", value: "mqtt")
                for h in endpoint.headers { head.headers.add(name: h.name, value: h.value) }
                channel.write(HTTPClientRequestPart.head(head), promise: nil)
                channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
            }
        }
        if let cancellation, !cancellation.begin(upgraded) {
            upgraded.fail(WebSocketUpgradeCancellation.failure)
        }
        let channel: Channel
        do {
            try upgraded.futureResult.wait()
            cancellation?.end()
            // The upgrade completed in the channel's pipeline, so the connect succeeded.
            channel = try connecting.wait()
        } catch {
            cancellation?.end()
            // Now or whenever a connect still under way completes: nothing is left open.
            connecting.whenSuccess { $0.close(promise: nil) }
            if let failure = error as? WebSocketFailure { throw failure }
            throw classify(error, endpoint: endpoint)
        }
        logger?.debug("WebSocket upgrade done", metadata: ["url": "\(endpoint.url)"])

        // The local side: a Unix socket in a private directory, for exactly one connection.
        let directory: String
        do {
            directory = try makePrivateDirectory()
        } catch {
            channel.close(promise: nil)
            throw error
        }
        let path = directory + "/mqtt.sock"
        let serverBox = NIOLockedValueBox<Channel?>(nil)
        let accepted = AcceptedFlag()
        let server: Channel
        do {
            server = try ServerBootstrap(group: channel.eventLoop)
                .serverChannelOption(.backlog, value: 1)
                .childChannelInitializer { local in
                    // Runs on `channel`'s event loop (the child group is that loop): pair the two sides there.
                    // Stop listening once this child is set up (closing the server channel from inside its own
                    // accept fails the child's registration, so it waits for the next turn of the loop).
                    removeSocket(path: path, directory: directory)
                    local.eventLoop.execute { serverBox.withLockedValue { $0 }?.close(promise: nil) }
                    do {
                        let ws = try channel.pipeline.syncOperations.handler(type: WebSocketSide.self)
                        guard ws.attach(local) else { return local.eventLoop.makeFailedFuture(ChannelError.alreadyClosed) }
                        try local.pipeline.syncOperations.addHandler(LocalSide(webSocket: channel))
                        accepted.value.store(true, ordering: .releasing)
                        return local.eventLoop.makeSucceededVoidFuture()
                    } catch {
                        return local.eventLoop.makeFailedFuture(error)
                    }
                }
                .bind(unixDomainSocketPath: path).wait()
        } catch {
            channel.close(promise: nil)
            removeSocket(path: path, directory: directory)
            throw WebSocketFailure(.system(errno: (error as? IOError)?.errnoCode), "Could not open the private socket for the WebSocket connection (\(error)).")
        }
        serverBox.withLockedValue { $0 = server }
        // A tunnel whose WebSocket died before libmosquitto connected: stop listening too.
        channel.closeFuture.whenComplete { _ in
            server.close(promise: nil)
            removeSocket(path: path, directory: directory)
        }
        return WebSocketTunnel(socketPath: path, webSocket: channel, server: server, directory: directory, accepted: accepted)
    }

    /// Ends the tunnel: closes the WebSocket (which closes libmosquitto's side) and the listener, if still open.
    /// Safe to call more than once.
    package func close() {
        webSocket.close(promise: nil)
        server.close(promise: nil)
        Self.removeSocket(path: socketPath, directory: directory)
    }

    /// Ends the tunnel after libmosquitto closed its socket: waits (at most `timeout`) until what libmosquitto wrote
    /// last, DISCONNECT typically, has left in frames and the close frame went after it, then closes. Closing at once
    /// could drop those bytes, and the broker would then publish the client's will. Blocks; not on an event loop.
    /// The default `timeout` is a little longer than the broker's own allowance (``WebSocketSide/brokerCloseWait``).
    package func finish(timeout: Duration = .seconds(11)) {
        if accepted.value.load(ordering: .acquiring) {
            let channel = webSocket
            let timer = channel.eventLoop.scheduleTask(in: .nanoseconds(Int64(timeout / .nanoseconds(1)))) {
                channel.close(promise: nil)
            }
            try? channel.closeFuture.wait()
            timer.cancel()
        }
        close()
    }

    /// Blocks until the WebSocket side closed: the broker or libmosquitto's side ended, or `alive`, asked every
    /// `interval`, said no (``WebSocketTunnelHelper``: its tool is gone).
    package func waitUntilClosed(checkingEvery interval: Duration, while alive: @escaping @Sendable () -> Bool) {
        let channel = webSocket
        let check = channel.eventLoop.scheduleRepeatedTask(initialDelay: .milliseconds(Int64(interval / .milliseconds(1))),
                                                           delay: .milliseconds(Int64(interval / .milliseconds(1)))) { _ in
            if !alive() { channel.close(promise: nil) }
        }
        try? channel.closeFuture.wait()
        check.cancel()
    }

    /// Whether the WebSocket side is still open (for tests).
    package var isOpen: Bool { webSocket.isActive }

    // MARK: Upgrade

    /// The upgrader's pipeline step: the response was 101 with a valid accept key; check the subprotocol and
    /// install the tunnel's WebSocket side.
    private static func upgradeCompleted(channel: Channel, response: HTTPResponseHead, endpoint: WebSocketEndpoint,
                                         promise: EventLoopPromise<Void>) -> EventLoopFuture<Void> {
        let protocols = response.headers[canonicalForm: "Sec-WebSocket-Protocol"].map { $0.lowercased() }
        guard protocols.contains("mqtt") else {
            let got = protocols.isEmpty ? "none" : protocols.joined(separator: ", ")
            let failure = WebSocketFailure(.notWebSocket, "\(endpoint.url) accepted the WebSocket upgrade without the subprotocol 'mqtt' (it chose \(got)): it is not an MQTT WebSocket endpoint; check the path.")
            promise.fail(failure)
            return channel.eventLoop.makeFailedFuture(failure)
        }
        do {
            let sync = channel.pipeline.syncOperations
            if let watcher = try? sync.handler(type: UpgradeWatcher.self) {
                sync.removeHandler(watcher, promise: nil)
            }
            try sync.addHandler(WebSocketSide())
            promise.succeed()
            return channel.eventLoop.makeSucceededVoidFuture()
        } catch {
            promise.fail(error)
            return channel.eventLoop.makeFailedFuture(error)
        }
    }

    private static func makeSSLContext(_ tls: WebSocketTLS) throws(WebSocketFailure) -> NIOSSLContext {
        var c = TLSConfiguration.makeClientConfiguration()
        if let caFile = tls.caFile {
            c.trustRoots = .file(caFile)
            if let dir = tls.caDirectory { c.additionalTrustRoots.append(.file(dir)) }
        } else if let dir = tls.caDirectory {
            c.trustRoots = .file(dir)
        } else {
            c.trustRoots = .default
        }
        if tls.useSystemCertificates && (tls.caFile != nil || tls.caDirectory != nil) {
            // NIOSSL has no "default plus files": add the system bundle as a further trust root when it exists.
            for bundle in ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"]
            where access(bundle, R_OK) == 0 {
                c.additionalTrustRoots.append(.file(bundle))
                break
            }
        }
        if !tls.verifyHostname { c.certificateVerification = .noHostnameVerification }
        switch tls.minimumVersion?.lowercased() {
        case nil: break
        case "tlsv1.3": c.minimumTLSVersion = .tlsv13
        case "tlsv1.2": c.minimumTLSVersion = .tlsv12
        case "tlsv1.1": c.minimumTLSVersion = .tlsv11
        case let v?: throw WebSocketFailure(.invalidConfiguration, "Unknown TLS version '\(v)': use tlsv1.3, tlsv1.2 or tlsv1.1.")
        }
        if let ciphers = tls.ciphers { c.cipherSuites = ciphers }
        if let alpn = tls.alpn { c.applicationProtocols = [alpn] }
        do {
            if let cert = tls.certificateFile {
                c.certificateChain = try NIOSSLCertificate.fromPEMFile(cert).map { .certificate($0) }
            }
            if let key = tls.keyFile {
                c.privateKey = .privateKey(try NIOSSLPrivateKey(file: key, format: .pem))
            }
            return try NIOSSLContext(configuration: c)
        } catch {
            throw WebSocketFailure(.tls, "Could not set up TLS for the WebSocket connection: \(error). Check the CA file or directory, and the client certificate and key files.")
        }
    }

    // MARK: Errors

    private static func connectFailure(_ error: any Error, endpoint: WebSocketEndpoint) -> WebSocketFailure {
        if let f = error as? WebSocketFailure { return f }
        var errnoCode: Int32?
        if let e = error as? IOError {
            errnoCode = e.errnoCode
        } else if let e = error as? NIOConnectionError {
            errnoCode = e.connectionErrors.compactMap { ($0.error as? IOError)?.errnoCode }.first
            if errnoCode == nil && e.connectionErrors.isEmpty {
                return WebSocketFailure(.connectionFailed(errno: nil), "Connecting to \(endpoint.url): the host name '\(endpoint.host)' could not be resolved.")
            }
        } else if case ChannelError.connectTimeout = error {
            return WebSocketFailure(.timeout, "Connecting to \(endpoint.url): no answer within \(endpoint.timeout).")
        }
        if let errnoCode {
            let text = String(cString: strerror(errnoCode))
            if errnoCode == ECONNREFUSED {
                return WebSocketFailure(.connectionFailed(errno: errnoCode), "Connecting to \(endpoint.url): connection refused (\(text)). Is the broker running and listening for WebSockets on that host and port?")
            }
            return WebSocketFailure(.connectionFailed(errno: errnoCode), "Connecting to \(endpoint.url): \(text).")
        }
        return WebSocketFailure(.connectionFailed(errno: nil), "Connecting to \(endpoint.url): \(error).")
    }

    /// An error raised in the pipeline during the TLS handshake or the upgrade.
    static func classify(_ error: any Error, endpoint: WebSocketEndpoint) -> WebSocketFailure {
        if let f = error as? WebSocketFailure { return f }
        if error is NIOSSLError || error is BoringSSLError || error is NIOSSLExtraError {
            return WebSocketFailure(.tls, "\(endpoint.url): TLS failed (\(error)). Check the CA file, the broker's certificate and host name, and that the port is a wss (TLS) WebSocket listener.")
        }
        if error is HTTPParserError {
            return WebSocketFailure(.notWebSocket, "\(endpoint.url) did not answer the WebSocket upgrade in HTTP (\(error)): is it a plain MQTT port rather than a WebSocket one? \(endpoint.tls == nil ? "Or a TLS port (use wss)?" : "")")
        }
        if let e = error as? IOError, e.errnoCode == ECONNRESET || e.errnoCode == EPIPE {
            let hint = endpoint.tls == nil ? "is it a WebSocket port (not plain MQTT or TLS)?" : "is it a wss (TLS WebSocket) port?"
            return WebSocketFailure(.closedWithoutAnswer, "\(endpoint.url) closed the connection without answering the WebSocket upgrade (\(String(cString: strerror(e.errnoCode)))): \(hint)")
        }
        if let e = error as? NIOHTTPClientUpgradeError {
            return WebSocketFailure(.notWebSocket, "\(endpoint.url) did not complete the WebSocket upgrade (\(e)): it is not a WebSocket endpoint.")
        }
        return WebSocketFailure(.notWebSocket, "\(endpoint.url): the WebSocket upgrade failed (\(error)).")
    }

    static func httpStatusFailure(_ head: HTTPResponseHead, endpoint: WebSocketEndpoint) -> WebSocketFailure {
        let status = Int(head.status.code)
        let line = "HTTP \(status) \(head.status.reasonPhrase)"
        let advice: String
        switch status {
        case 401: advice = "the server wants HTTP authentication: add an Authorization header."
        case 403: advice = "the server refused access to this path."
        case 404: advice = "no WebSocket endpoint at path '\(endpoint.path)'; check the path (mosquitto's listeners take any path, many brokers use /mqtt)."
        case 200..<300: advice = "this is a plain HTTP server, not an MQTT WebSocket endpoint; check the port and path."
        case 300..<400:
            let location = head.headers.first(name: "Location").map { " to \($0)" } ?? ""
            advice = "the server redirects\(location); connect there instead."
        case 500..<600: advice = "the server (or a proxy in front of the broker) failed; try again later."
        default: advice = "it did not accept the WebSocket upgrade."
        }
        return WebSocketFailure(.rejected(status: status), "\(endpoint.url) answered the WebSocket upgrade with \(line) instead of 101 Switching Protocols: \(advice)")
    }

    // MARK: Files

    private static func makePrivateDirectory() throws(WebSocketFailure) -> String {
        var base = "/tmp"
        if let t = getenv("TMPDIR"), t.pointee != 0 { base = String(cString: t) }
        // sockaddr_un holds 108 bytes: fall back to /tmp when TMPDIR is deep.
        if base.utf8.count > 70 { base = "/tmp" }
        var template = Array("\(base)/mqtt-ws.XXXXXX".utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) != nil }
        guard made else {
            let e = errno
            throw WebSocketFailure(.system(errno: e), "Could not create a private directory for the WebSocket connection's socket in \(base): \(String(cString: strerror(e))).")
        }
        return template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }

    static func removeSocket(path: String, directory: String) {
        unlink(path)
        rmdir(directory)
    }

    private static func isIPAddress(_ host: String) -> Bool {
        var v4 = in_addr()
        var v6 = in6_addr()
        return inet_pton(AF_INET, host, &v4) == 1 || inet_pton(AF_INET6, host, &v6) == 1
    }
}

/// Watches the HTTP response during the upgrade: a status other than 101, an HTTP parser error, a TLS error or an
/// early close fails the upgrade with a sentence. Removed once the upgrade succeeded.
final class UpgradeWatcher: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart
    static let name = "mqtt-ws-upgrade-watcher"
    private let endpoint: WebSocketEndpoint
    private let promise: EventLoopPromise<Void>

    init(endpoint: WebSocketEndpoint, promise: EventLoopPromise<Void>) {
        self.endpoint = endpoint
        self.promise = promise
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .head(let head) = unwrapInboundIn(data) {
            promise.fail(WebSocketTunnel.httpStatusFailure(head, endpoint: endpoint))
            context.close(promise: nil)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        promise.fail(WebSocketTunnel.classify(error, endpoint: endpoint))
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        let hint = endpoint.tls == nil
            ? "is it a WebSocket port (not plain MQTT or TLS)?"
            : "is it a wss (TLS WebSocket) port?"
        promise.fail(WebSocketFailure(.closedWithoutAnswer, "\(endpoint.url) closed the connection without answering the WebSocket upgrade: \(hint)"))
        context.fireChannelInactive()
    }
}

/// The broker's side of the tunnel: frames in, payload bytes to libmosquitto's socket.
final class WebSocketSide: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame
    private var local: Channel?
    /// Bytes that arrived before libmosquitto connected.
    private var early: [ByteBuffer] = []
    private var closeSent = false
    private var ended = false
    private var needsFlush = false

    /// Pairs the tunnel with libmosquitto's connection; false when the tunnel already ended or is paired.
    func attach(_ channel: Channel) -> Bool {
        guard local == nil, !ended else { return false }
        local = channel
        for b in early { channel.write(b, promise: nil) }
        if !early.isEmpty { channel.flush() }
        early = []
        return true
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .binary, .continuation, .text:
            WebSocketTunnel.framesReceived.add(1, ordering: .relaxed)
            let bytes = frame.unmaskedData
            if let local {
                local.write(bytes, promise: nil)
                needsFlush = true
            } else {
                early.append(bytes)
            }
        case .ping:
            let pong = WebSocketFrame(fin: true, opcode: .pong, maskKey: .random(), data: frame.unmaskedData)
            context.writeAndFlush(wrapOutboundOut(pong), promise: nil)
        case .connectionClose:
            if !closeSent {
                closeSent = true
                var reply = frame.unmaskedData
                let code = reply.readSlice(length: min(2, reply.readableBytes)) ?? context.channel.allocator.buffer(capacity: 0)
                let close = WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: .random(), data: code)
                let channel = context.channel
                context.writeAndFlush(wrapOutboundOut(close)).whenComplete { _ in channel.close(promise: nil) }
            } else {
                context.close(promise: nil)
            }
        default:
            break
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if needsFlush {
            needsFlush = false
            local?.flush()
        }
        context.fireChannelReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        local?.setOption(ChannelOptions.autoRead, value: context.channel.isWritable).whenFailure { _ in }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        ended = true
        local?.close(promise: nil)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    /// How long the broker gets to close the connection after the close frame before the tunnel closes it.
    ///
    /// Only a broker that is up but never answers the close frame costs this much; one that answers ends the wait.
    /// It was two seconds, which a loaded machine can outlast: a loaded ThreadSanitizer run saw a clean shutdown's
    /// will published, as when the tunnel closes before the broker has read the DISCONNECT in front of the close frame.
    static let brokerCloseWait: TimeAmount = .seconds(10)

    /// Sends a close frame (normal closure) once, when libmosquitto's side ended, and lets the broker close the
    /// connection (RFC 6455: the server closes TCP first). Closing at once raced the broker: mosquitto 2.0.11 reads its
    /// WebSocket connections once per turn of its loop, and when it saw the end of the connection before the frames
    /// in front of it, it dropped them, DISCONNECT included, and published the client's will. If the broker has
    /// not closed within ``brokerCloseWait``, the tunnel does.
    func localEnded(context: ChannelHandlerContext) {
        guard !closeSent, context.channel.isActive else { context.close(promise: nil); return }
        closeSent = true
        var code = context.channel.allocator.buffer(capacity: 2)
        code.writeInteger(UInt16(1000))
        let close = WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: .random(), data: code)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(close)).whenFailure { _ in channel.close(promise: nil) }
        context.eventLoop.scheduleTask(in: Self.brokerCloseWait) { channel.close(promise: nil) }
    }
}

/// libmosquitto's side of the tunnel: bytes in, one masked binary frame per read to the broker.
final class LocalSide: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    private let webSocket: Channel
    private var needsFlush = false

    init(webSocket: Channel) {
        self.webSocket = webSocket
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = unwrapInboundIn(data)
        let frame = WebSocketFrame(fin: true, opcode: .binary, maskKey: .random(), data: bytes)
        webSocket.write(frame, promise: nil)
        WebSocketTunnel.framesSent.add(1, ordering: .relaxed)
        needsFlush = true
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if needsFlush {
            needsFlush = false
            webSocket.flush()
        }
        context.fireChannelReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        webSocket.setOption(ChannelOptions.autoRead, value: context.channel.isWritable).whenFailure { _ in }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        // Both channels live on one event loop, so the WebSocket side can be reached synchronously.
        if let ws = try? webSocket.pipeline.syncOperations.handler(type: WebSocketSide.self),
           let wsContext = try? webSocket.pipeline.syncOperations.context(handlerType: WebSocketSide.self) {
            ws.localEnded(context: wsContext)
        } else {
            webSocket.close(promise: nil)
        }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
