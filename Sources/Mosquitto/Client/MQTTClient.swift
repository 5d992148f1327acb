import CMosquitto
import Logging

/// Where the client's connection stands.
public enum ConnectionState: Sendable, Hashable {
    /// Not connected yet.
    case idle
    /// Connected; the broker's CONNACK.
    case connected(ConnAck)
    /// The connection was lost; the client is reconnecting (or about to give up).
    case disconnected
    /// The client has ended (shut down or gave up). Create a new client to connect again.
    case shutDown
}

/// Something that happened to the connection. Read them from a stream made by ``MQTTClient/makeEventStream()``.
public enum ConnectionEvent: Sendable, Hashable {
    /// The broker accepted the connection.
    case connected(ConnAck)
    /// The connection ended; nil for a clean, client-initiated disconnect.
    case disconnected(MQTTError?)
    /// The next connection attempt starts after `after`.
    case reconnecting(after: Duration, attempt: Int)
    /// The client stopped reconnecting because of this error; it is about to shut down.
    case gaveUp(MQTTError)
    /// The client has shut down; the stream ends.
    case shutDown
}

/// An MQTT 3.1.1/5 client over libmosquitto, with async/await publishing and per-subscription `AsyncSequence`s.
///
/// ```swift
/// let client = try MQTTClient(configuration: .init(host: "127.0.0.1", port: 1883))
/// try await client.connect()
/// let temps = try await client.subscribe("sensors/+/temperature")
/// try await client.publish(MQTTMessage(topic: "sensors/kitchen/temperature", string: "21.5"))
/// for try await message in temps { print(message.topic, message.string ?? "") }
/// await client.shutdown()
/// ```
///
/// The client owns one network thread that runs libmosquitto's loop and its own reconnect loop
/// (exponential backoff with jitter, giving up on fatal refusals, re-subscribing when the broker lost the
/// session). Publishing is bounded: at most ``MQTTConfiguration/maximumQueuedMessages`` messages wait or fly at
/// once, and `publish` suspends while that queue is full. Each subscription stream has its own bounded buffer
/// with a stated overflow policy and a drop counter.
///
/// Call ``shutdown(disconnectReason:properties:)`` when done: it sends DISCONNECT, joins the network thread and ends
/// every stream.
///
/// Every failure is an ``MQTTError``. Methods that only check their arguments, such as ``init(configuration:)``,
/// say so with a typed `throws(MQTTError)`. Methods that wait on the network, and the scoped
/// ``withClient(_:isolation:_:)`` and ``withSubscription(_:buffer:isolation:_:)``, throw untyped: cancelling the
/// waiting task throws `CancellationError`, and the scoped ones rethrow what their closure throws.
public final class MQTTClient: Sendable {
    let core: ClientCore
    /// The durable outbox, when ``MQTTConfiguration/outbox`` is set.
    let outbox: ClientOutbox?

    /// Creates a client. Nothing is sent until ``connect()``.
    ///
    /// With an ``MQTTConfiguration/outbox``, this opens it: it takes the directory's lock and finds what a
    /// previous run left unacknowledged, which ``connect()`` then sends first.
    /// - Throws: ``MQTTError`` for an invalid configuration (keepalive, port, TLS files, will topic …);
    ///   ``MQTTError/Code/outboxInUse`` when another live client holds the outbox directory,
    ///   ``MQTTError/Code/outboxUnavailable`` when it cannot be created or read.
    public init(configuration: MQTTConfiguration) throws(MQTTError) {
        core = try ClientCore(configuration: configuration)
        if let o = configuration.outbox {
            do {
                outbox = try ClientOutbox(o, core: core, logger: configuration.logger)
            } catch {
                _ = core.requestShutdown()
                throw error
            }
        } else {
            outbox = nil
        }
    }

    /// What the durable outbox holds now: depth, the age of the oldest message, what a previous run left and
    /// what was cut off as torn. nil without an ``MQTTConfiguration/outbox``.
    public var outboxStatus: OutboxStatus? { outbox?.status }

    deinit {
        _ = core.requestShutdown()
        outbox?.abandon()
    }

    /// The configuration the client was made with.
    public var configuration: MQTTConfiguration { core.config }

    /// The libmosquitto version in use, for example "2.0.11".
    public static var libraryVersion: String { MosquittoLibrary.version }

    /// An executor that runs tasks on this client's network thread, between its reads and writes.
    ///
    /// A task that prefers it handles messages on the thread that read them, as the callbacks of a libmosquitto C
    /// program do: no hand-over to the cooperative thread pool and no thread wake-up per burst of messages, which
    /// matters on a busy subscription or a fast publisher when CPU cores are few.
    ///
    /// ```swift
    /// let counter = Task(executorPreference: client.executor) {
    ///     var n = 0
    ///     for try await _ in stream { n += 1 }
    ///     return n
    /// }
    /// ```
    ///
    /// Keep such work short and non-blocking (count, parse, forward, publish): while a job runs, the connection
    /// is not served, keepalive included. Actor-isolated code still runs on its actor. While the client is not
    /// connected, and after it shut down, the jobs run on the global concurrent executor instead.
    public var executor: any TaskExecutor {
        core.executor
    }

    /// Where the connection stands now.
    public var state: ConnectionState { core.connectionState }

    /// Makes a new stream of connection events (connected, disconnected, reconnecting in N s, gave up, shut down).
    ///
    /// Each call makes a new, independent stream that sees the events from that moment on, holding up to 256
    /// unread events (older ones are dropped first). Make it before ``connect()`` to see the first
    /// ``ConnectionEvent/connected(_:)``. The stream ends after ``ConnectionEvent/shutDown``.
    public func makeEventStream() -> AsyncStream<ConnectionEvent> { core.makeEvents() }

    /// Connects and waits for the broker's CONNACK.
    ///
    /// When the first attempt fails (refused TCP, bad credentials, TLS), this throws and the client ends,
    /// unless ``MQTTConfiguration/ReconnectPolicy/retryInitialConnect`` is set. After the first success the
    /// client reconnects by itself. Calling `connect()` again while connected returns the current CONNACK.
    @discardableResult
    public func connect() async throws -> ConnAck {
        outbox?.start()
        return try await core.connect()
    }

    /// Publishes a message.
    ///
    /// - Parameters:
    ///   - message: topic, payload, QoS, retain flag and MQTT 5 properties. The topic is validated first;
    ///     an invalid one throws ``MQTTError/Code/invalidTopic`` and nothing is sent.
    ///   - completion: ``PublishCompletion/acknowledged`` (default) waits for PUBACK/PUBCOMP (or the socket
    ///     write at QoS 0); ``PublishCompletion/enqueued`` returns once the message is in the bounded outgoing
    ///     queue, so a fast publisher keeps many messages in flight.
    /// - Returns: a receipt that says whether the message was queued while offline.
    /// - Throws: ``MQTTError``: `.notConnected` for QoS 0 while offline (QoS 1/2 are queued until the connection
    ///   returns), `.notAuthorized`/`.publishRejected` when the broker refuses it (MQTT 5), `.shutDown`.
    ///   Cancelling the task stops the wait; a message already handed to libmosquitto is still delivered.
    ///
    /// With an ``MQTTConfiguration/outbox``, the message is stored first and the client sends it from there, so
    /// QoS 0 is accepted while offline too; ``PublishCompletion/stored`` and ``PublishCompletion/enqueued`` return once
    /// it is written, and the receipt's ``PublishReceipt/messageID`` is 0. It throws
    /// ``MQTTError/Code/outboxFull`` or ``MQTTError/Code/outboxUnavailable`` (per
    /// ``MQTTConfiguration/Outbox/whenFull``) when the message could not be stored.
    @discardableResult
    nonisolated(nonsending) public func publish(_ message: MQTTMessage, completion: PublishCompletion = .acknowledged) async throws -> PublishReceipt {
        if let outbox { return try await outbox.publish(message, completion: completion) }
        if completion == .stored {
            throw MQTTError(.invalidArgument, "PublishCompletion.stored needs a durable outbox: set MQTTConfiguration.outbox, or use .enqueued.")
        }
        return try await core.publish(message, completion: completion)
    }

    /// Hands a message to the bounded outgoing queue and reports its completion through `onComplete`.
    ///
    /// Returns as soon as the message is queued, like ``PublishCompletion/enqueued``; `onComplete` is then called
    /// exactly once, on the client's network thread, with the MQTT 5 reason code when the broker acknowledged the
    /// message (PUBACK/PUBCOMP, or the socket write at QoS 0; ``MQTTReasonCode/success`` on MQTT 3.x), or with the
    /// error when the broker refused it (a reason code that ``MQTTReasonCode/isFailure``), the connection dropped a
    /// QoS 0 message, or the client ended first. It is not called when this method throws. Keep `onComplete` short
    /// and non-blocking: it runs on the thread that reads from the broker. This is how a store-and-forward caller
    /// (such as a spool) learns, per message, when the broker has taken responsibility, without a task per message.
    @discardableResult
    public func publish(_ message: MQTTMessage,
                        onComplete: @escaping @Sendable (Result<MQTTReasonCode, MQTTError>) -> Void) async throws -> PublishReceipt {
        let callback: PublishCallback = { onComplete($0.map(MQTTReasonCode.init(rawValue:))) }
        if let outbox { return try await outbox.publish(message, completion: .stored, onComplete: callback) }
        return try await core.publish(message, completion: .enqueued, onComplete: callback)
    }

    /// Publishes bytes to a topic. See ``publish(_:completion:)``.
    @discardableResult
    public func publish(to topic: String, payload: some Sequence<UInt8>, qos: QoS = .atLeastOnce, retain: Bool = false,
                        properties: MessageProperties = .init(), completion: PublishCompletion = .acknowledged) async throws -> PublishReceipt {
        try await publish(MQTTMessage(topic: topic, payload: payload, qos: qos, retain: retain, properties: properties), completion: completion)
    }

    /// Publishes a UTF-8 string to a topic. See ``publish(_:completion:)``.
    @discardableResult
    public func publish(to topic: String, string: String, qos: QoS = .atLeastOnce, retain: Bool = false,
                        properties: MessageProperties = .init(), completion: PublishCompletion = .acknowledged) async throws -> PublishReceipt {
        try await publish(MQTTMessage(topic: topic, string: string, qos: qos, retain: retain, properties: properties), completion: completion)
    }

    /// Waits until every publication handed to the client so far has completed (acknowledged, written, or failed).
    ///
    /// With an ``MQTTConfiguration/outbox``, that is until the outbox is empty: every stored message acknowledged,
    /// those a previous run left included (or the client shut down).
    public func waitUntilAllPublished() async {
        if let outbox { await outbox.waitUntilEmpty() }
        await core.waitUntilAllPublished()
    }

    /// Subscribes to one or more filters and returns their messages as one stream.
    ///
    /// Waits for the broker's SUBACK. If the client is offline the subscription is registered and sent when the
    /// connection returns (``MessageStream/grantedQoS`` is then nil for it). Ending the iteration unsubscribes
    /// the filters no other stream uses.
    ///
    /// A broker keeps one subscription per filter and client, so streams that subscribe to the same filter share
    /// it: it has the highest QoS any of them asked for and the MQTT 5 options of the most recent `subscribe`.
    /// Give streams that need different options different filters.
    /// - Throws: `.invalidFilter` before anything is sent; `.notAuthorized`/`.subscriptionRejected` when the broker
    ///   refuses a filter.
    public func subscribe(_ subscriptions: [Subscription], buffer: SubscriptionBuffer = .default) async throws -> MessageStream {
        try await core.subscribe(subscriptions, buffer: buffer)
    }

    /// Subscribes like ``subscribe(_:buffer:)``, sending MQTT 5 user properties with the SUBSCRIBE (and with the
    /// re-subscription after a reconnect).
    /// - Throws: `.requiresMQTT5` on MQTT 3.x, and what ``subscribe(_:buffer:)`` throws.
    public func subscribe(_ subscriptions: [Subscription], buffer: SubscriptionBuffer = .default,
                          userProperties: [UserProperty]) async throws -> MessageStream {
        try await core.subscribe(subscriptions, buffer: buffer, userProperties: userProperties)
    }

    /// Subscribes to filters at one QoS. See ``subscribe(_:buffer:)``.
    public func subscribe(_ filters: String..., qos: QoS = .atLeastOnce, buffer: SubscriptionBuffer = .default) async throws -> MessageStream {
        try await core.subscribe(filters.map { Subscription($0, qos: qos) }, buffer: buffer)
    }

    /// Subscribes for the duration of `body`, then unsubscribes (ends the stream) however `body` ends.
    ///
    /// `body` runs on the caller's actor (`isolation`), so it may use the caller's state and return a value that
    /// is not `Sendable`.
    /// - Throws: What ``subscribe(_:buffer:)`` throws (an ``MQTTError``), and whatever `body` throws. Untyped, like
    ///   every `async` method of the client that waits on the network: cancellation throws `CancellationError`.
    public func withSubscription<R>(_ subscriptions: [Subscription], buffer: SubscriptionBuffer = .default,
                                    isolation: isolated (any Actor)? = #isolation,
                                    _ body: (MessageStream) async throws -> sending R) async throws -> sending R {
        let stream = try await subscribe(subscriptions, buffer: buffer)
        defer { stream.cancel() }
        return try await body(stream)
    }

    /// Sends UNSUBSCRIBE for the filters and waits for the UNSUBACK. Streams left without filters end.
    /// - Parameters:
    ///   - filters: The filters to unsubscribe from.
    ///   - userProperties: MQTT 5 user properties for the UNSUBSCRIBE packets.
    /// - Throws: `.requiresMQTT5` for user properties on MQTT 3.x.
    public func unsubscribe(_ filters: [String], userProperties: [UserProperty] = []) async throws {
        try await core.unsubscribe(filters, userProperties: userProperties)
    }

    /// Every message the client receives, whatever subscription it came through (a firehose).
    /// Each call returns a new stream with its own buffer; it subscribes to nothing by itself.
    public func allMessages(buffer: SubscriptionBuffer = .default) -> MessageStream {
        core.makeFirehose(buffer: buffer)
    }

    /// Sends a request (MQTT 5) and waits for the reply.
    ///
    /// Sets the Response Topic to the client's private response topic and a random Correlation Data (unless the
    /// message already has one), publishes at the message's QoS, and returns the first message that comes back
    /// with that correlation data.
    /// - Throws: `.timeout` when no reply arrives in time; `.requiresMQTT5` on MQTT 3.1.1.
    public func request(_ message: MQTTMessage, timeout: Duration = .seconds(10)) async throws -> MQTTMessage {
        try await core.request(message, timeout: timeout)
    }

    /// The response topic this client's requests carry.
    public var responseTopic: String { core.responseTopic }

    /// Answers a request: publishes `payload` to its Response Topic with its Correlation Data.
    /// - Throws: `.invalidArgument` when the request has no response topic.
    @discardableResult
    public func respond(to request: MQTTMessage, payload: some Sequence<UInt8>, qos: QoS = .atLeastOnce,
                        properties: MessageProperties = .init()) async throws -> PublishReceipt {
        guard let topic = request.properties.responseTopic else {
            throw MQTTError(.invalidArgument, "The request on '\(request.topic)' has no response topic, so it cannot be answered.")
        }
        var props = properties
        props.correlationData = request.properties.correlationData
        return try await publish(MQTTMessage(topic: topic, payload: payload, qos: qos, properties: props))
    }

    /// Serves requests on `filter` until the task is cancelled: each request's reply is what `handler` returns.
    public func serveRequests(on filter: String, qos: QoS = .atLeastOnce,
                              _ handler: @escaping @Sendable (MQTTMessage) async throws -> [UInt8]) async throws {
        let stream = try await subscribe([Subscription(filter, qos: qos)])
        for try await request in stream {
            guard request.properties.responseTopic != nil else { continue }
            let reply = try await handler(request)
            try await respond(to: request, payload: reply, qos: qos)
        }
    }

    /// Disconnects cleanly, joins the network thread, fails what is still waiting with `.shutDown`, and ends every
    /// stream. Safe to call more than once.
    ///
    /// ```swift
    /// await client.shutdown()                                              // no will is published
    /// await client.shutdown(disconnectReason: .disconnectWithWillMessage)  // MQTT 5: publish the will anyway
    /// await client.shutdown(properties: .init(sessionExpiryInterval: 0))   // MQTT 5: discard the session now
    /// ```
    ///
    /// - Parameters:
    ///   - disconnectReason: The MQTT 5 DISCONNECT reason code. ``MQTTReasonCode/normalDisconnection`` (the default)
    ///     has the broker discard the will; ``MQTTReasonCode/disconnectWithWillMessage`` asks it to publish the will
    ///     anyway, as `mosquitto_sub` does when interrupted. Ignored on MQTT 3.x, where a DISCONNECT always discards
    ///     the will.
    ///   - properties: MQTT 5 DISCONNECT properties: a new session expiry (for example 0 to have the broker discard
    ///     a persistent session now), a reason string, user properties. The broker refuses a non-zero session
    ///     expiry when the client connected with none. Ignored on MQTT 3.x.
    public func shutdown(disconnectReason: MQTTReasonCode = .normalDisconnection, properties: DisconnectProperties = .init()) async {
        await core.shutdown(disconnectReason: disconnectReason.rawValue, properties: properties)
        // After the engine: the acknowledgements it received up to the end are recorded before the files close.
        await outbox?.stop()
    }

    /// Connects, runs `body`, and shuts the client down however `body` ends.
    ///
    /// `body` runs on the caller's actor (`isolation`), so it may use the caller's state and return a value that
    /// is not `Sendable`.
    /// - Throws: ``MQTTError`` when the configuration is invalid or the connection fails (see ``connect()``), and
    ///   whatever `body` throws. Untyped, like every `async` method of the client that waits on the network:
    ///   cancellation throws `CancellationError`.
    public static func withClient<R>(_ configuration: MQTTConfiguration,
                                     isolation: isolated (any Actor)? = #isolation,
                                     _ body: (MQTTClient) async throws -> sending R) async throws -> sending R {
        let client = try MQTTClient(configuration: configuration)
        do {
            try await client.connect()
            let r = try await body(client)
            await client.shutdown()
            return r
        } catch {
            await client.shutdown()
            throw error
        }
    }
}
