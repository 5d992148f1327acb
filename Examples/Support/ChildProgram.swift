#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

import Foundation
import MosquittoPOSIX

/// A program the example starts (`mqtt-bridge`, `mqtt-rr`, or the example itself in a worker role).
///
/// It is started with `spawnChild` (`MosquittoPOSIX`): an empty signal mask, default signal actions and no
/// inherited descriptors. A program started with Foundation's `Process` from async code inherits the signal
/// mask of a Swift concurrency thread, where SIGTERM and SIGINT are blocked, and would then ignore
/// ``terminate(grace:)``.
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
        do {
            pid = try spawnChild(executable, arguments, standardOutput: outputPath)
        } catch {
            throw CheckFailed("\(error)")
        }
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
