import DequeModule

/// The publish window: slots of the bounded outgoing queue, the publishers waiting for one, the messages someone
/// waits for by packet identifier, acknowledgements that beat their registration, and the connection a QoS 0
/// message was queued on.
///
/// A value type with no locks, no I/O and no callbacks: `ClientCore` runs each event under its state lock and
/// performs the returned action (resume a continuation, call a completion) after unlocking. `publish` is a hot
/// path, so the events are small and allocate nothing in the common case.
///
/// The orderings it handles, each an ordinary unit test:
/// - **on_publish before the registration.** libmosquitto can complete a message on its network thread before
///   `mosquitto_publish` returned to the caller: the reason code is kept (`earlyAcks`) and the registration
///   completes at once.
/// - **A QoS 0 message and a reconnect.** libmosquitto discards queued QoS 0 messages when the connection goes.
///   One queued on a connection that ended before it registered is reported lost, not left waiting.
/// - **Waking publishers in batches.** A slot freed wakes waiting publishers only once the queue drained to three
///   quarters of its limit, so a publisher that runs ahead is not woken once per message.
struct PublishStateMachine<AckWaiter, SlotWaiter, DrainWaiter, Callback> {
    struct Pending {
        var qos: QoS
        var waiter: AckWaiter?
        /// Called on the network thread when the message completes (see `MQTTClient.publish(_:onComplete:)`).
        var callback: Callback?
    }

    /// Waiters to resume after unlocking when slots were given back.
    struct Release {
        var slots: [SlotWaiter] = []
        var drained: [DrainWaiter] = []
    }

    /// The queue's limit (``MQTTConfiguration/maximumQueuedMessages``).
    let limit: Int
    private(set) var slotsInUse = 0
    private(set) var slotWaiters = Deque<(id: UInt64, waiter: SlotWaiter)>()
    /// Messages someone waits for (a waiter or a completion callback), by packet identifier.
    private(set) var pending: [UInt16: Pending] = [:]

    /// Whether a publication at QoS 2 waits for its acknowledgement.
    var hasPendingQoS2: Bool { plainQoS2.count > 0 || pending.values.contains { $0.qos == .exactlyOnce } }
    /// Messages published with `.enqueued` and no callback: nobody waits, only their slot is tracked. Kept apart
    /// from `pending` because a fast publisher registers one per message.
    private(set) var plainQoS0 = MessageIDSet()
    private(set) var plainQoS12 = MessageIDSet()
    /// Which of ``plainQoS12`` are QoS 2 (to explain a broker's protocol error, see ``hasPending(qos:)``).
    private(set) var plainQoS2 = MessageIDSet()
    /// Reason codes of acknowledgements that arrived before their message registered.
    private(set) var earlyAcks: [UInt16: UInt8] = [:]
    private(set) var drainWaiters: [DrainWaiter] = []
    /// The connection a QoS 0 message is queued on; incremented by ``connectionLost()``.
    private(set) var epoch: UInt64 = 0

    init(limit: Int) {
        self.limit = max(1, limit)
    }

    // MARK: Slots

    enum Admission: Equatable {
        /// A slot is held; queue the message (it belongs to connection `epoch`).
        case admitted(epoch: UInt64)
        /// The queue is full: wait for a slot (``waitForSlot(_:waiter:)``), then admit again holding it.
        case mustWait
        /// QoS 0 while offline: not queued (the slot, if held, was given back).
        case offline
    }

    mutating func admit(qos: QoS, connected: Bool, holdingSlot: Bool) -> Admission {
        if qos == .atMostOnce && !connected {
            if holdingSlot { slotsInUse -= 1 }
            return .offline
        }
        if !holdingSlot {
            guard slotsInUse < limit && slotWaiters.isEmpty else { return .mustWait }
            slotsInUse += 1
        }
        return .admitted(epoch: epoch)
    }

    enum SlotAction: Equatable {
        case granted
        case suspended
    }

    /// A publisher waits for a slot (first come, first served).
    mutating func waitForSlot(_ id: UInt64, waiter: SlotWaiter) -> SlotAction {
        if slotsInUse < limit && slotWaiters.isEmpty {
            slotsInUse += 1
            return .granted
        }
        slotWaiters.append((id, waiter))
        return .suspended
    }

    /// A waiting publisher's task was cancelled: its waiter, if it still waits.
    mutating func cancelSlotWait(_ id: UInt64) -> SlotWaiter? {
        guard let i = slotWaiters.firstIndex(where: { $0.id == id }) else { return nil }
        return slotWaiters.remove(at: i).waiter
    }

    /// Gives back `count` slots; waiting publishers are woken in batches, drain waiters when the queue is empty.
    mutating func releaseSlots(_ count: Int = 1) -> Release {
        slotsInUse -= count
        assert(slotsInUse >= 0, "more slots given back than taken")
        var release = Release()
        if !slotWaiters.isEmpty {
            let lowWater = limit - max(1, limit / 4)
            if slotsInUse <= lowWater {
                while slotsInUse < limit, let w = slotWaiters.popFirst() {
                    slotsInUse += 1
                    release.slots.append(w.waiter)
                }
            }
        } else if slotsInUse == 0 && !drainWaiters.isEmpty {
            release.drained = drainWaiters
            drainWaiters.removeAll()
        }
        return release
    }

    // MARK: Registration after mosquitto_publish

    enum Registration {
        /// Already acknowledged (on_publish came first) with this reason code.
        case early(UInt8)
        /// Tracked; completes through on_publish.
        case registered
        /// The caller waits for the acknowledgement: ``waitForAcknowledgement(_:qos:waiter:)``.
        case needsWaiter
        /// QoS 0 queued on a connection that has ended since: libmosquitto discarded it.
        case lost(Release)
        /// libmosquitto refused it: the slot is given back.
        case failed(Release)
    }

    /// After `mosquitto_publish` returned for packet `id`, queued on connection `epoch`.
    mutating func register(_ id: UInt16, accepted: Bool, qos: QoS, epoch queuedOn: UInt64, enqueued: Bool,
                           callback: Callback?) -> Registration {
        if !accepted { return .failed(releaseSlots()) }
        if let r = earlyAcks.removeValue(forKey: id) { return .early(r) }
        if qos == .atMostOnce && queuedOn != epoch { return .lost(releaseSlots()) }
        guard enqueued else { return .needsWaiter }
        if callback != nil {
            pending[id] = Pending(qos: qos, waiter: nil, callback: callback)
        } else if qos == .atMostOnce {
            plainQoS0.insert(id)
        } else {
            plainQoS12.insert(id)
            if qos == .exactlyOnce { plainQoS2.insert(id) }
        }
        return .registered
    }

    enum AcknowledgementWait {
        case acknowledged(UInt8)
        case suspended
    }

    /// The caller suspends until packet `id` is acknowledged (at once if it already was).
    mutating func waitForAcknowledgement(_ id: UInt16, qos: QoS, waiter: AckWaiter) -> AcknowledgementWait {
        if let r = earlyAcks.removeValue(forKey: id) { return .acknowledged(r) }
        pending[id] = Pending(qos: qos, waiter: waiter, callback: nil)
        return .suspended
    }

    /// The waiting caller's task was cancelled: stop waiting (the message stays queued; libmosquitto cannot take
    /// it back). Returns the waiter to resume with the cancellation.
    mutating func detach(_ id: UInt16) -> AckWaiter? {
        let w = pending[id]?.waiter
        pending[id]?.waiter = nil
        return w
    }

    // MARK: Events from the network thread

    /// on_publish for packet `id`: the completed message (if someone waits for it) and the slots to give back.
    mutating func published(_ id: UInt16, reason: UInt8) -> (Pending?, Release) {
        if plainQoS0.remove(id) || plainQoS12.remove(id) {
            _ = plainQoS2.remove(id)
            return (nil, releaseSlots())
        }
        let p = pending.removeValue(forKey: id)
        if p == nil {
            // on_publish beat mosquitto_publish's return: the registration picks this up.
            earlyAcks[id] = reason
        }
        return (p, releaseSlots())
    }

    /// The connection ended: queued QoS 0 messages are gone with it (libmosquitto discards them). Returns the
    /// waited-for ones to fail, how many untracked ones were lost, and the slots given back. QoS 1/2 messages stay:
    /// libmosquitto resends them after the reconnect.
    mutating func connectionLost() -> (lost: [(UInt16, Pending)], lostPlain: Int, release: Release) {
        epoch &+= 1
        var lost: [(UInt16, Pending)] = []
        for (id, p) in pending where p.qos == .atMostOnce { lost.append((id, p)) }
        for (id, _) in lost { pending.removeValue(forKey: id) }
        let plain = plainQoS0.removeAll()
        let count = lost.count + plain
        return (lost, plain, count > 0 ? releaseSlots(count) : Release())
    }

    /// `waitUntilAllPublished`: true when nothing is queued (resume at once); otherwise the waiter is kept.
    mutating func waitUntilEmpty(_ waiter: DrainWaiter) -> Bool {
        if slotsInUse == 0 { return true }
        drainWaiters.append(waiter)
        return false
    }

    /// The client ended: every waiter, to be resumed or failed.
    mutating func close() -> (slotWaiters: [SlotWaiter], pending: [(UInt16, Pending)], drainWaiters: [DrainWaiter]) {
        let slots = slotWaiters.map(\.waiter)
        let waited = pending.compactMap { $0.value.waiter == nil && $0.value.callback == nil ? nil : ($0.key, $0.value) }
        let drains = drainWaiters
        slotWaiters.removeAll()
        pending.removeAll()
        drainWaiters.removeAll()
        earlyAcks.removeAll()
        slotsInUse = 0
        _ = plainQoS0.removeAll()
        _ = plainQoS12.removeAll()
        _ = plainQoS2.removeAll()
        return (slots, waited, drains)
    }
}
