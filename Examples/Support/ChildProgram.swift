#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

import Foundation

/// A program the example starts (`mqtt-bridge`, `mqtt-rr`, or the example itself in a worker role).
///
/// It is spawned with `posix_spawn`, an empty signal mask and default signal actions. A program started
/// with Foundation's `Process` from async code inherits the signal mask of a Swift concurrency thread,
/// where SIGTERM and SIGINT are blocked, and would then ignore ``terminate(grace:)``.
/// Standard output and standard error go, interleaved, to a temporary file: ``output``.
public final class ChildProgram: @unchecked Sendable {
    // `pid` and `outputPath` never change; `status` is only touched under `lock`.
    public let pid: pid_t
    public let name: String
    private let outputPath: String
    private let lock = NSLock()
    private var status: (code: Int32, signalled: Bool)?

    /// Starts `executable` with `arguments`.
    public init(_ executable: String, _ arguments: [String]) throws {
        name = (executable as NSString).lastPathComponent
        outputPath = NSTemporaryDirectory() + "example-\(name)-\(UUID().uuidString.prefix(8)).out"
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attr, &empty)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for s in [SIGINT, SIGTERM, SIGALRM, SIGPIPE, SIGHUP] { sigaddset(&defaults, s) }
        posix_spawnattr_setsigdefault(&attr, &defaults)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for p in argv { free(p) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, executable, &actions, &attr, argv, environ)
        guard rc == 0 else {
            throw CheckFailed("cannot start \(executable): \(String(cString: strerror(rc)))")
        }
        self.pid = pid
    }

    deinit {
        if exitStatus == nil { kill(pid, SIGKILL); _ = waitpid(pid, nil, 0) }
        unlink(outputPath)
    }

    /// Everything the program printed so far.
    public var output: String {
        (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? ""
    }

    /// The exit code (or signal), once it exited.
    public var exitStatus: (code: Int32, signalled: Bool)? {
        lock.lock()
        defer { lock.unlock() }
        if let status { return status }
        var raw: Int32 = 0
        if waitpid(pid, &raw, WNOHANG) == pid {
            let signalled = (raw & 0x7f) != 0
            status = (signalled ? raw & 0x7f : (raw >> 8) & 0xff, signalled)
        }
        return status
    }

    /// Waits until the program exits (killing it after `timeout`) and returns its exit code.
    @discardableResult
    public func wait(timeout: Duration = .seconds(30)) async -> Int32 {
        let deadline = ContinuousClock.now + timeout
        while exitStatus == nil {
            if ContinuousClock.now > deadline {
                kill(pid, SIGKILL)
            }
            try? await Task.sleep(for: .milliseconds(10))
        }
        let s = exitStatus!
        return s.signalled ? 128 + s.code : s.code
    }

    /// Sends SIGTERM (a graceful stop for `mqtt-bridge`), then SIGKILL after `grace`; returns the exit code.
    @discardableResult
    public func terminate(grace: Duration = .seconds(5)) async -> Int32 {
        if exitStatus == nil { kill(pid, SIGTERM) }
        return await wait(timeout: grace)
    }
}
