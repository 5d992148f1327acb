import MosquittoPOSIX
import Synchronization
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Runs the jobs of tasks that prefer it on a client's network thread, between the thread's reads and writes.
///
/// This is how a Swift consumer gets what a C program's libmosquitto callbacks get: a message is handled on the
/// thread that read it, with no hand-over to the cooperative pool and no thread wake-up per burst.
///
/// Invariants (read with ``ClientCore``'s):
/// - **Never stranded.** Jobs are kept only while the network thread runs its connected poll loop (between ``beginPolling()`` and
///    ``endPolling()``). At any other time, and for whatever is still queued at ``endPolling()``, jobs go to the global
///    concurrent executor: no job is ever stranded, whatever state the client is in.
/// - **No lock across a job.** `state` is never held while a job runs or while the wake pipe is written.
/// - **Sleep first.** The network thread sets `sleeping` (under the lock) *before* it looks for work and calls `poll`. Any thread
///    that queues work after that (a job, or a packet for libmosquitto) sees `sleeping` and writes the pipe.
/// - **Network thread only.** ``runJobs()`` and the poll bookkeeping run on the network thread only.
final class NetworkExecutor: TaskExecutor, @unchecked Sendable {
    private struct State {
        var jobs: [UnownedJob] = []
        var accepting = false
        var sleeping = false
        /// The wake pipe (read end, write end); created by ``enable()``.
        var pipe: (read: Int32, write: Int32)?
    }

    private let state = LockedValue(State())
    /// Set once the pipe exists: the network thread then drives the connection with `poll`.
    private let enabled = Atomic<Bool>(false)
    /// Mirrors `state.sleeping` for the lock-free early exit of ``wakeIfSleeping()``: written under the lock, set
    /// before the network thread looks for pending output (so a packet queued after that look sees it set).
    private let sleepingHint = Atomic<Bool>(false)
    /// Network thread only: the batch being run, swapped with `state.jobs` so neither array reallocates.
    private var running: [UnownedJob] = []
    private var inJobs = false

    deinit {
        if let p = state.withLock({ $0.pipe }) {
            close(p.read)
            close(p.write)
        }
    }

    /// Creates the wake pipe, once: ``ClientCore`` calls this in its `init` and fails without a pipe, because its
    /// network thread sleeps in `poll` on that pipe. Returns false when no pipe could be made.
    @discardableResult
    func enable() -> Bool {
        if enabled.load(ordering: .acquiring) { return true }
        return state.withLock { s in
            if s.pipe != nil { return true }
            var fds: [Int32] = [-1, -1]
            guard pipe(&fds) == 0 else { return false }
            for fd in fds {
                _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
                _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            }
            s.pipe = (fds[0], fds[1])
            enabled.store(true, ordering: .releasing)
            return true
        }
    }

    // MARK: TaskExecutor

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        enum Action { case forward, queued, poke(Int32) }
        let action: Action = state.withLock { s in
            guard s.accepting, let p = s.pipe else { return .forward }
            s.jobs.append(job)
            if s.sleeping {
                s.sleeping = false
                sleepingHint.store(false, ordering: .sequentiallyConsistent)
                return .poke(p.write)
            }
            return .queued
        }
        switch action {
        case .forward: globalConcurrentExecutor.enqueue(ExecutorJob(job))
        case .queued: break
        case .poke(let fd): Self.poke(fd)
        }
    }

    private static func poke(_ fd: Int32) {
        var byte: UInt8 = 1
        _ = write(fd, &byte, 1)  // a full pipe already wakes the reader
    }

    // MARK: Any thread

    /// Wakes the network thread if it sleeps in `poll`: called after queueing a packet for libmosquitto from
    /// another thread (libmosquitto only pokes its own socket pair, which the poll loop does not watch).
    func wakeIfSleeping() {
        // Called for every publish: most of the time the network thread is awake (or the executor unused).
        guard sleepingHint.load(ordering: .sequentiallyConsistent) else { return }
        let fd: Int32? = state.withLock { s in
            guard s.sleeping, let p = s.pipe else { return nil }
            s.sleeping = false
            sleepingHint.store(false, ordering: .sequentiallyConsistent)
            return p.write
        }
        if let fd { Self.poke(fd) }
    }

    // MARK: Network thread

    /// The wake pipe's read end, for `poll`; nil before ``enable()``.
    var wakeDescriptor: Int32? {
        guard enabled.load(ordering: .acquiring) else { return nil }
        return state.withLock { $0.pipe?.read }
    }

    /// Starts keeping jobs, if the executor is enabled. Returns the pipe's read end for `poll`, or nil before
    /// ``enable()``.
    func beginPolling() -> Int32? {
        guard enabled.load(ordering: .acquiring) else { return nil }
        return state.withLock { s in
            s.accepting = true
            return s.pipe?.read
        }
    }

    /// Stops keeping jobs and passes the queued ones to the global concurrent executor.
    func endPolling() {
        guard enabled.load(ordering: .acquiring) else { return }
        let left: [UnownedJob] = state.withLock { s in
            s.accepting = false
            s.sleeping = false
            sleepingHint.store(false, ordering: .sequentiallyConsistent)
            let j = s.jobs
            s.jobs = []
            return j
        }
        for j in left { globalConcurrentExecutor.enqueue(ExecutorJob(j)) }
    }

    /// Declares that the network thread is about to sleep in `poll`. Returns false when jobs are queued (poll
    /// without waiting). After this returns true, check libmosquitto for pending output, then poll.
    func prepareToSleep() -> Bool {
        let sleeping = state.withLock { s in
            if !s.jobs.isEmpty { return false }
            s.sleeping = true
            sleepingHint.store(true, ordering: .sequentiallyConsistent)
            return true
        }
        // `mosquitto_want_write`, which the caller checks next, reads libmosquitto's queue without a lock. Without a
        // full fence a weakly ordered CPU (arm64) could perform that read before the hint is visible to a publisher,
        // which would then skip the wake-up while the packet waits for the poll timeout.
        if sleeping { atomicMemoryFence(ordering: .sequentiallyConsistent) }
        return sleeping
    }

    /// After `poll` returned: no longer sleeping (when ``prepareToSleep()`` said so; otherwise nothing was set, and
    /// the lock is not taken); empties the pipe when it was poked.
    func awake(wasSleeping: Bool, pipeReadable: Bool, readFD: Int32) {
        if wasSleeping {
            state.withLock { s in
                s.sleeping = false
                sleepingHint.store(false, ordering: .sequentiallyConsistent)
            }
        }
        guard pipeReadable else { return }
        var buffer = (UInt64(0), UInt64(0), UInt64(0), UInt64(0))
        while withUnsafeMutableBytes(of: &buffer, { read(readFD, $0.baseAddress, $0.count) }) == 32 {}
    }

    /// Runs the queued jobs, and those they queue, for a few rounds. Returns true when it ran any.
    /// Not re-entrant: a call from inside a job returns false.
    @discardableResult
    func runJobs() -> Bool {
        guard !inJobs, enabled.load(ordering: .relaxed) else { return false }
        inJobs = true
        defer { inJobs = false }
        var ran = false
        for _ in 0..<4 {
            state.withLock { s in swap(&s.jobs, &running) }
            if running.isEmpty { break }
            ran = true
            let me = asUnownedTaskExecutor()
            for job in running { job.runSynchronously(on: me) }
            running.removeAll(keepingCapacity: true)
        }
        return ran
    }
}
