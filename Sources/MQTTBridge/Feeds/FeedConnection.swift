import MosquittoPOSIX
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

    /// A run of whole messages written with one promise, so queued bytes are released as the socket takes
    /// them (at most `chunkBytes` at a time), not when a whole burst is written.
    private struct Chunk {
        var end: Int
        var frames: Int
        var payloadBytes: Int
    }
    private struct Outbox {
        var stream: [UInt8] = []
        var chunks: [Chunk] = []
        var datagrams: [(bytes: [UInt8], payload: Int)] = []
        var frames = 0
        var payloadBytes = 0
        var scheduled = false

        mutating func closeChunk() {
            let start = chunks.last?.end ?? 0
            guard stream.count > start else { return }
            chunks.append(Chunk(end: stream.count, frames: frames, payloadBytes: payloadBytes))
            frames = 0
            payloadBytes = 0
        }
    }
    private static let chunkBytes = 64 * 1024
    private let outbox = LockedValue(Outbox())

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
                o.datagrams.append((bytes, payloadCount))
            } else {
                if o.stream.isEmpty { o.stream = bytes } else { o.stream.append(contentsOf: bytes) }
                o.frames += 1
                o.payloadBytes += payloadCount
                if o.stream.count - (o.chunks.last?.end ?? 0) >= Self.chunkBytes { o.closeChunk() }
            }
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
        var o = outbox.withLock { o -> Outbox in
            let taken = o
            o = Outbox()
            return taken
        }
        if let target {
            guard !o.datagrams.isEmpty else { return }
            for d in o.datagrams {
                let envelope = AddressedEnvelope(remoteAddress: target, data: channel.allocator.buffer(bytes: d.bytes))
                let promise = channel.eventLoop.makePromise(of: Void.self)
                channel.write(envelope, promise: promise)
                settle(promise.futureResult, bytes: d.bytes.count, frames: 1, payloadBytes: d.payload)
            }
            channel.flush()
            return
        }
        o.closeChunk()
        guard !o.chunks.isEmpty else { return }
        var start = 0
        for c in o.chunks {
            let buffer = o.stream.withUnsafeBytes { channel.allocator.buffer(bytes: UnsafeRawBufferPointer(rebasing: $0[start..<c.end])) }
            let promise = channel.eventLoop.makePromise(of: Void.self)
            channel.write(buffer, promise: promise)
            settle(promise.futureResult, bytes: c.end - start, frames: c.frames, payloadBytes: c.payloadBytes)
            start = c.end
        }
        channel.flush()
    }

    private func settle(_ future: EventLoopFuture<Void>, bytes: Int, frames: Int, payloadBytes: Int) {
        let routeMetrics = routeMetrics
        let metrics = metrics
        future.whenComplete { [self] result in
            queued.subtract(bytes, ordering: .relaxed)
            routeMetrics.queued.subtract(bytes, ordering: .relaxed)
            if case .success = result {
                routeMetrics.framesOut.add(frames)
                routeMetrics.bytesOut.add(payloadBytes)
                metrics?.framesOut.increment(by: Int64(frames))
                metrics?.bytesOut.increment(by: Int64(payloadBytes))
            } else {
                // The connection went away with the messages still queued.
                routeMetrics.drops[.noConnection]!.add(frames)
            }
        }
    }
}
