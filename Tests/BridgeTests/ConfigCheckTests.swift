import ArgumentParser
import Foundation
import Logging
import Mosquitto
import MQTTOutbox
import MosquittoTestSupport
import MQTTBridge
import MQTTBridgeCommand
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// What one run of the `mqtt-bridge` executable printed and how it ended.
private struct BridgeRun {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Runs `mqtt-bridge` with `arguments`, standard output and error to files (so a large output cannot block it);
/// fails the test if it has not ended after `timeout`.
private func runBridge(_ arguments: [String], timeout: Duration = .seconds(20)) async throws -> BridgeRun {
    let executable = try #require(builtExecutable("mqtt-bridge"), "build the mqtt-bridge executable first (swift build)")
    let dir = temporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: dir) }
    FileManager.default.createFile(atPath: dir + "/out", contents: nil)
    FileManager.default.createFile(atPath: dir + "/err", contents: nil)
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    process.standardOutput = FileHandle(forWritingAtPath: dir + "/out")
    process.standardError = FileHandle(forWritingAtPath: dir + "/err")
    process.standardInput = FileHandle.nullDevice
    try process.run()
    let deadline = ContinuousClock.now + timeout * testTimeScale
    while process.isRunning && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
    if process.isRunning {
        process.terminate()
        process.waitUntilExit()
        Issue.record("mqtt-bridge \(arguments.joined(separator: " ")) still ran after \(timeout)")
    }
    let out = (try? String(contentsOfFile: dir + "/out", encoding: .utf8)) ?? ""
    let err = (try? String(contentsOfFile: dir + "/err", encoding: .utf8)) ?? ""
    return BridgeRun(status: process.terminationStatus, stdout: out, stderr: err)
}

/// A file in a fresh temporary directory; returns its path.
private func writeConfig(_ text: String, name: String = "bridge.conf", in dir: String) -> String {
    let path = dir + "/" + name
    FileManager.default.createFile(atPath: path, contents: Data(text.utf8))
    return path
}

private func messages(_ text: String) -> [String] { ConfigParser.check(text).map(\.message) }

/// The repository's README, found from this file's path.
private func readme() throws -> String {
    let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    return try String(contentsOf: root.appendingPathComponent("README.md"), encoding: .utf8)
}

/// The README's bridge section.
private func readmeBridgeSection() throws -> String {
    let text = try readme()
    let start = try #require(text.range(of: "## The bridge: `mqtt-bridge`"))
    let rest = text[start.upperBound...]
    let end = rest.range(of: "\n## ")?.lowerBound ?? rest.endIndex
    return String(rest[..<end])
}

private let oneRoute = """
    route a
    mode tcp_server
    topic t

    """

@Suite("Configuration checks (issue #13, operability)", .timeLimit(.minutes(5 * testTimeScale)))
struct ConfigCheckTests {
    // MARK: 1. -M

    @Test("-M sets the bridge's in-flight limit in the flags form, and is the default under a --config file")
    func maxInflightFlag() throws {
        let logger = quietLogger()
        let flags = try BridgeCommand.parse(["-M", "7", "--tcp-listen", "127.0.0.1:0", "--topic", "t"]).makeConfiguration(logger: logger)
        #expect(flags.maxInflightMessages == 7)
        let none = try BridgeCommand.parse(["--tcp-listen", "127.0.0.1:0", "--topic", "t"]).makeConfiguration(logger: logger)
        #expect(none.maxInflightMessages == nil, "nil is the bridge's default, \(BridgeConfiguration.defaultInflightMessages)")

        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let plain = writeConfig(oneRoute, name: "plain.conf", in: dir)
        let keyed = writeConfig("max_inflight_messages 50\n" + oneRoute, name: "keyed.conf", in: dir)
        #expect(try BridgeCommand.parse(["-M", "7", "--config", plain]).makeConfiguration(logger: logger).maxInflightMessages == 7)
        #expect(try BridgeCommand.parse(["-M", "7", "--config", keyed]).makeConfiguration(logger: logger).maxInflightMessages == 50)
    }

    @Test("--help and the README give one default for -M / max_inflight_messages: BridgeConfiguration.defaultInflightMessages")
    func maxInflightDefaultDocumented() throws {
        let n = BridgeConfiguration.defaultInflightMessages
        let help = BridgeCommand.helpText
        let line = try #require(help.split(separator: "\n").first { $0.contains("-M N") })
        #expect(line.contains("(default: \(n))"), "\(line)")
        #expect(!help.contains("(default: 20)"))
        let section = try readmeBridgeSection()
        #expect(section.contains("`max_inflight_messages` (default \(n) for the bridge"))
    }

    // MARK: 2. Reading the file

    @Test("a file that cannot be read as text gets one line in mosquitto's style, without hanging on a FIFO")
    func unreadableFiles() throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        func message(_ path: String) -> String? {
            do {
                _ = try ConfigParser.read(file: path)
                return nil
            } catch {
                return error.message
            }
        }
        #expect(message(dir + "/missing.conf") == "Error: Unable to open config file \(dir)/missing.conf: No such file or directory.")
        #expect(message(dir) == "Error: Config file \(dir) is a directory.")
        let fifo = dir + "/fifo.conf"
        #expect(mkfifo(fifo, 0o600) == 0)
        #expect(message(fifo) == "Error: Config file \(fifo) is a FIFO, not a regular file.")
        let binary = dir + "/binary.conf"
        FileManager.default.createFile(atPath: binary, contents: Data("address 1.2.3.4\nroute a\n".utf8 + [0x7F, 0x45, 0x4C, 0x46, 0x00, 0x01]))
        #expect(message(binary) == "Error: Config file \(binary) is not a text file (a NUL byte on line 3).")
        let latin1 = dir + "/latin1.conf"
        FileManager.default.createFile(atPath: latin1, contents: Data("route a\nmode tcp_server\ntopic caf".utf8 + [0xE9] + Data("\n".utf8)))
        #expect(message(latin1) == "Error: Config file \(latin1) is not UTF-8 text (line 3).")
        if geteuid() != 0 {
            let locked = writeConfig(oneRoute, name: "locked.conf", in: dir)
            chmod(locked, 0)
            #expect(message(locked) == "Error: Unable to open config file \(locked): Permission denied.")
        }
        let bom = writeConfig("\u{FEFF}" + oneRoute, name: "bom.conf", in: dir)
        #expect(ConfigParser.check(try ConfigParser.read(file: bom)).isEmpty)
    }

    @Test("mqtt-bridge --check on a missing file, a directory, a FIFO or a binary file: one Error line, exit 3, no NSCocoaErrorDomain")
    func unreadableFilesFromTheCommandLine() async throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let fifo = dir + "/fifo.conf"
        #expect(mkfifo(fifo, 0o600) == 0)
        let binary = dir + "/binary.conf"
        FileManager.default.createFile(atPath: binary, contents: Data([0x7F, 0x45, 0x4C, 0x46, 0x02, 0x01, 0x01, 0x00]))
        let cases: [(String, String)] = [
            (dir + "/missing.conf", "Error: Unable to open config file \(dir)/missing.conf: No such file or directory."),
            (dir, "Error: Config file \(dir) is a directory."),
            (fifo, "Error: Config file \(fifo) is a FIFO, not a regular file."),
            (binary, "Error: Config file \(binary) is not a text file (a NUL byte on line 1)."),
        ]
        for (path, expected) in cases {
            for arguments in [["--config", path, "--check"], ["--config", path]] {
                let run = try await runBridge(arguments, timeout: .seconds(10))
                #expect(run.status == 3, "\(arguments)")
                #expect(run.stderr == expected + "\n", "\(arguments)")
                #expect(run.stdout.isEmpty)
            }
        }
    }

    @Test("a 50 MB one-line file, and long values, are never echoed whole: quoted values are cut at 80 characters")
    func longLinesAreNotEchoed() async throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let big = dir + "/big.conf"
        FileManager.default.createFile(atPath: big, contents: Data(repeating: UInt8(ascii: "x"), count: 50_000_000) + Data("\n".utf8))
        let run = try await runBridge(["--config", big, "--check"])
        #expect(run.status == 3)
        #expect(run.stderr.utf8.count < 300, "\(run.stderr.prefix(300))")
        #expect(run.stderr.contains("\(big):1: line too long"))

        let long = String(repeating: "y", count: 100_000)
        let text = """
            \(long) 1
            state_prefix \(long)/#
            route a
            mode tcp_server
            topic \(long)/#
            dead_letter_topic \(long)#
            \(long)z 2
            """
        let issues = ConfigParser.check(text)
        #expect(issues.map(\.line) == [1, 2, 5, 6, 7], "\(issues.map(\.message))")
        for issue in issues {
            #expect(issue.message.count < 250, "\(issue.message.prefix(250))")
            #expect(issue.message.contains(String(repeating: "y", count: 80) + "…"), "\(issue.message.prefix(250))")
        }
        #expect(ConfigParser.quote("a\u{1B}[2Jb") == "'a\\u{1b}[2Jb'", "control characters are escaped")
    }

    // MARK: 3. --check

    @Test("a key given twice in a route, or twice globally (also under another name), is an error naming the first line")
    func duplicateKeys() {
        let text = """
            remote_clientid one
            clientid two
            route a
            mode tcp_server
            topic t
            qos 1
            qos 2
            """
        let issues = ConfigParser.check(text)
        #expect(issues.map(\.line) == [2, 7], "\(issues)")
        #expect(issues.first?.message == "duplicate option 'clientid' (already set on line 1 as 'remote_clientid')")
        #expect(issues.last?.message == "duplicate 'qos' in route 'a' (already set on line 6)")
    }

    @Test("repeatable route keys (address, udp_target, allow, subscribe) may be given on several lines")
    func repeatableKeys() throws {
        let text = """
            route a
            mode tcp_client
            direction both
            address 10.0.0.5:4001
            address 10.0.0.6:4001
            topic up
            subscribe down/a
            subscribe down/b
            route u
            mode udp
            direction both
            address 127.0.0.1:5140
            udp_target 127.0.0.1:5141
            udp_target 127.0.0.1:5142
            allow 10.0.0.0/8
            allow 192.168.1.7
            topic up
            subscribe down
            """
        let c = try ConfigParser.parse(text)
        #expect(c.routes[0].feed.addresses.count == 2)
        #expect(c.routes[0].subscriptions == ["down/a", "down/b"])
        #expect(c.routes[1].feed.udpTargets.count == 2)
        #expect(c.routes[1].feed.allow == ["10.0.0.0/8", "192.168.1.7"])
    }

    @Test("one mistake is reported once: a refused value does not make its route 'need' the key, a bad route line does not cascade")
    func rootMistakeOnce() {
        // A refused value: only its own line, not "route a needs …" as well.
        #expect(messages("route a\nmode tcp_sever\ntopic t\n") == ["mode must be tcp_client, tcp_server or udp"])
        #expect(ConfigParser.check("route a\nmode tcp_server\ntopic t/{nope}\n").map(\.line) == [3])
        #expect(ConfigParser.check("route a\nmode tcp_client\naddress 10.0.0.5\ntopic t\n").map(\.line) == [3])
        #expect(ConfigParser.check("route a\nmode tcp_server\ndirection sideways\n").map(\.line) == [3])
        #expect(ConfigParser.check("route a\nmode tcp_server\ndirection to_feed\nsubscribe a/#/b\n").map(\.line) == [4])
        #expect(ConfigParser.check("route a\nmode udp\ndirection to_feed\nsubscribe s\nudp_target 1.2.3.4\n").map(\.line) == [5])
        #expect(ConfigParser.check("route a\nmode tcp_server\ntopic t/{regex:1}\ntopic_regex (\n").map(\.line) == [4])
        #expect(ConfigParser.check("route a\nmode tcp_server\ntopic t\nframing fixed 100000\nmax_frame 0\n").map(\.line) == [5])
        // A route line without a name: one error, and its keys are not read as global options.
        let nameless = ConfigParser.check("route\nmode tcp_server\naddress 127.0.0.1:7000\ntopic t\nqos 1\n" + oneRoute)
        #expect(nameless.map(\.line) == [1], "\(nameless)")
        // A bad framing line: one error, none for the rest of its route.
        let framing = ConfigParser.check("route a\nmode tcp_server\nframing length 3\nmax_frame 4KiB\ntopic t\nqos 1\n")
        #expect(framing.map(\.line) == [3], "\(framing)")
        // Route options with no route line before them: reported once for the block, global keys still global.
        let orphan = ConfigParser.check("spool_dir /tmp/s\nmode tcp_server\naddress 127.0.0.1:7000\ntopic t\nqos 1\nmetrics_listen 127.0.0.1:9100\n" + oneRoute)
        #expect(orphan.map(\.message) == ["'mode' is a route option; put a 'route <name>' line before it"], "\(orphan)")
        // The password check does not repeat a refused user name.
        #expect(ConfigParser.check("remote_username\nremote_password secret\n" + oneRoute).map(\.line) == [1])
    }

    @Test("framing in quotes, as --framing takes it on a command line, is accepted in the file")
    func quotedFraming() throws {
        for value in ["'length 2 be'", "\"length 2 be\"", "length 2 be"] {
            let c = try ConfigParser.parse("route a\nmode tcp_server\ntopic t\nframing \(value)\n")
            #expect(c.routes[0].framing == .lengthPrefixed(width: 2, byteOrder: .bigEndian), "\(value)")
        }
        let d = try ConfigParser.parse("route a\nmode tcp_server\ntopic t\nframing 'delimiter 0x03'\n")
        #expect(d.routes[0].framing == .delimiter([0x03]))
        #expect(try ConfigParser.framing("'fixed 64'").get() == .fixed(64))
    }

    @Test("a port out of range is reported as such, not as a format error, in the file and in flags")
    func portOutOfRange() throws {
        let text = """
            address broker.local:70000
            metrics_listen 127.0.0.1:65536
            route a
            mode udp
            direction both
            address 127.0.0.1:99999
            udp_target 127.0.0.1:0
            topic t
            subscribe s
            """
        let issues = ConfigParser.check(text)
        #expect(issues.map(\.line) == [1, 2, 6, 7], "\(issues)")
        #expect(issues[0].message == "broker address: port 70000 out of range (1-65535)")
        #expect(issues[1].message == "metrics_listen: port 65536 out of range (1-65535)")
        #expect(issues[2].message == "port 99999 out of range (1-65535)")
        #expect(issues[3].message == "udp_target: port 0 out of range (1-65535)")
        #expect(messages("address broker.local:x1883\n" + oneRoute) == ["broker address: invalid address 'broker.local:x1883': use host[:port]"])
        #expect(messages("route a\nmode tcp_server\ntopic t\naddress 127.0.0.1\n") == ["invalid address '127.0.0.1': use host:port"])
        for (flag, value) in [("--tcp-listen", "127.0.0.1:70000"), ("--tcp-connect", "10.0.0.5:70000"), ("--udp-listen", ":70000")] {
            let command = try BridgeCommand.parse([flag, value, "--topic", "t"])
            #expect(throws: ValidationError.self) { try command.makeConfiguration(logger: quietLogger()) }
            do {
                _ = try command.makeConfiguration(logger: quietLogger())
            } catch {
                #expect("\(error)" == "\(flag): port 70000 out of range (1-65535)")
            }
        }
        // Still accepted: IPv6 in brackets, a bare port for a listener, a broker host without a port.
        let ok = try ConfigParser.parse("address [::1]\nroute a\nmode tcp_server\naddress 7000\ntopic t\nroute b\nmode tcp_server\naddress [::1]:7001\ntopic t\n")
        #expect(ok.mqtt.endpoint == .tcp(host: "::1", port: 1883))
        #expect(ok.routes[0].feed.addresses == [SocketAddressSpec(host: "127.0.0.1", port: 7000)])
        #expect(ok.routes[1].feed.addresses == [SocketAddressSpec(host: "::1", port: 7001)])
    }

    @Test("a misspelled key gets 'did you mean'; a global key in a route, and a route key before any route, get their own message")
    func misspelledAndMisplacedKeys() {
        #expect(messages("spool_dri /tmp/s\n" + oneRoute) == ["unknown option 'spool_dri'; did you mean 'spool_dir'?"])
        #expect(messages("max_inflight_message 10\n" + oneRoute) == ["unknown option 'max_inflight_message'; did you mean 'max_inflight_messages'?"])
        #expect(messages("topik t\n" + oneRoute)
                == ["unknown option 'topik'; did you mean 'topic'? (a route option: put a 'route <name>' line before it)"])
        #expect(messages(oneRoute + "qoss 1\n") == ["unknown route option 'qoss' in route 'a'; did you mean 'qos'?"])
        #expect(messages(oneRoute + "Topic x\n") == ["unknown route option 'Topic' in route 'a'; did you mean 'topic'?"])
        #expect(messages(oneRoute + "subscirbe x\n") == ["unknown route option 'subscirbe' in route 'a'; did you mean 'subscribe'?"])
        #expect(messages(oneRoute + "completely_unrelated 1\n") == ["unknown route option 'completely_unrelated' in route 'a'"])
        #expect(messages(oneRoute + "spool_dir /tmp/s\n") == ["'spool_dir' is a global option; put it before the first route"])
        #expect(messages(oneRoute + "remote_clientid x\n") == ["'remote_clientid' is a global option; put it before the first route"])
        #expect(messages(oneRoute + "spool_dri /tmp/s\n")
                == ["unknown route option 'spool_dri' in route 'a'; did you mean 'spool_dir'? (a global option: put it before the first route)"])
        #expect(messages("qos 1\n" + oneRoute) == ["'qos' is a route option; put a 'route <name>' line before it"])
        #expect(ConfigParser.suggestion(for: String(repeating: "q", count: 1000), among: ConfigParser.routeKeys) == nil)
    }

    @Test("route flags together with --config are an error naming the flags, also with --check")
    func routeFlagsWithConfig() async throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = writeConfig(oneRoute, in: dir)
        let command = try BridgeCommand.parse(["--config", file, "--topic", "x", "-q", "2", "--framing", "raw", "--log-level", "warning"])
        #expect(command.routeFlagsGiven == ["--topic", "--framing", "--qos"])
        do {
            _ = try command.makeConfiguration(logger: quietLogger())
            Issue.record("route flags with --config were accepted")
        } catch {
            #expect("\(error)" == "--topic, --framing, --qos describe one route from flags and cannot be used with --config: put them in the file's route blocks")
        }
        // Broker, spool and operations flags are fine with a file.
        let fine = try BridgeCommand.parse(["--config", file, "-i", "x", "--spool-dir", dir, "--metrics", "127.0.0.1:0", "--log-level", "warning"])
        #expect(fine.routeFlagsGiven.isEmpty)
        #expect(try fine.makeConfiguration(logger: quietLogger()).spoolDirectory == dir)

        let run = try await runBridge(["--config", file, "--check", "--tcp-listen", "127.0.0.1:7000", "-r"])
        #expect(run.status != 0)
        #expect(run.stderr.contains("Error: --tcp-listen, --retain describe one route from flags and cannot be used with --config"), "\(run.stderr)")
        #expect(!run.stdout.contains("OK"))
    }

    @Test("two routes on one listen address and port fail --check, naming both; TCP and UDP may share a port")
    func listenAddressConflicts() async throws {
        let text = """
            metrics_listen 127.0.0.1:9100
            route first
            mode tcp_server
            address 127.0.0.1:7000
            topic t

            route second
            mode tcp_server
            address 127.0.0.1:7000
            topic t

            route datagrams
            mode udp
            address 127.0.0.1:7000
            topic t

            route everywhere
            mode tcp_server
            address 0.0.0.0:7000
            topic t

            route other_port
            mode tcp_server
            address 127.0.0.1:7001
            topic t

            route on_metrics
            mode tcp_server
            address 127.0.0.1:9100
            topic t

            route dialer
            mode tcp_client
            address 127.0.0.1:7000
            topic t
            """
        let issues = ConfigParser.check(text)
        #expect(issues.map(\.line) == [7, 17, 27], "\(issues)")
        #expect(issues[0].message == "route 'second': TCP address 127.0.0.1:7000 is already the listen address of route 'first' (line 2); "
                + "two routes cannot listen on one address and port")
        #expect(issues[1].message.hasPrefix("route 'everywhere': TCP address 0.0.0.0:7000 is already the listen address of route 'first'"))
        #expect(issues[2].message == "route 'on_metrics': TCP address 127.0.0.1:9100 is also metrics_listen (line 1)")

        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = writeConfig(text, in: dir)
        let run = try await runBridge(["--config", file, "--check"])
        #expect(run.status == 3)
        #expect(run.stderr.contains("\(file):7: route 'second': TCP address 127.0.0.1:7000 is already the listen address of route 'first' (line 2)"))
        #expect(run.stdout.isEmpty)
    }

    @Test("a valid file: --check prints 'FILE: OK' on standard output and exits 0")
    func checkOK() async throws {
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = writeConfig("remote_clientid x\nspool_stall_timeout 30\nauth_failure_limit 3\n" + oneRoute, in: dir)
        let run = try await runBridge(["--config", file, "--check"])
        #expect(run.status == 0)
        #expect(run.stdout == "\(file): OK\n")
        #expect(run.stderr.isEmpty)
    }

    // MARK: 4. --help

    @Test("--help is grouped like mqtt-pub's (broker, route, spool, operations), ends with examples, and has no doubled defaults")
    func helpText() async throws {
        let help = BridgeCommand.helpText
        var cursor = help.startIndex
        for heading in ["Usage:", "Broker:", "Authentication", "TLS:", "Route (one route from flags):", "Spool:", "Operations:", "Examples:"] {
            let r = try #require(help.range(of: "\n" + heading, range: cursor..<help.endIndex), "\(heading) missing or out of order")
            cursor = r.upperBound
        }
        #expect(help.range(of: #"\(default[^)]*\)\.? *\(default"#, options: .regularExpression) == nil)
        let generated = BridgeCommand.helpMessage(columns: 200)
        #expect(generated.range(of: #"\(default[^)]*\)\.? *\(default"#, options: .regularExpression) == nil, "argument-parser's help doubles a default")
        let idLine = try #require(help.split(separator: "\n").first { $0.contains("-i, --id") })
        #expect(!idLine.contains("mqtt-pub") && idLine.contains("bridge"), "\(idLine)")
        for key in ["--spool-stall-timeout", "--auth-failure-limit"] { #expect(help.contains(key)) }
        // Every option argument-parser knows is in the text.
        let names = Set(generated.matches(of: #/(?:^|[\s,\[])(--?[A-Za-z][A-Za-z0-9-]*)/#).map { String($0.output.1) })
        #expect(names.count > 60)
        for name in names.sorted() {
            let pattern = "(^|[\\s,\\[|{])" + NSRegularExpression.escapedPattern(for: name) + "($|[\\s,\\]|}=])"
            #expect(help.range(of: pattern, options: .regularExpression) != nil, "\(name) is not in BridgeCommand.helpText")
        }
        #expect(BridgeCommand.configuration.discussion.contains("Examples:"))

        let run = try await runBridge(["-h", "broker.local", "--help"])
        #expect(run.status == 0)
        #expect(run.stdout == help + "\n")
    }

    // MARK: 5. README

    @Test("the README's install line installs nc (netcat-openbsd), which its bridge example uses")
    func readmeInstallsNetcat() throws {
        let text = try readme()
        #expect(try readmeBridgeSection().contains("| nc "))
        let install = try #require(text.split(separator: "\n").first { $0.contains("sudo apt-get") && $0.contains("install") })
        #expect(install.contains("netcat-openbsd"), "\(install)")
    }

    // MARK: 6. New keys and flags

    @Test("spool_stall_timeout (0 = never) and auth_failure_limit (1 or more), in the file and as flags")
    func stallTimeoutAndAuthLimit() throws {
        let defaults = try ConfigParser.parse(oneRoute)
        #expect(defaults.spoolStallTimeout == .seconds(60))
        #expect(defaults.authFailureLimit == nil)
        let set = try ConfigParser.parse("spool_stall_timeout 2.5\nauth_failure_limit 3\n" + oneRoute)
        #expect(set.spoolStallTimeout == .milliseconds(2500))
        #expect(set.authFailureLimit == 3)
        #expect(try ConfigParser.parse("spool_stall_timeout 0\n" + oneRoute).spoolStallTimeout == nil)
        #expect(messages("spool_stall_timeout soon\n" + oneRoute) == ["spool_stall_timeout must be seconds (0 = never)"])
        #expect(messages("spool_stall_timeout inf\n" + oneRoute) == ["spool_stall_timeout must be seconds (0 = never)"])
        #expect(messages("auth_failure_limit 0\n" + oneRoute)
                == ["auth_failure_limit must be a number of attempts, 1 or more (leave it out to retry for ever)"])

        let logger = quietLogger()
        let route = ["--tcp-listen", "127.0.0.1:0", "--topic", "t"]
        let flags = try BridgeCommand.parse(route + ["--spool-stall-timeout", "5", "--auth-failure-limit", "4"]).makeConfiguration(logger: logger)
        #expect(flags.spoolStallTimeout == .seconds(5))
        #expect(flags.authFailureLimit == 4)
        let never = try BridgeCommand.parse(route + ["--spool-stall-timeout", "0"]).makeConfiguration(logger: logger)
        #expect(never.spoolStallTimeout == nil)
        let plain = try BridgeCommand.parse(route).makeConfiguration(logger: logger)
        #expect(plain.spoolStallTimeout == .seconds(60))
        #expect(plain.authFailureLimit == nil)
        #expect(throws: ValidationError.self) { try BridgeCommand.parse(route + ["--auth-failure-limit", "0"]).makeConfiguration(logger: logger) }
        #expect(throws: ValidationError.self) { try BridgeCommand.parse(route + ["--spool-stall-timeout", "soon"]).makeConfiguration(logger: logger) }

        // With a file, the flags are defaults its keys override.
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let keyed = writeConfig("spool_stall_timeout 9\n" + oneRoute, name: "keyed.conf", in: dir)
        let plainFile = writeConfig(oneRoute, name: "plain.conf", in: dir)
        let extra = ["--spool-stall-timeout", "5", "--auth-failure-limit", "4"]
        let fromKeyed = try BridgeCommand.parse(["--config", keyed] + extra).makeConfiguration(logger: logger)
        #expect(fromKeyed.spoolStallTimeout == .seconds(9))
        #expect(fromKeyed.authFailureLimit == 4)
        #expect(try BridgeCommand.parse(["--config", plainFile] + extra).makeConfiguration(logger: logger).spoolStallTimeout == .seconds(5))

        let section = try readmeBridgeSection()
        for word in ["spool_stall_timeout", "auth_failure_limit", "--spool-stall-timeout", "--auth-failure-limit"] {
            #expect(section.contains(word), "README's bridge section does not mention \(word)")
        }
    }
}
