import Foundation
import Mosquitto
import MosquittoBroker
import MosquittoTestSupport
import Testing

/// Bad command lines: one `Error:` line that says what to change, mosquitto's exit code, nothing published.
@Suite(.serialized, .timeLimit(.minutes(5 * testTimeScale)))
struct BadInputTests {
    struct Case: CustomStringConvertible, Sendable {
        var tool: String
        var args: [String]
        var status: Int32
        var message: String
        /// Whether mosquitto's 2.0.11 client prints exactly the same first line and exit code (checked when installed;
        /// false where our tools follow 2.1's wording).
        var sameAsMosquitto = false
        /// Lines of standard error after the first (besides the --help hint), as mosquitto 2.1 prints them.
        var extraLines = 0
        /// Whether the usage text follows on standard output (mosquitto_pub prints it when topic or message is missing).
        var printsUsage = false
        var description: String { "\(tool) \(args.joined(separator: " "))" }
    }

    static func pub(_ args: [String], _ status: Int32 = 1, _ message: String, same: Bool = false, extraLines: Int = 0,
                    printsUsage: Bool = false) -> Case {
        Case(tool: "mqtt-pub", args: args, status: status, message: message, sameAsMosquitto: same, extraLines: extraLines,
             printsUsage: printsUsage)
    }
    static func sub(_ args: [String], _ status: Int32 = 1, _ message: String, same: Bool = false) -> Case {
        Case(tool: "mqtt-sub", args: args, status: status, message: message, sameAsMosquitto: same)
    }
    static func rr(_ args: [String], _ status: Int32 = 1, _ message: String, same: Bool = false) -> Case {
        Case(tool: "mqtt-rr", args: args, status: status, message: message, sameAsMosquitto: same)
    }

    /// `PORT` is replaced with the test broker's port.
    static let cases: [Case] = [
        pub(["-Z"], 1, "Error: Unknown option '-Z'.", same: true),
        pub(["--bogus", "-t", "a", "-m", "x"], 1, "Error: Unknown option '--bogus'.", same: true),
        pub(["-t", "a", "-m", "x", "stray"], 1, "Error: Unknown option 'stray'.", same: true),
        sub(["-t", "a", "-r"], 1, "Error: Unknown option '-r'.", same: true),
        pub(["-t", "a/#", "-m", "x", "-p", "PORT"], 1, "Error: Invalid publish topic 'a/#', does it contain '+' or '#'?", same: true),
        pub(["-t", "a/+/b", "-m", "x", "-p", "PORT"], 1, "Error: Invalid publish topic 'a/+/b', does it contain '+' or '#'?", same: true),
        // An empty topic passes mosquitto's checks and fails at the publish; mosquitto_pub then exits 0.
        pub(["-t", "", "-m", "x", "-p", "PORT"], 0, "Error: Invalid input. Does your topic contain '+' or '#'?", same: true),
        sub(["-t", "a/b#", "-p", "PORT"], 1, "Error: Invalid subscription topic 'a/b#', are all '+' and '#' wildcards correct?", same: true),
        sub(["-t", "a/#/b", "-p", "PORT"], 1, "Error: Invalid subscription topic 'a/#/b'", same: true),
        sub(["-t", "a", "-T", "x/#/y"], 1, "Error: Invalid filter topic 'x/#/y', are all '+' and '#' wildcards correct?", same: true),
        sub(["-t", "a", "-U", "x+"], 1, "Error: Invalid unsubscribe topic 'x+', are all '+' and '#' wildcards correct?", same: true),
        pub(["-t", "a", "-m", "x", "-q", "3", "-p", "PORT"], 1, "Error: Invalid QoS given: 3", same: true),
        sub(["-t", "a", "-q", "-1"], 1, "Error: Invalid QoS given: -1", same: true),
        pub(["-t", "a", "-m", "x", "-p", "70000"], 1, "Error: Invalid port given: 70000", same: true),
        pub(["-t", "a", "-m", "x", "-p", "-5"], 1, "Error: Invalid port given: -5", same: true),
        pub(["-t", "a", "-f", "/nonexistent/file", "-p", "PORT"], 1,
            "Error: Unable to read file \"/nonexistent/file\": No such file or directory.", extraLines: 1),
        pub(["-t"], 1, "Error: -t argument given but no topic specified.", same: true),
        pub(["-t", "a", "-m"], 1, "Error: -m argument given but no message specified.", same: true),
        sub(["-t", "a", "-h"], 1, "Error: -h argument given but no host specified.", same: true),
        pub(["-t", "a", "-m", "x", "-l", "-p", "PORT"], 1, "Error: Only one type of message can be sent at once.", same: true),
        pub(["-t", "a", "-m", "x", "-n", "-p", "PORT"], 1, "Error: Only one type of message can be sent at once.", same: true),
        pub(["-t", "a", "-f", "/etc/hostname", "-s", "-p", "PORT"], 1, "Error: Only one type of message can be sent at once.", same: true),
        pub(["-t", "a", "-p", "PORT"], 1, "Error: Both topic and message must be supplied.", same: true, printsUsage: true),
        pub(["-m", "x", "-p", "PORT"], 1, "Error: Both topic and message must be supplied.", same: true, printsUsage: true),
        sub(["-p", "PORT"], 1, "Error: You must specify a topic to subscribe to (-t) or unsubscribe from (-U)."),
        pub(["-t", "a", "-m", "x", "-p", "1", "-h", "127.0.0.1"], 1, "Error: Connection refused"),
        sub(["-t", "a", "-p", "1", "-h", "127.0.0.1"], 1, "Error: Connection refused"),
        pub(["-t", "a", "-m", "x", "--cafile", "/nonexistent/ca.crt", "-p", "PORT"], 1, "Error: Problem setting TLS options"),
        pub(["-t", "a", "-m", "x", "--cert", "/etc/hostname"], 1, "Error: Both certfile and keyfile must be provided if one of them is set.", same: true),
        pub(["-t", "a", "-m", "x", "--keyform", "pem"], 1, "Error: If keyform is set, keyfile must be also specified.", same: true),
        pub(["-t", "a", "-m", "x", "--cafile", "/etc/hostname", "--tls-engine", "no-such-engine"], 1,
            "Error: Problem setting TLS engine, is no-such-engine a valid engine?", same: true),
        pub(["-t", "a", "-m", "x", "--cafile", "/etc/hostname", "--tls-engine-kpass-sha1", "0123456789012345678901234567890123456789"], 1,
            "Error: when using tls-engine-kpass-sha1, both tls-engine and keyform must also be provided.", same: true),
        pub(["-t", "a", "-m", "x", "--psk", "abcd"], 1, "Error: --psk-identity required if --psk used.", same: true),
        pub(["-t", "a", "-m", "x", "--psk", "abcd", "--psk-identity", "me", "--cafile", "/etc/hostname"], 1,
            "Error: Only one of --psk or --cafile/--capath may be used at once.", same: true),
        sub(["-t", "a", "-k", "2"], 1, "Error: Invalid keepalive given, it must be between 5 and 65535 inclusive.", same: true),
        pub(["-t", "a", "-m", "x", "-i", "a", "-I", "b"], 1, "Error: -i and -I argument cannot be used together.", same: true),
        sub(["-t", "a", "-c"], 1, "Error: You must provide a client id if you are using the -c option.", same: true),
        sub(["-t", "a", "-c", "-V", "mqttv5"], 1, "Error: You must provide a client id if you are using an infinite session expiry interval.", same: true),
        pub(["-t", "a", "-m", "x", "-V", "7"], 1, "Error: Invalid protocol version argument given.", same: true),
        pub(["-t", "a", "-m", "x", "--will-payload", "bye"], 1, "Error: Will payload given, but no will topic given.", same: true),
        pub(["-t", "a", "-m", "x", "--will-topic", "w/#"], 1, "Error: Invalid will topic 'w/#', does it contain '+' or '#'?", same: true),
        sub(["-t", "a", "-F", "%Z"], 1, "Error: Invalid format specifier 'Z'.", same: true),
        sub(["-t", "a", "-F", "%"], 1, "Error: Incomplete format specifier.", same: true),
        sub(["-t", "a", "-F", "%-05"], 1, "Error: Incomplete format specifier.", same: true),
        // Found by the format fuzzer: the width overflowed (mosquitto_sub overflows an int here too).
        sub(["-t", "a", "-F", "%55555555555555555555555p"], 1, "Error: Format width or precision too large (at most 65535).", same: false),
        sub(["-t", "a", "-F", "\\q"], 1, "Error: Invalid escape specifier 'q'.", same: true),
        sub(["-t", "a", "-F", "x\\"], 1, "Error: Incomplete escape specifier.", same: true),
        sub(["-t", "a", "-C", "0"], 1, "Error: Invalid message count \"0\".", same: true),
        sub(["-t", "a", "-W", "0"], 1, "Error: Invalid timeout \"0\".", same: true),
        sub(["-t", "a", "-R", "--retained-only"], 1, "Error: Combining '-R' and '--retained-only' makes no sense."),
        sub(["-t", "a", "--random-filter", "0"], 1, "Error: --random-filter chance must be between 0.1-100.0", same: true),
        pub(["-L", "http://localhost/a", "-m", "x"], 1, "Error: Unsupported URL scheme."),
        pub(["-L", "mqtt://localhost", "-m", "x"], 1, "Error: Invalid URL for -L argument specified - topic missing.", same: true),
        // Where the shared URL parser is stricter than mosquitto 2.0.11 (which takes atoi of the port, passes an empty
        // host on, and cannot read an IPv6 host): a clear error at once instead of a failed connection.
        pub(["-L", "mqtt://localhost:abc/a", "-m", "x"], 1, "Error: Invalid URL for -L argument specified - the port must be a number from 1 to 65535."),
        sub(["-L", "mqtt://u:p@/a"], 1, "Error: Invalid URL for -L argument specified - host missing."),
        // Both wrong: mosquitto never refuses a host or port, so the topic is what it reports, and so do we.
        pub(["-L", "mqtt://localhost:abc/a/#/b", "-m", "x"], 1, "Error: Invalid publish topic 'a/#/b', does it contain '+' or '#'?", same: true),
        sub(["-L", "mqtt://u:p@:1/a/#/b"], 1, "Error: Invalid subscription topic 'a/#/b', are all '+' and '#' wildcards correct?", same: true),
        rr(["-L", "mqtt://::1/a", "-e", "r", "-m", "x"], 1,
           "Error: Invalid URL for -L argument specified - write an IPv6 address in brackets, as in mqtt://[::1]:1883/topic."),
        pub(["-t", "a", "-m", "x", "--proxy", "http://proxy"], 1, "Error: Unsupported proxy protocol: http://proxy", same: true),
        pub(["-t", "a", "-m", "x", "-D", "foo", "bar", "1"], 1, "Error: Invalid command foo given in --property argument."),
        pub(["-t", "a", "-m", "x", "-D", "publish", "foo", "1"], 1, "Error: Invalid property name foo given in --property argument."),
        pub(["-t", "a", "-m", "x", "-D", "connect", "content-type", "x"], 1, "Error: content-type property not allowed for connect in --property argument.", same: true),
        pub(["-t", "a", "-m", "x", "-D", "publish", "subscription-identifier", "1"], 1,
            "Error: subscription-identifier property not supported for publish in --property argument.", same: true),
        pub(["-t", "a", "-m", "x", "-D", "publish", "message-expiry-interval", "-1"], 1,
            "Error: Property value (-1) out of range for property message-expiry-interval.", same: true),
        pub(["-t", "a", "-m", "x", "-D", "publish"], 1, "Error: --property argument given but not enough arguments specified.", same: true),
        pub(["-t", "a", "-m", "x", "--repeat", "0"], 1, "Error: --repeat argument must be >0.", same: true),
        pub(["-t", "a", "-m", "x", "--repeat-delay", "-1"], 1, "Error: --repeat-delay argument must be >=0.0.", same: true),
        pub(["-t", "a", "-m", "x", "-M", "0"], 1, "Error: Maximum inflight messages must be greater than 0.", same: true),
        pub(["-t", "a", "-m", "x", "-x", "abc"], 1, "Error: session-expiry-interval not a number.", same: true),
        pub(["-t", "a", "-m", "x", "-P", "secret", "-p", "PORT"], 1, "Error: Problem setting username and/or password.", same: true),
        pub(["-t", "a", "-m", "x", "-u", "u", "--password-file", "/nonexistent/pw"], 1, "Error: Unable to read the password file \"/nonexistent/pw\""),
        pub(["-t", "a", "-m", "x", "-u", "u", "--password-env", "CLI_TEST_UNSET_VARIABLE"], 1,
            "Error: The environment variable CLI_TEST_UNSET_VARIABLE given with --password-env is not set."),
        pub(["-t", "a", "-m", "x", "-u", "u", "-P", "a", "--password-env", "HOME"], 1, "Error: Give the password one way only"),
        pub(["-t", "a", "-s", "-p", "PORT"], 1, "Error: Zero length input.", same: true, extraLines: 1),
        rr(["-t", "a", "-m", "x"], 1, "Error: All of topic, message, and response topic must be supplied.", same: true),
        rr(["-t", "a", "-e", "r/#", "-m", "x"], 1, "Error: Invalid response topic 'r/#', does it contain '+' or '#'?", same: true),
        rr(["-t", "a", "-e", "r", "-m", "x", "-l"], 1, "Error: Unknown option '-l'.", same: true),
    ]

    @Test("A table of bad command lines: exit code, one Error: line, nothing published")
    func table() async throws {
        #expect(Self.cases.count >= 40)
        try await withBroker { broker in
            let watcher = try await libraryClient(broker)
            let everything = try await watcher.subscribe([Subscription("#", qos: .atMostOnce)],
                                                         buffer: .init(capacity: 1000, overflow: .dropNewest))
            let home = temporaryDirectory()  // no options file from the user running the tests
            var env = ProcessInfo.processInfo.environment
            env["HOME"] = home
            env.removeValue(forKey: "XDG_CONFIG_HOME")
            for c in Self.cases {
                let args = c.args.map { $0 == "PORT" ? String(broker.port) : $0 }
                let r = try await run(tool(c.tool), args, environment: env, timeout: .seconds(20))
                let first = r.stderr.split(separator: "\n", omittingEmptySubsequences: true).first.map(String.init) ?? ""
                #expect(r.status == c.status, "\(c): \(r)")
                #expect(first.hasPrefix(c.message), "\(c): got \(first.debugDescription)")
                #expect(r.stdout.isEmpty != c.printsUsage, "\(c): stdout \(r.out)")
                // The error is one line (mosquitto's "Use '… --help'" hint may follow after a blank line).
                let lines = r.stderr.split(separator: "\n").filter { !$0.isEmpty && !$0.hasPrefix("Use '") }
                #expect(lines.count == 1 + c.extraLines, "\(c): \(r.stderr.debugDescription)")
                if c.sameAsMosquitto, let theirs = mosquittoTool(c.tool.replacingOccurrences(of: "mqtt-", with: "mosquitto_")) {
                    let m = try await run(theirs, args, environment: env, timeout: .seconds(20))
                    let mFirst = m.stderr.split(separator: "\n", omittingEmptySubsequences: true).first.map(String.init) ?? ""
                    #expect(m.status == r.status, "\(c): mosquitto exit \(m.status), ours \(r.status)")
                    #expect(mFirst == first, "\(c): mosquitto says \(mFirst.debugDescription), we say \(first.debugDescription)")
                }
            }
            try? FileManager.default.removeItem(atPath: home)
            // Nothing reached the broker.
            try await Task.sleep(for: .milliseconds(300))
            #expect(everything.receivedCount == 0, "a bad command line published \(everything.receivedCount) message(s)")
            await watcher.shutdown()
        }
    }
}
