import NIOCore
import Synchronization

/// One place MQTT → feed messages are written to: a TCP connection, or a UDP target.
///
/// Each has a bounded queue: bytes handed to NIO but not yet written to the socket. When a message does not fit,
/// the slow-reader policy applies to this connection only, so one slow reader never holds up the others.
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
        let buffer = channel.allocator.buffer(bytes: bytes)
        let future: EventLoopFuture<Void>
        if let target {
            future = channel.writeAndFlush(AddressedEnvelope(remoteAddress: target, data: buffer))
        } else {
            future = channel.writeAndFlush(buffer)
        }
        let routeMetrics = routeMetrics
        let metrics = metrics
        future.whenComplete { [self] result in
            queued.subtract(n, ordering: .relaxed)
            routeMetrics.queued.subtract(n, ordering: .relaxed)
            if case .success = result {
                routeMetrics.framesOut.add()
                routeMetrics.bytesOut.add(payloadCount)
                metrics?.framesOut.increment()
                metrics?.bytesOut.increment(by: Int64(payloadCount))
            } else {
                // The connection went away with the message still queued.
                routeMetrics.drops[.noConnection]!.add()
            }
        }
        return true
    }
}
