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
    // MARK: Publishing

    /// Waits until a queue slot is handed to this publisher (the slow path of `publish`).
    nonisolated(nonsending) private func waitForSlot() async throws {
        let id = state.withLock { $0.nextID() }
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, any Error>) in
                let immediate = state.withLock { s -> Result<Void, any Error>? in
                    if s.isClosing { return .failure(s.closedError) }
                    if Task.isCancelled { return .failure(CancellationError()) }
                    switch s.publishes.waitForSlot(id, waiter: c) {
                    case .granted: return .success(())
                    case .suspended: return nil
                    }
                }
                if let immediate { c.resume(with: immediate) }
            }
        } onCancel: {
            state.withLock { $0.publishes.cancelSlotWait(id) }?.resume(throwing: CancellationError())
        }
    }

    private enum Admission {
        case admitted(epoch: UInt64)
        case mustWait
        case offline
        case closed(MQTTError)
    }


    nonisolated(nonsending) func publish(_ message: MQTTMessage, completion: PublishCompletion, onComplete: PublishCallback? = nil) async throws -> PublishReceipt {
        try MQTTTopic.validateName(message.topic)
        try checkDepth(message.topic, what: "topic")
        if message.payload.count > 268_435_455 {
            throw MQTTError(.payloadTooLarge, "The payload is \(message.payload.count) bytes; MQTT allows at most 268,435,455.")
        }
        var props = CPropertyList()
        if isV5 && !message.properties.isEmpty {
            props = try CPropertyList.publish(message.properties)
        }
        defer { props.free() }
        // Capped by maximumQoS: MQTT 3.1.1 has no way for a broker to say it cannot do QoS 2 (see its docs).
        let qos = min(message.qos, config.maximumQoS)
        // Built only when needed: publish is a hot path.
        func offlineError() -> MQTTError {
            MQTTError(.notConnected, "QoS 0 message to '\(message.topic)' not sent: the client is offline. Use QoS 1 or 2 to have it queued until the connection returns.")
        }

        // One lock for the common case: a free slot in the outgoing queue, the gate, the connection epoch.
        func admit(holdingSlot: Bool) -> Admission {
            state.withLock { s in
                if s.isClosing { return .closed(s.closedError) }
                switch s.publishes.admit(qos: qos, connected: s.isConnected, holdingSlot: holdingSlot) {
                case .offline: return .offline
                case .mustWait: return .mustWait
                case .admitted(let epoch):
                    s.activeCalls += 1  // the gate: the C call below runs outside the lock
                    return .admitted(epoch: epoch)
                }
            }
        }
        var admission = admit(holdingSlot: false)
        if case .mustWait = admission {
            try await waitForSlot()
            admission = admit(holdingSlot: true)
        }
        let epoch: UInt64
        switch admission {
        case .admitted(let e): epoch = e
        case .offline: throw offlineError()
        case .closed(let e): throw e
        case .mustWait: preconditionFailure("admit(holdingSlot: true) never asks to wait")
        }

        var mid: Int32 = 0
        let rc: Int32 = message.payload.withUnsafeBytes { buf in
            mosq.publish(mid: &mid, topic: message.topic, payload: buf, qos: Int32(qos.rawValue), retain: message.retain,
                         properties: props.head)
        }
        let id = UInt16(truncatingIfNeeded: mid)
        let offline = rc == MOSQ_ERR_NO_CONN.rawValue
        // NO_CONN at QoS 1/2 means "queued until the connection returns" (libmosquitto resends it).
        let accepted = rc == MOSQ_ERR_SUCCESS.rawValue || (offline && qos != .atMostOnce)

        // One lock again: leave the gate and register the message (or learn it already completed).
        let outcome = state.withLock { s -> PublishWindow.Registration in
            s.activeCalls -= 1
            return s.publishes.register(id, accepted: accepted, qos: qos, epoch: epoch, enqueued: completion == .enqueued,
                                        callback: onComplete)
        }
        executor.wakeIfSleeping()
        switch outcome {
        case .failed(let release):
            release.resume()
            if offline { throw offlineError() }
            throw MQTTError.fromLibrary(rc, context: "Publishing to '\(message.topic)'")
        case .lost(let release):
            release.resume()
            throw MQTTError(.connectionLost, "QoS 0 message to '\(message.topic)' may not have been sent: the connection was lost. Use QoS 1 or 2 to have messages kept until the connection returns.")
        case .early(let r):
            if let onComplete {
                onComplete(r >= 0x80 ? .failure(publishRejection(r, topic: message.topic)) : .success(r))
            } else {
                try checkReason(r, topic: message.topic)
            }
            return PublishReceipt(messageID: id, reasonCode: r, queuedWhileOffline: offline, completed: true)
        case .registered:
            return PublishReceipt(messageID: id, reasonCode: 0, queuedWhileOffline: offline, completed: false)
        case .needsWaiter:
            break
        }

        let reason: UInt8 = try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<UInt8, any Error>) in
                let early = state.withLock { s -> UInt8? in
                    switch s.publishes.waitForAcknowledgement(id, qos: qos, waiter: c) {
                    case .acknowledged(let r): return r
                    case .suspended: return nil
                    }
                }
                if let early { c.resume(returning: early) } else if Task.isCancelled { detachWaiter(id) }
            }
        } onCancel: {
            detachWaiter(id)
        }
        try checkReason(reason, topic: message.topic)
        return PublishReceipt(messageID: id, reasonCode: reason, queuedWhileOffline: offline, completed: true)
    }

    /// Refuses topics deeper than the broker accepts (see ``MQTTConfiguration/maximumTopicLevels``).
    func checkDepth(_ topic: String, what: String) throws(MQTTError) {
        // A topic of n bytes has at most n + 1 levels: short topics (nearly all) need no count.
        if topic.utf8.count < config.maximumTopicLevels { return }
        let levels = MQTTTopic.levelCount(topic)
        if levels > config.maximumTopicLevels {
            throw MQTTError(what == "topic" ? .invalidTopic : .invalidFilter,
                            "The \(what) '\(topic.prefix(40))…' has \(levels) levels; the mosquitto broker disconnects clients that use more than \(config.maximumTopicLevels). Use a flatter topic.")
        }
    }

    /// Stops waiting for message `id`'s acknowledgement (the message itself stays queued: libmosquitto cannot
    /// take it back).
    private func detachWaiter(_ id: UInt16) {
        state.withLock { $0.publishes.detach(id) }?.resume(throwing: CancellationError())
    }

    private func checkReason(_ r: UInt8, topic: String) throws {
        guard r >= 0x80 else { return }
        throw publishRejection(r, topic: topic)
    }

    /// The error for a PUBACK/PUBREC failure reason code.
    func publishRejection(_ r: UInt8, topic: String?) -> MQTTError {
        let text = MQTTError.reasonText(r)
        let which = topic.map { "the message to '\($0)'" } ?? "a message"
        if r == 0x87 {
            return MQTTError(.notAuthorized, "The broker refused \(which): \(text) (reason 0x87). Check the broker's ACL for this user and topic.", reasonCode: r)
        }
        return MQTTError(.publishRejected, "The broker refused \(which): \(text) (reason 0x\(String(r, radix: 16))).", reasonCode: r)
    }

    func waitUntilAllPublished() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let done = state.withLock { s -> Bool in
                s.handleClosed || s.publishes.waitUntilEmpty(c)
            }
            if done { c.resume() }
        }
    }
}

/// What `publish` waits for before it returns.
public enum PublishCompletion: Sendable, Hashable {
    /// Wait for the broker's acknowledgement (PUBACK for QoS 1, PUBCOMP for QoS 2) or, at QoS 0, for the
    /// write to the socket.
    case acknowledged
    /// Return as soon as the message is in the client's bounded outgoing queue, so that one publisher keeps
    /// many messages in flight. Suspends only while the queue is full.
    case enqueued
    /// Return once the message is stored in the client's durable outbox (``MQTTConfiguration/outbox``), written
    /// to its file and synced per the outbox's fsync policy: from then on it survives a restart of the process.
    /// Needs an outbox (without one, `publish` throws ``MQTTError/Code/invalidArgument``).
    case stored
}
