import NIOCore
import NIOPosix
import Prometheus
import Synchronization

/// A minimal HTTP/1.1 server for `/metrics` (Prometheus text format), `/healthz` and `/readyz`.
///
/// It reads one request head per connection, answers, and closes. Requests larger than 8 KiB are refused. A
/// connection that has not sent a whole request head and read the answer within ``Limits/headerTimeout`` is closed
/// (a slowloris client cannot hold it open), and beyond ``Limits/maxConnections`` concurrent connections a new one is closed at once,
/// so a scraper gone wrong cannot use up the bridge's descriptors.
struct HealthServer {
    /// What the endpoints answer: status code and body.
    typealias Responder = @Sendable (_ path: String) -> (status: Int, contentType: String, body: [UInt8])

    /// Bounds on what one client can hold.
    struct Limits: Sendable, Hashable {
        /// How long a connection may stay open: to send its request head and read the answer.
        var headerTimeout: Duration = .seconds(10)
        /// The most concurrent connections.
        var maxConnections = 64
    }

    /// Connections open now, refused by the cap, and closed by the timeout.
    final class Counters: Sendable {
        let open = Atomic<Int>(0)
        let refused: Stat
        let timedOut: Stat

        init(registry: PrometheusCollectorRegistry) {
            refused = Stat(registry.makeCounter(descriptor: metricName(
                "mqtt_bridge_http_connections_refused_total", help: "HTTP connections closed at once: too many were open.")))
            timedOut = Stat(registry.makeCounter(descriptor: metricName(
                "mqtt_bridge_http_timeouts_total", help: "HTTP connections closed because the request took too long.")))
        }
    }

    static func start(host: String, port: Int, group: any EventLoopGroup, limits: Limits = Limits(),
                      counters: Counters, responder: @escaping Responder) async throws -> any Channel {
        try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                // Reserve a slot atomically (accepts may race on different event loops); freed when it closes.
                if counters.open.add(1, ordering: .relaxed).newValue > limits.maxConnections {
                    counters.open.subtract(1, ordering: .relaxed)
                    counters.refused.add()
                    return channel.eventLoop.makeFailedFuture(ConnectionLimitReached())
                }
                channel.closeFuture.whenComplete { _ in counters.open.subtract(1, ordering: .relaxed) }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        HTTPHandler(responder: responder, headerTimeout: limits.headerTimeout, counters: counters))
                }
            }
            .bind(host: host, port: port)
            .get()
    }

    /// A connection over ``Limits/maxConnections``: failing the initializer closes it.
    struct ConnectionLimitReached: Error {}

    final class HTTPHandler: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        let responder: Responder
        let headerTimeout: Duration
        let counters: Counters
        var request: [UInt8] = []
        var answered = false
        var timeout: Scheduled<Void>?

        init(responder: @escaping Responder, headerTimeout: Duration, counters: Counters) {
            self.responder = responder
            self.headerTimeout = headerTimeout
            self.counters = counters
        }

        func handlerAdded(context: ChannelHandlerContext) {
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            // Also bounds the answer: a client that sends a request and never reads the reply is closed too.
            timeout = context.eventLoop.scheduleTask(in: TimeAmount(headerTimeout)) {
                let (handler, context) = bound.value
                handler.timeout = nil
                if !handler.answered {
                    handler.answered = true
                    handler.counters.timedOut.add()
                }
                context.close(promise: nil)
            }
        }

        func handlerRemoved(context: ChannelHandlerContext) {
            timeout?.cancel()
            timeout = nil
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard !answered else { return }
            var buffer = unwrapInboundIn(data)
            request.append(contentsOf: buffer.readBytes(length: buffer.readableBytes) ?? [])
            let end: [UInt8] = [13, 10, 13, 10]
            guard let _ = request.firstRange(of: end) else {
                if request.count > 8192 { respond(context, 431, "text/plain", Array("request too large\n".utf8), head: false) }
                return
            }
            let line = request.prefix { $0 != 13 }
            let parts = line.split(separator: UInt8(ascii: " "))
            guard parts.count >= 2 else {
                respond(context, 400, "text/plain", Array("bad request\n".utf8), head: false)
                return
            }
            let method = String(decoding: parts[0], as: UTF8.self)
            var path = String(decoding: parts[1], as: UTF8.self)
            if let q = path.firstIndex(of: "?") { path = String(path[..<q]) }
            guard method == "GET" || method == "HEAD" else {
                respond(context, 405, "text/plain", Array("method not allowed\n".utf8), head: false)
                return
            }
            let r = responder(path)
            respond(context, r.status, r.contentType, r.body, head: method == "HEAD")
        }

        func respond(_ context: ChannelHandlerContext, _ status: Int, _ type: String, _ body: [UInt8], head: Bool) {
            answered = true
            let reason: String
            switch status {
            case 200: reason = "OK"
            case 404: reason = "Not Found"
            case 405: reason = "Method Not Allowed"
            case 431: reason = "Request Header Fields Too Large"
            case 503: reason = "Service Unavailable"
            default: reason = "Bad Request"
            }
            var out = context.channel.allocator.buffer(capacity: body.count + 128)
            out.writeString("HTTP/1.1 \(status) \(reason)\r\nContent-Type: \(type)\r\nContent-Length: \(body.count)\r\nConnection: close\r\n\r\n")
            if !head { out.writeBytes(body) }
            let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
            context.writeAndFlush(wrapOutboundOut(out)).whenComplete { _ in bound.value.close(promise: nil) }
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            context.close(promise: nil)
        }
    }
}
