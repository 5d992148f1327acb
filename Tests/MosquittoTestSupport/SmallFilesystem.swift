import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Whether the tests run as root (CI does): mounting a small filesystem needs it.
package let isRoot = getuid() == 0

/// Mounts a tmpfs of `size` at `path` for the duration of `body`, to fill a disk for real (root only: the tests
/// using it are enabled as root, which CI is).
package func withSmallFilesystem<T>(at path: String, size: String, _ body: () async throws -> T) async throws -> T {
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    func run(_ arguments: [String]) throws -> Int32 {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/" + arguments[0])
        p.arguments = Array(arguments.dropFirst())
        try p.run()
        p.waitUntilExit()
        return p.terminationStatus
    }
    let status = try run(["mount", "-t", "tmpfs", "-o", "size=\(size),mode=0700", "tmpfs", path])
    guard status == 0 else { throw SmallFilesystemError(description: "mount -t tmpfs failed (exit \(status))") }
    do {
        let r = try await body()
        _ = try run(["umount", "-l", path])
        return r
    } catch {
        _ = try? run(["umount", "-l", path])
        throw error
    }
}

/// `mount` failed.
package struct SmallFilesystemError: Error, CustomStringConvertible {
    package var description: String
}
