import MosquittoPOSIX
import Logging
import Mosquitto
import MQTTOutbox
import NIOCore
import NIOPosix
import ServiceLifecycle
import Synchronization

/// The bridge as a swift-service-lifecycle `Service`: routes between MQTT and TCP/UDP feeds.
///
/// ```swift
/// let configuration = try ConfigParser.parse(text)
/// let bridge = BridgeService(configuration: configuration, logger: logger)
/// let group = ServiceGroup(configuration: .init(services: [bridge], gracefulShutdownSignals: [.sigterm], logger: logger))
/// try await group.run()
/// ```
///
/// `run()` connects to the broker (retrying until it is up), opens every route's spool and feed endpoint, and
/// forwards until graceful shutdown (SIGTERM) or cancellation. Graceful shutdown drains: the feeds stop, the spools
/// are published until empty (at most ``BridgeConfiguration/drainTimeout``), the retained state topic goes to `0`,
/// and the client disconnects. ``reload(_:)`` applies a new configuration route by route (SIGHUP in `mqtt-bridge`).
///
/// `run()` throws a ``BridgeError`` when an endpoint cannot bind its address, and when the broker refused the
/// credentials ``BridgeConfiguration/authFailureLimit`` times in a row (without a limit it retries with backoff for
/// ever, so a password fixed on the broker is picked up by the next attempt).
public final class BridgeService: Service, Sendable {
    /// Counters, readable in-process and over HTTP.
    public let metrics: BridgeMetrics
    let group: any EventLoopGroup
    let logger: Logger

    private struct State {
        var configuration: BridgeConfiguration
        var routes: [String: RouteRuntime] = [:]
        var client: MQTTClient?
        var publisher: Publisher?
        var httpChannel: (any Channel)?
        var stopRequested = false
        var stopWaiter: CheckedContinuation<Void, Never>?
        var startedWaiters: [CheckedContinuation<Void, any Error>] = []
        var started = false
        var startError: (any Error)?
        var spools: [String: Spool] = [:]
        var fanOutTasks: [String: Task<Void, Never>] = [:]
        /// When the broker connection came up; nil while it is down.
        var connectedSince: ContinuousClock.Instant?
        /// Why ``run()`` must fail once stopped (the broker kept refusing the credentials).
        var fatalError: BridgeError?
        var healthLimits = HealthServer.Limits()
    }
    private let state: LockedValue<State>
    private let doorbell = Doorbell()
    private let stallCheck = LockedValue(())

    /// Creates the service. Nothing starts until ``run()``.
    public init(configuration: BridgeConfiguration, logger: Logger = Logger(label: "mqtt-bridge"),
                eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) {
        self.metrics = BridgeMetrics()
        self.group = eventLoopGroup
        self.logger = logger
        self.state = LockedValue(State(configuration: configuration))
    }

    /// The configuration in force.
    public var configuration: BridgeConfiguration { state.withLock { $0.configuration } }

    /// The port a TCP server or UDP route is bound to (useful with port 0).
    public func port(ofRoute name: String) -> Int? {
        state.withLock { $0.routes[name] }?.localPort
    }

    /// The IP address a TCP server or UDP route is bound to.
    public func address(ofRoute name: String) -> String? {
        state.withLock { $0.routes[name] }?.localIP
    }

    /// The port of the HTTP metrics and health endpoint.
    public var metricsPort: Int? { state.withLock { $0.httpChannel?.localAddress?.port } }

    /// Unacknowledged records in a route's spool.
    public func spoolDepth(ofRoute name: String) -> Int? {
        state.withLock { $0.spools[name] }?.depth.records
    }

    /// Waits until every route's endpoint is open (not until the broker is connected).
    public func waitUntilStarted() async throws {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
            let result = state.withLock { s -> Result<Void, any Error>? in
                if let e = s.startError { return .failure(e) }
                if s.started { return .success(()) }
                s.startedWaiters.append(c)
                return nil
            }
            if let result { c.resume(with: result) }
        }
    }

    /// Starts a graceful stop, as SIGTERM does: drain, then return from ``run()``.
    public func triggerGracefulShutdown() {
        let w = state.withLock { s -> CheckedContinuation<Void, Never>? in
            s.stopRequested = true
            defer { s.stopWaiter = nil }
            return s.stopWaiter
        }
        w?.resume()
    }

    /// Whether the bridge is ready: connected to the broker, every feed endpoint up, every route that writes to its
    /// feed subscribed (acknowledged by the broker), no spool full, and no spool stalled (see
    /// ``BridgeConfiguration/spoolStallTimeout``).
    public var isReady: Bool {
        let stalled = refreshStalls()
        let (routes, spools) = state.withLock { (Array($0.routes.values), Array($0.spools.values)) }
        return metrics.isMQTTConnected && routes.allSatisfy { $0.isFeedUp && (!$0.config.direction.writesFeed || $0.metrics.isSubscribed) }
            && spools.allSatisfy { !$0.isFull } && !stalled
    }

    /// Limits of the HTTP endpoint; set before ``run()`` (tests use short ones).
    var healthLimits: HealthServer.Limits {
        get { state.withLock { $0.healthLimits } }
        set { state.withLock { $0.healthLimits = newValue } }
    }

    /// Works out which spools are stalled, sets `mqtt_bridge_spool_stalled`, logs each change, and returns whether
    /// any is.
    ///
    /// A spool is stalled when its oldest unacknowledged record has waited longer than the stall timeout while
    /// the broker was connected: the record's age and the connection's age must both exceed it, so that records
    /// that waited out a broker outage do not count as stalled in the moments after the reconnect, while they go.
    @discardableResult
    func refreshStalls() -> Bool {
        let (spools, since, timeout) = state.withLock { ($0.spools, $0.connectedSince, $0.configuration.spoolStallTimeout) }
        // One check at a time (the watchdog, /metrics and /readyz race), so that two checks either side of the
        // timeout cannot flip the flag back and forth and log each flip.
        let (any, lines) = stallCheck.withLock { _ -> (Bool, [(Logger.Level, Logger.Message)]) in
            let connectedFor = since.map { ContinuousClock.now - $0 }
            var any = false
            var lines: [(Logger.Level, Logger.Message)] = []
            for (name, spool) in spools {
                var stalled = false
                var age: Duration?
                if let timeout, timeout > .zero, let connectedFor, connectedFor > timeout, metrics.isMQTTConnected {
                    age = spool.oldestUnacknowledgedAge
                    if let age, age > timeout { stalled = true }
                }
                any = any || stalled
                guard metrics.route(name).exchangeSpoolStalled(stalled) != stalled else { continue }
                if stalled, let timeout, let age {
                    lines.append((.warning, "Route \(name): spool stalled: its oldest unacknowledged record has waited \(Self.seconds(age)) with the broker connected (spool_stall_timeout \(Self.seconds(timeout))); /readyz answers 503 until it moves"))
                } else {
                    lines.append((.info, "Route \(name): spool no longer stalled"))
                }
            }
            return (any, lines)
        }
        for (level, line) in lines { logger.log(level: level, line) }
        return any
    }

    /// `0.5 s`, `12 s`: a duration for log lines.
    static func seconds(_ d: Duration) -> String {
        let ms = d / .milliseconds(1)
        if ms < 10_000 { return "\((ms / 100).rounded() / 10) s" }
        return "\(Int(ms / 1000)) s"
    }

    private func signalStarted(_ error: (any Error)?) {
        let waiters = state.withLock { s -> [CheckedContinuation<Void, any Error>] in
            s.started = error == nil
            s.startError = error
            defer { s.startedWaiters.removeAll() }
            return s.startedWaiters
        }
        for w in waiters {
            if let error { w.resume(throwing: error) } else { w.resume() }
        }
    }

    func makeClientConfiguration(_ c: BridgeConfiguration) -> MQTTConfiguration {
        var mqtt = c.mqtt
        mqtt.reconnect.retryInitialConnect = true
        mqtt.reconnect.giveUpOnFatalErrors = false
        // Room for every route's window plus the state messages; the client's queue bound is what publish waits on.
        mqtt.maximumQueuedMessages = min(65000, max(mqtt.maximumQueuedMessages, c.publishBatch * max(1, c.routes.count) + 100))
        mqtt.maximumInflightMessages = c.maxInflightMessages ?? BridgeConfiguration.defaultInflightMessages
        // Acknowledgements and forwarded messages are small packets: with Nagle's algorithm on, each waits for
        // the peer's delayed ACK (~40 ms on Linux), which was the bridge's QoS 1 latency floor.
        if c.tcpNoDelay { mqtt.tcpNoDelay = true }
        if c.notifications {
            mqtt.will = .init(MQTTMessage(topic: c.statePrefix + "/state", string: "0", qos: .atLeastOnce, retain: true))
        }
        // The bridge reports the connection itself (``watchEvents``: one line per attempt, repeats rate-limited);
        // the client's own info and notice lines (connected, reconnecting in …) would say each thing twice. Its
        // warnings and errors stay, and at debug level everything does.
        if mqtt.logger.logLevel > .debug && mqtt.logger.logLevel < .warning { mqtt.logger.logLevel = .warning }
        return mqtt
    }

    /// Runs the bridge until graceful shutdown or cancellation.
    public func run() async throws {
        let configuration = self.configuration
        let client: MQTTClient
        do {
            client = try MQTTClient(configuration: makeClientConfiguration(configuration))
        } catch {
            signalStarted(error)
            throw error
        }
        let publisher = Publisher(client: client, batch: configuration.publishBatch, doorbell: doorbell, logger: logger)
        state.withLock { s in
            s.client = client
            s.publisher = publisher
        }
        do {
            for route in configuration.routes { try await startRoute(route, configuration: configuration, client: client, publisher: publisher) }
            if let address = configuration.metricsAddress {
                let channel: any Channel
                do {
                    channel = try await HealthServer.start(host: address.host, port: address.port, group: group, limits: healthLimits,
                                                           counters: metrics.http) { [self] path in
                        respond(path)
                    }
                } catch {
                    throw BridgeError.cannotListen("Metrics listener", on: address, error: error)
                }
                state.withLock { $0.httpChannel = channel }
                let bound = SocketAddressSpec(host: address.host, port: channel.localAddress?.port ?? address.port)
                logger.info("Metrics and health on http://\(bound)/metrics")
            }
        } catch {
            signalStarted(error)
            await stopEverything(client: client, drain: false)
            throw error
        }
        signalStarted(nil)
        let brokerList = configuration.mqtt.endpoints.map { "\($0)" }.joined(separator: ", ")
        logger.info("mqtt-bridge started: \(configuration.routes.count) route(s), broker\(configuration.mqtt.endpoints.count > 1 ? "s" : "") \(brokerList)")

        let events = client.makeEventStream()  // before connecting, so the first .connected is not missed
        await withGracefulShutdownHandler {
            await withTaskGroup(of: Void.self) { tasks in
                tasks.addTask { [self] in
                    do {
                        try await client.connect()
                    } catch {
                        // A stop before the first connection (SIGTERM while the broker is down or refuses us) ends
                        // the client, and connect() with it: that is the stop, not a failure.
                        let stopping = state.withLock { $0.stopRequested }
                        if stopping || error is CancellationError || (error as? MQTTError)?.code == .shutDown {
                            logger.info("Stopping before the broker \(configuration.mqtt.endpoint) was connected")
                        } else {
                            logger.error("MQTT connection failed: \(error)")
                        }
                    }
                }
                tasks.addTask { [self] in await watchEvents(client, events: events, configuration: configuration) }
                tasks.addTask { await publisher.run() }
                if configuration.progressInterval > .zero {
                    tasks.addTask { [self] in await reportProgress(every: configuration.progressInterval) }
                }
                // Keeps the stall gauge and its log lines current between scrapes (a reload may set the timeout).
                tasks.addTask { [self] in
                    while !Task.isCancelled {
                        try? await Task.sleep(for: .seconds(1))
                        refreshStalls()
                    }
                }
                await withTaskCancellationHandler {
                    await waitForStop()
                } onCancel: {
                    self.triggerGracefulShutdown()
                }
                let cancelled = Task.isCancelled
                await stopEverything(client: client, drain: !cancelled, publisherRunning: true)
                tasks.cancelAll()
            }
        } onGracefulShutdown: {
            self.triggerGracefulShutdown()
        }
        await stopEverything(client: client, drain: false)
        logger.info("mqtt-bridge stopped")
        // mqtt-bridge exits non-zero: ServiceGroup rethrows a service's error, and so does BridgeCommand.
        if let fatal = state.withLock({ $0.fatalError }) { throw fatal }
    }

    private func waitForStop() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now = state.withLock { s -> Bool in
                if s.stopRequested { return true }
                s.stopWaiter = c
                return false
            }
            if now { c.resume() }
        }
    }

    private func startRoute(_ route: RouteConfiguration, configuration: BridgeConfiguration, client: MQTTClient,
                            publisher: Publisher) async throws {
        let routeMetrics = metrics.route(route.name)
        var spool: Spool?
        if route.direction.readsFeed {
            spool = state.withLock { $0.spools[route.name] }
            if spool == nil {
                let s = try Spool(configuration: SpoolConfiguration(
                    directory: configuration.spoolDirectory + "/" + route.name, maxBytes: configuration.spoolMaxBytes,
                    segmentBytes: configuration.spoolSegmentBytes, fsync: configuration.spoolFsync, full: configuration.spoolFull),
                    logger: logger)
                state.withLock { $0.spools[route.name] = s }
                publisher.add(name: route.name, spool: s, metrics: routeMetrics,
                              deadLetterTopic: route.deadLetterTopic ?? "\(configuration.statePrefix)/deadletter/\(route.name)")
                spool = s
            }
        }
        let runtime = RouteRuntime(config: route, metrics: routeMetrics, registry: metrics.registry, spool: spool,
                                   spoolFull: configuration.spoolFull, statePrefix: configuration.statePrefix, doorbell: doorbell,
                                   eventLoop: group.next(), logger: logger)
        switch route.feed.mode {
        case .tcpServer: try await runtime.startServer(group: group)
        case .udp: try await runtime.startUDP(group: group)
        case .tcpClient:
            let group = self.group
            runtime.setClientTask(Task { await runtime.runClient(group: group) })
        }
        if route.direction.writesFeed {
            let isV5 = client.configuration.protocolVersion == .v5
            let subscriptions = route.subscriptions.map { filter -> Subscription in
                if let share = route.shareGroup {
                    return Subscription("$share/\(share)/\(filter)", qos: route.qos)
                }
                return Subscription(filter, qos: route.qos, noLocal: route.direction == .both && isV5)
            }
            let logger = self.logger
            runtime.setFanOutTask(Task {
                var sharedRefusals = 0
                while !Task.isCancelled {
                    do {
                        // Routes start before the first connection. Made offline, a subscribe returns at once and its
                        // SUBSCRIBE waits for the connection: "subscribed" (and /readyz) then came before the broker
                        // had the filter, and a message published meanwhile never reached the feed (seen under load).
                        while !Self.isConnected(client) && !Task.isCancelled {
                            try? await Task.sleep(for: .milliseconds(20))
                        }
                        if Task.isCancelled { return }
                        let stream = try await client.subscribe(
                            subscriptions, buffer: SubscriptionBuffer(capacity: 16384, overflow: .backpressure(maxWait: .seconds(3600))))
                        // A connection lost before the SUBACK: the client re-sends the SUBSCRIBE right after the next
                        // CONNACK; say subscribed once connected again.
                        if stream.grantedQoS.contains(where: { $0 == nil }) {
                            while !Self.isConnected(client) && !Task.isCancelled {
                                try? await Task.sleep(for: .milliseconds(20))
                            }
                        }
                        runtime.metrics.subscribed.store(true, ordering: .releasing)
                        for try await message in stream { runtime.fanOut(message) }
                        if Task.isCancelled { return }
                    } catch {
                        if Task.isCancelled { return }
                        if let e = error as? MQTTError, e.code == .shutDown || e.code == .gaveUp { return }
                        if let e = error as? MQTTError, e.reasonCode == .sharedSubscriptionsNotSupported {
                            // The broker has no shared subscriptions (CONNACK): retrying cannot help until the client
                            // is on another broker (failover, or this one replaced). Logged at error level the first
                            // time, at debug level after (once per connection to such a broker); the route is not
                            // ready meanwhile.
                            sharedRefusals += 1
                            let text = "Route \(route.name): \(e.message) The route stays unsubscribed (not ready) until the bridge is connected to a broker that has them; without share_group, run a single bridge for this route."
                            if sharedRefusals == 1 { logger.error("\(text)") } else { logger.debug("\(text)") }
                            while case .connected(let ack) = client.state, !ack.sharedSubscriptionAvailable, !Task.isCancelled {
                                try? await Task.sleep(for: .milliseconds(200))
                            }
                            continue
                        }
                        logger.warning("Route \(route.name): subscription failed: \(error); retrying")
                    }
                    try? await Task.sleep(for: .milliseconds(500))
                }
            })
        }
        state.withLock { $0.routes[route.name] = runtime }
    }

    private static func isConnected(_ client: MQTTClient) -> Bool {
        if case .connected = client.state { return true }
        return false
    }

    private func stopEverything(client: MQTTClient, drain: Bool, publisherRunning: Bool = false) async {
        let (routes, http) = state.withLock { s -> ([RouteRuntime], (any Channel)?) in
            let r = Array(s.routes.values)
            s.routes.removeAll()
            let h = s.httpChannel
            s.httpChannel = nil
            return (r, h)
        }
        // Together: each route may read its feeds for a while before it closes them.
        let feedDrainLimit = RouteRuntime.feedDrainLimit(drainTimeout: configuration.drainTimeout)
        await withTaskGroup(of: Void.self) { group in
            for r in routes { group.addTask { await r.stop(feedDrainLimit: feedDrainLimit) } }
        }
        if drain, publisherRunning, let publisher = state.withLock({ $0.publisher }) {
            let deadline = ContinuousClock.now + configuration.drainTimeout
            while !publisher.isDrained && ContinuousClock.now < deadline && metrics.isMQTTConnected {
                try? await Task.sleep(for: .milliseconds(20))
            }
            if !publisher.isDrained {
                logger.warning("Stopping with records still in the spool; they are sent on the next start.")
            }
        }
        let notifications = configuration.notifications
        if drain, notifications, metrics.isMQTTConnected {
            // Bounded: if the broker goes away now, the acknowledgement never comes and SIGTERM must still stop
            // the process (the will publishes `0` anyway).
            let topic = configuration.statePrefix + "/state"
            await withTaskGroup(of: Void.self) { g in
                g.addTask { _ = try? await client.publish(to: topic, string: "0", qos: .atLeastOnce, retain: true) }
                g.addTask { try? await Task.sleep(for: .seconds(2)) }
                await g.next()
                g.cancelAll()
            }
        }
        if case .shutDown = client.state {} else { await client.shutdown() }
        let spools = state.withLock { s -> [Spool] in
            defer { s.spools.removeAll() }
            return Array(s.spools.values)
        }
        for s in spools { s.close() }
        try? await http?.close()
    }

    /// Follows the broker connection: the connected gauge and state topic, one log line per failed attempt (the
    /// same reason again within 10 s is counted, not logged), and ``BridgeConfiguration/authFailureLimit``.
    private func watchEvents(_ client: MQTTClient, events: AsyncStream<ConnectionEvent>, configuration: BridgeConfiguration) async {
        var connections = 0
        let publisher = state.withLock { $0.publisher }
        var failure: MQTTError?        // the attempt that just ended, reported with the `.reconnecting` that follows
        var refusalsInARow = 0         // credential refusals since the last successful connection
        var failedAttempts = 0
        var lastReport: (reason: String, at: ContinuousClock.Instant)?
        var unreported = 0
        let endpoint = configuration.mqtt.endpoint
        for await event in events {
            switch event {
            case .connected(let ack):
                connections += 1
                if connections > 1 { metrics.mqttReconnects.add() }
                let broker = "\(ack.endpoint ?? endpoint)"
                let moved = metrics.mqttBroker.map { $0 != broker } ?? false
                metrics.connected(to: broker)
                metrics.mqttConnected.store(true, ordering: .relaxed)
                metrics.connectedGauge.set(to: 1)
                state.withLock { $0.connectedSince = .now }
                let after = failedAttempts > 0 ? " after \(failedAttempts) failed attempt\(failedAttempts == 1 ? "" : "s")" : ""
                logger.info("Connected to the broker \(broker)\(after)\(moved ? " (failed over from another broker)" : "")")
                failure = nil
                refusalsInARow = 0
                failedAttempts = 0
                lastReport = nil
                unreported = 0
                if configuration.notifications {
                    _ = try? await client.publish(to: configuration.statePrefix + "/state", string: "1", qos: .atLeastOnce,
                                                  retain: true, completion: .enqueued)
                    // Which broker, beside the state: with several addresses the bridge may be on any of them.
                    _ = try? await client.publish(to: configuration.statePrefix + "/broker", string: broker, qos: .atLeastOnce,
                                                  retain: true, completion: .enqueued)
                }
            case .disconnected(let error):
                metrics.mqttConnected.store(false, ordering: .relaxed)
                metrics.connectedGauge.set(to: 0)
                state.withLock { $0.connectedSince = nil }
                publisher?.disconnects.add(1, ordering: .relaxed)
                guard let error else { break }  // our own DISCONNECT
                failedAttempts += 1
                failure = error
                guard Self.isCredentialRefusal(error) else { break }
                metrics.mqttConnectRefusals.add()
                refusalsInARow += 1
                if let limit = configuration.authFailureLimit, limit > 0, refusalsInARow >= limit {
                    let e = BridgeError(.brokerRefused, "Broker \(endpoint) refused the connection \(refusalsInARow) time\(refusalsInARow == 1 ? "" : "s") in a row: \(Self.describe(error)); giving up (auth_failure_limit \(limit))")
                    logger.error("\(e.message)")
                    state.withLock { $0.fatalError = e }
                    triggerGracefulShutdown()
                    return
                }
            case .reconnecting(let delay, let attempt):
                guard let error = failure else { break }
                failure = nil
                let reason = Self.isRefusal(error) ? "refused the connection: \(Self.describe(error))" : "unavailable (\(error.message))"
                let now = ContinuousClock.now
                if let last = lastReport, last.reason == reason, now - last.at < .seconds(10) {
                    unreported += 1
                    break
                }
                let more = unreported > 0 ? " (\(unreported) more like this since the last report)" : ""
                let line: Logger.Message = "Broker \(endpoint) \(reason); retrying in \(Self.seconds(delay)) (attempt \(attempt))\(more)"
                if Self.isCredentialRefusal(error) { logger.warning(line) } else { logger.notice(line) }
                lastReport = (reason, now)
                unreported = 0
            case .shutDown, .gaveUp:
                metrics.mqttConnected.store(false, ordering: .relaxed)
                state.withLock { $0.connectedSince = nil }
                return
            }
        }
    }

    /// A CONNACK that refused the user name, password or authorisation: what ``BridgeConfiguration/authFailureLimit``
    /// counts. (Server busy or unavailable refusals pass with time; these need the password fixed.)
    static func isCredentialRefusal(_ error: MQTTError) -> Bool {
        error.code == .badCredentials || error.code == .notAuthorized
    }

    /// Any CONNACK refusal (credentials, banned, server busy …).
    static func isRefusal(_ error: MQTTError) -> Bool {
        isCredentialRefusal(error) || error.code == .connectionRefused
    }

    /// Why the broker refused a connection, in words an operator can act on.
    static func describe(_ error: MQTTError) -> String {
        switch error.code {
        case .notAuthorized: return "not authorized (check username/password)"
        case .badCredentials: return "bad user name or password (check username/password)"
        default: return error.message
        }
    }

    private func reportProgress(every interval: Duration) async {
        while !Task.isCancelled {
            try? await Task.sleep(for: interval)
            if Task.isCancelled { return }
            for m in metrics.allRoutes.sorted(by: { $0.route < $1.route }) {
                let depth = spoolDepth(ofRoute: m.route) ?? 0
                logger.info("route \(m.route): in \(m.framesIn.value) frames / \(m.bytesIn.value) B, published \(m.framesPublished.value), out \(m.framesOut.value), dropped \(m.totalDropped), dead-lettered \(m.deadLettered.value), spool \(depth), connections \(m.openConnectionCount)")
            }
        }
    }

    func respond(_ path: String) -> (status: Int, contentType: String, body: [UInt8]) {
        switch path {
        case "/metrics":
            refreshStalls()
            let spools = state.withLock { $0.spools }
            for m in metrics.allRoutes {
                let d = spools[m.route]?.depth ?? (records: 0, bytes: 0)
                m.spoolRecords.set(to: Double(d.records))
                m.spoolBytes.set(to: Double(d.bytes))
                m.openConnections.set(to: Double(m.openConnectionCount))
                m.queuedBytes.set(to: Double(m.queuedByteCount))
            }
            return (200, "text/plain; version=0.0.4", metrics.registry.emitToBuffer())
        case "/healthz":
            return (200, "text/plain", Array("ok\n".utf8))
        case "/readyz":
            return isReady ? (200, "text/plain", Array("ready\n".utf8)) : (503, "text/plain", Array("not ready\n".utf8))
        default:
            return (404, "text/plain", Array("not found\n".utf8))
        }
    }

    /// Applies a new configuration (SIGHUP): routes that are new or changed restart, removed routes stop, unchanged
    /// routes keep running without a disconnect. Broker settings take effect on the next start.
    public func reload(_ new: BridgeConfiguration) async throws {
        let (old, client, publisher) = state.withLock { ($0.configuration, $0.client, $0.publisher) }
        guard let client, let publisher else {
            state.withLock { $0.configuration = new }
            return
        }
        let oldRoutes = Dictionary(old.routes.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        let newRoutes = Dictionary(new.routes.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        var merged = new
        merged.mqtt = old.mqtt
        state.withLock { $0.configuration = merged }
        var restart: Set<String> = []
        for (name, route) in oldRoutes where newRoutes[name] != route {
            if let n = newRoutes[name], LiveSettings.onlyLiveChanges(route, n),
               let runtime = state.withLock({ $0.routes[name] }) {
                // Topic, QoS, retain, dead-letter and partial-frame settings: swapped in place, connections stay
                // open, so nothing in flight on the feed is cut.
                runtime.update(n, statePrefix: merged.statePrefix)
                publisher.setDeadLetterTopic(n.deadLetterTopic ?? "\(merged.statePrefix)/deadletter/\(name)", forRoute: name)
                logger.info("Reload: route \(name) updated in place")
                continue
            }
            restart.insert(name)
            let runtime = state.withLock { $0.routes.removeValue(forKey: name) }
            await runtime?.stop(feedDrainLimit: RouteRuntime.feedDrainLimit(drainTimeout: merged.drainTimeout))
            logger.info("Reload: route \(name) \(newRoutes[name] == nil ? "removed" : "changed")")
        }
        for (name, route) in newRoutes where oldRoutes[name] == nil || restart.contains(name) {
            try await startRoute(route, configuration: merged, client: client, publisher: publisher)
            logger.info("Reload: route \(name) started")
        }
    }
}
