import Mosquitto

extension MQTTClient {
    /// Publishes a value encoded by `codec`.
    ///
    /// On MQTT 5 the message carries the codec's content type (`application/json` or `application/msgpack`) and
    /// payload format indicator (1 for JSON, 0 for MessagePack), unless `properties` sets them.
    ///
    /// ```swift
    /// struct Reading: Codable { var device: String; var celsius: Double }
    /// try await client.publish(Reading(device: "kitchen", celsius: 21.5), to: "sensors/kitchen/reading",
    ///                          codec: .messagePack)
    /// ```
    /// - Throws: `EncodingError` when the value does not encode (nothing is sent), and what
    ///   ``Mosquitto/MQTTClient/publish(_:completion:)`` throws.
    @discardableResult
    public func publish<T: Encodable>(_ value: T, to topic: String, codec: MQTTPayloadCodec = .json, qos: QoS = .atLeastOnce,
                                      retain: Bool = false, properties: MessageProperties = .init(),
                                      completion: PublishCompletion = .acknowledged) async throws -> PublishReceipt {
        let message = try MQTTMessage(topic: topic, encoding: value, codec: codec, qos: qos, retain: retain, properties: properties)
        return try await publish(message, completion: completion)
    }

    /// Subscribes to filters and decodes every message as `type`.
    ///
    /// Each element carries the original message and either the decoded value or the reason it did not decode.
    /// A payload that does not decode is delivered as such an element: it never ends the stream and is never
    /// dropped silently.
    ///
    /// ```swift
    /// let readings = try await client.subscribe("sensors/+/reading", as: Reading.self, codec: .messagePack)
    /// for try await reading in readings {
    ///     guard let value = reading.value else { print("skipped:", reading.error!); continue }
    ///     print(reading.message.topic, value.celsius)
    /// }
    /// ```
    /// - Parameters:
    ///   - filters: topic filters, with `+` and `#` wildcards.
    ///   - type: the type each payload decodes to.
    ///   - codec: ``MQTTPayloadCodec/auto`` (the default) chooses per message from the MQTT 5 content type.
    ///   - qos: the subscription's QoS.
    ///   - buffer: the stream's bound and overflow policy, as for ``Mosquitto/MQTTClient/subscribe(_:buffer:)``.
    /// - Throws: what ``Mosquitto/MQTTClient/subscribe(_:buffer:)`` throws.
    public func subscribe<T: Decodable & Sendable>(_ filters: String..., as type: T.Type, codec: MQTTPayloadCodec = .auto,
                                                   qos: QoS = .atLeastOnce, buffer: SubscriptionBuffer = .default) async throws -> TypedMessageStream<T> {
        TypedMessageStream(messages: try await subscribe(filters.map { Subscription($0, qos: qos) }, buffer: buffer), codec: codec)
    }

    /// Subscribes with MQTT 5 options and decodes every message as `type`; see
    /// ``subscribe(_:as:codec:qos:buffer:)``.
    public func subscribe<T: Decodable & Sendable>(_ subscriptions: [Subscription], as type: T.Type, codec: MQTTPayloadCodec = .auto,
                                                   buffer: SubscriptionBuffer = .default) async throws -> TypedMessageStream<T> {
        TypedMessageStream(messages: try await subscribe(subscriptions, buffer: buffer), codec: codec)
    }
}

/// A message received on a typed subscription: the original message, and the decoded value or why it did not
/// decode.
public struct TypedMessage<Value: Sendable>: Sendable {
    /// The message as received: topic, payload, QoS, retain flag, MQTT 5 properties.
    public let message: MQTTMessage
    /// The decoded value, or the reason the payload did not decode.
    public let result: Result<Value, MQTTPayloadError>

    /// The decoded value, or nil when the payload did not decode (see ``error``).
    public var value: Value? { try? result.get() }
    /// Why the payload did not decode, or nil when it did.
    public var error: MQTTPayloadError? {
        if case .failure(let e) = result { return e }
        return nil
    }
    /// The decoded value.
    /// - Throws: ``MQTTPayloadError`` when the payload did not decode.
    public func get() throws(MQTTPayloadError) -> Value { try result.get() }
    /// The message's topic.
    public var topic: String { message.topic }
}

/// The stream of a typed subscription: one ``TypedMessage`` per message received, decoded on the consumer's task.
///
/// Like ``Mosquitto/MessageStream``, which it wraps: one consumer, and ending the iteration unsubscribes.
public struct TypedMessageStream<Value: Decodable & Sendable>: AsyncSequence, Sendable {
    /// Each message with its decoded value or decoding error.
    public typealias Element = TypedMessage<Value>
    /// The stream ends with an ``MQTTError`` when the subscription is refused or the client gives up; a payload
    /// that does not decode does not end it.
    public typealias Failure = MQTTError

    /// The underlying stream of raw messages.
    public let messages: MessageStream
    /// The codec payloads are decoded with.
    public let codec: MQTTPayloadCodec

    /// Wraps a stream of raw messages.
    public init(messages: MessageStream, codec: MQTTPayloadCodec) {
        self.messages = messages
        self.codec = codec
    }

    /// Ends the stream and unsubscribes.
    public func cancel() { messages.cancel() }

    /// The iterator.
    public struct AsyncIterator: AsyncIteratorProtocol {
        var base: MessageStream.AsyncIterator
        let codec: MQTTPayloadCodec

        /// The next message, decoded; nil once the stream ended.
        public nonisolated(nonsending) mutating func next() async throws(MQTTError) -> TypedMessage<Value>? {
            guard let message = try await base.next() else { return nil }
            return TypedMessage(message: message, result: Result { () throws(MQTTPayloadError) in try message.decode(Value.self, codec: codec) })
        }

        /// The next message, decoded; see ``next()``.
        public nonisolated(nonsending) mutating func next(isolation actor: (any Actor)?) async throws(MQTTError) -> TypedMessage<Value>? {
            try await next()
        }
    }

    /// Creates the iterator; iterate from one task.
    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(base: messages.makeAsyncIterator(), codec: codec) }
}
