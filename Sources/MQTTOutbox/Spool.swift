#if canImport(Glibc)
import MosquittoPOSIX
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Logging
import Synchronization

/// `close(2)`, named so that it does not clash with ``Spool/close()``.
func closeFile(_ fd: Int32) {
    #if canImport(Darwin)
    _ = Darwin.close(fd)
    #else
    _ = Glibc.close(fd)
    #endif
}

/// Settings of an on-disk spool: the durable outbox of a client (`MQTTConfiguration.outbox`) or of a bridge route.
public struct SpoolConfiguration: Sendable, Hashable {
    /// When the spool calls `fsync`.
    public enum FsyncPolicy: Sendable, Hashable {
        /// After every append: survives power loss, slowest.
        case always
        /// At most this long after an append. Survives a process crash (`kill -9`) always (the page cache
        /// keeps the data); loses at most this interval on power loss.
        case interval(Duration)
        /// Never: survives a process crash, not a power loss.
        case never
    }

    /// What happens when the spool holds ``maxBytes`` of unacknowledged records.
    public enum FullPolicy: String, Sendable, Hashable {
        /// Stop reading the feed sockets until the broker has acknowledged enough (TCP pushes back on the
        /// sender). Nothing is dropped. The default.
        case block
        /// Drop the arriving frames and count them.
        case dropNewest = "drop_newest"
    }

    /// The directory of this spool (created 0700; its files are 0600).
    public var directory: String
    /// The most unacknowledged bytes held before the full policy applies.
    public var maxBytes: Int
    /// Segment size: a new segment file starts after this many bytes; fully acknowledged segments are deleted.
    public var segmentBytes: Int
    /// When to fsync.
    public var fsync: FsyncPolicy
    /// The full policy.
    public var full: FullPolicy

    /// Creates a spool configuration.
    public init(directory: String, maxBytes: Int = 256 << 20, segmentBytes: Int = 16 << 20,
                fsync: FsyncPolicy = .interval(.seconds(1)), full: FullPolicy = .block) {
        self.directory = directory
        self.maxBytes = max(4096, maxBytes)
        self.segmentBytes = max(4096, segmentBytes)
        self.fsync = fsync
        self.full = full
    }
}

/// An error from the spool's file operations.
public struct SpoolError: Error, Sendable, CustomStringConvertible {
    /// What failed.
    public var message: String
    /// The errno, when a system call failed.
    public var errno: Int32?
    /// True when another live process (or another open spool in this one) holds the directory's lock.
    public var inUse: Bool
    init(_ message: String, errno: Int32? = nil, inUse: Bool = false) {
        self.message = message
        self.errno = errno
        self.inUse = inUse
    }
    public var description: String {
        if let errno { return "\(message): \(String(cString: strerror(errno)))" }
        return message
    }
}

/// One spooled frame, ready to publish.
package struct SpoolRecord: Sendable, Hashable {
    /// Flags stored with a record.
    package struct Flags: OptionSet, Sendable, Hashable {
        package let rawValue: UInt8
        package init(rawValue: UInt8) { self.rawValue = rawValue }
        /// Publish with the retain flag.
        package static let retain = Flags(rawValue: 1)
        /// The frame was incomplete when its connection closed.
        package static let partial = Flags(rawValue: 2)
        /// The frame was cut at the maximum frame size.
        package static let truncated = Flags(rawValue: 4)
        /// The record goes to the dead-letter topic.
        package static let deadLetter = Flags(rawValue: 8)
        /// The payload was transcoded to MessagePack (content type `application/msgpack` on MQTT 5).
        package static let messagePack = Flags(rawValue: 16)
        /// The record carries MQTT 5 publish properties (``SpoolRecord/properties``), stored between the topic and
        /// the payload as `[length u32 LE][bytes]`. Records without this flag (every record a bridge wrote before
        /// the spool became the client's outbox) read as before.
        package static let properties = Flags(rawValue: 32)
    }
    /// The sequence number, increasing by one per record in a spool.
    package var sequence: UInt64
    /// The topic to publish to.
    package var topic: String
    /// The payload, byte-exact.
    package var payload: [UInt8]
    /// The QoS to publish with (0, 1 or 2).
    package var qosLevel: UInt8
    /// Flags.
    package var flags: Flags
    /// Encoded MQTT 5 publish properties (the client library's encoding); empty when there are none.
    package var properties: [UInt8]

    /// Creates a record (the sequence is assigned by ``Spool/append(_:)``).
    package init(sequence: UInt64 = 0, topic: String, payload: [UInt8], qosLevel: UInt8, flags: Flags = [], properties: [UInt8] = []) {
        self.sequence = sequence
        self.topic = topic
        self.payload = payload
        self.qosLevel = qosLevel
        self.flags = properties.isEmpty ? flags.subtracting(.properties) : flags.union(.properties)
        self.properties = properties
    }
}

/// A durable, append-only, segmented log of frames waiting for the broker's acknowledgement.
///
/// Each record is `[length u32 LE][crc32 u32 LE][sequence u64 LE][flags u8][qos u8][topic length u16 LE][topic][payload]`
/// (with the ``SpoolRecord/Flags-swift.struct/properties`` flag, `[length u32 LE][properties]` comes before the payload),
/// with the CRC over everything after it. The done watermark (every record up to it was acknowledged by the broker)
/// is kept in a small `done` file of two slots `[sequence u64 LE][crc32 u32 LE]`, written in place, alternately, so
/// that recording acknowledgements never needs new disk space: a full disk cannot stop the spool from freeing
/// delivered segments. On open, the larger valid slot wins (a 12-byte file of one slot, the earlier format, reads as
/// is), every record is checked, and a torn tail is truncated at the first bad checksum, so the spool survives
/// `kill -9` (and, with ``SpoolConfiguration/FsyncPolicy/always``, power loss) without losing an appended record.
///
/// A failed append (a full disk, most often) leaves nothing behind: the segment is truncated back to its last whole
/// record, so records the caller was told were not stored never reappear on a later open.
///
/// Appends come from event-loop threads, reads and acknowledgements from the route's publisher task; one lock
/// protects the state. The lock is never held across an `await`.
package final class Spool: Sendable {
    /// The configuration.
    package let configuration: SpoolConfiguration

    struct Segment {
        var first: UInt64
        var path: String
        var fd: Int32
        var size: Int
    }

    /// Where an unacknowledged record is, so a rewind finds it without scanning.
    struct Pending {
        var sequence: UInt64
        var size: Int
        var segmentFirst: UInt64
        var offset: Int
        /// When the record was appended (when the spool was opened, for a recovered record).
        var appendedAt: ContinuousClock.Instant
    }

    struct State {
        var segments: [Segment] = []
        var nextSequence: UInt64 = 1
        var done: UInt64 = 0
        /// Where the next unread record starts.
        var readSegment = 0
        var readOffset = 0
        var readSequence: UInt64 = 1
        /// Bytes and records appended but not yet acknowledged.
        var pendingBytes = 0
        var pendingCount = 0
        /// Sizes of unacknowledged records, oldest first, to account bytes at acknowledgement.
        var sizes: [Pending] = []
        var sizesHead = 0
        var lastSync: ContinuousClock.Instant = .now
        var dirty = false
        var closed = false
        var recordsWaiter: CheckedContinuation<Void, Never>?
        var spaceWaiters: [@Sendable () -> Void] = []
        var corruptBytes = 0
        var recovered = 0
        /// The watermark moved since the `done` file was last written.
        var doneDirty = false
        /// The `done` file's descriptor, kept open so the watermark is overwritten in place.
        var doneFD: Int32 = -1
        /// The slot (0 or 1) of the `done` file the next write goes to (never the one holding the last watermark).
        var doneSlot = 0
        /// The last topic decoded, so records of one topic share one string.
        var lastTopicBytes: [UInt8] = []
        /// The `lock` file's descriptor, holding an exclusive `flock` for as long as the spool is open.
        var lockFD: Int32 = -1
        var lastTopic = ""
        /// Read-ahead buffer for ``readBatch(maxRecords:maxBytes:)``: bytes of `readSegment` from `chunkOffset`.
        var chunk: [UInt8] = []
        var chunkOffset = -1
        var chunkValid = 0
        var chunkSegmentFirst: UInt64 = 0
    }

    let state: LockedValue<State>
    let logger: Logger
    private let donePath: String

    /// Bytes of one `done` slot: `[sequence u64 LE][crc32 u32 LE]`.
    static let doneSlotBytes = 12

    /// Opens (or creates) the spool, checking every record and truncating a torn tail.
    package init(configuration: SpoolConfiguration, logger: Logger = Logger(label: "mqtt-bridge.spool")) throws {
        self.configuration = configuration
        self.logger = logger
        let dir = configuration.directory
        donePath = dir + "/done"
        try Self.makeDirectory(dir)
        var s = State()
        s.lockFD = try Self.lock(dir)
        // Until the state owns the lock (and deinit releases it), a failed open releases it here.
        var stateOwnsLock = false
        defer { if !stateOwnsLock { closeFile(s.lockFD) } }
        // Done watermark: the larger valid slot. A leftover `done.tmp` is from the earlier rename-based format.
        unlink(dir + "/done.tmp")
        let doneFD = open(donePath, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard doneFD >= 0 else {
            throw SpoolError("Cannot open the spool's watermark file \(donePath)", errno: errno)
        }
        _ = fchmod(doneFD, 0o600)
        var slots = [UInt8](repeating: 0, count: 2 * Self.doneSlotBytes)
        let slotBytes = Self.pread(doneFD, &slots, 0)
        var newest: (slot: Int, sequence: UInt64)?
        for slot in 0..<2 where (slot + 1) * Self.doneSlotBytes <= slotBytes {
            let at = slot * Self.doneSlotBytes
            let seq = slots.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: at, as: UInt64.self).littleEndian }
            let crc = slots.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: at + 8, as: UInt32.self).littleEndian }
            if CRC32.checksum(Array(slots[at..<at + 8])) == crc, seq >= (newest?.sequence ?? 0) { newest = (slot, seq) }
        }
        s.done = newest?.sequence ?? 0
        s.doneSlot = newest.map { 1 - $0.slot } ?? 0
        s.doneFD = doneFD
        if slotBytes < 2 * Self.doneSlotBytes {
            // A new spool, or the one-slot format: give the file both slots now (a few bytes in a block the
            // file already has, or its first block), so later writes only overwrite.
            let have = max(0, slotBytes)
            let zero = [UInt8](repeating: 0, count: 2 * Self.doneSlotBytes - have)
            if Self.pwrite(doneFD, zero, have) != zero.count {
                let e = errno
                closeFile(doneFD)
                throw SpoolError("Cannot prepare the spool's watermark file \(donePath)", errno: e)
            }
            if newest == nil { s.doneSlot = 0 }
        }
        let openedAt = ContinuousClock.now
        // Segments.
        var names: [(UInt64, String)] = []
        if let d = opendir(dir) {
            while let e = readdir(d) {
                let name = withUnsafeBytes(of: e.pointee.d_name) { raw in
                    String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
                }
                if name.hasPrefix("seg-") && name.hasSuffix(".log"), let n = UInt64(name.dropFirst(4).dropLast(4)) {
                    names.append((n, name))
                }
            }
            closedir(d)
        }
        names.sort { $0.0 < $1.0 }
        var foundRead = false
        var lastSeq: UInt64 = s.done
        for (first, name) in names {
            let path = dir + "/" + name
            let fd = open(path, O_RDWR | O_APPEND | O_CLOEXEC, 0o600)
            guard fd >= 0 else { throw SpoolError("Cannot open spool segment \(path)", errno: errno) }
            _ = fchmod(fd, 0o600)  // owner-only even if it was created (or copied in) with a looser mode
            var seg = Segment(first: first, path: path, fd: fd, size: 0)
            let fileSize = Int(lseek(fd, 0, SEEK_END))
            var offset = 0
            var header = [UInt8](repeating: 0, count: 8)
            while offset + 8 <= fileSize {
                guard Self.pread(fd, &header, offset) == 8 else { break }
                let length = Int(header.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 0, as: UInt32.self).littleEndian })
                let crc = header.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 4, as: UInt32.self).littleEndian }
                guard length >= 12, offset + 8 + length <= fileSize else { break }
                var body = [UInt8](repeating: 0, count: length)
                guard Self.pread(fd, &body, offset + 8) == length, CRC32.checksum(body) == crc else { break }
                let seq = body.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 0, as: UInt64.self).littleEndian }
                if seq > s.done {
                    if !foundRead {
                        foundRead = true
                        s.readSegment = s.segments.count
                        s.readOffset = offset
                        s.readSequence = seq
                    }
                    s.pendingBytes += 8 + length
                    s.pendingCount += 1
                    s.sizes.append(Pending(sequence: seq, size: 8 + length, segmentFirst: first, offset: offset, appendedAt: openedAt))
                }
                lastSeq = max(lastSeq, seq)
                offset += 8 + length
            }
            if offset < fileSize {
                logger.warning("Spool segment \(path): \(fileSize - offset) bytes after the last valid record (torn write) truncated.")
                s.corruptBytes += fileSize - offset
                _ = ftruncate(fd, off_t(offset))
            }
            seg.size = offset
            s.segments.append(seg)
        }
        s.nextSequence = lastSeq + 1
        s.recovered = s.pendingCount
        if !foundRead {
            // Every record is acknowledged: the next record read is the next one appended, which goes at the end
            // of the last segment (appends keep filling it until it is full).
            s.readSegment = max(0, s.segments.count - 1)
            s.readOffset = s.segments.last?.size ?? 0
            s.readSequence = s.nextSequence
        }
        state = LockedValue(s)
        stateOwnsLock = true
        if s.pendingCount > 0 {
            logger.info("Spool \(dir): \(s.pendingCount) unacknowledged records (\(s.pendingBytes) bytes) recovered, resending.")
        }
        try state.withLock { s in try self.deleteDoneSegments(&s) }
    }

    deinit {
        state.withLock { s in
            for seg in s.segments { closeFile(seg.fd) }
            s.segments.removeAll()
            if s.doneFD >= 0 { closeFile(s.doneFD) }
            s.doneFD = -1
            if s.lockFD >= 0 { closeFile(s.lockFD) }
            s.lockFD = -1
        }
    }

    /// Takes the directory's lock: an exclusive `flock` on `lock`, which also holds the owner's process id for the
    /// error a second opener gets. The kernel releases it when the process ends, however it ends.
    static func lock(_ dir: String) throws -> Int32 {
        let path = dir + "/lock"
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SpoolError("Cannot open the lock file \(path)", errno: errno) }
        // A lock just released can still be held for an instant by a child that another thread of this process
        // forked and has not exec'd yet (the descriptor is close-on-exec, but the child shares it until then):
        // an open right after a close retries for a little while before it reports the directory as in use.
        var result = flock(fd, LOCK_EX | LOCK_NB)
        var e = result == 0 ? 0 : errno
        for _ in 0..<50 where result != 0 && e == EWOULDBLOCK {
            usleep(20_000)
            result = flock(fd, LOCK_EX | LOCK_NB)
            e = result == 0 ? 0 : errno
        }
        if result != 0 {
            var owner = [UInt8](repeating: 0, count: 24)
            let n = Self.pread(fd, &owner, 0)
            closeFile(fd)
            guard e == EWOULDBLOCK else { throw SpoolError("Cannot lock \(path)", errno: e) }
            let pid = String(decoding: owner.prefix(max(0, n)).filter { $0 >= 0x30 && $0 <= 0x39 }, as: UTF8.self)
            throw SpoolError(
                "\(dir) is in use by another live client\(pid.isEmpty ? "" : " (process \(pid))"); two clients cannot share one outbox or spool. Give each its own directory, or stop the other one first.",
                inUse: true)
        }
        _ = ftruncate(fd, 0)
        _ = Self.pwrite(fd, Array("\(getpid())\n".utf8), 0)
        return fd
    }

    // MARK: Appending

    /// Appends records in one write, assigning their sequence numbers. Returns whether the spool is now full
    /// (the caller should stop reading its socket and wait with ``whenSpaceAvailable(_:)``).
    @discardableResult
    package func append(_ records: [SpoolRecord]) throws -> Bool {
        var first: UInt64 = 0
        return try append(records, firstSequence: &first)
    }

    /// Appends one record and returns its sequence number.
    package func append(_ record: SpoolRecord) throws -> UInt64 {
        var first: UInt64 = 0
        try append([record], firstSequence: &first)
        return first
    }

    @discardableResult
    private func append(_ records: [SpoolRecord], firstSequence: inout UInt64) throws -> Bool {
        if records.isEmpty { return isFull }
        var bytes: [UInt8] = []
        var waiter: CheckedContinuation<Void, Never>?
        let full: Bool = try state.withLock { s in
            if s.closed { throw SpoolError("The spool is closed.") }
            bytes.removeAll(keepingCapacity: true)
            var seq = s.nextSequence
            firstSequence = seq
            var sizes: [Pending] = []
            sizes.reserveCapacity(records.count)
            let now = ContinuousClock.now
            for r in records {
                let before = bytes.count
                Self.encode(r, sequence: seq, into: &bytes)
                sizes.append(Pending(sequence: seq, size: bytes.count - before, segmentFirst: 0, offset: before, appendedAt: now))
                seq += 1
            }
            try self.rollIfNeeded(&s, adding: bytes.count)
            do {
                try self.writeRecords(bytes, sizes: &sizes, into: &s)
            } catch {
                // A full disk, most often. If the last segment holds only acknowledged records, start a new one
                // and delete it: on a disk the spool filled while the broker was away, that frees the space.
                guard s.pendingCount == 0, let last = s.segments.last, last.size > 0 else { throw error }
                try self.startSegment(&s)
                try self.deleteDoneSegments(&s)
                try self.writeRecords(bytes, sizes: &sizes, into: &s)
            }
            s.segments[s.segments.count - 1].size += bytes.count
            s.nextSequence = seq
            s.pendingBytes += bytes.count
            s.pendingCount += records.count
            s.sizes.append(contentsOf: sizes)
            s.dirty = true
            self.syncIfDue(&s, force: false)
            waiter = s.recordsWaiter
            s.recordsWaiter = nil
            return s.pendingBytes >= configuration.maxBytes
        }
        waiter?.resume()
        return full
    }

    /// Whether ``close()`` was called.
    package var isClosed: Bool { state.withLock { $0.closed } }

    /// Whether the spool holds at least ``SpoolConfiguration/maxBytes`` of unacknowledged records.
    package var isFull: Bool { state.withLock { $0.pendingBytes >= configuration.maxBytes } }

    /// Calls `body` once the spool is no longer full (at once when it is not).
    package func whenSpaceAvailable(_ body: @escaping @Sendable () -> Void) {
        let now = state.withLock { s -> Bool in
            if s.pendingBytes < configuration.maxBytes || s.closed { return true }
            s.spaceWaiters.append(body)
            return false
        }
        if now { body() }
    }

    // MARK: Reading and acknowledging

    /// Unacknowledged records and bytes.
    package var depth: (records: Int, bytes: Int) { state.withLock { ($0.pendingCount, $0.pendingBytes) } }

    /// The sequence number of the oldest unacknowledged record (the next one when every record is acknowledged).
    package var firstUnacknowledged: UInt64 { state.withLock { $0.done + 1 } }

    /// How long the oldest unacknowledged record has waited (since it was appended, or since the spool was opened
    /// for a recovered record); nil when every record is acknowledged.
    package var oldestUnacknowledgedAge: Duration? {
        state.withLock { s in
            s.sizesHead < s.sizes.count ? ContinuousClock.now - s.sizes[s.sizesHead].appendedAt : nil
        }
    }

    /// Records found unacknowledged when the spool was opened.
    package var recoveredRecords: Int { state.withLock { $0.recovered } }

    /// Bytes of torn or corrupt records truncated when the spool was opened.
    package var corruptBytes: Int { state.withLock { $0.corruptBytes } }

    /// Waits until there is at least one record not yet handed out by ``readBatch(maxRecords:maxBytes:)``, or the
    /// spool is closed.
    package func waitForRecords() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now = state.withLock { s -> Bool in
                if s.closed || s.readSequence < s.nextSequence { return true }
                let old = s.recordsWaiter
                s.recordsWaiter = c
                old?.resume()
                return false
            }
            if now { c.resume() }
        }
    }

    /// Wakes a task blocked in ``waitForRecords()`` (used at shutdown).
    package func wakeReader() {
        let w = state.withLock { s -> CheckedContinuation<Void, Never>? in
            defer { s.recordsWaiter = nil }
            return s.recordsWaiter
        }
        w?.resume()
    }

    /// Reads the next records in order, up to the limits (at least one record when any is unread).
    ///
    /// Reads the segment in blocks of up to 1 MiB and decodes every whole record in the block, so a batch costs a
    /// few `pread`s, not two per record.
    package func readBatch(maxRecords: Int, maxBytes: Int = 4 << 20) throws -> [SpoolRecord] {
        try state.withLock { s in
            var out: [SpoolRecord] = []
            out.reserveCapacity(min(maxRecords, 4096))
            var bytes = 0
            while out.count < maxRecords && bytes < maxBytes && s.readSequence < s.nextSequence {
                guard s.readSegment < s.segments.count else { break }
                let seg = s.segments[s.readSegment]
                if s.readOffset >= seg.size {
                    if s.readSegment + 1 < s.segments.count {
                        s.readSegment += 1
                        s.readOffset = 0
                        continue
                    }
                    break
                }
                // Make sure the chunk holds at least the next record's header and body.
                func loaded(_ need: Int) -> Bool {
                    s.chunkOffset >= 0 && s.chunkSegmentFirst == seg.first && s.readOffset >= s.chunkOffset
                        && s.readOffset + need <= s.chunkOffset + s.chunkValid
                }
                func load(_ need: Int) throws {
                    let size = min(seg.size - s.readOffset, max(need, 1 << 20))
                    if s.chunk.count < size { s.chunk = [UInt8](repeating: 0, count: max(size, 1 << 20)) }
                    let n = s.chunk.withUnsafeMutableBytes { Self.pread(seg.fd, into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<size]), s.readOffset) }
                    guard n == size, size >= need else {
                        s.chunkOffset = -1
                        throw SpoolError("Cannot read spool segment \(seg.path)", errno: errno)
                    }
                    s.chunkValid = size
                    s.chunkOffset = s.readOffset
                    s.chunkSegmentFirst = seg.first
                }
                if !loaded(8) { try load(8) }
                let at = s.readOffset - s.chunkOffset
                let length = Int(s.chunk.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: at, as: UInt32.self).littleEndian })
                if !loaded(8 + length) { try load(8 + length) }
                let start = s.readOffset - s.chunkOffset + 8
                let r = s.chunk.withUnsafeBytes { p in
                    Self.decode(UnsafeRawBufferPointer(rebasing: p[start..<start + length]), lastTopicBytes: &s.lastTopicBytes,
                                lastTopic: &s.lastTopic)
                }
                s.readOffset += 8 + length
                s.readSequence = r.sequence + 1
                bytes += length
                out.append(r)
            }
            return out
        }
    }

    /// Marks every record up to `sequence` as acknowledged by the broker and records the watermark on disk at
    /// once: they will not be sent again, and segments holding only acknowledged records are deleted.
    package func markDone(through sequence: UInt64) throws {
        acknowledge(through: sequence)
        try flushDone()
    }

    /// Marks every record up to `sequence` as acknowledged, in memory only (cheap: called once per broker
    /// acknowledgement from the client's network thread). The watermark reaches the disk with ``flushDone()``;
    /// a crash before that resends the records acknowledged since the last flush (duplicates, never a loss).
    package func acknowledge(through sequence: UInt64) {
        let wake = state.withLock { s -> [@Sendable () -> Void] in
            guard sequence > s.done else { return [] }
            s.done = sequence
            s.doneDirty = true
            while s.sizesHead < s.sizes.count && s.sizes[s.sizesHead].sequence <= sequence {
                s.pendingBytes -= s.sizes[s.sizesHead].size
                s.pendingCount -= 1
                s.sizesHead += 1
            }
            if s.sizesHead > 4096 && s.sizesHead * 2 > s.sizes.count {
                s.sizes.removeFirst(s.sizesHead)
                s.sizesHead = 0
            }
            guard s.pendingBytes < configuration.maxBytes, !s.spaceWaiters.isEmpty else { return [] }
            defer { s.spaceWaiters.removeAll() }
            return s.spaceWaiters
        }
        for w in wake { w() }
    }

    /// Writes the acknowledged watermark to the `done` file (in place) if it moved, and deletes segments that hold
    /// only acknowledged records.
    ///
    /// Segments are deleted even when the watermark cannot be written: a record in a deleted segment was
    /// acknowledged, and an older watermark on disk only means some acknowledged records of later segments are
    /// sent again after a crash (duplicates, never a loss). Deleting is what frees space on a full disk.
    package func flushDone() throws {
        try state.withLock { s in
            guard s.doneDirty, !s.closed else { return }
            var failure: (any Error)?
            do {
                try self.writeDone(&s)
                s.doneDirty = false
            } catch {
                failure = error
            }
            try self.deleteDoneSegments(&s)
            if let failure { throw failure }
        }
    }

    /// Hands out again every record not yet acknowledged (after a failed publish).
    package func rewind() {
        state.withLock { s in
            guard !s.closed else { return }
            let target = s.done + 1
            // Fast path: the oldest unacknowledged record's position is known.
            if s.sizesHead < s.sizes.count {
                let p = s.sizes[s.sizesHead]
                if p.sequence == target, let index = s.segments.firstIndex(where: { $0.first == p.segmentFirst }) {
                    s.readSegment = index
                    s.readOffset = p.offset
                    s.readSequence = target
                    return
                }
            }
            // Find the segment holding `target`.
            var index = 0
            for (i, seg) in s.segments.enumerated() where seg.first <= target { index = i }
            var offset = 0
            var header = [UInt8](repeating: 0, count: 20)
            while index < s.segments.count {
                let seg = s.segments[index]
                if offset >= seg.size {
                    if index + 1 >= s.segments.count { break }
                    index += 1
                    offset = 0
                    continue
                }
                guard Self.pread(seg.fd, &header, offset) == header.count else { break }
                let length = Int(header.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 0, as: UInt32.self).littleEndian })
                let seq = header.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 8, as: UInt64.self).littleEndian }
                if seq >= target { break }
                offset += 8 + length
            }
            s.readSegment = index
            s.readOffset = offset
            s.readSequence = target
        }
    }

    /// Flushes to disk if the fsync policy says it is time.
    package func syncIfDue() {
        state.withLock { s in syncIfDue(&s, force: false) }
    }

    /// Syncs and closes the files. Appends fail afterwards; waiters are released.
    package func close() {
        let (w, spaces) = state.withLock { s -> (CheckedContinuation<Void, Never>?, [@Sendable () -> Void]) in
            if s.doneDirty && !s.closed {
                if (try? self.writeDone(&s)) != nil { s.doneDirty = false }
            }
            syncIfDue(&s, force: true)
            if s.doneFD >= 0 {
                if configuration.fsync != .never { _ = fdatasync(s.doneFD) }
                closeFile(s.doneFD)
                s.doneFD = -1
            }
            // The segments too: a closed spool holds no file open, so its directory can be removed and its space
            // is freed at once (reads return nothing, appends throw).
            for seg in s.segments { closeFile(seg.fd) }
            s.segments.removeAll()
            s.chunkOffset = -1
            if s.lockFD >= 0 { closeFile(s.lockFD) }
            s.lockFD = -1
            s.closed = true
            let w = s.recordsWaiter
            s.recordsWaiter = nil
            let sp = s.spaceWaiters
            s.spaceWaiters.removeAll()
            return (w, sp)
        }
        w?.resume()
        for f in spaces { f() }
    }

    // MARK: Internals

    private func syncIfDue(_ s: inout State, force: Bool) {
        guard s.dirty, let seg = s.segments.last else { return }
        let due: Bool
        switch configuration.fsync {
        case .always: due = true
        case .never: due = force
        case .interval(let d): due = force || ContinuousClock.now - s.lastSync >= d
        }
        if due {
            _ = fdatasync(seg.fd)
            s.dirty = false
            s.lastSync = .now
        }
    }

    /// Writes encoded records at the end of the last segment. On failure the segment is truncated back to its
    /// last whole record: part of the batch may have reached the disk as whole records, and nothing the caller is
    /// told was not stored may come back when the spool is reopened.
    private func writeRecords(_ bytes: [UInt8], sizes: inout [Pending], into s: inout State) throws {
        let seg = s.segments[s.segments.count - 1]
        do {
            try Self.writeAll(seg.fd, bytes)
        } catch {
            _ = ftruncate(seg.fd, off_t(seg.size))
            throw error
        }
        var offset = seg.size
        for i in sizes.indices {
            sizes[i].segmentFirst = seg.first
            sizes[i].offset = offset
            offset += sizes[i].size
        }
    }

    private func rollIfNeeded(_ s: inout State, adding: Int) throws {
        if let last = s.segments.last, last.size == 0 || last.size + adding <= configuration.segmentBytes { return }
        try startSegment(&s)
    }

    /// Starts a new segment for the next record (the current one, if any, is complete).
    private func startSegment(_ s: inout State) throws {
        if let last = s.segments.last, last.size == 0 { return }
        // The previous segment is complete: make it durable before starting the next one.
        if let last = s.segments.last, configuration.fsync != .never { _ = fdatasync(last.fd) }
        let digits = String(s.nextSequence)
        let name = "seg-" + String(repeating: "0", count: max(0, 20 - digits.count)) + digits + ".log"
        let path = configuration.directory + "/" + name
        let fd = open(path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SpoolError("Cannot create spool segment \(path)", errno: errno) }
        s.segments.append(Segment(first: s.nextSequence, path: path, fd: fd, size: 0))
        if s.readSequence == s.nextSequence {
            // Every record was handed out: the next read is the first record of the new segment.
            s.readSegment = s.segments.count - 1
            s.readOffset = 0
        }
        Self.syncDirectory(configuration.directory)
    }

    private func deleteDoneSegments(_ s: inout State) throws {
        // A segment is done when the next one starts at or before done + 1, and it is not being read.
        while s.segments.count > 1 && s.segments[1].first <= s.done + 1 && s.readSegment > 0 {
            let seg = s.segments.removeFirst()
            closeFile(seg.fd)
            unlink(seg.path)
            s.readSegment -= 1
        }
    }

    /// Overwrites the older of the `done` file's two slots with the watermark. A torn write can only spoil that
    /// slot, so the other still holds the previous watermark (a crash then resends, never loses).
    private func writeDone(_ s: inout State) throws {
        var data = [UInt8]()
        withUnsafeBytes(of: s.done.littleEndian) { data.append(contentsOf: $0) }
        let crc = CRC32.checksum(data)
        withUnsafeBytes(of: crc.littleEndian) { data.append(contentsOf: $0) }
        guard s.doneFD >= 0 else { throw SpoolError("The spool is closed.") }
        guard Self.pwrite(s.doneFD, data, s.doneSlot * Self.doneSlotBytes) == data.count else {
            throw SpoolError("Cannot record acknowledgements in \(donePath)", errno: errno)
        }
        if configuration.fsync == .always { _ = fdatasync(s.doneFD) }
        s.doneSlot = 1 - s.doneSlot
    }

    static func encode(_ r: SpoolRecord, sequence: UInt64, into out: inout [UInt8]) {
        let topic = Array(r.topic.utf8)
        let hasProperties = r.flags.contains(.properties)
        let bodyLength = 8 + 1 + 1 + 2 + topic.count + (hasProperties ? 4 + r.properties.count : 0) + r.payload.count
        let start = out.count
        out.append(contentsOf: repeatElement(0, count: 8))
        withUnsafeBytes(of: sequence.littleEndian) { out.append(contentsOf: $0) }
        out.append(r.flags.rawValue)
        out.append(r.qosLevel)
        withUnsafeBytes(of: UInt16(truncatingIfNeeded: topic.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(contentsOf: topic)
        if hasProperties {
            withUnsafeBytes(of: UInt32(truncatingIfNeeded: r.properties.count).littleEndian) { out.append(contentsOf: $0) }
            out.append(contentsOf: r.properties)
        }
        out.append(contentsOf: r.payload)
        let crc = out.withUnsafeBytes { CRC32.checksum(UnsafeRawBufferPointer(rebasing: $0[(start + 8)...])) }
        out.withUnsafeMutableBytes { p in
            p.storeBytes(of: UInt32(bodyLength).littleEndian, toByteOffset: start, as: UInt32.self)
            p.storeBytes(of: crc.littleEndian, toByteOffset: start + 4, as: UInt32.self)
        }
    }

    static func decode(_ body: [UInt8]) -> SpoolRecord {
        var tb: [UInt8] = []
        var t = ""
        return body.withUnsafeBytes { decode($0, lastTopicBytes: &tb, lastTopic: &t) }
    }

    /// Decodes one record body; reuses `lastTopic` when the topic bytes are the same as the previous record's.
    static func decode(_ p: UnsafeRawBufferPointer, lastTopicBytes: inout [UInt8], lastTopic: inout String) -> SpoolRecord {
        let seq = p.loadUnaligned(fromByteOffset: 0, as: UInt64.self).littleEndian
        let flags = SpoolRecord.Flags(rawValue: p[8])
        let qos = p[9] <= 2 ? p[9] : 1
        let tl = Int(p.loadUnaligned(fromByteOffset: 10, as: UInt16.self).littleEndian)
        let topicBytes = UnsafeRawBufferPointer(rebasing: p[12..<12 + tl])
        let topic: String
        if topicBytes.elementsEqual(lastTopicBytes) {
            topic = lastTopic
        } else {
            topic = String(decoding: topicBytes, as: UTF8.self)
            lastTopicBytes = Array(topicBytes)
            lastTopic = topic
        }
        var at = 12 + tl
        var properties: [UInt8] = []
        if flags.contains(.properties), at + 4 <= p.count {
            let pl = Int(p.loadUnaligned(fromByteOffset: at, as: UInt32.self).littleEndian)
            let end = min(p.count, at + 4 + pl)
            properties = Array(UnsafeRawBufferPointer(rebasing: p[(at + 4)..<end]))
            at = end
        }
        let payload = Array(UnsafeRawBufferPointer(rebasing: p[at...]))
        return SpoolRecord(sequence: seq, topic: topic, payload: payload, qosLevel: qos, flags: flags, properties: properties)
    }

    static func makeDirectory(_ path: String) throws {
        var partial = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/") {
            partial += "/" + component
            if mkdir(partial, 0o700) != 0 && errno != EEXIST {
                throw SpoolError("Cannot create the spool directory \(partial)", errno: errno)
            }
        }
        _ = chmod(path, 0o700)
    }

    static func syncDirectory(_ path: String) {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd >= 0 {
            _ = fsync(fd)
            closeFile(fd)
        }
    }

    /// `pwrite(2)` of all of `bytes` at `offset` (retrying on EINTR); returns the bytes written.
    static func pwrite(_ fd: Int32, _ bytes: [UInt8], _ offset: Int) -> Int {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { p in
                #if canImport(Darwin)
                Darwin.pwrite(fd, p.baseAddress! + done, bytes.count - done, off_t(offset + done))
                #else
                Glibc.pwrite(fd, p.baseAddress! + done, bytes.count - done, off_t(offset + done))
                #endif
            }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            done += n
        }
        return done
    }

    static func pread(_ fd: Int32, into p: UnsafeMutableRawBufferPointer, _ offset: Int) -> Int {
        var done = 0
        let count = p.count
        while done < count {
            #if canImport(Darwin)
            let n = Darwin.pread(fd, p.baseAddress! + done, count - done, off_t(offset + done))
            #else
            let n = Glibc.pread(fd, p.baseAddress! + done, count - done, off_t(offset + done))
            #endif
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            done += n
        }
        return done
    }

    static func pread(_ fd: Int32, _ buffer: inout [UInt8], _ offset: Int) -> Int {
        var done = 0
        let count = buffer.count
        while done < count {
            let n = buffer.withUnsafeMutableBytes { p in
                #if canImport(Darwin)
                Darwin.pread(fd, p.baseAddress! + done, count - done, off_t(offset + done))
                #else
                Glibc.pread(fd, p.baseAddress! + done, count - done, off_t(offset + done))
                #endif
            }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            done += n
        }
        return done
    }

    static func writeAll(_ fd: Int32, _ bytes: [UInt8]) throws {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { p in write(fd, p.baseAddress! + done, bytes.count - done) }
            if n < 0 {
                if errno == EINTR { continue }
                throw SpoolError("Cannot write to the spool", errno: errno)
            }
            done += n
        }
    }
}
