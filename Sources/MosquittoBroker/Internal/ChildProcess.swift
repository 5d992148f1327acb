import MosquittoPOSIX
#if canImport(Darwin)
import Darwin
#elseif canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

import Foundation

/// How a child process ended.
struct ExitStatus: Sendable, Hashable, CustomStringConvertible {
    var code: Int32
    var wasSignalled: Bool

    var description: String {
        wasSignalled ? "killed by signal \(code)" : "exit code \(code)"
    }

    var isSuccess: Bool {
        !wasSignalled && code == 0
    }
}

/// Records when a child process exits and lets any number of tasks wait for it, with a time limit.
///
/// Foundation calls ``markExited(_:)`` from the process's `terminationHandler` (on a Foundation
/// thread, after the child has been reaped). Waiting never blocks a thread: each waiter is a
/// continuation resumed exactly once, either by ``markExited(_:)`` or by its own timer.
final class ExitMonitor: Sendable {
    private struct State {
        var status: ExitStatus?
        var waiters: [Int: CheckedContinuation<Bool, Never>] = [:]
        var expiredWaiters: Set<Int> = []
        var nextWaiterID = 0
    }

    private let state = LockedValue(State())

    /// The exit status, or `nil` while the process runs.
    var status: ExitStatus? {
        state.withLock { $0.status }
    }

    func markExited(_ status: ExitStatus) {
        let waiters = state.withLock { state -> [CheckedContinuation<Bool, Never>] in
            state.status = status
            let waiters = Array(state.waiters.values)
            state.waiters.removeAll()
            return waiters
        }
        for waiter in waiters {
            waiter.resume(returning: true)
        }
    }

    /// Waits until the process exits or `timeout` passes. Returns whether it exited.
    ///
    /// Task cancellation does not cut the wait short; the time limit bounds it instead, so callers
    /// that must see the process gone (stop, kill) do.
    func waitForExit(timeout: Duration) async -> Bool {
        let id: Int? = state.withLock { state in
            if state.status != nil { return nil }
            defer { state.nextWaiterID += 1 }
            return state.nextWaiterID
        }
        guard let id else { return true }

        let timer = Task { [self] in
            try? await Task.sleep(for: timeout)
            guard !Task.isCancelled else { return }
            let waiter = state.withLock { state -> CheckedContinuation<Bool, Never>? in
                if let waiter = state.waiters.removeValue(forKey: id) {
                    return waiter
                }
                state.expiredWaiters.insert(id)
                return nil
            }
            waiter?.resume(returning: false)
        }
        defer { timer.cancel() }

        return await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            let immediate = state.withLock { state -> Bool? in
                if state.status != nil { return true }
                if state.expiredWaiters.remove(id) != nil { return false }
                state.waiters[id] = continuation
                return nil
            }
            if let immediate {
                continuation.resume(returning: immediate)
            }
        }
    }
}

/// A running child process launched with Foundation's `Process`.
///
/// `@unchecked Sendable`: the `Process` object is configured and launched inside
/// ``launch(executable:arguments:directory:outputFile:watchdog:watchdogRemoves:)`` before the `ChildProcess` is
/// shared; afterwards it is only kept alive here. Every later interaction goes through the
/// immutable ``pid`` (signals), the thread-safe ``monitor`` and the lock-protected ``watchdog``.
final class ChildProcess: @unchecked Sendable {
    let pid: Int32
    let monitor: ExitMonitor
    private let process: Process
    private let watchdog: Watchdog?

    private init(process: Process, monitor: ExitMonitor, watchdog: Watchdog?) {
        self.process = process
        self.pid = process.processIdentifier
        self.monitor = monitor
        self.watchdog = watchdog
    }

    var hasExited: Bool {
        monitor.status != nil
    }

    /// Launches `executable` with `arguments` in `directory`, appending its standard output and error to `outputFile`.
    ///
    /// The process is spawned from a short-lived thread whose signal mask is empty. Threads of the
    /// Swift concurrency pool (libdispatch workers) block most signals, and a child inherits the
    /// mask of the thread that spawns it: launched from there, mosquitto would ignore `SIGTERM` and
    /// `mosquitto_sub -W` would never time out (it relies on `SIGALRM`).
    ///
    /// With `watchdog: true`, a tiny `/bin/sh` process is started next to the child. It waits for
    /// end-of-file on a pipe whose write end only this process holds, then sends `SIGKILL` to the
    /// child. The write end closes when this process dies for any reason (a test runner killed on
    /// timeout, a crash), so the child does not outlive it; the watchdog then also removes
    /// `directoryToRemove`, if given. When the child exits normally, the watchdog is killed first,
    /// so it never signals a recycled process ID (nor removes anything).
    static func launch(
        executable: String,
        arguments: [String],
        directory: String,
        outputFile: String,
        watchdog useWatchdog: Bool = false,
        watchdogRemoves directoryToRemove: String? = nil
    ) async throws(MosquittoBrokerError) -> ChildProcess {
        let watchdog: Watchdog? = useWatchdog ? Watchdog() : nil
        let child = try await onThreadWithEmptySignalMask { () throws(MosquittoBrokerError) -> ChildProcess in
            let output = try POSIX.openPrivateFileForAppending(outputFile)
            defer { try? output.close() }

            let monitor = ExitMonitor()
            let process = Process()
            process.executableURL = URL(fileURLWithPath: executable)
            process.arguments = arguments
            process.currentDirectoryURL = URL(fileURLWithPath: directory, isDirectory: true)
            process.standardInput = FileHandle.nullDevice
            process.standardOutput = output
            process.standardError = output
            process.terminationHandler = { process in
                // Disarm the watchdog before anything can wait on the exit and reuse the pid.
                watchdog?.childExited()
                monitor.markExited(
                    ExitStatus(
                        code: process.terminationStatus,
                        wasSignalled: process.terminationReason == .uncaughtSignal
                    )
                )
            }
            do {
                try launchSerially(process)
            } catch {
                watchdog?.childExited()
                throw MosquittoBrokerError(
                    code: .launchFailed,
                    message: "cannot launch \(executable): \(error)"
                )
            }
            watchdog?.arm(guarding: process.processIdentifier, removing: directoryToRemove)
            return ChildProcess(process: process, monitor: monitor, watchdog: watchdog)
        }
        return child
    }

    func signal(_ signal: Int32) {
        // Foundation reaps the child and calls the termination handler; once that has happened the
        // pid may be reused, so never signal a process known to have exited.
        guard !hasExited else { return }
        POSIX.send(signal: signal, to: pid)
    }

    /// Sends `SIGTERM`, then `SIGKILL` if the process is still there after `grace`. Returns once it has exited.
    func terminate(grace: Duration) async {
        signal(SIGTERM)
        if await monitor.waitForExit(timeout: grace) { return }
        await forceKill()
    }

    /// Sends `SIGKILL` and waits until the process has exited.
    func forceKill() async {
        while !hasExited {
            signal(SIGKILL)
            _ = await monitor.waitForExit(timeout: .seconds(5))
        }
    }
}

/// Kills a child with `SIGKILL` if this process goes away without stopping it. See
/// ``ChildProcess/launch(executable:arguments:directory:outputFile:watchdog:watchdogRemoves:)``.
///
/// The watchdog itself is spawned directly with `Process` from the calling thread, which
/// ``ChildProcess/launch(executable:arguments:directory:outputFile:watchdog:watchdogRemoves:)`` guarantees has an
/// empty signal mask.
final class Watchdog: Sendable {
    private struct State {
        var writeEnd: Int32 = -1
        var process: Process?
        var childExited = false
    }

    // `Process` is not `Sendable`; it is only touched under this lock.
    private let state = LockedValue<State>(State())

    fileprivate init() {}

    /// Starts the watchdog for `pid`. Failures are ignored: the watchdog is a safety net only.
    fileprivate func arm(guarding pid: Int32, removing: String?) {
        guard let (readEnd, writeEnd) = POSIX.makeCloseOnExecPipe() else { return }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        // `read` returns at end-of-file, that is when every copy of the write end is closed.
        var arguments = ["-c", "read -r line; kill -KILL \"$1\" 2>/dev/null", "mosquitto-broker-watchdog", "\(pid)"]
        if let removing {
            arguments[1] += "; rm -rf \"$2\""
            arguments.append(removing)
        }
        process.arguments = arguments
        let input = FileHandle(fileDescriptor: readEnd, closeOnDealloc: true)
        process.standardInput = input
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        let launched = (try? launchSerially(process)) != nil
        try? input.close()
        guard launched else {
            close(writeEnd)
            return
        }
        let disarmNow = state.withLock { state -> Bool in
            state.writeEnd = writeEnd
            state.process = process
            return state.childExited
        }
        if disarmNow {
            childExited()
        }
    }

    /// Stops the watchdog without letting it signal anything.
    fileprivate func childExited() {
        let (writeEnd, pid) = state.withLock { state -> (Int32, Int32) in
            state.childExited = true
            let result = (state.writeEnd, state.process.map { $0.isRunning ? $0.processIdentifier : 0 } ?? 0)
            state.writeEnd = -1
            state.process = nil
            return result
        }
        // Kill first: closing the pipe first would let it run `kill` on a pid that may be recycled.
        POSIX.send(signal: SIGKILL, to: pid)
        if writeEnd >= 0 {
            close(writeEnd)
        }
    }
}

/// Held while Foundation launches a process; see ``launchSerially(_:)``. Counts the launches: with an empty value,
/// the value's inout access and the read of the mutex pointer share one address, which ThreadSanitizer reports
/// as a race.
private let foundationLaunches = LockedValue(0)

/// Runs `process`, one launch at a time in this process.
///
/// Foundation's `Process.run()` creates a socket pair without `O_CLOEXEC` and learns that the child exited
/// when the child's end reaches end-of-file. In the new child it closes the descriptors that were open when
/// it listed them; a socket pair that another thread creates in the meantime stays open in that child. A broker
/// started at the same moment as another could hold the other's end, and when the other was killed, it would go
/// unreaped until the first one ended. A launch takes about a millisecond, so taking turns costs little.
private func launchSerially(_ process: Process) throws {
    try foundationLaunches.withLock { count in
        try process.run()
        count += 1
    }
}

/// Runs `body` on a new thread whose signal mask is empty and returns its result.
private func onThreadWithEmptySignalMask<T: Sendable>(
    _ body: @escaping @Sendable () throws(MosquittoBrokerError) -> T
) async throws(MosquittoBrokerError) -> T {
    // The result also passes through a lock: ThreadSanitizer does not see the happens-before edge of a
    // continuation resumed from a plain thread, and would report the object the thread built as a race.
    let box = LockedValue<Result<T, MosquittoBrokerError>?>(nil)
    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
        let thread = Thread {
            var empty = sigset_t()
            sigemptyset(&empty)
            pthread_sigmask(SIG_SETMASK, &empty, nil)
            let result = Result { () throws(MosquittoBrokerError) -> T in try body() }
            box.withLock { $0 = result }
            continuation.resume()
        }
        thread.name = "MosquittoBroker.spawn"
        thread.start()
    }
    return try box.withLock { $0 }!.get()
}

/// Runs a helper tool (`openssl`, `mosquitto_passwd`) to completion.
enum Tool {
    struct Result {
        var status: ExitStatus
        var output: String
    }

    /// Runs `executable` and returns its status and combined output. Kills it after `timeout`.
    static func run(
        _ executable: String,
        _ arguments: [String],
        in directory: String,
        timeout: Duration = .seconds(60)
    ) async throws(MosquittoBrokerError) -> Result {
        let outputFile = directory + "/.tool-output"
        _ = unlink(outputFile)
        defer { _ = unlink(outputFile) }
        let child = try await ChildProcess.launch(
            executable: executable,
            arguments: arguments,
            directory: directory,
            outputFile: outputFile
        )
        if !(await child.monitor.waitForExit(timeout: timeout)) {
            await child.forceKill()
        }
        return Result(status: child.monitor.status!, output: POSIX.readFile(outputFile))
    }

    /// Runs `executable` and throws ``MosquittoBrokerError/Code/toolFailed`` unless it succeeds.
    static func check(
        _ executable: String,
        _ arguments: [String],
        in directory: String,
        what: String,
        showArguments: Bool = true
    ) async throws(MosquittoBrokerError) {
        let result = try await run(executable, arguments, in: directory)
        guard result.status.isSuccess else {
            let command = showArguments ? ([executable] + arguments).joined(separator: " ") : executable
            throw MosquittoBrokerError(
                code: .toolFailed,
                message: "\(what) failed (\(result.status)): \(command)",
                logTail: result.output
            )
        }
    }
}
