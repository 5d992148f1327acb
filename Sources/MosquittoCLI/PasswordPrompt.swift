#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Reads a password from the controlling terminal with echo turned off.
enum PasswordPrompt {
    /// Prompts on `/dev/tty` and reads one line.
    /// - Throws: ``CLIError`` when there is no terminal (for example under cron or in a pipe without a tty).
    static func read(prompt: String) throws -> String {
        let fd = open("/dev/tty", O_RDWR)
        guard fd >= 0 else {
            throw CLIError.usage("Error: No terminal to ask for the password on; use --password-file or --password-env.")
        }
        defer { close(fd) }
        var old = termios()
        let isTTY = tcgetattr(fd, &old) == 0
        if isTTY {
            var quiet = old
            quiet.c_lflag &= ~tcflag_t(ECHO)
            _ = tcsetattr(fd, TCSAFLUSH, &quiet)
        }
        defer {
            if isTTY {
                _ = tcsetattr(fd, TCSAFLUSH, &old)
                _ = write(fd, "\n", 1)
            }
        }
        _ = prompt.withCString { write(fd, $0, strlen($0)) }
        var bytes: [UInt8] = []
        var c: UInt8 = 0
        while readByte(fd, &c) == 1 {
            if c == UInt8(ascii: "\n") { break }
            bytes.append(c)
        }
        if bytes.last == UInt8(ascii: "\r") { bytes.removeLast() }
        return String(decoding: bytes, as: UTF8.self)
    }
}

private func readByte(_ fd: Int32, _ c: inout UInt8) -> Int {
    read(fd, &c, 1)
}
