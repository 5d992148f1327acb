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
    // MARK: Request/response

    func ensureResponseSubscription() async throws {
        let needed = state.withLock { s -> Bool in
            if s.responseSubscribed { return false }
            s.responseSubscribed = true
            return true
        }
        guard needed else { return }
        // An internal stream keeps the filter alive; replies are routed by correlation data.
        let stream = try await subscribe([Subscription(responseTopic, qos: .atLeastOnce)], buffer: .init(capacity: 1, overflow: .dropNewest))
        state.withLock { s in
            s.filters[responseTopic]?.isInternal = true
            s.responseStream = stream
        }
    }

    func request(_ message: MQTTMessage, timeout: Duration) async throws -> MQTTMessage {
        guard isV5 else {
            throw MQTTError(.requiresMQTT5, "Request/response needs MQTT 5 (response topic and correlation data): use protocolVersion .v5.")
        }
        try await ensureResponseSubscription()
        var m = message
        let corr = m.properties.correlationData ?? (0..<16).map { _ in UInt8.random(in: 0...255) }
        m.properties.correlationData = corr
        m.properties.responseTopic = responseTopic
        return try await withThrowingTaskGroup(of: MQTTMessage?.self) { group in
            group.addTask {
                try await withTaskCancellationHandler {
                    try await withCheckedThrowingContinuation { (c: CheckedContinuation<MQTTMessage, any Error>) in
                        let closed = self.state.withLock { s -> MQTTError? in
                            if s.handleClosed || s.shutdownRequested { return s.closedError }
                            if Task.isCancelled { return MQTTError(.timeout, "cancelled") }
                            s.requests[corr] = c
                            return nil
                        }
                        if let closed { c.resume(throwing: closed) }
                    }
                } onCancel: {
                    let c = self.state.withLock { $0.requests.removeValue(forKey: corr) }
                    c?.resume(throwing: CancellationError())
                }
            }
            group.addTask {
                try await Task.sleep(for: timeout)
                return nil
            }
            _ = try await publish(m, completion: .acknowledged)
            defer { group.cancelAll() }
            guard let first = try await group.next(), let reply = first else {
                throw MQTTError(.timeout, "No reply on '\(responseTopic)' within \(timeout) to the request on '\(message.topic)'. Is a responder subscribed to that topic?")
            }
            return reply
        }
    }
}
