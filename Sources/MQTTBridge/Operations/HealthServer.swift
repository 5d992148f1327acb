import NIOCore
import NIOPosix

/// A minimal HTTP/1.1 server for `/metrics` (Prometheus text format), `/healthz` and `/readyz`.
///
/// It reads one request head per connection, answers, and closes. Requests larger than 8 KiB are refused.
struct HealthServer {
    /// What the endpoints answer: status code and body.
    typealias Responder = @Sendable (_ path: String) -> (status: Int, contentType: String, body: [UInt8])

    static func start(host: String, port: Int, group: any EventLoopGroup, responder: @escaping Responder) async throws -> any Channel {
        try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(HTTPHandler(responder: responder))
                }
            }
            .bind(host: host, port: port)
            .get()
    }

    final class HTTPHandler: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        let responder: Responder
        var request: [UInt8] = []
        var answered = false

        init(responder: @escaping Responder) { self.responder = responder }

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
