#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

import Foundation
import MosquittoPOSIX
import MosquittoTestSupport
import Testing

/// `spawnChild` starts the CLIs, the bridge and the examples' programs in the tests and the examples.
/// A child must not keep this process's sockets and pipes open: while one held a copy of the socket pair
/// through which Foundation's `Process` learns that mosquitto exited, a killed broker went unreaped.
@Suite("spawnChild: a child starts as from a shell", .timeLimit(.minutes(1 * testTimeScale)))
struct ChildSpawnTests {
    @Test("directory: the child runs there, and a relative output path still names the file it names here")
    func workingDirectory() async throws {
        let base = temporaryDirectory()
        // Deeper than this process's working directory, so that the relative path below, resolved from there,
        // would name another file.
        let elsewhere = base + "/a/b/c/d/e/f/g/h/elsewhere"
        defer { try? FileManager.default.removeItem(atPath: base) }
        try FileManager.default.createDirectory(atPath: elsewhere, withIntermediateDirectories: true)
        // A path relative to this process's working directory (not changed here: the suite runs in parallel).
        let depth = FileManager.default.currentDirectoryPath.split(separator: "/").count
        let relative = String(repeating: "../", count: depth) + base.dropFirst() + "/out"
        let pid = try spawnChild("/bin/sh", ["-c", "pwd"], directory: elsewhere, standardOutput: relative)
        var status: Int32 = 0
        _ = waitpid(pid, &status, 0)
        let printed = (try? String(contentsOfFile: base + "/out", encoding: .utf8)) ?? "(no \(base)/out)"
        #expect(printed.trimmingCharacters(in: .whitespacesAndNewlines) == elsewhere)
    }

    @Test("the child inherits no descriptor above 2, though this process holds some without O_CLOEXEC")
    func noInheritedDescriptors() async throws {
        var ends: [Int32] = [-1, -1]
        #expect(pipe(&ends) == 0)
        defer { close(ends[0]); close(ends[1]) }
        #expect(fcntl(ends[1], F_GETFD) & FD_CLOEXEC == 0, "the pipe is inheritable")

        let output = NSTemporaryDirectory() + "spawn-\(UUID().uuidString).out"
        defer { unlink(output) }
        let pid = try spawnChild("/bin/sleep", ["30"], standardOutput: output)
        defer { kill(pid, SIGKILL); _ = waitpid(pid, nil, 0) }

        // The child may have a file of its own open for a moment (sleep reads its locale at start), so look for
        // what it must not have rather than for an exact list: this process's pipe, or any of its sockets.
        func targets(_ pid: String) -> [String: String] {
            let names = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []
            var result: [String: String] = [:]
            for name in names {
                result[name] = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\(name)")
            }
            return result
        }
        let ours = targets("self")
        let pipeEnd = try #require(ours["\(ends[1])"])
        let inheritable = Set(ours.values.filter { $0.hasPrefix("pipe:") || $0.hasPrefix("socket:") })
        #expect(inheritable.contains(pipeEnd))
        let child = targets("\(pid)")
        #expect(Set(child.keys).isSuperset(of: ["0", "1", "2"]))
        #expect(child.values.filter { inheritable.contains($0) }.isEmpty, "the child holds \(child)")
    }

    @Test("spawned from a concurrency thread, the child still dies of SIGTERM and writes where it is told")
    func signalsAndOutput() async throws {
        let output = NSTemporaryDirectory() + "spawn-\(UUID().uuidString).out"
        defer { unlink(output) }
        let pid = try spawnChild("/bin/sh", ["-c", "echo out; echo err >&2; exec sleep 300"], standardOutput: output)
        let printed = await eventually { (try? String(contentsOfFile: output, encoding: .utf8)) == "out\nerr\n" }
        #expect(printed, "standard output and standard error both go to the output file")
        #expect(kill(pid, SIGTERM) == 0)

        var status: Int32 = 0
        var reapedElsewhere = false
        _ = await eventually {
            let r = waitpid(pid, &status, WNOHANG)
            if r == -1 && errno == ECHILD { reapedElsewhere = true }
            return r == pid || reapedElsewhere
        }
        if reapedElsewhere {
            // In one ThreadSanitizer CI run our waitpid never saw the child (wait status 0 after the whole wait): some
            // other part of this process reaped it first, so its status is lost. It is gone long before `sleep 300`
            // would end, which only the signal can have done.
            #expect(kill(pid, 0) == -1 && errno == ESRCH, "the child outlived SIGTERM")
        } else {
            let signalled = status & 0x7F
            if signalled == 0 { kill(pid, SIGKILL); _ = waitpid(pid, nil, 0) }
            #expect(signalled == SIGTERM, "wait status \(status)")
        }
    }

    @Test("a program that cannot be started is a thrown error naming it")
    func missingProgram() {
        #expect {
            _ = try spawnChild("/nonexistent/mqtt-pub", [], standardOutput: "/dev/null")
        } throws: { error in
            "\(error)" == "cannot start /nonexistent/mqtt-pub: No such file or directory"
        }
    }

}
