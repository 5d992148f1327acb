import CMosquitto
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
    // MARK: Subscribing (the rules live in SubscriptionStateMachine; this file performs its actions)

    func sendSubscribe(_ h: MosquittoHandle, entry: Subscriptions.Entry, mid: inout Int32) -> Int32 {
        var props = CPropertyList()
        defer { props.free() }
        if isV5 {
            try? props.add(varint: MQTT_PROP_SUBSCRIPTION_IDENTIFIER, entry.id)
            for u in entry.userProperties { try? props.add(userProperty: u) }
        }
        return h.subscribe(mid: &mid, filter: entry.filter, qos: Int32(entry.qos.rawValue), options: entry.options, properties: props.head, v5: isV5)
    }

    func subscribe(_ subscriptions: [Subscription], buffer policy: SubscriptionBuffer, userProperties: [UserProperty] = [],
                   internalFilter: Bool = false) async throws -> MessageStream {
        guard !subscriptions.isEmpty else { throw MQTTError(.invalidArgument, "Subscribe needs at least one filter.") }
        for s in subscriptions {
            try MQTTTopic.validateFilter(s.filter)
            try checkDepth(s.filter, what: "filter")
        }
        if !isV5 && !userProperties.isEmpty {
            throw MQTTError(.requiresMQTT5, "SUBSCRIBE user properties need MQTT 5: connect with protocolVersion .v5.")
        }
        if !isV5 && subscriptions.contains(where: { $0.optionBits != 0 }) {
            throw MQTTError(.requiresMQTT5, "No-local, retain-as-published and retain handling need MQTT 5: connect with protocolVersion .v5.")
        }
        let streamID = state.withLock { $0.nextID() }
        let buffer = MessageBuffer(policy: policy) { [weak self] in self?.removeStream(streamID) }
        let toSend = try state.withLock { s throws(MQTTError) -> [Subscriptions.Entry] in
            if s.isClosing { throw s.closedError }
            if s.lifecycle.connAck?.sharedSubscriptionAvailable == false,
               let shared = subscriptions.first(where: { MQTTTopic.shareGroup(of: $0.filter) != nil }) {
                throw MQTTError.sharedSubscriptionsUnavailable(shared.filter)
            }
            return s.subscriptions.subscribeRequested(streamID: streamID, buffer: buffer, subscriptions, userProperties: userProperties)
        }
        var granted: [String: QoS?] = [:]
        do {
            for entry in toSend {
                var mid: Int32 = 0
                let sentIn = state.withLock { $0.subscriptions.epoch }
                guard let rc = try withHandle({ h in sendSubscribe(h, entry: entry, mid: &mid) }) else {
                    throw state.withLock { $0.closedError }
                }
                if rc == MOSQ_ERR_NO_CONN.rawValue {
                    granted[entry.filter] = .some(nil)  // sent on reconnect
                    continue
                }
                if rc != MOSQ_ERR_SUCCESS.rawValue {
                    throw MQTTError.fromLibrary(rc, context: "Subscribing to '\(entry.filter)'")
                }
                let codes = try await awaitSuback(UInt16(truncatingIfNeeded: mid), sentIn: sentIn, entry: entry)
                guard let codes else {
                    granted[entry.filter] = .some(nil)
                    continue
                }
                if let code = codes.first, code >= 0x80 {
                    let text = isV5 ? MQTTError.reasonText(code) : "failure"
                    if code == 0x87 {
                        throw MQTTError(.notAuthorized, "The broker refused the subscription to '\(entry.filter)': \(text) (reason 0x87). Check the broker's ACL.", reasonCode: code)
                    }
                    throw MQTTError(.subscriptionRejected, "The broker refused the subscription to '\(entry.filter)': \(text) (reason 0x\(String(code, radix: 16))).", reasonCode: code)
                }
                granted[entry.filter] = codes.first.flatMap { QoS(rawValue: $0) }
            }
        } catch {
            buffer.finish()
            removeStream(streamID)
            throw error
        }
        let filters = subscriptions.map(\.filter)
        let grants: [QoS?] = filters.map { f in
            if let g = granted[f] { return g }
            return state.withLock { $0.subscriptions.grantedQoS(f) }
        }
        return MessageStream(buffer: buffer, filters: filters, grantedQoS: grants)
    }

    /// Waits for the SUBACK of `mid`, sent on connection `sentIn`; nil when that connection ended first (the
    /// filter is re-sent on reconnect).
    private func awaitSuback(_ mid: UInt16, sentIn: UInt64, entry: Subscriptions.Entry) async throws -> [UInt8]? {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<[UInt8]?, any Error>) in
            switch state.withLock({ $0.subscriptions.waitForSuback(mid, sentIn: sentIn, entry: entry, waiter: c) }) {
            case .acknowledged(let codes): c.resume(returning: codes)
            case .offline: c.resume(returning: nil)
            case .suspended: break
            }
        }
    }

    /// Removes a stream and unsubscribes the filters no other stream uses.
    func removeStream(_ streamID: UInt64) {
        let gone = state.withLock { $0.subscriptions.streamEnded(streamID) }
        for f in gone {
            _ = try? withHandle { h in h.unsubscribe(mid: nil, filter: f, properties: nil) }
        }
    }

    func unsubscribe(_ filters: [String], userProperties: [UserProperty] = []) async throws {
        if !isV5 && !userProperties.isEmpty {
            throw MQTTError(.requiresMQTT5, "UNSUBSCRIBE user properties need MQTT 5: connect with protocolVersion .v5.")
        }
        let buffers = state.withLock { $0.subscriptions.unsubscribeRequested(filters) }
        for f in filters {
            var mid: Int32 = 0
            let sentIn = state.withLock { $0.unsubacks.epoch }
            guard let rc = try withHandle({ h throws(MQTTError) -> Int32 in
                var props = CPropertyList()
                defer { props.free() }
                for u in userProperties { try props.add(userProperty: u) }
                return h.unsubscribe(mid: &mid, filter: f, properties: props.head)
            }) else { throw state.withLock { $0.closedError } }
            if rc == MOSQ_ERR_NO_CONN.rawValue { continue }
            if rc != MOSQ_ERR_SUCCESS.rawValue { throw MQTTError.fromLibrary(rc, context: "Unsubscribing from '\(f)'") }
            let id = UInt16(truncatingIfNeeded: mid)
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
                let action = state.withLock { s in s.unsubacks.wait(for: id, sentIn: sentIn, waiter: c) }
                switch action {
                case .acknowledged, .connectionLost: c.resume()
                case .closed: c.resume(throwing: state.withLock { $0.closedError })
                case .suspended: break
                }
            }
        }
        // Streams whose every filter is gone end.
        for b in state.withLock({ $0.subscriptions.orphans(buffers) }) { b.finish() }
    }

    func makeFirehose(buffer policy: SubscriptionBuffer) -> MessageStream {
        let id = state.withLock { $0.nextID() }
        let buffer = MessageBuffer(policy: policy) { [weak self] in
            self?.state.withLock { $0.subscriptions.firehoseEnded(id) }
        }
        let closed = state.withLock { s -> Bool in
            if s.handleClosed { return true }
            return !s.subscriptions.firehoseAdded(id, buffer: buffer)
        }
        if closed { buffer.finish() }
        return MessageStream(buffer: buffer, filters: ["#"], grantedQoS: [])
    }
}
