#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

import Foundation
import MosquittoPOSIX

/// A private temporary directory, removed by the caller.
package func temporaryDirectory() -> String {
    let path = NSTemporaryDirectory() + "mosquitto-test-" + UUID().uuidString.prefix(8)
    try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// A built executable of this package (`mqtt-pub`, `mqtt-bridge`, `example-telemetry`, …), looked for next to the
/// test bundle and in the directories above it; nil when it was not built.
package func builtExecutable(_ name: String) -> String? {
    var candidates: [URL] = []
    if let exe = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
        var dir = URL(fileURLWithPath: exe).deletingLastPathComponent()
        for _ in 0..<4 {
            candidates.append(dir)
            dir = dir.deletingLastPathComponent()
        }
    }
    candidates += [Bundle.main.bundleURL, Bundle.main.bundleURL.deletingLastPathComponent()]
    for b in Bundle.allBundles { candidates += [b.bundleURL, b.bundleURL.deletingLastPathComponent()] }
    candidates.append(URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent())
    candidates.append(URL(fileURLWithPath: FileManager.default.currentDirectoryPath).appendingPathComponent(".build/debug"))
    for c in candidates where FileManager.default.isExecutableFile(atPath: c.appendingPathComponent(name).path) {
        return c.appendingPathComponent(name).path
    }
    return nil
}

/// What a finished program produced.
package struct RunResult: CustomStringConvertible {
    package var status: Int32
    package var signalled: Bool
    package var stdout: [UInt8]
    package var stderr: String
    package var out: String { String(decoding: stdout, as: UTF8.self) }
    package var description: String { "status \(status)\(signalled ? " (signal)" : ""), stdout: \(out.prefix(500)), stderr: \(stderr.prefix(500))" }
}

/// A running child process, started with `spawnChild`: an empty signal mask, default signal actions and no inherited
/// descriptors (unlike `Process` started from a Swift concurrency thread, whose blocked SIGTERM/SIGINT/SIGALRM the
/// child would inherit), so that signals behave as they would from a shell.
package final class Child: Sendable {
    package let pid: pid_t
    /// The file standard output goes to (with standard error, unless it has a file of its own).
    package let outputPath: String
    private let errorPath: String?
    /// The temporary directory holding the output files, when the child has one; ``wait(timeout:)`` removes it.
    private let directory: String?
    /// Set once the child is reaped. Its pid is then free for the system to reuse (pids wrap at 32,768 here, and a
    /// test run starts thousands of processes and threads): a later `kill` or `waitpid` on it could reach another
    /// process, such as a broker this process started, and kill or reap it.
    private let reaped = Locked(false)

    /// Starts `executable` with its output in a temporary directory, read back by ``wait(timeout:)``. With
    /// `combined`, standard output and standard error go to one file (read as `stdout`), as with `2>&1`.
    package init(_ executable: String, _ arguments: [String], stdinPath: String? = nil,
                 environment: [String: String]? = nil, combined: Bool = false) throws {
        let directory = temporaryDirectory()
        self.directory = directory
        outputPath = directory + "/stdout"
        errorPath = combined ? nil : directory + "/stderr"
        var env = environment ?? ProcessInfo.processInfo.environment
        env["TZ"] = env["TZ"] ?? "UTC"
        pid = try spawnChild(executable, arguments, environment: env, standardInput: stdinPath ?? "/dev/null",
                             standardOutput: outputPath, standardError: errorPath)
    }

    /// Starts `executable` with standard output and standard error appended to `output` (a log the test reads).
    package init(_ executable: String, _ arguments: [String], output: String) throws {
        directory = nil
        outputPath = output
        errorPath = nil
        pid = try spawnChild(executable, arguments, standardOutput: output, appendOutput: true)
    }

    /// Sends a signal, unless the child was reaped.
    package func signal(_ sig: Int32) {
        reaped.withLock { done in if !done { kill(pid, sig) } }
    }

    /// Reaps the child if it ended (`block`: waits for that). Returns its wait status when this call reaped it.
    private func reap(block: Bool) -> Int32? {
        reaped.withLock { done -> Int32? in
            guard !done else { return nil }
            var status: Int32 = 0
            var r: pid_t
            repeat { r = waitpid(pid, &status, block ? 0 : WNOHANG) } while r < 0 && errno == EINTR
            if r == pid || (r < 0 && errno == ECHILD) { done = true }
            return r == pid ? status : nil
        }
    }

    /// Kills and reaps the child if it is still our unreaped child: for a `defer`, after a normal path that stopped it
    /// with a signal and waited.
    package func killIfRunning() {
        guard reap(block: false) == nil, !reaped.value else { return }
        signal(SIGKILL)
        _ = reap(block: true)
    }

    /// Waits for the exit, polling so that no thread blocks; the raw wait status, or nil when `timeout` passed
    /// first (the child then keeps running).
    package func exitStatus(timeout: Duration = .seconds(15)) async -> Int32? {
        let deadline = ContinuousClock.now + timeout
        while true {
            if let status = reap(block: false) { return status }
            if reaped.value { return nil }  // reaped by an earlier call
            if ContinuousClock.now > deadline { return nil }
            try? await Task.sleep(for: .milliseconds(5))
        }
    }

    /// Waits for the exit (killing the child after `timeout`) and returns what it printed.
    package func wait(timeout: Duration = .seconds(60)) async -> RunResult {
        var status: Int32 = 0
        if let s = await exitStatus(timeout: timeout) {
            status = s
        } else {
            signal(SIGKILL)
            status = reap(block: true) ?? 0
        }
        let signalled = (status & 0x7f) != 0
        let code = signalled ? (status & 0x7f) : ((status >> 8) & 0xff)
        let out = currentOutput()
        let err = errorPath.flatMap { FileManager.default.contents(atPath: $0) }.map { String(decoding: $0, as: UTF8.self) } ?? ""
        if let directory { try? FileManager.default.removeItem(atPath: directory) }
        return RunResult(status: code, signalled: signalled, stdout: out, stderr: err)
    }

    /// What the child wrote to standard output so far.
    package func currentOutput() -> [UInt8] {
        FileManager.default.contents(atPath: outputPath).map { Array($0) } ?? []
    }
}

/// Runs a program to completion.
package func run(_ executable: String, _ arguments: [String], stdin: [UInt8]? = nil, stdinPath: String? = nil,
                 environment: [String: String]? = nil, timeout: Duration = .seconds(60)) async throws -> RunResult {
    var path = stdinPath
    var cleanup: String?
    if let stdin {
        let dir = temporaryDirectory()
        path = dir + "/stdin"
        try Data(stdin).write(to: URL(fileURLWithPath: path!))
        cleanup = dir
    }
    defer { if let cleanup { try? FileManager.default.removeItem(atPath: cleanup) } }
    let child = try Child(executable, arguments, stdinPath: path, environment: environment)
    return await child.wait(timeout: timeout)
}
