import CMosquitto
import CMosquittoIO
import DequeModule
import Dispatch
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Logging

extension ClientCore {
    /// Installs the trampolines below: the only functions libmosquitto calls into Swift.
    func installCallbacks() {
        mosq.setCallbacks(connect: onConnectTrampoline, disconnect: onDisconnectTrampoline, publish: onPublishTrampoline,
                          message: onMessageTrampoline, subscribe: onSubscribeTrampoline, unsubscribe: onUnsubscribeTrampoline,
                          log: logger.logLevel <= .debug ? onLogTrampoline : nil)
    }

    // MARK: Callback handlers (network thread)

    func handleConnect(rc: Int32, flags: Int32, props: OpaquePointer?) {
        assertOnNetworkThread()
        guard rc == 0 else {
            // Reported once, where the attempt ends: thrown from connect(), or in the reconnect line and the
            // `.disconnected` event. Logging it here too made two lines of one refusal.
            let error = MQTTError.connectRefused(rc, protocolVersion: config.protocolVersion)
            logger.debug("\(error.message)")
            let target = redirectTarget(reason: rc, props)
            state.withLock { s in
                s.lifecycle.connAckRefused(error)
                if let target { s.lifecycle.redirected(to: target.endpoint, permanent: target.permanent) }
            }
            return
        }
        var ack = PropertyReader.connAck(flags: flags, props)
        ack.endpoint = state.withLock { $0.lifecycle.currentEndpoint }
        sessionUp = true
        // TLS reads and writes go through OpenSSL, which the batching does not see (over WebSockets, TLS is the
        // tunnel's and libmosquitto reads and writes a plain Unix socket).
        if let io, config.tls == nil || webSocket != nil { _ = mosq_io_attach(io) }
        if !ack.sessionPresent { qos2Deduplicator.reset() }
        let (waiters, unsupported, resend) = state.withLock { s in
            let unsupported = ack.sharedSubscriptionAvailable ? [] : s.subscriptions.sharedSubscriptionsUnavailable()
            return (s.lifecycle.connAckAccepted(ack), unsupported, s.subscriptions.connected(sessionPresent: ack.sessionPresent))
        }
        for (filter, buffers) in unsupported {
            let error = MQTTError.sharedSubscriptionsUnavailable(filter)
            logger.error("\(error.message)")
            for b in buffers { b.finish(error: error) }
        }
        logger.debug("Connected to \(ack.endpoint.map { "\($0)" } ?? "?") (session present: \(ack.sessionPresent))")
        // Re-subscribe: libmosquitto never does it, and subscribe calls made while offline were not queued.
        // Before anyone hears of the connection: a task that publishes once it is connected must find the
        // SUBSCRIBE ahead of its PUBLISH in libmosquitto's queue, or the broker would not route the message
        // back to this client's own subscription.
        for entry in resend {
            var mid: Int32 = 0
            let rc = sendSubscribe(mosq, entry: entry, mid: &mid)
            if rc == MOSQ_ERR_SUCCESS.rawValue {
                // On the network thread, so its SUBACK cannot be handled before this registration.
                state.withLock { $0.subscriptions.resubscribeSent(UInt16(truncatingIfNeeded: mid), entry: entry) }
            } else {
                logger.error("Re-subscribing to '\(entry.filter)' failed: \(MQTTError.libraryText(rc))")
            }
        }
        // The event first: a stream made once `connect()` returned must not receive this connection's `.connected`
        // late and take it for a later one.
        emit(.connected(ack))
        for w in waiters { w.resume(returning: ack) }
    }

    /// Where an MQTT 5 redirect (reason 0x9C use another server, 0x9D server moved, with a Server Reference) sends
    /// this client; nil when `reason` is not one, or the reference names no usable broker.
    func redirectTarget(reason: Int32, _ props: OpaquePointer?) -> (endpoint: MQTTConfiguration.Endpoint, permanent: Bool)? {
        guard isV5, reason == 0x9C || reason == 0x9D, let reference = PropertyReader.serverReference(props) else { return nil }
        let current = state.withLock { $0.lifecycle.currentEndpoint }
        let defaultPort = if case .tcp(_, let port) = current { port } else { 1883 }
        guard let target = MQTTConfiguration.Endpoint(serverReference: reference, defaultPort: defaultPort) else {
            logger.warning("The broker \(current) redirected this client to '\(reference)', which names no broker (expected host, host:port or [address]:port); treating it as a refusal.")
            return nil
        }
        return (target, reason == 0x9D)
    }

    func handleDisconnect(rc: Int32, props: OpaquePointer?) {
        assertOnNetworkThread()
        sessionUp = false
        if let target = redirectTarget(reason: rc, props) {
            state.withLock { $0.lifecycle.redirected(to: target.endpoint, permanent: target.permanent) }
        }
        // After a CONNACK that refused the connection, libmosquitto 2.0.11 ends it with MOSQ_ERR_PROTOCOL (MQTT 5)
        // or MOSQ_ERR_CONN_REFUSED (3.x): the refusal is the reason, not a protocol error.
        let refusal = state.withLock { $0.lifecycle.disconnected() }
        let error: MQTTError? = refusal ?? {
            if rc == 0 { return nil }
            if isV5 && rc >= 0x80 && rc <= 0xFF {
                return MQTTError(.connectionLost, "The broker closed the connection: \(MQTTError.reasonText(UInt8(rc))) (reason 0x\(String(rc, radix: 16))).", reasonCode: UInt8(rc))
            }
            let error = MQTTError.fromLibrary(rc, context: "Connection to \(state.withLock { $0.lifecycle.endpoint })")
            // The usual cause on MQTT 3.1.1: a broker that acknowledged a QoS 2 message as QoS 1 (RabbitMQ).
            if rc == MOSQ_ERR_PROTOCOL.rawValue, !isV5, state.withLock({ $0.publishes.hasPendingQoS2 }) {
                return MQTTError(error.code, error.message + " QoS 2 messages were in flight: a broker that cannot do QoS 2 (RabbitMQ acknowledges it as QoS 1, which MQTT forbids) ends every connection this way. Publish at QoS 1, or set maximumQoS to .atLeastOnce (mqtt-pub: -q 1).")
            }
            return error
        }()
        // QoS 0 messages still queued in libmosquitto are discarded by it when the connection goes.
        let (lost, lostPlain, release) = state.withLock { $0.publishes.connectionLost() }
        if lostPlain > 0 {
            logger.warning("\(lostPlain) QoS 0 messages queued for sending were discarded: the connection was lost. Use QoS 1 or 2 to have messages kept until the connection returns.")
        }
        for (mid, p) in lost {
            p.fail(MQTTError(.connectionLost, "QoS 0 message \(mid) was not sent: the connection was lost. Use QoS 1 or 2 to have messages kept until the connection returns."))
        }
        release.resume()
        releaseAcknowledgementWaiters()
        if let error, refusal == nil {
            logger.warning("Disconnected from \(state.withLock { $0.lifecycle.endpoint }): \(error.message)")
        }
        emit(.disconnected(error))
    }

    /// Called when the connection ended, before the reconnect decision. Also where libmosquitto did not call
    /// on_disconnect (a failed flush of the batched output, a refused TCP connect).
    func handleConnectionEnded(_ error: MQTTError) {
        releaseAcknowledgementWaiters()
    }

    /// SUBACKs and UNSUBACKs that will not come: the connection they were sent on has ended. Subscribers go on
    /// offline (their filters are re-sent on reconnect); an unsubscribe is complete (the broker forgets the
    /// subscription with the session, or the filter no longer routes anywhere here).
    func releaseAcknowledgementWaiters() {
        let (subs, unsubs) = state.withLock { s in (s.subscriptions.connectionLost(), s.unsubacks.connectionLost()) }
        for c in subs { c.resume(returning: nil) }
        for c in unsubs { c.resume() }
    }

    func handlePublished(mid: Int32, reason: Int32) {
        assertOnNetworkThread()
        let id = UInt16(truncatingIfNeeded: mid)
        let r = UInt8(truncatingIfNeeded: reason)
        let (pending, release) = state.withLock { $0.publishes.published(id, reason: r) }
        if let pending {
            pending.waiter?.resume(returning: r)
            if let callback = pending.callback {
                callback(r >= 0x80 ? .failure(publishRejection(r, topic: nil)) : .success(r))
            }
        }
        release.resume()
    }

    func handleSubscribed(mid: Int32, codes: [UInt8]) {
        assertOnNetworkThread()
        let id = UInt16(truncatingIfNeeded: mid)
        switch state.withLock({ $0.subscriptions.subackReceived(id, codes: codes) }) {
        case .none: break
        case .resume(let c, let codes): c.resume(returning: codes)
        case .resubscriptionRefused(let filter, let code, let buffers):
            logger.error("The broker rejected the re-subscription to '\(filter)': \(MQTTError.reasonText(code))")
            let error = MQTTError(.subscriptionRejected, "The broker rejected the re-subscription to '\(filter)' after reconnecting: \(MQTTError.reasonText(code)).", reasonCode: code)
            for b in buffers { b.finish(error: error) }
        }
    }

    func handleUnsubscribed(mid: Int32) {
        assertOnNetworkThread()
        let id = UInt16(truncatingIfNeeded: mid)
        let c = state.withLock { s -> CheckedContinuation<Void, any Error>? in
            if case .resume(let c, _) = s.unsubacks.acknowledged(id, ()) { return c }
            return nil
        }
        c?.resume()
    }

    /// The topic of a received message as a `String`, reusing the previous message's string when the topic is
    /// the same (telemetry streams repeat topics), so that most messages cost no topic allocation.
    func receivedTopic(_ cTopic: UnsafePointer<CChar>) -> String {
        let length = strlen(cTopic)
        if length == 0 { return "" }
        let same = lastTopic.utf8.count == length && lastTopic.utf8.withContiguousStorageIfAvailable { bytes in
            memcmp(bytes.baseAddress!, cTopic, length) == 0
        } == true
        if !same { lastTopic = String(cString: cTopic) }
        return lastTopic
    }

    func handleMessage(_ message: MQTTMessage) {
        assertOnNetworkThread()
        if message.qos == .exactlyOnce && qos2Deduplicator.isDuplicate(message) {
            logger.debug("Dropped a duplicate QoS 2 delivery of message \(message.messageID) on '\(message.topic)' (the broker resent a QoS 2 message whose exchange had finished, as mosquitto 2.0.11 does after a restart)")
            return
        }
        let (targets, request) = state.withLock { s -> ([MessageBuffer], CheckedContinuation<MQTTMessage, any Error>?) in
            let targets = s.subscriptions.messageArrived(topic: message.topic, properties: message.properties)
            var request: CheckedContinuation<MQTTMessage, any Error>?
            if !s.requests.pending.isEmpty, message.topic == responseTopic, let corr = message.properties.correlationData {
                switch s.requests.replyArrived(corr, message) {
                case .resume(.reply(let c), _): request = c
                case .resume(.subscription, _): preconditionFailure("a pending request's waiter is a reply waiter")
                case .stored, .unknown: break
                }
            }
            s.messagesReceived += 1
            return (targets, request)
        }
        for t in targets where t.push(message, deferWake: true, jobs: executor) == nil {
            pendingWakes.append(t)
        }
        request?.resume(returning: message)
    }
}

// MARK: - C callbacks: the single entry point from libmosquitto into Swift

/// Calls `body` with the client whose `userdata` libmosquitto passed, without retaining it: the network thread
/// (or, for `on_log`, the gated caller) holds a strong reference for as long as a callback can run (ClientCore's "The single entry from C").
/// A retain here is not free: the weak references that streams keep to the core give it a side table, which
/// makes every retain and release of it take the slow path, twice per message.
@inline(__always)
private func withCore(_ obj: UnsafeMutableRawPointer?, _ body: (ClientCore) -> Void) {
    guard let obj else { return }
    Unmanaged<ClientCore>.fromOpaque(obj)._withUnsafeGuaranteedRef(body)
}

private let onConnectTrampoline: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?, Int32, Int32, OpaquePointer?) -> Void = { _, obj, rc, flags, props in
    withCore(obj) { $0.handleConnect(rc: rc, flags: flags, props: props) }
}

private let onDisconnectTrampoline: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?, Int32, OpaquePointer?) -> Void = { _, obj, rc, props in
    withCore(obj) { $0.handleDisconnect(rc: rc, props: props) }
}

private let onPublishTrampoline: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?, Int32, Int32, OpaquePointer?) -> Void = { _, obj, mid, reason, _ in
    withCore(obj) { $0.handlePublished(mid: mid, reason: reason) }
}

private let onSubscribeTrampoline: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?, Int32, Int32, UnsafePointer<Int32>?, OpaquePointer?) -> Void = { _, obj, mid, count, granted, _ in
    var codes: [UInt8] = []
    if let granted, count > 0 {
        codes = (0..<Int(count)).map { UInt8(truncatingIfNeeded: granted[$0]) }
    }
    withCore(obj) { $0.handleSubscribed(mid: mid, codes: codes) }
}

private let onUnsubscribeTrampoline: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?, Int32, OpaquePointer?) -> Void = { _, obj, mid, _ in
    withCore(obj) { $0.handleUnsubscribed(mid: mid) }
}

private let onMessageTrampoline: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?, UnsafePointer<mosquitto_message>?, OpaquePointer?) -> Void = { _, obj, msg, props in
    guard let m = msg?.pointee else { return }
    withCore(obj) { c in
        // Copy everything out of C memory now: it is freed when this callback returns.
        let topic = m.topic.map { c.receivedTopic($0) } ?? ""
        let payload: [UInt8]
        if let source = m.payload, m.payloadlen > 0 {
            let count = Int(m.payloadlen)
            payload = [UInt8](unsafeUninitializedCapacity: count) { buffer, initialized in
                memcpy(buffer.baseAddress!, source, count)
                initialized = count
            }
        } else {
            payload = []
        }
        let properties = props == nil ? MessageProperties() : PropertyReader.messageProperties(props)
        var message = MQTTMessage(topic: topic, payload: payload, qos: QoS(rawValue: UInt8(clamping: m.qos)) ?? .atMostOnce,
                                  retain: m.retain, properties: properties)
        message.messageID = UInt16(truncatingIfNeeded: m.mid)
        c.handleMessage(message)
    }
}

private let onLogTrampoline: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?, Int32, UnsafePointer<CChar>?) -> Void = { _, obj, level, text in
    guard let text else { return }
    let line = String(cString: text)
    withCore(obj) { c in
        if level == MOSQ_LOG_DEBUG {
            c.logger.trace("libmosquitto: \(line)")
        } else {
            c.logger.debug("libmosquitto: \(line)")
        }
    }
}

#if canImport(Glibc)
import Glibc
func closeSocketForTesting(_ fd: Int32) -> Int32 { Glibc.shutdown(fd, Int32(SHUT_RDWR)) }
#elseif canImport(Darwin)
import Darwin
func closeSocketForTesting(_ fd: Int32) -> Int32 { Darwin.shutdown(fd, SHUT_RDWR) }
#endif
