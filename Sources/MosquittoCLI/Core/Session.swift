#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CMosquitto

/// What the three tools share: the configuration, the program name, the libmosquitto handle and the CONNACK.
///
/// The tools drive libmosquitto directly on the main thread, as mosquitto's own clients do: the callbacks run in
/// the order libmosquitto calls them, between the `-d` log lines that go with them, so the output is the same.
class Session {
    let config: ClientConfig
    /// The name the program was invoked as (`argv[0]`'s last component).
    let name: CStr
    var mosq: OpaquePointer?
    var connackReceived = false
    var connackResult: Int32 = 0

    init(kind: ClientKind, defaultName: String) {
        config = ClientConfig(kind: kind)
        name = programName(CommandLine.unsafeArgv[0].map { UnsafePointer($0) }, default: defaultName)
    }

    /// The pointer libmosquitto hands back to the callbacks.
    var userdata: UnsafeMutableRawPointer { Unmanaged.passUnretained(self).toOpaque() }

    /// Reads the options; on `--help`, `--version` or an error, prints what mosquitto prints and exits 1.
    func loadOptions(usage: () -> Void) {
        mosquitto_lib_init()
        var argv: [CStr] = []
        for k in 0..<Int(CommandLine.argc) { argv.append(CommandLine.unsafeArgv[k]!) }
        switch config.load(argv) {
        case .ok:
            if !config.resolvePassword() { usageHintAndExit() }
        case .help:
            usage()
            exit(1)
        case .version:
            var major: Int32 = 0, minor: Int32 = 0, revision: Int32 = 0
            mosquitto_lib_version(&major, &minor, &revision)
            outPrintf("%s version %s running on libmosquitto %d.%d.%d.\n", name, staticC(toolsVersion), major, minor, revision)
            exit(1)
        case .error:
            usageHintAndExit()
        }
    }

    func usageHintAndExit() -> Never {
        errorPrintf("\nUse '%s --help' to see usage.\n", name)
        exit(1)
    }

    /// Creates the handle (`mosquitto_new`), or exits 1 with mosquitto's message.
    func createHandle(invalidIDMessage: StaticString) -> OpaquePointer {
        config.generateClientID()
        guard let m = mosquitto_new(config.id, config.cleanSession, userdata) else {
            switch errno {
            case ENOMEM: config.errPrintf("Error: Out of memory.\n")
            case EINVAL: config.errPrintf("%s", staticC(invalidIDMessage))
            default: break
            }
            exit(1)
        }
        mosq = m
        return m
    }

    /// `-d` prints libmosquitto's log; with TLS the log is also read (silently) for the reason of a failure.
    func installLogCallback(_ m: OpaquePointer) {
        if config.debug || config.usesTLS { mosquitto_log_callback_set(m, logCallback) }
    }

    /// Reads all of standard input (`-s`); false after printing mosquitto's errors.
    func loadStandardInput() -> Bool {
        config.publishMode = .stdinFile
        var data: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(0, $0.baseAddress, 65536) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            data.append(contentsOf: chunk[0..<n])
        }
        if data.count > maximumPayload {
            config.errPrintf("Error: Message length must be less than %u bytes.\n\n", UInt32(maximumPayload))
            return false
        }
        if data.isEmpty {
            config.errPrintf("Error: Zero length input.\n")
            return false
        }
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: data.count, alignment: 1)
        data.withUnsafeBytes { buffer.copyMemory(from: $0.baseAddress!, byteCount: data.count) }
        config.message = buffer
        config.messageLength = Int32(data.count)
        return true
    }

    /// Reads the whole `-f` file; false after printing the system's reason.
    func loadFile(_ path: CStr) -> Bool {
        config.publishMode = .file
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        var info = stat()
        if fd < 0 || fstat(fd, &info) != 0 || (info.st_mode & S_IFMT) == S_IFDIR {
            if fd >= 0 {
                if (info.st_mode & S_IFMT) == S_IFDIR { errno = EISDIR }
                let saved = errno
                close(fd)
                errno = saved
            }
            config.errPrintf("Error: Unable to read file \"%s\": %s.\n", path, strerror(errno))
            return false
        }
        defer { close(fd) }
        var data: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, 65536) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 {
                config.errPrintf("Error: Unable to read file \"%s\": %s.\n", path, strerror(errno))
                return false
            }
            if n == 0 { break }
            data.append(contentsOf: chunk[0..<n])
            if data.count > maximumPayload { break }
        }
        if data.count > maximumPayload {
            config.errPrintf("Error: File must be less than %u bytes.\n\n", UInt32(maximumPayload))
            return false
        }
        if data.isEmpty {
            config.message = nil
            config.messageLength = 0
            return true
        }
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: data.count, alignment: 1)
        data.withUnsafeBytes { buffer.copyMemory(from: $0.baseAddress!, byteCount: data.count) }
        config.message = buffer
        config.messageLength = Int32(data.count)
        return true
    }
}

/// The version the tools report: they follow mosquitto 2.1.2's clients.
let toolsVersion: StaticString = "2.1.2"

/// The entry points of `mqtt-pub`, `mqtt-sub` and `mqtt-rr`.
package enum MosquittoTools {
    /// `mqtt-pub`: never returns.
    package static func pub() -> Never { finishAndExit(PubSession().run()) }
    /// `mqtt-sub`: never returns.
    package static func sub() -> Never { finishAndExit(SubSession().run()) }
    /// `mqtt-rr`: never returns.
    package static func rr() -> Never { finishAndExit(RRSession().run()) }
}

/// Exits with `status` once a WebSocket tunnel (`--ws`) delivered what libmosquitto wrote last.
func finishAndExit(_ status: Int32) -> Never {
    WebSocketConnection.finish()
    exit(status)
}
