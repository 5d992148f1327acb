#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CMosquitto
import MQTTURLParser

/// Which tool is reading its options (some options belong to one tool only).
package enum ClientKind: Sendable {
    case pub, sub, rr

    /// The mosquitto client this tool stands in for; also the name of its options file.
    var mosquittoName: String {
        switch self {
        case .pub: return "mosquitto_pub"
        case .sub: return "mosquitto_sub"
        case .rr: return "mosquitto_rr"
        }
    }
}

/// How `mqtt-pub` and `mqtt-rr` get their payload.
enum PublishMode {
    case none, command, stdinLine, stdinFile, file, null
}

/// Everything the command line and the options file say, as mosquitto's `struct mosq_config`.
///
/// Strings are C strings: arguments are bytes, not Unicode, and reach libmosquitto as they were given.
final class ClientConfig {
    let kind: ClientKind
    var id: CStr?
    var idPrefix: CStr?
    var protocolVersion: Int32
    var keepalive: Int32 = 60
    var host: CStr?
    /// -1: not given (1883, or 8883 with --cafile/--capath/--psk); 0 with --unix.
    var port: Int32 = -1
    var qos: Int32 = 0
    var retain = false
    var publishMode = PublishMode.none
    var fileInput: CStr?
    var message: UnsafeMutableRawPointer?
    var messageLength: Int32 = 0
    var topic: CStr?
    var bindAddress: CStr?
    var repeatCount: Int32 = 1
    var repeatDelay = timeval(tv_sec: 0, tv_usec: 0)
    var debug = false
    var quiet = false
    var maxInflight: UInt32 = 20
    var username: CStr?
    var password: CStr?
    var willTopic: CStr?
    var willPayload: CStr?
    var willPayloadLength: Int32 = 0
    var willQoS: Int32 = 0
    var willRetain = false
    var caFile: CStr?
    var caPath: CStr?
    var certFile: CStr?
    var keyFile: CStr?
    var ciphers: CStr?
    var insecure = false
    var tlsALPN: CStr?
    var tlsVersion: CStr?
    var tlsEngine: CStr?
    var tlsEngineKeyPasswordSHA1: CStr?
    var keyForm: CStr?
    var tlsUseOSCerts = false
    var tlsKeylog: CStr?
    var psk: CStr?
    var pskIdentity: CStr?
    var cleanSession = true
    var topics: [CStr] = []
    var exitAfterSubscribe = false
    var noRetain = false
    var retainedOnly = false
    var removeRetained = false
    var filterOuts: [CStr] = []
    var unsubscribeTopics: [CStr] = []
    var verbose = false
    var endOfLine = true
    var messageCount: Int32 = 0
    var format: CStr?
    var pretty = false
    var timeout: UInt32 = 0
    var subscribeOptions: Int32 = 0
    /// -1: not given.
    var sessionExpiryInterval: Int = -1
    var randomFilter: Int32 = 10000
    var webSockets = false
    var socksHost: CStr?
    var socksPort: Int32 = 0
    var socksUsername: CStr?
    var socksPassword: CStr?
    var connectProperties: OpaquePointer?
    var publishProperties: OpaquePointer?
    var subscribeProperties: OpaquePointer?
    var unsubscribeProperties: OpaquePointer?
    var disconnectProperties: OpaquePointer?
    var willProperties: OpaquePointer?
    var responseTopic: CStr?
    var optionsFile: CStr?
    var haveTopicAlias = false
    var tcpNoDelay = false
    var noTLS = false
    var messageRate = false
    var measureLatency = false
    var watch = false
    // This toolkit's additions.
    var passwordFile: CStr?
    var passwordEnvironment: CStr?
    var passwordPrompt = false
    var passwordSources = 0
    var jsonLines = false
    var noReconnect = false
    /// `--outbox DIR` (mqtt-pub): a durable outbox every message is stored in before it is sent.
    var outboxDirectory: String?
    /// `--drain` (mqtt-pub, with `--outbox`): send what the outbox holds, then exit.
    var drainOutbox = false
    var payloadDecode: PayloadCoding.Decode?
    var encodeMessagePack = false

    init(kind: ClientKind) {
        self.kind = kind
        if kind == .rr {
            protocolVersion = MQTT_PROTOCOL_V5
            messageCount = 1
        } else {
            protocolVersion = MQTT_PROTOCOL_V311
        }
    }

    var isV5: Bool { protocolVersion == MQTT_PROTOCOL_V5 }
}

/// What reading the options ended with.
enum ConfigResult: Equatable {
    case ok
    /// An error, already printed; the caller adds the `--help` hint.
    case error
    case help
    case version
}

/// The largest MQTT payload.
let maximumPayload = 268_435_455

extension ClientConfig {
    /// mosquitto's `client_config_load`: the options file (`-o`, or `$XDG_CONFIG_HOME/mosquitto_xxx`, or
    /// `~/.config/mosquitto_xxx`), then the command line, then the checks that need everything.
    func load(_ argv: [CStr]) -> ConfigResult {
        // -o: the options file given on the command line replaces the default one.
        var i = 1
        while i < argv.count {
            if cEqual(argv[i], "-o") {
                if optionsFile != nil {
                    errorPrintf("Error: Duplicate -o argument given.\n\n")
                    return .error
                }
                if i == argv.count - 1 {
                    errorPrintf("Error: -o argument given but no options file specified.\n\n")
                    return .error
                }
                optionsFile = argv[i + 1]
            }
            i += 1
        }
        var path: CStr?
        if let optionsFile {
            path = optionsFile
        } else if let xdg = getenv("XDG_CONFIG_HOME") {
            path = cString(String(cString: xdg) + "/" + kind.mosquittoName)
        } else if let home = getenv("HOME") {
            path = cString(String(cString: home) + "/.config/" + kind.mosquittoName)
        }
        if let path, let file = fopen(path, "rt") {
            defer { fclose(file) }
            let size: Int32 = 1024
            let line = UnsafeMutablePointer<CChar>.allocate(capacity: Int(size))
            defer { line.deallocate() }
            while fgets(line, size, file) != nil {
                if line[0] == CChar(UInt8(ascii: "#")) { continue }
                var n = strlen(line)
                while n > 0 && (line[n - 1] == 10 || line[n - 1] == 13) {
                    n -= 1
                    line[n] = 0
                }
                // One option per line: the word before the first space, and the rest of the line as one argument.
                let copy = cCopy(line)
                guard let option = strtok(copy, " ") else { continue }
                var words: [CStr] = [argv[0], option]
                if let rest = strtok(nil, "") { words.append(rest) }
                let r = processArguments(words)
                if r != .ok { return r }
            }
        }

        let r = processArguments(argv)
        if r != .ok { return r }
        return checkCombinations()
    }

    /// The checks mosquitto makes once every option is known.
    private func checkCombinations() -> ConfigResult {
        if willPayload != nil && willTopic == nil {
            errorPrintf("Error: Will payload given, but no will topic given.\n")
            return .error
        }
        if willRetain && willTopic == nil {
            errorPrintf("Error: Will retain given, but no will topic given.\n")
            return .error
        }
        if (certFile != nil) != (keyFile != nil) {
            errorPrintf("Error: Both certfile and keyfile must be provided if one of them is set.\n")
            return .error
        }
        if keyForm != nil && keyFile == nil {
            errorPrintf("Error: If keyform is set, keyfile must be also specified.\n")
            return .error
        }
        if tlsEngineKeyPasswordSHA1 != nil && (keyForm == nil || tlsEngine == nil) {
            errorPrintf("Error: when using tls-engine-kpass-sha1, both tls-engine and keyform must also be provided.\n")
            return .error
        }
        if (caFile != nil || caPath != nil) && psk != nil {
            errorPrintf("Error: Only one of --psk or --cafile/--capath may be used at once.\n")
            return .error
        }
        if psk != nil && pskIdentity == nil {
            errorPrintf("Error: --psk-identity required if --psk used.\n")
            return .error
        }
        if passwordSources > 1 {
            errorPrintf("Error: Give the password one way only: -P, --password-file, --password-env or --password-prompt.\n")
            return .error
        }
        if isV5 {
            if !cleanSession && sessionExpiryInterval == -1 {
                // -c without -x: a session that never expires.
                sessionExpiryInterval = Int(UInt32.max)
            }
            if sessionExpiryInterval > 0 {
                if sessionExpiryInterval == Int(UInt32.max) && (idPrefix != nil || id == nil) {
                    errorPrintf("Error: You must provide a client id if you are using an infinite session expiry interval.\n")
                    return .error
                }
                if mosquitto_property_add_int32(&connectProperties, Int32(MQTT_PROP_SESSION_EXPIRY_INTERVAL.rawValue),
                                                UInt32(sessionExpiryInterval)) != 0 {
                    errorPrintf("Error adding property session-expiry-interval\n")
                }
            }
        } else if !cleanSession && (idPrefix != nil || id == nil) {
            errorPrintf("Error: You must provide a client id if you are using the -c option.\n")
            return .error
        }
        if kind == .sub && topics.isEmpty && unsubscribeTopics.isEmpty {
            errorPrintf("Error: You must specify a topic to subscribe to (-t) or unsubscribe from (-U).\n")
            return .error
        }
        if host == nil { host = cString("localhost") }
        // mosquitto 2.0.11 checks each list once more (a duplicate property, for example) before connecting.
        let lists: [(Int32, OpaquePointer?, StaticString)] = [
            (Int32(CMD_CONNECT), connectProperties, "CONNECT"), (Int32(CMD_PUBLISH), publishProperties, "PUBLISH"),
            (Int32(CMD_SUBSCRIBE), subscribeProperties, "SUBSCRIBE"), (Int32(CMD_UNSUBSCRIBE), unsubscribeProperties, "UNSUBSCRIBE"),
            (Int32(CMD_DISCONNECT), disconnectProperties, "DISCONNECT"), (Int32(CMD_WILL), willProperties, "Will"),
        ]
        for (command, list, name) in lists {
            let rc = mosquitto_property_check_all(command, list)
            if rc != 0 {
                errPrintf("Error in %s properties: %s\n", UnsafeRawPointer(name.utf8Start).assumingMemoryBound(to: CChar.self), mosquitto_strerror(rc))
                return .error
            }
        }
        return .ok
    }

    /// `err_printf`: a runtime error, silenced by `--quiet`.
    func errPrintf(_ format: String, _ arguments: CVarArg...) {
        if quiet { return }
        _ = withVaList(arguments) { vfprintf(cStderr, format, $0) }
    }

    /// Adds a topic given with -t, -e or in a -L URL.
    private func addTopic(_ topic: CStr, response: Bool, argument: StaticString) -> Bool {
        if mosquitto_validate_utf8(topic, Int32(strlen(topic))) != 0 {
            errorPrintf("Error: Malformed UTF-8 in %s argument.\n\n", staticC(argument))
            return false
        }
        if response {
            if mosquitto_pub_topic_check(topic) == MOSQ_ERR_INVAL.rawValue {
                errorPrintf("Error: Invalid response topic '%s', does it contain '+' or '#'?\n", topic)
                return false
            }
            responseTopic = cCopy(topic)
        } else if kind == .pub || kind == .rr {
            if mosquitto_pub_topic_check(topic) == MOSQ_ERR_INVAL.rawValue {
                errorPrintf("Error: Invalid publish topic '%s', does it contain '+' or '#'?\n", topic)
                return false
            }
            self.topic = cCopy(topic)
        } else {
            if mosquitto_sub_topic_check(topic) == MOSQ_ERR_INVAL.rawValue {
                errorPrintf("Error: Invalid subscription topic '%s', are all '+' and '#' wildcards correct?\n", topic)
                return false
            }
            topics.append(cCopy(topic))
        }
        return true
    }

    /// Sets the payload source, refusing a second one.
    private func setMode(_ mode: PublishMode) -> Bool {
        if publishMode != .none {
            errorPrintf("Error: Only one type of message can be sent at once.\n\n")
            return false
        }
        publishMode = mode
        return true
    }

    /// mosquitto's `client_config_line_proc`: one pass over a command line (`argv[0]` is skipped) or over one
    /// line of the options file.
    func processArguments(_ argv: [CStr]) -> ConfigResult {
        let argc = argv.count
        var i = 1
        // The value of the option at `i`, or nil after printing "<option> argument given but no <what> specified".
        func value(_ what: StaticString, option: StaticString? = nil) -> CStr? {
            if i == argc - 1 {
                if let option {
                    errorPrintf("Error: %s argument given but no %s specified.\n\n", staticC(option), staticC(what))
                } else {
                    errorPrintf("Error: %s argument given but no %s specified.\n\n", argv[i], staticC(what))
                }
                return nil
            }
            return argv[i + 1]
        }
        func unknown() -> ConfigResult {
            errorPrintf("Error: Unknown option '%s'.\n", argv[i])
            return .error
        }
        func only(_ kinds: ClientKind...) -> Bool { kinds.contains(kind) }

        while i < argc {
            let a = argv[i]
            if cEqual(a, "-A") {
                guard let v = value("address") else { return .error }
                bindAddress = v
                i += 1
            } else if cEqual(a, "--cafile") {
                guard let v = value("file") else { return .error }
                caFile = v
                i += 1
            } else if cEqual(a, "--capath") {
                guard let v = value("directory") else { return .error }
                caPath = v
                i += 1
            } else if cEqual(a, "--cert") {
                guard let v = value("file") else { return .error }
                certFile = v
                i += 1
            } else if cEqual(a, "--ciphers") {
                guard let v = value("ciphers") else { return .error }
                ciphers = v
                i += 1
            } else if cEqual(a, "-C") {
                if !only(.sub) { return unknown() }
                guard let v = value("count") else { return .error }
                messageCount = atoi(v)
                if messageCount < 1 {
                    errorPrintf("Error: Invalid message count \"%d\".\n\n", messageCount)
                    return .error
                }
                i += 1
            } else if cEqual(a, "-c") || cEqual(a, "--disable-clean-session") {
                cleanSession = false
            } else if cEqual(a, "-d") || cEqual(a, "--debug") {
                debug = true
            } else if cEqual(a, "-D") || cEqual(a, "--property") {
                i += 1
                if !parseProperty(argv, &i) { return .error }
                protocolVersion = MQTT_PROTOCOL_V5
            } else if cEqual(a, "-e") {
                if !only(.rr) { return unknown() }
                guard let v = value("response topic") else { return .error }
                if !addTopic(v, response: true, argument: "-e") { return .error }
                i += 1
            } else if cEqual(a, "-E") {
                if !only(.sub) { return unknown() }
                exitAfterSubscribe = true
            } else if cEqual(a, "-f") || cEqual(a, "--file") {
                if kind == .sub { return unknown() }
                if publishMode != .none {
                    errorPrintf("Error: Only one type of message can be sent at once.\n\n")
                    return .error
                }
                guard let v = value("file", option: "-f") else { return .error }
                publishMode = .file
                fileInput = v
                i += 1
            } else if cEqual(a, "-F") {
                if kind == .pub { return unknown() }
                guard let v = value("format") else { return .error }
                format = v
                if !MessagePrinter.checkFormat(v) { return .error }
                i += 1
            } else if cEqual(a, "--help") {
                return .help
            } else if cEqual(a, "-h") || cEqual(a, "--host") {
                guard let v = value("host", option: "-h") else { return .error }
                host = v
                i += 1
            } else if cEqual(a, "--insecure") {
                insecure = true
            } else if cEqual(a, "-i") || cEqual(a, "--id") {
                if idPrefix != nil {
                    errorPrintf("Error: -i and -I argument cannot be used together.\n\n")
                    return .error
                }
                guard let v = value("id", option: "-i") else { return .error }
                id = v
                i += 1
            } else if cEqual(a, "-I") || cEqual(a, "--id-prefix") {
                if id != nil {
                    errorPrintf("Error: -i and -I argument cannot be used together.\n\n")
                    return .error
                }
                guard let v = value("id prefix", option: "-I") else { return .error }
                idPrefix = v
                i += 1
            } else if cEqual(a, "-k") || cEqual(a, "--keepalive") {
                guard let v = value("keepalive", option: "-k") else { return .error }
                keepalive = atoi(v)
                if keepalive < 5 || keepalive > 65535 {
                    errorPrintf("Error: Invalid keepalive given, it must be between 5 and 65535 inclusive.\n\n")
                    return .error
                }
                i += 1
            } else if cEqual(a, "--key") {
                guard let v = value("file") else { return .error }
                keyFile = v
                i += 1
            } else if cEqual(a, "--keyform") {
                guard let v = value("keyform") else { return .error }
                keyForm = v
                i += 1
            } else if cEqual(a, "-L") || cEqual(a, "--url") {
                guard let v = value("URL", option: "-L") else { return .error }
                if !parseURL(v) { return .error }
                i += 1
            } else if cEqual(a, "-l") || cEqual(a, "--stdin-line") {
                if !only(.pub) { return unknown() }
                if !setMode(.stdinLine) { return .error }
            } else if cEqual(a, "--latency") {
                if !only(.rr) { return unknown() }
                measureLatency = true
                tcpNoDelay = true
            } else if cEqual(a, "-m") || cEqual(a, "--message") {
                if kind == .sub { return unknown() }
                if publishMode != .none {
                    errorPrintf("Error: Only one type of message can be sent at once.\n\n")
                    return .error
                }
                guard let v = value("message", option: "-m") else { return .error }
                let length = strlen(v)
                if length > maximumPayload {
                    errorPrintf("Error: Message length must be less than %u bytes.\n\n", UInt32(maximumPayload))
                    return .error
                }
                message = UnsafeMutableRawPointer(v)
                messageLength = Int32(length)
                publishMode = .command
                i += 1
            } else if cEqual(a, "-M") {
                if i == argc - 1 {
                    errorPrintf("Error: -M argument given but max_inflight not specified.\n\n")
                    return .error
                }
                let n = atoi(argv[i + 1])
                if n < 1 {
                    errorPrintf("Error: Maximum inflight messages must be greater than 0.\n\n")
                    return .error
                }
                maxInflight = UInt32(n)
                i += 1
            } else if cEqual(a, "--message-rate") {
                if !only(.sub) { return unknown() }
                messageRate = true
            } else if cEqual(a, "--nodelay") {
                tcpNoDelay = true
            } else if cEqual(a, "--no-tls") {
                noTLS = true
            } else if cEqual(a, "-n") || cEqual(a, "--null-message") {
                if kind == .sub { return unknown() }
                if !setMode(.null) { return .error }
            } else if cEqual(a, "-N") {
                if kind == .pub { return unknown() }
                endOfLine = false
            } else if cEqual(a, "-o") {
                i += 1  // read before everything else
            } else if cEqual(a, "-p") || cEqual(a, "--port") {
                guard let v = value("port", option: "-p") else { return .error }
                port = atoi(v)
                if port < 0 || port > 65535 {
                    errorPrintf("Error: Invalid port given: %d\n", port)
                    return .error
                }
                i += 1
            } else if cEqual(a, "--pretty") {
                if kind == .pub { return unknown() }
                pretty = true
            } else if cEqual(a, "-P") || cEqual(a, "--pw") {
                guard let v = value("password", option: "-P") else { return .error }
                password = v
                passwordSources += 1
                i += 1
            } else if cEqual(a, "--password-file") {
                guard let v = value("path") else { return .error }
                passwordFile = v
                passwordSources += 1
                i += 1
            } else if cEqual(a, "--password-env") {
                guard let v = value("variable name") else { return .error }
                passwordEnvironment = v
                passwordSources += 1
                i += 1
            } else if cEqual(a, "--password-prompt") {
                passwordPrompt = true
                passwordSources += 1
            } else if cEqual(a, "--proxy") {
                guard let v = value("proxy url") else { return .error }
                if !parseSOCKSURL(v) { return .error }
                i += 1
            } else if cEqual(a, "--psk") {
                guard let v = value("key") else { return .error }
                psk = v
                i += 1
            } else if cEqual(a, "--psk-identity") {
                guard let v = value("identity") else { return .error }
                pskIdentity = v
                i += 1
            } else if cEqual(a, "-q") || cEqual(a, "--qos") {
                guard let v = value("QoS", option: "-q") else { return .error }
                qos = atoi(v)
                if qos < 0 || qos > 2 {
                    errorPrintf("Error: Invalid QoS given: %d\n", qos)
                    return .error
                }
                i += 1
            } else if cEqual(a, "--quiet") {
                quiet = true
            } else if cEqual(a, "-r") || cEqual(a, "--retain") {
                if !only(.pub) { return unknown() }
                retain = true
            } else if cEqual(a, "-R") {
                if kind == .pub { return unknown() }
                noRetain = true
                subscribeOptions |= Int32(MQTT_SUB_OPT_SEND_RETAIN_NEVER.rawValue)
            } else if cEqual(a, "--random-filter") {
                if !only(.sub) { return unknown() }
                guard let v = value("chance") else { return .error }
                // A percentage, kept in hundredths. (mosquitto multiplies by 10 here, so that its "50" prints
                // one message in 20; the help text and the range check both say a percentage.)
                randomFilter = Int32(100.0 * atof(v))
                if randomFilter > 10000 || randomFilter < 1 {
                    errorPrintf("Error: --random-filter chance must be between 0.1-100.0\n\n")
                    return .error
                }
                i += 1
            } else if cEqual(a, "--remove-retained") {
                if !only(.sub) { return unknown() }
                removeRetained = true
            } else if cEqual(a, "--repeat") {
                if !only(.pub) { return unknown() }
                guard let v = value("count") else { return .error }
                repeatCount = atoi(v)
                if repeatCount < 1 {
                    errorPrintf("Error: --repeat argument must be >0.\n\n")
                    return .error
                }
                i += 1
            } else if cEqual(a, "--repeat-delay") {
                if !only(.pub) { return unknown() }
                guard let v = value("time") else { return .error }
                var f = Float(atof(v))
                if f < 0 {
                    errorPrintf("Error: --repeat-delay argument must be >=0.0.\n\n")
                    return .error
                }
                f *= 1.0e6
                let micros = Int(f)
                repeatDelay = timeval(tv_sec: micros / 1_000_000, tv_usec: micros % 1_000_000)
                i += 1
            } else if cEqual(a, "--retain-as-published") {
                if kind == .pub { return unknown() }
                subscribeOptions |= Int32(MQTT_SUB_OPT_RETAIN_AS_PUBLISHED.rawValue)
            } else if cEqual(a, "--retain-handling") {
                if kind == .pub { return unknown() }
                guard let v = value("option") else { return .error }
                let handling: Int32
                if cEqual(v, "always") {
                    handling = Int32(MQTT_SUB_OPT_SEND_RETAIN_ALWAYS.rawValue)
                } else if cEqual(v, "new") {
                    handling = Int32(MQTT_SUB_OPT_SEND_RETAIN_NEW.rawValue)
                } else if cEqual(v, "never") {
                    handling = Int32(MQTT_SUB_OPT_SEND_RETAIN_NEVER.rawValue)
                } else {
                    errorPrintf("Error: Unknown value '%s' for --retain-handling.\n\n", v)
                    return .error
                }
                subscribeOptions = (subscribeOptions & ~0x30) | handling
                i += 1
            } else if cEqual(a, "--retained-only") {
                if !only(.sub) { return unknown() }
                retainedOnly = true
            } else if cEqual(a, "-s") || cEqual(a, "--stdin-file") {
                if kind == .sub { return unknown() }
                if !setMode(.stdinFile) { return .error }
            } else if cEqual(a, "-t") || cEqual(a, "--topic") {
                guard let v = value("topic", option: "-t") else { return .error }
                if !addTopic(v, response: false, argument: "-t") { return .error }
                i += 1
            } else if cEqual(a, "-T") || cEqual(a, "--filter-out") {
                if !only(.sub) { return unknown() }
                guard let v = value("topic filter", option: "-T") else { return .error }
                if mosquitto_validate_utf8(v, Int32(strlen(v))) != 0 {
                    errorPrintf("Error: Malformed UTF-8 in -T argument.\n\n")
                    return .error
                }
                if mosquitto_sub_topic_check(v) == MOSQ_ERR_INVAL.rawValue {
                    errorPrintf("Error: Invalid filter topic '%s', are all '+' and '#' wildcards correct?\n", v)
                    return .error
                }
                filterOuts.append(v)
                i += 1
            } else if cEqual(a, "--tls-alpn") {
                guard let v = value("protocol") else { return .error }
                tlsALPN = v
                i += 1
            } else if cEqual(a, "--tls-engine") {
                guard let v = value("engine_id") else { return .error }
                tlsEngine = v
                i += 1
            } else if cEqual(a, "--tls-engine-kpass-sha1") {
                guard let v = value("kpass sha1") else { return .error }
                tlsEngineKeyPasswordSHA1 = v
                i += 1
            } else if cEqual(a, "--tls-use-os-certs") {
                tlsUseOSCerts = true
            } else if cEqual(a, "--tls-version") {
                guard let v = value("version") else { return .error }
                tlsVersion = v
                i += 1
            } else if cEqual(a, "--tls-keylog") {
                guard let v = value("file") else { return .error }
                tlsKeylog = v
                i += 1
            } else if cEqual(a, "-U") || cEqual(a, "--unsubscribe") {
                if !only(.sub) { return unknown() }
                guard let v = value("unsubscribe topic", option: "-U") else { return .error }
                if mosquitto_validate_utf8(v, Int32(strlen(v))) != 0 {
                    errorPrintf("Error: Malformed UTF-8 in -U argument.\n\n")
                    return .error
                }
                if mosquitto_sub_topic_check(v) == MOSQ_ERR_INVAL.rawValue {
                    errorPrintf("Error: Invalid unsubscribe topic '%s', are all '+' and '#' wildcards correct?\n", v)
                    return .error
                }
                unsubscribeTopics.append(v)
                i += 1
            } else if cEqual(a, "-u") || cEqual(a, "--username") {
                guard let v = value("username", option: "-u") else { return .error }
                username = v
                i += 1
            } else if cEqual(a, "--unix") {
                guard let v = value("socket path") else { return .error }
                host = v
                port = 0
                i += 1
            } else if cEqual(a, "-V") || cEqual(a, "--protocol-version") {
                guard let v = value("version", option: "--protocol-version") else { return .error }
                if cEqual(v, "mqttv31") || cEqual(v, "31") {
                    protocolVersion = MQTT_PROTOCOL_V31
                } else if cEqual(v, "mqttv311") || cEqual(v, "311") {
                    protocolVersion = MQTT_PROTOCOL_V311
                } else if cEqual(v, "mqttv5") || cEqual(v, "5") {
                    protocolVersion = MQTT_PROTOCOL_V5
                } else {
                    errorPrintf("Error: Invalid protocol version argument given.\n\n")
                    return .error
                }
                i += 1
            } else if cEqual(a, "-v") || cEqual(a, "--verbose") {
                if kind == .pub { return unknown() }
                verbose = true
            } else if cEqual(a, "--version") {
                return .version
            } else if cEqual(a, "-W") {
                if kind == .pub { return unknown() }
                guard let v = value("timeout") else { return .error }
                let n = atoi(v)
                if n < 1 {
                    errorPrintf("Error: Invalid timeout \"%d\".\n\n", n)
                    return .error
                }
                timeout = UInt32(n)
                i += 1
            } else if cEqual(a, "-w") || cEqual(a, "--watch") {
                if !only(.sub) { return unknown() }
                watch = true
            } else if cEqual(a, "--will-payload") {
                guard let v = value("will payload") else { return .error }
                willPayload = v
                willPayloadLength = Int32(strlen(v))
                i += 1
            } else if cEqual(a, "--will-qos") {
                guard let v = value("will QoS") else { return .error }
                willQoS = atoi(v)
                if willQoS < 0 || willQoS > 2 {
                    errorPrintf("Error: Invalid will QoS %d.\n\n", willQoS)
                    return .error
                }
                i += 1
            } else if cEqual(a, "--will-retain") {
                willRetain = true
            } else if cEqual(a, "--will-topic") {
                guard let v = value("will topic") else { return .error }
                if mosquitto_validate_utf8(v, Int32(strlen(v))) != 0 {
                    errorPrintf("Error: Malformed UTF-8 in --will-topic argument.\n\n")
                    return .error
                }
                if mosquitto_pub_topic_check(v) == MOSQ_ERR_INVAL.rawValue {
                    errorPrintf("Error: Invalid will topic '%s', does it contain '+' or '#'?\n", v)
                    return .error
                }
                willTopic = v
                i += 1
            } else if cEqual(a, "--ws") {
                webSockets = true
            } else if cEqual(a, "-x") {
                guard let v = value("session expiry interval", option: "-x") else { return .error }
                if cEqual(v, "∞") {
                    sessionExpiryInterval = Int(UInt32.max)
                } else {
                    var end: CStr?
                    let n = strtol(v, &end, 0)
                    if end == v || end?.pointee != 0 {
                        errorPrintf("Error: session-expiry-interval not a number.\n\n")
                        return .error
                    }
                    if n > Int(UInt32.max) || n < -1 {
                        errorPrintf("Error: session-expiry-interval out of range.\n\n")
                        return .error
                    }
                    sessionExpiryInterval = n == -1 ? Int(UInt32.max) : n
                }
                protocolVersion = MQTT_PROTOCOL_V5
                i += 1
            } else if cEqual(a, "--json") {
                if kind == .pub { return unknown() }
                jsonLines = true
            } else if cEqual(a, "--decode") {
                if kind == .pub { return unknown() }
                guard let v = value("decode") else { return .error }
                if cEqual(v, "msgpack") {
                    payloadDecode = .msgpack
                } else if cEqual(v, "json") {
                    payloadDecode = .json
                } else if cEqual(v, "auto") {
                    payloadDecode = .auto
                } else {
                    errorPrintf("Error: --decode takes msgpack, json or auto.\n\n")
                    return .error
                }
                i += 1
            } else if cEqual(a, "--encode") {
                if !only(.pub) { return unknown() }
                guard let v = value("encode") else { return .error }
                if !cEqual(v, "msgpack") {
                    errorPrintf("Error: --encode takes msgpack.\n\n")
                    return .error
                }
                encodeMessagePack = true
                i += 1
            } else if cEqual(a, "--outbox") {
                if !only(.pub) { return unknown() }
                guard let v = value("outbox") else { return .error }
                outboxDirectory = String(cString: v)
                i += 1
            } else if cEqual(a, "--drain") {
                if !only(.pub) { return unknown() }
                drainOutbox = true
            } else if cEqual(a, "--no-reconnect") {
                if !only(.sub) { return unknown() }
                noReconnect = true
            } else {
                return unknown()
            }
            i += 1
        }
        return .ok
    }

    /// `-L`: `mqtt(s)://[username[:password]@]host[:port]/topic` (and `ws(s)://`, over WebSockets), read by
    /// the parser the library uses too (`MQTTURLComponents` says where it is stricter than mosquitto's).
    private func parseURL(_ argument: CStr) -> Bool {
        let url: MQTTURLComponents
        let bytes = cBytes(argument)
        do {
            url = try MQTTURLComponents(parsing: bytes, requireTopic: true)
        } catch {
            // mosquitto never refuses a host or a port, so a bad topic is what it reports first: do the same.
            if error != .unsupportedScheme && error != .missingTopic, let topic = Self.urlTopic(Array(bytes)),
               !addTopic(cCopy(bytes: topic), response: false, argument: "-L topic") {
                return false
            }
            switch error {
            case .unsupportedScheme: errorPrintf("Error: Unsupported URL scheme.\n\n")
            case .missingTopic: errorPrintf("Error: Invalid URL for -L argument specified - topic missing.\n")
            case .missingHost: errorPrintf("Error: Invalid URL for -L argument specified - host missing.\n")
            case .invalidIPv6Literal:
                errorPrintf("Error: Invalid URL for -L argument specified - write an IPv6 address in brackets, as in mqtt://[::1]:1883/topic.\n")
            case .invalidPort: errorPrintf("Error: Invalid URL for -L argument specified - the port must be a number from 1 to 65535.\n")
            }
            return false
        }
        port = Int32(url.port)
        if url.scheme.isTLS { tlsUseOSCerts = true }
        if url.scheme.isWebSockets { webSockets = true }
        if !addTopic(cCopy(bytes: url.topic ?? []), response: false, argument: "-L topic") { return false }
        if let user = url.username { username = cCopy(bytes: user) }
        if let pass = url.password { password = cCopy(bytes: pass) }
        host = cCopy(bytes: url.host)
        return true
    }

    /// The topic of a `-L` URL (everything after the first `/` past `scheme://`), for reporting a bad topic before
    /// a bad host or port.
    private static func urlTopic(_ url: [UInt8]) -> [UInt8]? {
        let separator = Array("://".utf8)
        guard let start = url.indices.first(where: { url[$0...].starts(with: separator) }) else { return nil }
        let rest = url[(start + separator.count)...]
        guard let slash = rest.firstIndex(of: UInt8(ascii: "/")) else { return nil }
        return Array(rest[(slash + 1)...])
    }

    /// `-D command property value` (or `-D command user-property key value`); `i` points at the command and is
    /// left at the last word used. Properties are kept in the order given, as mosquitto sends them.
    private func parseProperty(_ argv: [CStr], _ i: inout Int) -> Bool {
        let argc = argv.count
        if i + 2 > argc - 1 {
            errorPrintf("Error: --property argument given but not enough arguments specified.\n\n")
            return false
        }
        let commandName = argv[i]
        var command: Int32 = 0
        if mosquitto_string_to_command(commandName, &command) != 0 {
            errorPrintf("Error: Invalid command %s given in --property argument.\n\n", commandName)
            return false
        }
        let propertyName = argv[i + 1]
        var identifier: Int32 = 0
        var type: Int32 = 0
        if mosquitto_string_to_property_info(propertyName, &identifier, &type) != 0 {
            errorPrintf("Error: Invalid property name %s given in --property argument.\n\n", propertyName)
            return false
        }
        if mosquitto_property_check_command(command, identifier) != 0 {
            errorPrintf("Error: %s property not allowed for %s in --property argument.\n\n", propertyName, commandName)
            return false
        }
        var key: CStr?
        let value: CStr
        if identifier == Int32(MQTT_PROP_USER_PROPERTY.rawValue) {
            if i + 3 > argc - 1 {
                errorPrintf("Error: --property argument given but not enough arguments specified.\n\n")
                return false
            }
            key = argv[i + 2]
            value = argv[i + 3]
            i += 3
        } else {
            value = argv[i + 2]
            i += 2
        }
        func notSupported() -> Bool {
            errorPrintf("Error: %s property not supported for %s in --property argument.\n\n", propertyName, commandName)
            return false
        }
        let add: (inout OpaquePointer?) -> Int32
        let range = { (n: Int, max: Int) -> Bool in
            if n < 0 || n > max {
                errorPrintf("Error: Property value (%ld) out of range for property %s.\n\n", n, propertyName)
                return false
            }
            return true
        }
        switch type {
        case Int32(MQTT_PROP_TYPE_BYTE.rawValue):
            let n = atol(value)
            guard range(n, 255) else { return false }
            add = { mosquitto_property_add_byte(&$0, identifier, UInt8(n)) }
        case Int32(MQTT_PROP_TYPE_INT16.rawValue):
            let n = atol(value)
            guard range(n, 65535) else { return false }
            add = { mosquitto_property_add_int16(&$0, identifier, UInt16(n)) }
        case Int32(MQTT_PROP_TYPE_INT32.rawValue):
            let n = atol(value)
            guard range(n, Int(UInt32.max)) else { return false }
            add = { mosquitto_property_add_int32(&$0, identifier, UInt32(n)) }
        case Int32(MQTT_PROP_TYPE_VARINT.rawValue):
            let n = atol(value)
            guard range(n, Int(UInt32.max)) else { return false }
            add = { mosquitto_property_add_varint(&$0, identifier, UInt32(n)) }
        case Int32(MQTT_PROP_TYPE_BINARY.rawValue):
            let length = strlen(value)
            if length > 65535 {
                errorPrintf("Error: Property value too long for property %s.\n\n", propertyName)
                return false
            }
            add = { mosquitto_property_add_binary(&$0, identifier, value, UInt16(length)) }
        case Int32(MQTT_PROP_TYPE_STRING.rawValue):
            add = { mosquitto_property_add_string(&$0, identifier, value) }
        case Int32(MQTT_PROP_TYPE_STRING_PAIR.rawValue):
            add = { mosquitto_property_add_string_pair(&$0, identifier, key, value) }
        default:
            return false
        }
        let rc: Int32
        switch command {
        case Int32(CMD_CONNECT): rc = add(&connectProperties)
        case Int32(CMD_PUBLISH):
            if identifier == Int32(MQTT_PROP_TOPIC_ALIAS.rawValue) { haveTopicAlias = true }
            if identifier == Int32(MQTT_PROP_SUBSCRIPTION_IDENTIFIER.rawValue) { return notSupported() }
            rc = add(&publishProperties)
        case Int32(CMD_SUBSCRIBE): rc = add(&subscribeProperties)
        case Int32(CMD_UNSUBSCRIBE): rc = add(&unsubscribeProperties)
        case Int32(CMD_DISCONNECT): rc = add(&disconnectProperties)
        case Int32(CMD_WILL): rc = add(&willProperties)
        case Int32(CMD_AUTH), Int32(CMD_PUBACK), Int32(CMD_PUBREC), Int32(CMD_PUBREL), Int32(CMD_PUBCOMP),
             Int32(CMD_SUBACK), Int32(CMD_UNSUBACK):
            return notSupported()
        default:
            return false
        }
        if rc != 0 {
            errorPrintf("Error adding property %s %d\n", propertyName, type)
            return false
        }
        return true
    }

    /// `--proxy socks5h://[username[:password]@]host[:port]`, read as mosquitto reads it.
    private func parseSOCKSURL(_ url: CStr) -> Bool {
        let scheme = "socks5h://"
        guard strncmp(url, scheme, scheme.utf8.count) == 0 else {
            errPrintf("Error: Unsupported proxy protocol: %s\n", url)
            return false
        }
        let s = Array(cBytes(url).dropFirst(scheme.utf8.count))
        var username: [UInt8]?
        var password: [UInt8]?
        var host: [UInt8]?
        var portText: [UInt8]?
        var start = 0
        var rest = s
        if let at = s.firstIndex(of: UInt8(ascii: "@")) {
            var k = 0
            while k < at {
                if s[k] == UInt8(ascii: ":") {
                    if k == start { return false }
                    if username != nil {
                        errPrintf("Error: Username cannot contain ':'.\n")
                        return false
                    }
                    username = Array(s[start..<k])
                    start = k + 1
                }
                k += 1
            }
            if username != nil {
                password = Array(s[start..<at])
            } else {
                username = Array(s[start..<at])
            }
            rest = Array(s[(at + 1)...])
        }
        start = 0
        var inIPv6 = false
        var k = 0
        while k < rest.count {
            let c = rest[k]
            if c == UInt8(ascii: "[") {
                if host != nil {
                    errPrintf("Error: Duplicate IPv6 address.\n")
                    return false
                }
                inIPv6 = true
                start = k + 1
            } else if c == UInt8(ascii: "]") {
                if host != nil {
                    errPrintf("Error: Duplicate IPv6 address.\n")
                    return false
                }
                inIPv6 = false
                host = Array(rest[start..<k])
                if k + 1 < rest.count && rest[k + 1] == UInt8(ascii: ":") {
                    start = k + 2
                    k += 1
                } else {
                    start = k + 1
                }
            } else if c == UInt8(ascii: ":") && !inIPv6 {
                if host != nil { return false }
                host = Array(rest[start..<k])
                start = k + 1
            }
            k += 1
        }
        if rest.count > start {
            if host != nil {
                portText = Array(rest[start...])
            } else {
                host = Array(rest[start...])
            }
        }
        guard let host else {
            errPrintf("Error: Invalid proxy.\n")
            return false
        }
        guard let user = Self.urlDecode(username), let pass = Self.urlDecode(password) else { return false }
        var portNumber: Int32 = 1080
        if let portText {
            portNumber = atoi(cString(String(decoding: portText, as: UTF8.self)))
            if portNumber < 1 || portNumber > 65535 {
                errPrintf("Error: Invalid proxy port %d\n", portNumber)
                return false
            }
        }
        socksUsername = user.map(Self.cStringFromBytes)
        socksPassword = pass.map(Self.cStringFromBytes)
        socksHost = Self.cStringFromBytes(host)
        socksPort = portNumber
        return true
    }

    /// `%25` → `%`, `%3A`/`%3a` → `:`, `%40` → `@`; anything else after `%` is an error (nil).
    private static func urlDecode(_ bytes: [UInt8]?) -> [UInt8]?? {
        guard let bytes else { return .some(nil) }
        var out: [UInt8] = []
        var k = 0
        while k < bytes.count {
            if bytes[k] == UInt8(ascii: "%") {
                guard k + 2 < bytes.count else { return nil }
                let a = bytes[k + 1], b = bytes[k + 2]
                if a == UInt8(ascii: "2") && b == UInt8(ascii: "5") {
                    out.append(UInt8(ascii: "%"))
                } else if a == UInt8(ascii: "3") && (b == UInt8(ascii: "A") || b == UInt8(ascii: "a")) {
                    out.append(UInt8(ascii: ":"))
                } else if a == UInt8(ascii: "4") && b == UInt8(ascii: "0") {
                    out.append(UInt8(ascii: "@"))
                } else {
                    return nil
                }
                k += 3
            } else {
                out.append(bytes[k])
                k += 1
            }
        }
        return .some(out)
    }

    static func cStringFromBytes(_ bytes: [UInt8]) -> CStr {
        let p = UnsafeMutablePointer<CChar>.allocate(capacity: bytes.count + 1)
        for (k, b) in bytes.enumerated() { p[k] = CChar(bitPattern: b) }
        p[bytes.count] = 0
        return p
    }

    /// `--password-file`, `--password-env`, `--password-prompt`: the password, or false after an error.
    func resolvePassword() -> Bool {
        if let passwordFile {
            guard let file = fopen(passwordFile, "r") else {
                errorPrintf("Error: Unable to read the password file \"%s\": %s.\n", passwordFile, strerror(errno))
                return false
            }
            defer { fclose(file) }
            var bytes: [UInt8] = []
            while true {
                let c = getc(file)
                if c == EOF || c == 10 { break }
                bytes.append(UInt8(truncatingIfNeeded: c))
            }
            if bytes.last == 13 { bytes.removeLast() }
            password = Self.cStringFromBytes(bytes)
        } else if let passwordEnvironment {
            guard let value = getenv(passwordEnvironment) else {
                errorPrintf("Error: The environment variable %s given with --password-env is not set.\n", passwordEnvironment)
                return false
            }
            password = cCopy(value)
        } else if passwordPrompt {
            guard let value = readPasswordFromTerminal() else {
                errorPrintf("Error: No terminal to ask for the password on; use --password-file or --password-env.\n")
                return false
            }
            password = value
        }
        return true
    }
}

/// Reads one line from the controlling terminal with echo off.
private func readPasswordFromTerminal() -> CStr? {
    let fd = open("/dev/tty", O_RDWR)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var old = termios()
    let isTerminal = tcgetattr(fd, &old) == 0
    if isTerminal {
        var quiet = old
        quiet.c_lflag &= ~tcflag_t(ECHO)
        _ = tcsetattr(fd, TCSAFLUSH, &quiet)
    }
    _ = write(fd, "Password: ", 10)
    var bytes: [UInt8] = []
    var c: UInt8 = 0
    while read(fd, &c, 1) == 1 && c != 10 { bytes.append(c) }
    if isTerminal {
        _ = tcsetattr(fd, TCSAFLUSH, &old)
        _ = write(fd, "\n", 1)
    }
    if bytes.last == 13 { bytes.removeLast() }
    return ClientConfig.cStringFromBytes(bytes)
}
