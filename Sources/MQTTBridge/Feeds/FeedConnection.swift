import NIOCore
import Synchronization

/// One place MQTT → feed messages are written to: a TCP connection, or a UDP target.
///
/// Each has a bounded queue: bytes accepted but not yet written to the socket. When a message does not fit,
/// the slow-reader policy applies to this connection only, so one slow reader never holds up the others.
///
/// Messages are coalesced: `send` appends to an outbox under a lock and schedules at most one flush on the
/// channel's event loop at a time, which writes everything gathered so far (one buffer for TCP, one datagram
/// per message for UDP) with a single flush. A burst of messages costs one event-loop hop, not one per message.
final class FeedConnection: Sendable {
    let id: UInt64
    let channel: any Channel
    /// For UDP: where datagrams go.
    let target: SocketAddress?
    let limit: Int
    let policy: SlowReaderPolicy
    let queued = Atomic<Int>(0)
    let routeMetrics: RouteMetrics
    let metrics: ConnectionMetrics?

    private struct Outbox {
        var stream: [UInt8] = []
        var datagrams: [[UInt8]] = []
        var frames = 0
        var payloadBytes = 0
        var bytes = 0
        var scheduled = false
    }
    private let outbox = Mutex(Outbox())

    init(id: UInt64, channel: any Channel, target: SocketAddress? = nil, limit: Int, policy: SlowReaderPolicy,
         routeMetrics: RouteMetrics, metrics: ConnectionMetrics?) {
        self.id = id
        self.channel = channel
        self.target = target
        self.limit = limit
        self.policy = policy
        self.routeMetrics = routeMetrics
        self.metrics = metrics
    }

    /// Queues one framed message. Returns false when it was dropped (or the connection closed) because the queue is full.
    @discardableResult
    func send(_ bytes: [UInt8], payloadCount: Int) -> Bool {
        let n = bytes.count
        let now = queued.add(n, ordering: .relaxed).newValue
        if now > limit && now != n {
            queued.subtract(n, ordering: .relaxed)
            routeMetrics.drops[.slowReader]!.add()
            metrics?.dropped.increment()
            if policy == .disconnect { channel.close(promise: nil) }
            return false
        }
        routeMetrics.queued.add(n, ordering: .relaxed)
        var peak = routeMetrics.maxQueuedPerConnection.load(ordering: .relaxed)
        while now > peak {
            let (exchanged, original) = routeMetrics.maxQueuedPerConnection.compareExchange(expected: peak, desired: now, ordering: .relaxed)
            if exchanged { break }
            peak = original
        }
        let isDatagram = target != nil
        let schedule = outbox.withLock { o -> Bool in
            if isDatagram {
                o.datagrams.append(bytes)
            } else if o.stream.isEmpty {
                o.stream = bytes
            } else {
                o.stream.append(contentsOf: bytes)
            }
            o.frames += 1
            o.payloadBytes += payloadCount
            o.bytes += n
            if o.scheduled { return false }
            o.scheduled = true
            return true
        }
        if schedule {
            channel.eventLoop.execute { [self] in flush() }
        }
        return true
    }

    /// On the event loop: writes everything in the outbox with one flush.
    private func flush() {
        let o = outbox.withLock { o -> Outbox in
            let taken = o
            o = Outbox()
            o.stream.reserveCapacity(min(taken.stream.count, 1 << 16))
            return taken
        }
        guard o.frames > 0 else { return }
        let future: EventLoopFuture<Void>
        if let target {
            let promise = channel.eventLoop.makePromise(of: Void.self)
            for (i, d) in o.datagrams.enumerated() {
                let envelope = AddressedEnvelope(remoteAddress: target, data: channel.allocator.buffer(bytes: d))
                channel.write(envelope, promise: i == o.datagrams.count - 1 ? promise : nil)
            }
            channel.flush()
            future = promise.futureResult
        } else {
            future = channel.writeAndFlush(channel.allocator.buffer(bytes: o.stream))
        }
        let routeMetrics = routeMetrics
        let metrics = metrics
        future.whenComplete { [self] result in
            queued.subtract(o.bytes, ordering: .relaxed)
            routeMetrics.queued.subtract(o.bytes, ordering: .relaxed)
            if case .success = result {
                routeMetrics.framesOut.add(o.frames)
                routeMetrics.bytesOut.add(o.payloadBytes)
                metrics?.framesOut.increment(by: Int64(o.frames))
                metrics?.bytesOut.increment(by: Int64(o.payloadBytes))
            } else {
                // The connection went away with the messages still queued.
                routeMetrics.drops[.noConnection]!.add(o.frames)
            }
        }
    }
}
