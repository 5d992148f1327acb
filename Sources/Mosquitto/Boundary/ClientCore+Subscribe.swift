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
    // MARK: Subscribing

    func sendSubscribe(_ h: OpaquePointer, entry: CoreState.FilterEntry, mid: inout Int32) -> Int32 {
        if isV5 {
            var props = CPropertyList()
            defer { props.free() }
            try? props.add(varint: MQTT_PROP_SUBSCRIPTION_IDENTIFIER, entry.id)
            for u in entry.userProperties { try? props.add(userProperty: u) }
            return mosquitto_subscribe_v5(h, &mid, entry.filter, Int32(entry.qos.rawValue), entry.options, props.head)
        }
        return mosquitto_subscribe(h, &mid, entry.filter, Int32(entry.qos.rawValue))
    }

    func subscribe(_ subscriptions: [Subscription], buffer policy: SubscriptionBuffer, userProperties: [UserProperty] = [],
                   internalFilter: Bool = false) async throws -> MessageStream {
        guard !subscriptions.isEmpty else { throw MQTTError(.invalidArgument, "Subscribe needs at least one filter.") }
        for s in subscriptions {
            try MQTTTopic.validateFilter(s.filter)
            try checkDepth(s.filter, what: "filter")
        }
        if !isV5 && !userProperties.isEmpty {
            throw MQTTError(.requiresMQTT5, "SUBSCRIBE user properties need MQTT 5: connect with protocolVersion .v5 (-V mqttv5).")
        }
        if !isV5 && subscriptions.contains(where: { $0.optionBits != 0 }) {
            throw MQTTError(.requiresMQTT5, "No-local, retain-as-published and retain handling need MQTT 5: connect with protocolVersion .v5 (-V mqttv5).")
        }
        let streamID = state.withLock { $0.nextID() }
        let buffer = MessageBuffer(policy: policy) { [weak self] in self?.removeStream(streamID) }
        let toSend = try state.withLock { s throws(MQTTError) -> [CoreState.FilterEntry] in
            if s.isClosing { throw s.closedError }
            s.streams[streamID] = buffer
            var out: [CoreState.FilterEntry] = []
            for sub in subscriptions {
                if var e = s.filters[sub.filter] {
                    e.streams.insert(streamID)
                    if sub.qos > e.qos || sub.optionBits != e.options || !userProperties.isEmpty {
                        e.qos = max(e.qos, sub.qos)
                        e.options = sub.optionBits
                        e.userProperties = userProperties
                        out.append(e)
                    }
                    s.filters[sub.filter] = e
                } else {
                    let id = s.nextSubscriptionID
                    s.nextSubscriptionID = s.nextSubscriptionID >= 268_435_455 ? 1 : s.nextSubscriptionID + 1
                    var e = CoreState.FilterEntry(filter: sub.filter, id: id, qos: sub.qos, options: sub.optionBits, streams: [streamID])
                    e.userProperties = userProperties
                    s.filters[sub.filter] = e
                    s.filtersByID[id] = sub.filter
                    out.append(e)
                }
            }
            return out
        }
        var granted: [String: QoS?] = [:]
        do {
            for entry in toSend {
                var mid: Int32 = 0
                let sentIn = state.withLock { $0.subacks.epoch }
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
                let codes = try await awaitSuback(UInt16(truncatingIfNeeded: mid), sentIn: sentIn, filter: entry.filter)
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
            return state.withLock { s in s.filters[f].map { $0.confirmed ? $0.qos : nil } ?? nil }
        }
        return MessageStream(buffer: buffer, filters: filters, grantedQoS: grants)
    }

    /// Waits for the SUBACK of `mid`, sent on connection `sentIn`; nil when that connection ended first (the
    /// filter is re-sent on reconnect).
    private func awaitSuback(_ mid: UInt16, sentIn: UInt64, filter: String) async throws -> [UInt8]? {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<[UInt8]?, any Error>) in
            let now = state.withLock { s -> [UInt8]?? in
                switch s.subacks.wait(for: mid, sentIn: sentIn, waiter: .user(filter, c)) {
                case .acknowledged(let codes):
                    if let code = codes.first, code < 0x80 { s.filters[filter]?.confirmed = true }
                    return .some(codes)
                case .connectionLost, .closed: return .some(nil)
                case .suspended: return .none
                }
            }
            if case .some(let codes) = now { c.resume(returning: codes) }
        }
    }

    /// Removes a stream and unsubscribes the filters no other stream uses.
    func removeStream(_ streamID: UInt64) {
        let gone = state.withLock { s -> [String] in
            guard s.streams.removeValue(forKey: streamID) != nil else { return [] }
            var gone: [String] = []
            for (f, var e) in s.filters where e.streams.contains(streamID) {
                e.streams.remove(streamID)
                if e.streams.isEmpty && !e.isInternal {
                    s.filters.removeValue(forKey: f)
                    s.filtersByID.removeValue(forKey: e.id)
                    gone.append(f)
                } else {
                    s.filters[f] = e
                }
            }
            return gone
        }
        for f in gone {
            _ = try? withHandle { h in mosquitto_unsubscribe(h, nil, f) }
        }
    }

    func unsubscribe(_ filters: [String], userProperties: [UserProperty] = []) async throws {
        if !isV5 && !userProperties.isEmpty {
            throw MQTTError(.requiresMQTT5, "UNSUBSCRIBE user properties need MQTT 5: connect with protocolVersion .v5 (-V mqttv5).")
        }
        let buffers = state.withLock { s -> [MessageBuffer] in
            var out: [MessageBuffer] = []
            for f in filters {
                if let e = s.filters.removeValue(forKey: f) {
                    s.filtersByID.removeValue(forKey: e.id)
                    out += e.streams.compactMap { s.streams[$0] }
                }
            }
            return out
        }
        for f in filters {
            var mid: Int32 = 0
            let sentIn = state.withLock { $0.unsubacks.epoch }
            guard let rc = try withHandle({ h throws(MQTTError) -> Int32 in
                if userProperties.isEmpty { return mosquitto_unsubscribe(h, &mid, f) }
                var props = CPropertyList()
                defer { props.free() }
                for u in userProperties { try props.add(userProperty: u) }
                return mosquitto_unsubscribe_v5(h, &mid, f, props.head)
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
        for b in buffers {
            let stillUsed = state.withLock { s in s.filters.values.contains { e in e.streams.contains { s.streams[$0] === b } } }
            if !stillUsed { b.finish() }
        }
    }

    func makeFirehose(buffer policy: SubscriptionBuffer) -> MessageStream {
        let id = state.withLock { $0.nextID() }
        let buffer = MessageBuffer(policy: policy) { [weak self] in
            _ = self?.state.withLock { $0.firehoses.removeValue(forKey: id) }
        }
        let closed = state.withLock { s -> Bool in
            if s.handleClosed { return true }
            s.firehoses[id] = buffer
            return false
        }
        if closed { buffer.finish() }
        return MessageStream(buffer: buffer, filters: ["#"], grantedQoS: [])
    }
}
