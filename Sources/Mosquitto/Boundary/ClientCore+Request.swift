import Logging

extension ClientCore {
    // MARK: Request/response (the rules live in RequestStateMachine; this file performs its actions)

    /// Returns once the broker acknowledged the response topic's subscription. Concurrent first requests wait
    /// for the one SUBSCRIBE in flight instead of publishing ahead of it.
    func ensureResponseSubscription() async throws {
        if state.withLock({ $0.requests.isSubscribed }) { return }
        let mustSubscribe = try await withCheckedThrowingContinuation { (c: CheckedContinuation<Bool, any Error>) in
            let action = state.withLock { s -> RequestStateMachine<RequestWaiter>.SubscriptionAction in
                if s.isClosing { return .closed }
                return s.requests.subscriptionNeeded(.subscription(c))
            }
            switch action {
            case .subscribe: c.resume(returning: true)
            case .ready: c.resume(returning: false)
            case .wait: break
            case .closed: c.resume(throwing: state.withLock { $0.closedError })
            }
        }
        guard mustSubscribe else { return }
        do {
            // An internal stream keeps the filter alive; replies are routed by correlation data.
            let stream = try await subscribe([Subscription(responseTopic, qos: .atLeastOnce)], buffer: .init(capacity: 1, overflow: .dropNewest))
            let waiters = state.withLock { s -> [RequestWaiter] in
                s.subscriptions.markInternal(responseTopic)
                s.responseStream = stream
                return s.requests.subscriptionSucceeded()
            }
            for case .subscription(let c) in waiters { c.resume(returning: false) }
        } catch {
            let waiters = state.withLock { $0.requests.subscriptionFailed() }
            for w in waiters { w.fail(error) }
            throw error
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
        // Registered before the PUBLISH is queued: a reply that beats the caller to its wait is kept.
        switch state.withLock({ $0.requests.register(corr) }) {
        case .registered: break
        case .closed: throw state.withLock { $0.closedError }
        case .duplicateCorrelation:
            throw MQTTError(.invalidArgument, "A request with the same correlation data is still waiting for its reply on '\(responseTopic)': give each request its own correlation data.")
        }
        do {
            _ = try await publish(m, completion: .acknowledged)
        } catch {
            state.withLock { $0.requests.cancel(corr) }?.fail(error)
            throw error
        }
        return try await withThrowingTaskGroup(of: MQTTMessage?.self) { group in
            group.addTask { try await self.waitForReply(corr) }
            group.addTask {
                try await Task.sleep(for: timeout)
                return nil
            }
            defer { group.cancelAll() }
            guard let first = try await group.next(), let reply = first else {
                throw MQTTError(.timeout, "No reply on '\(responseTopic)' within \(timeout) to the request on '\(message.topic)'. Is a responder subscribed to that topic?")
            }
            return reply
        }
    }

    /// Suspends until the reply of the registered request `corr` arrives (at once if it already did).
    private func waitForReply(_ corr: [UInt8]) async throws -> MQTTMessage {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<MQTTMessage, any Error>) in
                let (action, closed) = state.withLock { s in
                    (s.requests.wait(corr, waiter: .reply(c)), s.handleClosed ? s.closedError : nil)
                }
                switch action {
                case .reply(let m): c.resume(returning: m)
                case .suspended: break
                case .gone: c.resume(throwing: closed ?? CancellationError())
                }
            }
        } onCancel: {
            state.withLock { $0.requests.cancel(corr) }?.fail(CancellationError())
        }
    }
}
