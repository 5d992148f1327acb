#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CMosquitto

// The C-level helpers of the command-line tools: standard streams, printf, and C string handling.
//
// The tools print through C's stdio, like mosquitto's clients: the same buffering (line-buffered on a terminal,
// block-buffered otherwise), the same flushes, and printf's own formatting of widths, precisions and floats, so
// that what reaches a file or a pipe is byte for byte, and interleaved with standard error, what mosquitto's
// clients write.

/// A C string owned for the life of the process (command-line arguments, options-file words, copies).
typealias CStr = UnsafeMutablePointer<CChar>

/// glibc's `stdout` and `stderr` (Swift 6 does not let code read the C variables directly); ``MessageRendering``
/// points them at memory streams while it renders.
nonisolated(unsafe) var cStdout: UnsafeMutablePointer<FILE> = standardStream("stdout")
nonisolated(unsafe) var cStderr: UnsafeMutablePointer<FILE> = standardStream("stderr")

private func standardStream(_ name: String) -> UnsafeMutablePointer<FILE> {
    guard let address = dlsym(nil, name) else { return fdopen(name == "stdout" ? 1 : 2, "w")! }
    return address.assumingMemoryBound(to: UnsafeMutablePointer<FILE>.self).pointee
}

/// `fprintf(stream, format, …)`.
func cPrintf(_ stream: UnsafeMutablePointer<FILE>, _ format: String, _ arguments: CVarArg...) {
    _ = withVaList(arguments) { vfprintf(stream, format, $0) }
}

/// `fprintf(stderr, …)`: argument errors, printed even with `--quiet`.
func errorPrintf(_ format: String, _ arguments: CVarArg...) {
    _ = withVaList(arguments) { vfprintf(cStderr, format, $0) }
}

/// `printf(…)` on standard output.
func outPrintf(_ format: String, _ arguments: CVarArg...) {
    _ = withVaList(arguments) { vfprintf(cStdout, format, $0) }
}

/// A copy of a Swift string as a C string that lives until the process ends.
func cString(_ s: String) -> CStr {
    s.withCString { strdup($0)! }
}

/// A copy of a C string that lives until the process ends.
func cCopy(_ s: UnsafePointer<CChar>) -> CStr {
    strdup(s)!
}

/// A malloc'd C string holding `bytes` (which hold no NUL).
func cCopy(bytes: [UInt8]) -> CStr {
    (bytes + [0]).withUnsafeBufferPointer { b in
        b.withMemoryRebound(to: CChar.self) { cCopy($0.baseAddress!) }
    }
}

/// `strcmp(a, b) == 0`.
@inline(__always)
func cEqual(_ a: UnsafePointer<CChar>, _ b: StaticString) -> Bool {
    strcmp(a, UnsafeRawPointer(b.utf8Start).assumingMemoryBound(to: CChar.self)) == 0
}

/// The bytes of a C string.
func cBytes(_ s: UnsafePointer<CChar>) -> UnsafeBufferPointer<UInt8> {
    UnsafeBufferPointer(start: UnsafeRawPointer(s).assumingMemoryBound(to: UInt8.self), count: strlen(s))
}

/// The last path component of `argv[0]`: the name a tool was invoked as (`mosquitto_sub` when installed or
/// linked under that name), as Unix tools name themselves in messages.
func programName(_ argv0: UnsafePointer<CChar>?, default fallback: String) -> CStr {
    guard let argv0, argv0.pointee != 0 else { return cString(fallback) }
    if let slash = strrchr(argv0, Int32(UInt8(ascii: "/"))) {
        let rest = slash + 1
        return rest.pointee == 0 ? cString(fallback) : cCopy(rest)
    }
    return cCopy(argv0)
}

/// Writes bytes to standard output (buffered).
@inline(__always)
func outWrite(_ bytes: UnsafeRawPointer?, _ count: Int) {
    if count > 0, let bytes { _ = fwrite(bytes, 1, count, cStdout) }
}

@inline(__always)
func outByte(_ c: UInt8) {
    _ = putc(Int32(c), cStdout)
}

func outString(_ s: UnsafePointer<CChar>) {
    _ = fputs(s, cStdout)
}

func outBytes(_ bytes: [UInt8]) {
    bytes.withUnsafeBytes { outWrite($0.baseAddress, $0.count) }
}

/// A string literal as a C string (literals are stored with their NUL).
func staticC(_ s: StaticString) -> UnsafePointer<CChar> {
    UnsafeRawPointer(s.utf8Start).assumingMemoryBound(to: CChar.self)
}
