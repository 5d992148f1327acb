import Logging
import NIOCore
import NIOPosix

/// A refused feed connection (allowlist or connection limit).
struct FeedRejected: Error {}

extension RouteRuntime {
    /// TCP server: binds (loopback unless told otherwise), checks the allowlist and the connection limit.
    func startServer(group: any EventLoopGroup) async throws {
        let address = config.feed.addresses[0]
        let allow = allowList
        let route = self
        let idle = config.feed.idleTimeout
        let name = config.name
        let logger = self.logger
        // A scan or a reconnect storm refuses hundreds of connections a second: one line for the first, then a
        // count at most every 10 s (each refusal is counted in mqtt_bridge_connections_rejected_total).
        let refusals = BurstLogger(eventLoop: group.next(), first: { detail in
            logger.warning("Route \(name): refused a connection from \(detail)")
        }, summary: { count, detail in
            logger.warning("\(count) more refused connection\(count == 1 ? "" : "s") on route \(name) (last from \(detail))")
        })
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.autoRead, value: false)
            // One socket read per read request: it is in the spool before the next read (NIO's default of four
            // reads per request held up to 256 KiB in memory only, which kill -9 lost).
            .childChannelOption(.maxMessagesPerRead, value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                let peer = channel.remoteAddress?.ipAddress ?? ""
                if !allow.allows(peer) {
                    route.metrics.connectionsRejected.add()
                    refusals.record("\(peer): not in allow")
                    return channel.eventLoop.makeFailedFuture(FeedRejected())
                }
                // Reserve a slot atomically (accepts may race on different event loops); freed when it closes.
                if route.admitted.add(1, ordering: .relaxed).newValue > route.config.feed.maxConnections {
                    route.admitted.subtract(1, ordering: .relaxed)
                    route.metrics.connectionsRejected.add()
                    refusals.record("\(peer): max_connections \(route.config.feed.maxConnections) reached")
                    return channel.eventLoop.makeFailedFuture(FeedRejected())
                }
                channel.closeFuture.whenComplete { _ in route.admitted.subtract(1, ordering: .relaxed) }
                return channel.eventLoop.makeCompletedFuture {
                    if idle > .zero {
                        try channel.pipeline.syncOperations.addHandler(IdleStateHandler(allTimeout: TimeAmount(idle)))
                    }
                    try channel.pipeline.syncOperations.addHandler(FeedChannelHandler(route: route))
                }
            }
        let channel: any Channel
        do {
            channel = try await bootstrap.bind(host: address.host, port: address.port).get()
        } catch {
            throw BridgeError.cannotListen("Route '\(name)'", on: address, error: error)
        }
        channel.closeFuture.whenComplete { _ in refusals.flush() }
        setListener(channel)
        logger.info("Route \(config.name): listening on \(channel.localAddress?.displayString ?? address.description)")
    }

    /// UDP: binds and, for MQTT → feed, registers the targets.
    func startUDP(group: any EventLoopGroup) async throws {
        let address = config.feed.addresses[0]
        let route = self
        let bootstrap = DatagramBootstrap(group: group)
            .channelOption(.socketOption(.so_reuseaddr), value: 1)
            .channelOption(.autoRead, value: false)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(UDPFeedHandler(route: route))
                }
            }
        let channel: any Channel
        do {
            channel = try await bootstrap.bind(host: address.host, port: address.port).get()
        } catch {
            throw BridgeError.cannotListen("Route '\(config.name)'", on: address, protocol: "UDP", error: error)
        }
        setListener(channel)
        if config.direction.writesFeed {
            for target in config.feed.udpTargets {
                let socket = try SocketAddress.makeAddressResolvingHost(target.host, port: target.port)
                register(FeedConnection(id: nextConnectionID(), channel: channel, target: socket, limit: config.outQueueBytes,
                                        policy: .drop, routeMetrics: metrics, metrics: nil))
            }
        }
        logger.info("Route \(config.name): UDP on \(channel.localAddress?.displayString ?? address.description)")
    }

    /// TCP client: dials the addresses in turn, redialling with decorrelated jitter until the route stops.
    func runClient(group: any EventLoopGroup) async {
        var delay = config.feed.restartTimeout.base
        var attempt = 0
        var index = 0
        let route = self
        let idle = config.feed.idleTimeout
        while !Task.isCancelled && !isStopping {
            let address = config.feed.addresses[index % config.feed.addresses.count]
            index += 1
            do {
                let channel = try await ClientBootstrap(group: group)
                    .connectTimeout(.seconds(5))
                    .channelOption(.autoRead, value: false)
                    .channelOption(.maxMessagesPerRead, value: 1)  // one read in the spool before the next
                    .channelOption(.socketOption(.tcp_nodelay), value: 1)
                    .channelInitializer { channel in
                        channel.eventLoop.makeCompletedFuture {
                            if idle > .zero {
                                try channel.pipeline.syncOperations.addHandler(IdleStateHandler(allTimeout: TimeAmount(idle)))
                            }
                            try channel.pipeline.syncOperations.addHandler(FeedChannelHandler(route: route))
                        }
                    }
                    .connect(host: address.host, port: address.port)
                    .get()
                if attempt > 0 { metrics.reconnects.add() }
                attempt += 1
                setClientChannel(channel)
                delay = config.feed.restartTimeout.base
                if isStopping { channel.close(promise: nil) }
                try? await channel.closeFuture.get()
                setClientChannel(nil)
            } catch {
                attempt += 1
                logger.debug("Route \(config.name): cannot connect to \(address): \(error)")
            }
            if Task.isCancelled || isStopping { break }
            try? await Task.sleep(for: delay)
            delay = config.feed.restartTimeout.next(after: delay)
        }
    }
}
