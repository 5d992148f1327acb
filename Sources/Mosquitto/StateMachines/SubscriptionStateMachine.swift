/// The subscription table: which filters the client holds at the broker, which streams each one feeds, which
/// SUBSCRIBEs wait for their SUBACK, and what to re-send when the broker lost the session.
///
/// A value type with no locks, no I/O and no callbacks: `ClientCore` runs each event under its state lock and
/// performs the returned action (a SUBSCRIBE or UNSUBSCRIBE, a resume, a push or a finish) after unlocking.
/// Generic over the stream buffer (a class: buffers are told apart by identity) and the caller's SUBACK waiter, so
/// that tests drive it with plain objects and strings.
///
/// The orderings it exists for, each a test in `SubscriptionStateMachineTests`:
/// - **A stream cancelled while its SUBACK is in flight.** The filter is gone (its UNSUBSCRIBE is sent); the late
///   SUBACK must neither confirm nor fail a later entry of the same filter. Waiters therefore name the subscription
///   identifier of the entry they were sent for, and a SUBACK applies only to that entry.
/// - **A lost session.** On a CONNACK without a session every filter becomes unconfirmed and is re-sent; with a
///   session only those never acknowledged are. The callers waiting on the dead connection go on offline (their
///   filter is among those re-sent).
/// - **A refused re-subscription.** The broker's refusal after a reconnect ends that filter's streams with the
///   error; the client's other filters stay.
/// - **The last stream of a filter ends.** The filter is unsubscribed, unless it is internal (the request/response
///   topic, kept for the client's life).
struct SubscriptionStateMachine<Buffer: AnyObject, Waiter> {
    /// One filter held at the broker.
    struct Entry {
        var filter: String
        /// The MQTT 5 subscription identifier (1...268,435,455), unique among the live entries.
        var id: UInt32
        var qos: QoS
        var options: Int32
        /// The streams it feeds (ids given by the caller).
        var streams: Set<UInt64>
        /// The broker acknowledged it on the current session.
        var confirmed = false
        /// Kept when its last stream ends (the request/response topic).
        var isInternal = false
        /// MQTT 5 user properties sent with the SUBSCRIBE (again on re-subscribe).
        var userProperties: [UserProperty] = []
    }

    /// Who waits for a SUBACK.
    enum SubackWaiter {
        /// A `subscribe` caller; `id` is the entry's subscription identifier when it was sent.
        case user(filter: String, id: UInt32, Waiter)
        /// A re-subscription the client sent itself after a reconnect.
        case resubscribe(filter: String, id: UInt32)

        var userWaiter: Waiter? {
            if case .user(_, _, let w) = self { return w }
            return nil
        }
    }

    static var maximumSubscriptionID: UInt32 { 268_435_455 }

    private(set) var filters: [String: Entry] = [:]
    /// The filter of each live subscription identifier.
    private(set) var filtersByID: [UInt32: String] = [:]
    private(set) var streams: [UInt64: Buffer] = [:]
    /// Streams that receive every message (``MQTTClient/allMessages(buffer:)``), by id.
    private(set) var firehoses: [UInt64: Buffer] = [:]
    private(set) var nextSubscriptionID: UInt32 = 1
    /// SUBACK waiters, per connection (see ``AcknowledgementStateMachine``).
    private(set) var subacks = AcknowledgementStateMachine<[UInt8], SubackWaiter>()
    private(set) var isClosed = false
    /// Streams to deliver to, by subscription identifier; dropped on every change and rebuilt on the next message.
    private var routesByID: [UInt32: [Buffer]]?

    /// The connection SUBACK waits are registered for (read before sending, passed to ``waitForSuback``).
    var epoch: UInt64 { subacks.epoch }

    // MARK: Subscribing

    /// A caller subscribes stream `streamID` (fed by `buffer`) to `subscriptions`. Returns the entries whose
    /// SUBSCRIBE must be sent: new filters, and known ones whose QoS, options or user properties change. A known
    /// filter that changes nothing gains the stream and sends nothing. Empty once closed (the caller refuses
    /// closed clients before).
    mutating func subscribeRequested(streamID: UInt64, buffer: Buffer, _ subscriptions: [Subscription],
                                     userProperties: [UserProperty]) -> [Entry] {
        guard !isClosed else { return [] }
        streams[streamID] = buffer
        routesByID = nil
        var out: [Entry] = []
        for sub in subscriptions {
            if var e = filters[sub.filter] {
                e.streams.insert(streamID)
                if sub.qos > e.qos || sub.optionBits != e.options || !userProperties.isEmpty {
                    e.qos = max(e.qos, sub.qos)
                    e.options = sub.optionBits
                    e.userProperties = userProperties
                    out.append(e)
                }
                filters[sub.filter] = e
            } else {
                let id = takeSubscriptionID()
                var e = Entry(filter: sub.filter, id: id, qos: sub.qos, options: sub.optionBits, streams: [streamID])
                e.userProperties = userProperties
                filters[sub.filter] = e
                filtersByID[id] = sub.filter
                out.append(e)
            }
        }
        return out
    }

    /// The next free subscription identifier (wrapping at the MQTT 5 maximum, skipping those in use).
    private mutating func takeSubscriptionID() -> UInt32 {
        var id = nextSubscriptionID
        while filtersByID[id] != nil { id = id >= Self.maximumSubscriptionID ? 1 : id + 1 }
        nextSubscriptionID = id >= Self.maximumSubscriptionID ? 1 : id + 1
        return id
    }

    enum WaitAction {
        /// The SUBACK already arrived: resume the caller with these reason codes.
        case acknowledged([UInt8])
        /// Suspended until ``subackReceived(_:codes:)``, ``connectionLost()`` or ``close()``.
        case suspended
        /// No SUBACK will come (the connection it was sent on ended, or the client ended): the caller goes on
        /// offline; the filter is re-sent on reconnect.
        case offline
    }

    /// A caller waits for the SUBACK of packet `mid`, sent for `entry` on connection `sentIn` (``epoch`` read
    /// before sending).
    mutating func waitForSuback(_ mid: UInt16, sentIn: UInt64, entry: Entry, waiter: Waiter) -> WaitAction {
        switch subacks.wait(for: mid, sentIn: sentIn, waiter: .user(filter: entry.filter, id: entry.id, waiter)) {
        case .acknowledged(let codes):
            confirm(entry.filter, id: entry.id, codes: codes)
            return .acknowledged(codes)
        case .connectionLost, .closed: return .offline
        case .suspended: return .suspended
        }
    }

    enum SubackAction {
        /// Nothing to do (kept for a caller that has not waited yet, or a re-subscription the broker granted).
        case none
        /// Resume a `subscribe` caller with the reason codes.
        case resume(Waiter, [UInt8])
        /// The broker refused a re-subscription: the filter is dropped; end these streams with the error.
        case resubscriptionRefused(filter: String, code: UInt8, finish: [Buffer])
    }

    /// The broker's SUBACK for packet `mid` arrived (network thread).
    mutating func subackReceived(_ mid: UInt16, codes: [UInt8]) -> SubackAction {
        switch subacks.acknowledged(mid, codes) {
        case .stored:
            return .none
        case .resume(.user(let filter, let id, let waiter), _):
            confirm(filter, id: id, codes: codes)
            return .resume(waiter, codes)
        case .resume(.resubscribe(let filter, let id), _):
            if let code = codes.first, code >= 0x80 {
                // Only the entry it was sent for: a stream cancelled meanwhile took the filter with it, and a
                // later subscribe to the same filter is another entry with its own SUBSCRIBE.
                guard let e = filters[filter], e.id == id else { return .none }
                removeFilter(filter)
                return .resubscriptionRefused(filter: filter, code: code, finish: e.streams.compactMap { streams[$0] })
            }
            confirm(filter, id: id, codes: codes)
            return .none
        }
    }

    /// Marks the entry confirmed when the broker granted it (first reason code below 0x80) and it is still the
    /// entry the SUBSCRIBE was sent for.
    private mutating func confirm(_ filter: String, id: UInt32, codes: [UInt8]) {
        guard let code = codes.first, code < 0x80, filters[filter]?.id == id else { return }
        filters[filter]?.confirmed = true
    }

    /// The QoS granted to `filter` so far: nil when it is unknown or not yet acknowledged on this session.
    func grantedQoS(_ filter: String) -> QoS? {
        guard let e = filters[filter], e.confirmed else { return nil }
        return e.qos
    }

    /// Keeps `filter` when its last stream ends (the request/response topic).
    mutating func markInternal(_ filter: String) {
        filters[filter]?.isInternal = true
    }

    // MARK: Ending streams and unsubscribing

    /// Stream `streamID` ended (its consumer stopped, or a failed subscribe undid it). Returns the filters no
    /// other stream uses, to UNSUBSCRIBE.
    mutating func streamEnded(_ streamID: UInt64) -> [String] {
        guard streams.removeValue(forKey: streamID) != nil else { return [] }
        routesByID = nil
        var gone: [String] = []
        for (f, var e) in filters where e.streams.contains(streamID) {
            e.streams.remove(streamID)
            if e.streams.isEmpty && !e.isInternal {
                removeFilter(f)
                gone.append(f)
            } else {
                filters[f] = e
            }
        }
        return gone.sorted()
    }

    /// A caller unsubscribes `filters`: they are dropped at once (no more deliveries). Returns the streams they
    /// fed, for ``orphans(_:)`` once the UNSUBACKs came.
    mutating func unsubscribeRequested(_ filters: [String]) -> [Buffer] {
        var out: [Buffer] = []
        for f in filters {
            if let e = self.filters[f] {
                removeFilter(f)
                out += e.streams.sorted().compactMap { streams[$0] }
            }
        }
        return out
    }

    /// Those of `buffers` that no filter feeds any more: their streams end.
    func orphans(_ buffers: [Buffer]) -> [Buffer] {
        var used = Set<ObjectIdentifier>()
        for e in filters.values {
            for s in e.streams { if let b = streams[s] { used.insert(ObjectIdentifier(b)) } }
        }
        var seen = Set<ObjectIdentifier>()
        return buffers.filter { b in !used.contains(ObjectIdentifier(b)) && seen.insert(ObjectIdentifier(b)).inserted }
    }

    private mutating func removeFilter(_ filter: String) {
        if let e = filters.removeValue(forKey: filter) { filtersByID.removeValue(forKey: e.id) }
        routesByID = nil
    }

    // MARK: Firehoses

    /// Adds a stream that receives every message; false once closed (finish it).
    mutating func firehoseAdded(_ id: UInt64, buffer: Buffer) -> Bool {
        guard !isClosed else { return false }
        firehoses[id] = buffer
        return true
    }

    mutating func firehoseEnded(_ id: UInt64) {
        firehoses.removeValue(forKey: id)
    }

    // MARK: The connection

    /// The connection ended: the callers waiting for a SUBACK go on offline (resume them with nil); the
    /// client's own re-subscriptions are forgotten (re-sent on the next CONNACK, as they are still unconfirmed).
    mutating func connectionLost() -> [Waiter] {
        subacks.connectionLost().compactMap(\.userWaiter)
    }

    /// A CONNACK arrived. Without a session the broker forgot every subscription. Returns the entries to
    /// re-SUBSCRIBE (libmosquitto never does it, and subscribes made offline were not queued), before anyone
    /// hears of the connection; register each sent one with ``resubscribeSent(_:entry:)``.
    mutating func connected(sessionPresent: Bool) -> [Entry] {
        if !sessionPresent {
            for k in filters.keys { filters[k]!.confirmed = false }
        }
        return filters.values.filter { !$0.confirmed }.sorted { $0.id < $1.id }
    }

    /// The broker of a new connection has no shared subscriptions (its CONNACK said so): the `$share/` filters are
    /// dropped before ``connected(sessionPresent:)`` (re-sending them would have the broker close the connection,
    /// again at every reconnect). Returns each with the streams to end with the error.
    mutating func sharedSubscriptionsUnavailable() -> [(filter: String, finish: [Buffer])] {
        let shared = filters.values.filter { MQTTTopic.shareGroup(of: $0.filter) != nil }.sorted { $0.id < $1.id }
        for e in shared { removeFilter(e.filter) }
        return shared.map { e in (e.filter, e.streams.compactMap { streams[$0] }) }
    }

    /// A re-SUBSCRIBE for `entry` was queued as packet `mid` (on the network thread, so before its SUBACK).
    mutating func resubscribeSent(_ mid: UInt16, entry: Entry) {
        subacks.expect(mid, waiter: .resubscribe(filter: entry.filter, id: entry.id))
    }

    // MARK: Messages

    /// The streams a received message goes to, firehoses last. MQTT 5: by the subscription identifiers the
    /// broker sent (each stream once); without any (MQTT 3.1.1): every filter that matches the topic.
    mutating func messageArrived(topic: String, properties: MessageProperties) -> [Buffer] {
        var targets: [Buffer]
        let ids = properties.firstSubscriptionID
        if let ids, ids.count == 1 {
            // The common case: one subscription matched; its list is cached.
            targets = routes(forSubscriptionID: ids.first)
        } else if ids != nil {
            var seen = Set<ObjectIdentifier>()
            targets = []
            for id in properties.subscriptionIdentifiers {
                for b in routes(forSubscriptionID: id) where seen.insert(ObjectIdentifier(b)).inserted { targets.append(b) }
            }
        } else {
            var streamIDs = Set<UInt64>()
            for e in filters.values where MQTTTopic.matches(filter: e.filter, topic: topic) {
                streamIDs.formUnion(e.streams)
            }
            targets = streamIDs.sorted().compactMap { streams[$0] }
        }
        if !firehoses.isEmpty { targets.append(contentsOf: firehoses.keys.sorted().compactMap { firehoses[$0] }) }
        return targets
    }

    private mutating func routes(forSubscriptionID id: UInt32) -> [Buffer] {
        if routesByID == nil {
            var table: [UInt32: [Buffer]] = [:]
            for e in filters.values {
                table[e.id] = e.streams.sorted().compactMap { streams[$0] }
            }
            routesByID = table
        }
        return routesByID?[id] ?? []
    }

    // MARK: The end

    /// The client ended: every SUBACK waiter (callers and re-subscriptions) and every stream, firehoses
    /// included, to be resumed or finished after unlocking. Later subscribes and firehoses are refused.
    mutating func close() -> (waiters: [SubackWaiter], buffers: [Buffer]) {
        isClosed = true
        let waiters = subacks.close()
        let buffers = streams.keys.sorted().compactMap { streams[$0] } + firehoses.keys.sorted().compactMap { firehoses[$0] }
        streams.removeAll()
        firehoses.removeAll()
        filters.removeAll()
        filtersByID.removeAll()
        routesByID = nil
        return (waiters, buffers)
    }
}
