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
/// The child's reaper thread calls ``markExited(_:)`` once it has reaped the child. Waiting never blocks a
/// thread: each waiter is a continuation resumed exactly once, either by ``markExited(_:)`` or by its own timer.
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

/// A running child process, started with `spawnChild` (MosquittoPOSIX)
/// and reaped by a thread of its own.
///
/// Not Foundation's `Process`: in the child it closes only the descriptors it listed before forking, so a socket
/// another thread opened meanwhile without `O_CLOEXEC` stayed open, and listening, inside a broker (a port that a
/// test had released stayed taken until that broker ended). `spawnChild` closes every descriptor above 2 in the
/// child, and gives it an empty signal mask (threads of the Swift concurrency pool block `SIGTERM`, which a child
/// would inherit).
final class ChildProcess: Sendable {
    let pid: Int32
    let monitor: ExitMonitor
    private let watchdog: Watchdog?

    private init(pid: Int32, monitor: ExitMonitor, watchdog: Watchdog?) {
        self.pid = pid
        self.monitor = monitor
        self.watchdog = watchdog
    }

    var hasExited: Bool {
        monitor.status != nil
    }

    /// Launches `executable` with `arguments` in `directory`, appending its standard output and error to
    /// `outputFile` (created with mode 0600).
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
        try? POSIX.openPrivateFileForAppending(outputFile).close()
        let pid: pid_t
        do {
            pid = try spawnChild(executable, arguments, directory: directory, standardOutput: outputFile, appendOutput: true)
        } catch {
            throw MosquittoBrokerError(code: .launchFailed, message: "cannot launch \(executable): \(error)")
        }
        let watchdog: Watchdog? = useWatchdog ? Watchdog() : nil
        let monitor = ExitMonitor()
        let started = reapWhenExited(pid) { status in
            // Disarm the watchdog before anything can wait on the exit and reuse the pid.
            watchdog?.childExited()
            monitor.markExited(status)
        }
        guard started else {
            POSIX.send(signal: SIGKILL, to: pid)
            while waitpid(pid, nil, 0) < 0 && errno == EINTR {}
            throw MosquittoBrokerError(code: .launchFailed, message: "cannot launch \(executable): no thread to wait for it")
        }
        watchdog?.arm(guarding: pid, removing: directoryToRemove)
        return ChildProcess(pid: pid, monitor: monitor, watchdog: watchdog)
    }

    func signal(_ signal: Int32) {
        // Once the child is reaped its pid may be reused, so never signal a process known to have exited.
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

/// Starts a thread that waits for child `pid` to end, reaps it and passes its status to `exited`. Returns false
/// when no thread could be started.
private func reapWhenExited(_ pid: pid_t, _ exited: @escaping @Sendable (ExitStatus) -> Void) -> Bool {
    startDetachedThread(stackSize: 128 << 10) {
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            guard errno == EINTR else {
                exited(ExitStatus(code: -1, wasSignalled: false))
                return
            }
        }
        // WIFEXITED and friends are macros Swift does not import.
        let signalNumber = status & 0x7f
        exited(signalNumber == 0 ? ExitStatus(code: (status >> 8) & 0xff, wasSignalled: false)
                                 : ExitStatus(code: signalNumber, wasSignalled: true))
    } == 0
}

/// Kills a child with `SIGKILL` if this process goes away without stopping it. See
/// ``ChildProcess/launch(executable:arguments:directory:outputFile:watchdog:watchdogRemoves:)``.
final class Watchdog: Sendable {
    private struct State {
        var writeEnd: Int32 = -1
        /// The watchdog's pid while it runs (0 once reaped, or before it started).
        var pid: pid_t = 0
        var childExited = false
    }

    private let state = LockedValue<State>(State())

    fileprivate init() {}

    /// Starts the watchdog for `pid`. Failures are ignored: the watchdog is a safety net only.
    fileprivate func arm(guarding pid: Int32, removing: String?) {
        guard let (readEnd, writeEnd) = POSIX.makeCloseOnExecPipe() else { return }
        // `read` returns at end-of-file, that is when every copy of the write end is closed.
        var arguments = ["-c", "read -r line; kill -KILL \"$1\" 2>/dev/null", "mosquitto-broker-watchdog", "\(pid)"]
        if let removing {
            arguments[1] += "; rm -rf \"$2\""
            arguments.append(removing)
        }
        let watchdogPID = try? spawnChild("/bin/sh", arguments, standardInputDescriptor: readEnd, standardOutput: "/dev/null")
        close(readEnd)
        guard let watchdogPID else {
            close(writeEnd)
            return
        }
        let disarmNow = state.withLock { state -> Bool in
            state.writeEnd = writeEnd
            state.pid = watchdogPID
            return state.childExited
        }
        let reaping = reapWhenExited(watchdogPID) { [state] _ in
            state.withLock { if $0.pid == watchdogPID { $0.pid = 0 } }
        }
        if disarmNow || !reaping {
            childExited()
        }
    }

    /// Stops the watchdog without letting it signal anything.
    fileprivate func childExited() {
        let (writeEnd, pid) = state.withLock { state -> (Int32, pid_t) in
            state.childExited = true
            let result = (state.writeEnd, state.pid)
            state.writeEnd = -1
            return result
        }
        // Kill first: closing the pipe first would let it run `kill` on a pid that may be recycled.
        if pid > 0 { POSIX.send(signal: SIGKILL, to: pid) }
        if writeEnd >= 0 {
            close(writeEnd)
        }
    }
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
