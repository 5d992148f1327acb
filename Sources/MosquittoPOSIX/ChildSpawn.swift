#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Why ``spawnChild(_:_:environment:standardInput:standardOutput:standardError:appendOutput:)`` failed.
package struct SpawnError: Error, CustomStringConvertible, Sendable {
    /// The `errno` value that `posix_spawn` returned.
    package let code: Int32
    /// The program that could not be started.
    package let executable: String

    package var description: String {
        "cannot start \(executable): \(String(cString: strerror(code)))"
    }
}

/// Starts `executable` with `posix_spawn`, in the state a shell would give it, and returns its process id.
///
/// Foundation's `Process` is not used, for two reasons:
/// - A program started from a Swift concurrency thread inherits that thread's signal mask, in which
///   `SIGTERM`, `SIGINT` and `SIGALRM` are blocked. It would then ignore `kill -TERM`, and `mosquitto_sub -W`
///   would never time out. Here the mask is empty and the usual signals have their default actions.
/// - Every descriptor above 2 is closed in the child. This process opens sockets and pipes without
///   `O_CLOEXEC`, and a child that inherited one would hold it open: a connection the parent closes would
///   stay up, and Foundation's `Process`, which learns that its own child exited only when every copy of a
///   socket-pair end is closed, would not see a broker die while such a child runs.
///
/// The caller reaps the child (`waitpid`).
///
/// - Parameters:
///   - executable: The program's path.
///   - arguments: The arguments after `argv[0]`, which is `executable`.
///   - environment: The environment; this process's own when `nil`.
///   - directory: The child's working directory; this process's own when `nil`.
///   - standardInput: The file read as standard input.
///   - standardInputDescriptor: A descriptor of this process to use as standard input instead of a file (a pipe's
///     read end, say); the child gets a copy, the caller still owns it.
///   - standardOutput: The file standard output goes to; created with mode 0600 if missing.
///   - standardOutputDescriptor: A descriptor of this process to use as standard output instead of a file (a
///     pipe's write end, say).
///   - standardError: The file standard error goes to; when `nil`, the same file as standard output.
///   - standardErrorDescriptor: A descriptor of this process to use as standard error instead of a file
///     (`STDERR_FILENO`: this process's own).
///   - appendOutput: Appends to the output files instead of truncating them.
package func spawnChild(
    _ executable: String,
    _ arguments: [String],
    environment: [String: String]? = nil,
    directory: String? = nil,
    standardInput: String = "/dev/null",
    standardInputDescriptor: Int32? = nil,
    standardOutput: String = "/dev/null",
    standardOutputDescriptor: Int32? = nil,
    standardError: String? = nil,
    standardErrorDescriptor: Int32? = nil,
    appendOutput: Bool = false
) throws(SpawnError) -> pid_t {
    let outputFlags = O_WRONLY | O_CREAT | (appendOutput ? O_APPEND : O_TRUNC)
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    if let standardInputDescriptor {
        posix_spawn_file_actions_adddup2(&actions, standardInputDescriptor, 0)
    } else {
        posix_spawn_file_actions_addopen(&actions, 0, standardInput, O_RDONLY, 0)
    }
    if let standardOutputDescriptor {
        posix_spawn_file_actions_adddup2(&actions, standardOutputDescriptor, 1)
    } else {
        posix_spawn_file_actions_addopen(&actions, 1, standardOutput, outputFlags, 0o600)
    }
    if let standardErrorDescriptor {
        posix_spawn_file_actions_adddup2(&actions, standardErrorDescriptor, 2)
    } else if let standardError {
        posix_spawn_file_actions_addopen(&actions, 2, standardError, outputFlags, 0o600)
    } else {
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
    }
    if let directory {
        // After the opens above, so that relative input and output paths name the same files as they do here.
        guard changeDirectory(to: directory, in: &actions) else { throw SpawnError(code: ENOSYS, executable: executable) }
    }

    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var empty = sigset_t()
    sigemptyset(&empty)
    posix_spawnattr_setsigmask(&attributes, &empty)
    var defaults = sigset_t()
    sigemptyset(&defaults)
    for signal in [SIGINT, SIGTERM, SIGALRM, SIGPIPE, SIGHUP] { sigaddset(&defaults, signal) }
    posix_spawnattr_setsigdefault(&attributes, &defaults)
    var flags = Int32(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF)
    #if canImport(Darwin)
    flags |= Int32(POSIX_SPAWN_CLOEXEC_DEFAULT)
    #else
    closeDescriptors(from: 3, in: &actions)
    #endif
    posix_spawnattr_setflags(&attributes, Int16(flags))

    let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
    defer { for pointer in argv { free(pointer) } }
    var envp: [UnsafeMutablePointer<CChar>?]?
    if let environment {
        envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
    }
    defer { for pointer in envp ?? [] { free(pointer) } }

    var pid: pid_t = 0
    let rc: Int32
    if var envp {
        rc = posix_spawn(&pid, executable, &actions, &attributes, argv, &envp)
    } else {
        rc = posix_spawn(&pid, executable, &actions, &attributes, argv, environ)
    }
    guard rc == 0 else { throw SpawnError(code: rc, executable: executable) }
    return pid
}

#if !canImport(Darwin)
/// `posix_spawn_file_actions_addclosefrom_np` (glibc 2.34 and later), looked up at run time: Swift's `Glibc`
/// module is built without `_GNU_SOURCE`, which the declaration needs.
private typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
private let addCloseFrom: AddCloseFrom? = {
    guard let symbol = dlsym(nil, "posix_spawn_file_actions_addclosefrom_np") else { return nil }
    return unsafeBitCast(symbol, to: AddCloseFrom.self)
}()

/// Adds actions that close every descriptor from `lowest` on in the child.
private func closeDescriptors(from lowest: Int32, in actions: inout posix_spawn_file_actions_t) {
    if let addCloseFrom, addCloseFrom(&actions, lowest) == 0 { return }
    // An older C library: close what is open now. A descriptor opened by another thread after this list
    // is taken can still leak, as with Foundation's own emulation of POSIX_SPAWN_CLOEXEC_DEFAULT.
    guard let directory = opendir("/proc/self/fd") else { return }
    defer { closedir(directory) }
    let own = dirfd(directory)
    while let entry = readdir(directory) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        if let fd = Int32(name), fd >= lowest, fd != own {
            posix_spawn_file_actions_addclose(&actions, fd)
        }
    }
}
#endif

/// Adds an action that changes the child's working directory; false when the C library has none.
private func changeDirectory(to directory: String, in actions: inout posix_spawn_file_actions_t) -> Bool {
    #if canImport(Darwin)
    return posix_spawn_file_actions_addchdir_np(&actions, directory) == 0
    #else
    guard let addChdir else { return false }
    return addChdir(&actions, directory) == 0
    #endif
}

#if !canImport(Darwin)
/// `posix_spawn_file_actions_addchdir_np` (glibc 2.29 and later), looked up at run time for the same reason as
/// `addCloseFrom`.
private typealias AddChdir = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, UnsafePointer<CChar>) -> Int32
private let addChdir: AddChdir? = {
    guard let symbol = dlsym(nil, "posix_spawn_file_actions_addchdir_np") else { return nil }
    return unsafeBitCast(symbol, to: AddChdir.self)
}()
#endif
