import MQTTOutbox
import NIOCore
import NIOPosix

/// Reads one TCP feed connection: frames in, records into the route's spool, and flow control.
///
/// The channel runs with `autoRead` off: the handler asks for the next read only after the previous one is in the
/// spool, and stops asking while the spool is full, so the kernel's receive window closes and the sender blocks.
final class FeedChannelHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let route: RouteRuntime
    private var decoder: FrameDecoder
    private var connection: ConnectionContext?
    private var fixedTopic: Result<String, TopicTemplate.Failure>?
    private var registered: FeedConnection?
    private var metrics: ConnectionMetrics?
    private var records: [SpoolRecord] = []
    private var paused = false
    private var closing = false
    private var finished = false
    private var settings: LiveSettings
    private var generation: Int
    /// Set once the route stops (``DrainFeed``): reading goes on only until the feed's bytes stop coming.
    private var draining = false
    /// While draining: closes the connection when no read comes within a moment (nothing more was queued).
    private var quietClose: Scheduled<Void>?

    init(route: RouteRuntime) {
        self.route = route
        decoder = FrameDecoder(framing: route.config.framing, maxFrame: route.config.maxFrame, oversize: route.config.oversize)
        generation = route.generation.load(ordering: .acquiring)
        settings = route.settings
    }

    /// Picks up settings changed by a reload (checked once per read, not per frame).
    private func refreshSettings() {
        let g = route.generation.load(ordering: .acquiring)
        guard g != generation else { return }
        generation = g
        settings = route.settings
        if let connection { fixedTopic = settings.topic?.resolve(connection: connection) }
    }

    func channelActive(context: ChannelHandlerContext) {
        let id = route.nextConnectionID()
        let remote = context.channel.remoteAddress
        let ctx = ConnectionContext(feed: route.config.name, peerAddress: remote?.ipAddress ?? "unknown",
                                    peerPort: remote?.port ?? 0, connectionID: id)
        connection = ctx
        fixedTopic = settings.topic?.resolve(connection: ctx)
        let m = ConnectionMetrics(route: route.config.name, connection: id, registry: route.registry)
        metrics = m
        let conn = FeedConnection(id: id, channel: context.channel, limit: route.config.outQueueBytes,
                                  policy: route.config.slowReader, routeMetrics: route.metrics, metrics: m)
        registered = conn
        route.register(conn)
        route.logger.info("Feed connection \(id) on route \(route.config.name): \(remote.map { "\($0)" } ?? "?")")
        context.read()
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        guard route.config.direction.readsFeed, !closing else { return }
        refreshSettings()
        buffer.withUnsafeReadableBytes { bytes in
            decoder.decode(bytes) { event in handle(event) }
        }
    }

    private func handle(_ event: FrameEvent) {
        guard let connection else { return }
        switch event {
        case .frame(let p):
            records.append(route.makeRecord(p, connection: connection, fixedTopic: fixedTopic, flags: [], settings: settings))
        case .truncated(let p):
            route.metrics.truncated.add()
            records.append(route.makeRecord(p, connection: connection, fixedTopic: fixedTopic, flags: .truncated, settings: settings))
        case .oversizeDropped:
            route.metrics.drops[.oversize]!.add()
            metrics?.dropped.increment()
        case .closeConnection:
            route.metrics.drops[.oversize]!.add()
            metrics?.dropped.increment()
            closing = true
        }
    }

    /// Moves decoded records into the spool. Returns whether the spool is now full.
    private func flush() -> Bool {
        guard !records.isEmpty else { return false }
        var bytes = 0
        for r in records { bytes += r.payload.count }
        metrics?.framesIn.increment(by: Int64(records.count))
        metrics?.bytesIn.increment(by: Int64(bytes))
        let full = route.ingest(records)
        records.removeAll(keepingCapacity: true)
        return full
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        let full = flush()
        if closing || (draining && full) {
            context.close(promise: nil)
            return
        }
        if draining { armQuietClose(context) }
        if full {
            paused = true
            let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
            let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
            route.whenSpaceAvailable { [eventLoop = context.eventLoop] in
                eventLoop.execute {
                    let h = handler.value
                    guard h.paused, !h.finished else { return }
                    h.paused = false
                    loopBound.value.read()
                }
            }
        } else {
            context.read()
        }
        context.fireChannelReadComplete()
    }

    func channelInactive(context: ChannelHandlerContext) {
        finish()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        finish()
    }

    private func finish() {
        guard !finished else { return }
        finished = true
        _ = flush()
        refreshSettings()
        if let partial = decoder.finish(), !partial.isEmpty, let connection {
            switch settings.partialOnClose {
            case .drop:
                route.metrics.drops[.partial]!.add()
                metrics?.dropped.increment()
            case .emit:
                route.metrics.partialEmitted.add()
                records.append(route.makeRecord(partial, connection: connection, fixedTopic: fixedTopic, flags: .partial, settings: settings))
            case .deadletter:
                route.metrics.partialEmitted.add()
                records.append(route.makeRecord(partial, connection: connection, fixedTopic: .failure(.missing), flags: .partial,
                                                settings: settings))
            }
            _ = flush()
        }
        if let registered { route.unregister(registered.id) }
        metrics?.unregister()
        if let c = connection {
            route.logger.info("Feed connection \(c.connectionID) on route \(route.config.name) closed")
        }
    }

    /// How long a draining connection may go without a read before it is closed. Bytes still in the feed's send
    /// queue reach the bridge's receive queue only as it reads (on loopback, in a softirq that a loaded machine can
    /// delay by tens of milliseconds), so this is longer than a read takes.
    static let quietPeriod: TimeAmount = .milliseconds(100)

    /// Closes the connection if no read arrives within ``quietPeriod``: the read asked for found nothing queued.
    private func armQuietClose(_ context: ChannelHandlerContext) {
        quietClose?.cancel()
        let channel = context.channel
        quietClose = context.eventLoop.scheduleTask(in: Self.quietPeriod) { channel.close(promise: nil) }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let drain = event as? DrainFeed {
            // The route stops. Read and spool what the kernel already holds for this connection (the feed's
            // kernel accepted those bytes: closing at once discarded them), then close: once no read comes for
            // the quiet period, when the spool is full, or at the deadline. A read that does not fill its buffer
            // is no sign of the end: on loopback the feed's send queue moves into the receive queue as the bridge
            // reads.
            guard !finished, !draining else { return }
            guard route.config.direction.readsFeed, !paused, !closing else {
                context.close(promise: nil)
                return
            }
            draining = true
            let channel = context.channel
            context.eventLoop.scheduleTask(deadline: drain.deadline) { channel.close(promise: nil) }
            armQuietClose(context)
            return
        }
        if event is IdleStateHandler.IdleStateEvent {
            // Paused by spool backpressure is not idle: the bridge is the one not reading.
            guard !paused, !finished else { return }
            route.metrics.idleTimeouts.add()
            route.logger.info("Feed connection \(connection?.connectionID ?? 0) on route \(route.config.name) idle for \(route.config.feed.idleTimeout); closing")
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        route.logger.debug("Feed connection error on route \(route.config.name): \(error)")
        context.close(promise: nil)
    }
}

/// Tells a feed connection that its route stops: read what the kernel already holds, spool it, then close (by
/// `deadline` at the latest).
struct DrainFeed: Sendable {
    let deadline: NIODeadline
}

/// Reads datagrams of a UDP feed: each datagram is decoded on its own (a frame never spans datagrams).
final class UDPFeedHandler: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>

    private let route: RouteRuntime
    private var records: [SpoolRecord] = []
    private var paused = false

    init(route: RouteRuntime) { self.route = route }

    func channelActive(context: ChannelHandlerContext) {
        context.read()
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = unwrapInboundIn(data)
        guard route.config.direction.readsFeed else { return }
        let peer = envelope.remoteAddress.ipAddress ?? "unknown"
        if !route.allowList.allows(peer) {
            // Not a connection, so nothing to refuse: the datagram is discarded unread and counted.
            route.metrics.datagramsRejected.add()
            return
        }
        let settings = route.settings
        let ctx = ConnectionContext(feed: route.config.name, peerAddress: peer, peerPort: envelope.remoteAddress.port ?? 0, connectionID: 0)
        let fixed = settings.topic?.resolve(connection: ctx)
        var decoder = FrameDecoder(framing: route.config.framing, maxFrame: route.config.maxFrame, oversize: route.config.oversize)
        envelope.data.withUnsafeReadableBytes { bytes in
            decoder.decode(bytes) { event in
                switch event {
                case .frame(let p): records.append(route.makeRecord(p, connection: ctx, fixedTopic: fixed, flags: [], settings: settings))
                case .truncated(let p):
                    route.metrics.truncated.add()
                    records.append(route.makeRecord(p, connection: ctx, fixedTopic: fixed, flags: .truncated, settings: settings))
                case .oversizeDropped, .closeConnection: route.metrics.drops[.oversize]!.add()
                }
            }
        }
        if let partial = decoder.finish(), !partial.isEmpty {
            // A datagram is complete by definition, so a trailing unterminated part is the last frame.
            records.append(route.makeRecord(partial, connection: ctx, fixedTopic: fixed, flags: [], settings: settings))
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        let full = records.isEmpty ? false : route.ingest(records)
        records.removeAll(keepingCapacity: true)
        if full {
            paused = true
            let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
            let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
            route.whenSpaceAvailable { [eventLoop = context.eventLoop] in
                eventLoop.execute {
                    guard handler.value.paused else { return }
                    handler.value.paused = false
                    loopBound.value.read()
                }
            }
        } else {
            context.read()
        }
        context.fireChannelReadComplete()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        route.logger.debug("UDP error on route \(route.config.name): \(error)")
    }
}
