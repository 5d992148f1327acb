import Foundation
import Mosquitto
import MosquittoBroker
import MosquittoTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// What makes the tools drop-in replacements for mosquitto_pub, mosquitto_sub and mosquitto_rr (issue #15): the
/// name they call themselves, mosquitto 2.1's messages, packets and `-d` output byte for byte, the stdout/stderr
/// interleaving, TLS failures that exit 8 or 7 and say what failed, and 2.1's additions. mosquitto's 2.0.11
/// clients are the oracle where 2.0.11 and 2.1 agree; elsewhere the expected bytes are written out here.
@Suite(.serialized, .timeLimit(.minutes(5 * testTimeScale)))
struct DropInTests {
    /// Runs `executable` through a packet recorder and returns what it sent on its first connection.
    func recorded(_ broker: MosquittoBroker, _ executable: String, _ arguments: [String],
                  environment: [String: String]? = nil) async throws -> ([MQTTPacket], RunResult) {
        let recorder = try PacketRecorder(forwardingTo: broker.port)
        defer { recorder.close() }
        let result = try await run(executable, ["-h", "127.0.0.1", "-p", String(recorder.port)] + arguments, environment: environment)
        let deadline = ContinuousClock.now + .seconds(30) * testTimeScale
        while ContinuousClock.now < deadline, !recorder.clientClosed(0) {
            try await Task.sleep(for: .milliseconds(20))
        }
        return (recorder.connections.first ?? [], result)
    }

    @Test("A tool names itself as invoked: linked as mosquitto_sub it says mosquitto_sub, in errors, --help and --version")
    func programName() async throws {
        let (env, home) = environmentWithoutOptionsFiles()
        let links = temporaryDirectory()
        defer {
            try? FileManager.default.removeItem(atPath: home)
            try? FileManager.default.removeItem(atPath: links)
        }
        for (ours, theirs) in [("mqtt-pub", "mosquitto_pub"), ("mqtt-sub", "mosquitto_sub"), ("mqtt-rr", "mosquitto_rr")] {
            let link = links + "/" + theirs
            #expect(symlink(tool(ours), link) == 0)
            for (path, name) in [(link, theirs), (tool(ours), ours)] {
                let bad = try await run(path, ["--bogus"], environment: env)
                #expect(bad.status == 1)
                #expect(bad.stderr == "Error: Unknown option '--bogus'.\n\nUse '\(name) --help' to see usage.\n", "\(bad)")
                let version = try await run(path, ["--version"], environment: env)
                #expect(version.status == 1 && version.out.hasPrefix("\(name) version 2.1.2 running on libmosquitto "), "\(version)")
                let help = try await run(path, ["--help"], environment: env)
                #expect(help.status == 1 && help.out.hasPrefix("\(name) ") && help.out.contains("Usage: \(name) "), "\(help)")
            }
        }
    }

    struct Wording: Sendable, CustomStringConvertible {
        var tool: String
        var args: [String]
        var stderr: String
        var description: String { "\(tool) \(args.joined(separator: " "))" }
    }

    /// mosquitto 2.1's exact texts, including the blank line and the `--help` hint where 2.1 prints them.
    static let wordings: [Wording] = {
        func hint(_ tool: String) -> String { "\nUse '\(tool) --help' to see usage.\n" }
        func pub(_ args: [String], _ text: String, hinted: Bool = true) -> Wording {
            Wording(tool: "mqtt-pub", args: args, stderr: text + (hinted ? hint("mqtt-pub") : ""))
        }
        func sub(_ args: [String], _ text: String) -> Wording { Wording(tool: "mqtt-sub", args: args, stderr: text + hint("mqtt-sub")) }
        func rr(_ args: [String], _ text: String) -> Wording { Wording(tool: "mqtt-rr", args: args, stderr: text + hint("mqtt-rr")) }
        return [
            pub(["--psk"], "Error: --psk argument given but no key specified.\n\n"),
            pub(["-M"], "Error: -M argument given but max_inflight not specified.\n\n"),
            pub(["-V"], "Error: --protocol-version argument given but no version specified.\n\n"),
            pub(["-A"], "Error: -A argument given but no address specified.\n\n"),
            pub(["-V", "5", "-D", "invalid", "receive-maximum", "1"], "Error: Invalid command invalid given in --property argument.\n\n"),
            pub(["-V", "5", "-D", "connect", "invalid", "1"], "Error: Invalid property name invalid given in --property argument.\n\n"),
            pub(["-D", "connect", "will-delay-interval", "1"], "Error: will-delay-interval property not allowed for connect in --property argument.\n\n"),
            pub(["-D", "publish", "subscription-identifier", "1"],
                "Error: subscription-identifier property not supported for publish in --property argument.\n\n"),
            pub(["-D", "connect", "receive-maximum", "65536"], "Error: Property value (65536) out of range for property receive-maximum.\n\n"),
            pub(["-D", "connect", "user-property", "key"], "Error: --property argument given but not enough arguments specified.\n\n"),
            // -f: the system's reason, then the file name again, and no --help hint.
            pub(["-t", "topic", "-f", "/nonexistent/file"],
                "Error: Unable to read file \"/nonexistent/file\": No such file or directory.\nError loading input file \"/nonexistent/file\".\n", hinted: false),
            pub(["-t", "topic", "-f", "/"], "Error: Unable to read file \"/\": Is a directory.\nError loading input file \"/\".\n", hinted: false),
            pub(["-o"], "Error: -o argument given but no options file specified.\n\n"),
            pub(["--retain-handling", "new"], "Error: Unknown option '--retain-handling'.\n"),
            pub(["--tls-keylog"], "Error: --tls-keylog argument given but no file specified.\n\n"),
            pub(["-L", "invalid://"], "Error: Unsupported URL scheme.\n\n"),
            sub([], "Error: You must specify a topic to subscribe to (-t) or unsubscribe from (-U).\n"),
            sub(["-o", "file1", "-o", "file2"], "Error: Duplicate -o argument given.\n\n"),
            sub(["--retain-handling", "invalid"], "Error: Unknown value 'invalid' for --retain-handling.\n\n"),
            sub(["-F", "%Z"], "Error: Invalid format specifier 'Z'.\n"),
            sub(["-F", "%.2"], "Error: Incomplete format specifier.\n"),
            rr([], "Error: All of topic, message, and response topic must be supplied.\n"),
            rr(["-e", "topic/+"], "Error: Invalid response topic 'topic/+', does it contain '+' or '#'?\n"),
        ]
    }()

    @Test("Argument errors: mosquitto 2.1's words, naming the bad -D command or property and the -f file's system error",
          arguments: wordings)
    func wording(_ w: Wording) async throws {
        let (env, home) = environmentWithoutOptionsFiles()
        defer { try? FileManager.default.removeItem(atPath: home) }
        let r = try await run(tool(w.tool), w.args, environment: env)
        #expect(r.status == 1, "\(w): \(r)")
        #expect(r.stderr == w.stderr, "\(w)\nexpected: \(w.stderr.debugDescription)\ngot:      \(r.stderr.debugDescription)")
        #expect(r.stdout.isEmpty, "\(w): \(r.out)")
    }

    @Test("-D publish properties go out in the order given, the PUBLISH byte for byte as mosquitto_pub's")
    func propertyOrder() async throws {
        try await withBroker { broker in
            let args = ["-V", "5", "-q", "1", "-t", "order/x", "-m", "message", "-i", "order",
                        "-D", "publish", "content-type", "application/json",
                        "-D", "publish", "correlation-data", "some-data",
                        "-D", "publish", "payload-format-indicator", "1",
                        "-D", "publish", "response-topic", "/dev/null",
                        "-D", "publish", "user-property", "publish", "up",
                        "-D", "publish", "message-expiry-interval", "59"]
            let (ours, r) = try await recorded(broker, tool("mqtt-pub"), args)
            #expect(r.status == 0, "\(r)")
            let publish = try #require(ours.first { $0.type == 3 })
            #expect(publish.properties.map(\.0) == [0x03, 0x09, 0x01, 0x08, 0x26, 0x02])
            if let mosquitto = mosquittoTool("mosquitto_pub") {
                let (theirs, theirRun) = try await recorded(broker, mosquitto, args)
                #expect(theirRun.status == 0, "mosquitto_pub: \(theirRun)")
                let theirPublish = try #require(theirs.first { $0.type == 3 }, "mosquitto_pub: \(theirRun); recorded: \(theirs.map(\.type))")
                #expect(publish.body == theirPublish.body && publish.flags == theirPublish.flags)
            }
        }
    }

    @Test("mqtt-rr sends no correlation data unless asked; its request is mosquitto_rr's byte for byte")
    func requestWithoutCorrelationData() async throws {
        try await withBroker { broker in
            for extra in [[String](), ["-D", "publish", "correlation-data", "req-1"]] {
                let args = ["-t", "rr/request", "-e", "rr/response", "-m", "message", "-q", "1", "-W", "1", "-i", "rr"] + extra
                let (ours, r) = try await recorded(broker, tool("mqtt-rr"), args)
                #expect(r.status == 27, "nobody answers: \(r)")
                let request = try #require(ours.first { $0.type == 3 })
                #expect(request.properties.map(\.0) == (extra.isEmpty ? [0x08] : [0x09, 0x08]), "\(extra)")
                if let mosquitto = mosquittoTool("mosquitto_rr") {
                    let (theirs, _) = try await recorded(broker, mosquitto, args)
                    let theirRequest = try #require(theirs.first { $0.type == 3 })
                    #expect(request.body == theirRequest.body, "\(extra)")
                }
            }
        }
    }

    @Test("The README's shell responder (mqtt-sub -F '%R %D %p' | while read …) answers mqtt-rr")
    func readmeResponder() async throws {
        try await withBroker { broker in
            let host = "-h \(broker.host) -p \(broker.port)"
            let script = """
            \(tool("mqtt-sub")) \(host) -V mqttv5 -t service/echo -F '%R %D %p' -C 1 | while read -r topic corr payload; do
                \(tool("mqtt-pub")) \(host) -V mqttv5 -t "$topic" -D publish correlation-data "$corr" -m "reply to $payload"; done
            """
            let responder = try Child("/bin/sh", ["-c", script])
            // The responder subscribes without a retained message to show it; give it a moment, then ask until it answers.
            var answer: RunResult?
            for _ in 0..<20 {
                let r = try await run(tool("mqtt-rr"), at(broker) + ["-t", "service/echo", "-e", "responses/me",
                                                                    "-D", "publish", "correlation-data", "req-1", "-m", "message #1", "-W", "1"])
                if r.status == 0 {
                    answer = r
                    break
                }
            }
            _ = await responder.wait(timeout: .seconds(10))
            #expect(answer?.out == "reply to message #1\n", "\(String(describing: answer))")
        }
    }

    /// Replaces the client ids, which differ between the two runs.
    func sameIDs(_ s: String, _ id: String) -> String { s.replacingOccurrences(of: id, with: "ID") }

    @Test("-d prints mosquitto_sub's lines in mosquitto_sub's order: 'Subscribed (mid: 1): 2', the message, one DISCONNECT")
    func debugOutput() async throws {
        try await withBroker { broker in
            let client = try await libraryClient(broker)
            try await client.publish(MQTTMessage(topic: "dbg/x", string: "hello", qos: .exactlyOnce, retain: true))
            await client.shutdown()
            let args = at(broker) + ["-d", "-q", "2", "-t", "dbg/x", "-C", "1", "-V", "mqttv311"]
            let ours = try await run(tool("mqtt-sub"), args + ["-i", "dbg-ours"])
            #expect(ours.status == 0, "\(ours)")
            let text = sameIDs(ours.out, "dbg-ours")
            #expect(text == """
                Client ID sending CONNECT
                Client ID received CONNACK (0)
                Client ID sending SUBSCRIBE (Mid: 1, Topic: dbg/x, QoS: 2, Options: 0x00)
                Client ID received SUBACK
                Subscribed (mid: 1): 2
                Client ID received PUBLISH (d0, q2, r1, m1, 'dbg/x', ... (5 bytes))
                Client ID sending PUBREC (m1, rc0)
                Client ID received PUBREL (Mid: 1)
                Client ID sending PUBCOMP (m1)
                hello
                Client ID sending DISCONNECT

                """, "\(ours.out)")
            if let mosquitto = mosquittoTool("mosquitto_sub") {
                let theirs = try await run(mosquitto, args + ["-i", "dbg-theirs"])
                #expect(text == sameIDs(theirs.out, "dbg-theirs"), "ours:\n\(ours.out)\ntheirs:\n\(theirs.out)")
                for (p, m) in [("mqtt-pub", "mosquitto_pub")] {
                    let pubArgs = at(broker) + ["-d", "-q", "1", "-t", "dbg/p", "-m", "x"]
                    let a = try await run(tool(p), pubArgs + ["-i", "dbg-ours"])
                    let b = try await run(mosquittoTool(m)!, pubArgs + ["-i", "dbg-theirs"])
                    #expect(sameIDs(a.out, "dbg-ours") == sameIDs(b.out, "dbg-theirs"), "\(p):\n\(a.out)\n\(m):\n\(b.out)")
                }
            }
        }
    }

    @Test("stdout is flushed after every message: with 2>&1, %J errors land between the messages exactly as mosquitto_sub's")
    func interleaving() async throws {
        try await withBroker { broker in
            let client = try await libraryClient(broker)
            for (topic, payload) in [("il/a", #"{"n":1}"#), ("il/b", "not json"), ("il/c", #"[2]"#)] {
                try await client.publish(MQTTMessage(topic: topic, string: payload, qos: .atLeastOnce, retain: true))
            }
            await client.shutdown()
            let args = at(broker) + ["-t", "il/#", "-C", "3", "-F", "%t %J"]
            let ours = try Child(tool("mqtt-sub"), args, combined: true)
            let r = await ours.wait(timeout: .seconds(30))
            let text = normalisedTimestamps(r.stdout)
            #expect(text.contains("Error: Message payload is not valid JSON on topic il/b.\nil/b \n"), "\(text)")
            if let mosquitto = mosquittoTool("mosquitto_sub") {
                let theirs = try Child(mosquitto, args, combined: true)
                let t = await theirs.wait(timeout: .seconds(30))
                // 2.0.11's JSON differs from 2.1's in "retain" (0/1, not false/true); the interleaving is the point here.
                let theirText = normalisedTimestamps(t.stdout).replacingOccurrences(of: #""retain":1"#, with: #""retain":true"#)
                #expect(text == theirText, "ours:\n\(text)\ntheirs:\n\(theirText)")
            }
        }
    }

    @Test("TLS failures exit 8 (or 7 for plain MQTT to a TLS port) and say what failed")
    func tlsFailures() async throws {
        try await withBroker(.init(tls: true)) { broker in
            let files = try #require(broker.tlsFiles)
            let tlsPort = String(try #require(broker.tlsPort))
            func pub(_ args: [String]) async throws -> RunResult {
                try await run(tool("mqtt-pub"), args + ["-t", "tls/x", "-m", "x"])
            }
            let good = try await pub(["-h", "localhost", "-p", tlsPort, "--cafile", files.caFile])
            #expect(good.status == 0, "\(good)")

            let untrusted = try await pub(["-h", "localhost", "-p", tlsPort, "--cafile", files.wrongCAFile])
            #expect(untrusted.status == 8, "\(untrusted)")
            #expect(untrusted.stderr.hasPrefix("Error: A TLS error occurred: the broker's certificate is not trusted ("), "\(untrusted)")
            #expect(untrusted.stderr.contains("--cafile") && untrusted.stderr.split(separator: "\n").count == 1, "\(untrusted)")

            // The same broker under a name its certificate (localhost, 127.0.0.1) does not cover.
            let relay = try PacketRecorder(forwardingTo: Int(tlsPort)!, address: "127.0.0.2")
            defer { relay.close() }
            let mismatch = try await pub(["-h", "127.0.0.2", "-p", String(relay.port), "--cafile", files.caFile])
            #expect(mismatch.status == 8, "\(mismatch)")
            #expect(mismatch.stderr.hasPrefix(#"Error: A TLS error occurred: the broker's certificate is not for "127.0.0.2""#), "\(mismatch)")
            let insecure = try await pub(["-h", "127.0.0.2", "-p", String(relay.port), "--cafile", files.caFile, "--insecure"])
            #expect(insecure.status == 0, "--insecure skips the name check: \(insecure)")

            let tlsToPlain = try await pub(["-h", "localhost", "-p", String(broker.port), "--cafile", files.caFile])
            #expect(tlsToPlain.status == 8, "\(tlsToPlain)")
            #expect(tlsToPlain.stderr.contains("did not answer in TLS"), "\(tlsToPlain)")

            let plainToTLS = try await pub(["-h", "localhost", "-p", tlsPort])
            #expect(plainToTLS.status == 7, "\(plainToTLS)")
            #expect(plainToTLS.stderr.contains("TLS listener"), "\(plainToTLS)")

            if let mosquitto = mosquittoTool("mosquitto_pub") {
                let a = try await run(mosquitto, ["-h", "localhost", "-p", String(broker.port), "--cafile", files.caFile, "-t", "x", "-m", "x"])
                let b = try await run(mosquitto, ["-h", "localhost", "-p", tlsPort, "-t", "x", "-m", "x"])
                #expect(a.status == 8 && b.status == 7, "mosquitto_pub: \(a) \(b)")
            }
        }
    }

    @Test("-o reads the options from the given file instead of the default one")
    func optionsFileArgument() async throws {
        try await withBroker { broker in
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            try "-t wrong/topic\n-m wrong\n".write(toFile: dir + "/mosquitto_pub", atomically: true, encoding: .utf8)
            try "# chosen with -o\n-h \(broker.host)\n-p \(broker.port)\n-t o/x\n-m from the -o file\n-q 1\n"
                .write(toFile: dir + "/chosen", atomically: true, encoding: .utf8)
            var env = ProcessInfo.processInfo.environment
            env["XDG_CONFIG_HOME"] = dir
            let listener = try await libraryClient(broker)
            let stream = try await listener.subscribe("#", qos: .atLeastOnce)
            let r = try await run(tool("mqtt-pub"), ["-o", dir + "/chosen"], environment: env)
            #expect(r.status == 0, "\(r)")
            var iterator = stream.makeAsyncIterator()
            let m = try await iterator.next()
            #expect(m?.topic == "o/x" && m?.string == "from the -o file")
            await listener.shutdown()
        }
    }

    @Test("--retain-handling sets the SUBSCRIBE options and the broker honours it")
    func retainHandling() async throws {
        try await withBroker { broker in
            let client = try await libraryClient(broker)
            try await client.publish(MQTTMessage(topic: "rh/x", string: "kept", qos: .atLeastOnce, retain: true))
            await client.shutdown()
            for (handling, bits) in [("always", UInt8(0x00)), ("new", 0x10), ("never", 0x20)] {
                let (packets, r) = try await recorded(broker, tool("mqtt-sub"),
                                                      ["-V", "5", "-q", "1", "-t", "rh/x", "--retain-handling", handling, "-W", "1", "-C", "1"])
                let subscribe = try #require(packets.first { $0.type == 8 })
                // Packet id (2), no properties (1), topic (2 + 4), options.
                #expect(subscribe.body.last == bits | 1, "\(handling)")
                if handling == "never" {
                    #expect(r.status == 27 && r.out.isEmpty, "\(r)")
                } else {
                    #expect(r.status == 0 && r.out == "kept\n", "\(handling): \(r)")
                }
            }
        }
    }

    @Test("--tls-keylog appends the session keys in NSS key log format")
    func tlsKeylog() async throws {
        try await withBroker(.init(tls: true)) { broker in
            let files = try #require(broker.tlsFiles)
            let dir = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let keylog = dir + "/keys"
            let r = try await run(tool("mqtt-pub"), ["-h", "localhost", "-p", String(try #require(broker.tlsPort)), "--cafile", files.caFile,
                                                     "--tls-keylog", keylog, "-t", "k/x", "-m", "x"])
            #expect(r.status == 0, "\(r)")
            let lines = (try? String(contentsOfFile: keylog, encoding: .utf8))?.split(separator: "\n") ?? []
            #expect(!lines.isEmpty && lines.allSatisfy { $0.split(separator: " ").count == 3 }, "\(lines)")
            #expect(lines.contains { $0.hasPrefix("CLIENT_") }, "\(lines)")
        }
    }

    @Test("2.1 formats: %x widths and separators, %d and %f numbers, JSON user properties as an array of pairs")
    func formats21() async throws {
        try await withBroker { broker in
            let client = try await libraryClient(broker)
            try await client.publish(MQTTMessage(topic: "f/text", string: "message", qos: .atLeastOnce, retain: true))
            try await client.publish(MQTTMessage(topic: "f/float", payload: [0xF4, 0xFD, 0x34, 0x3F], qos: .atLeastOnce, retain: true))
            try await client.publish(MQTTMessage(topic: "f/double", payload: [0x58, 0x39, 0xB4, 0xC8, 0x76, 0xBE, 0x05, 0x40],
                                                 qos: .atLeastOnce, retain: true))
            await client.shutdown()
            // Published by mqtt-pub, whose -D properties keep their order: two user properties with one name first.
            let pub = try await run(tool("mqtt-pub"), at(broker) + ["-V", "5", "-q", "1", "-r", "-t", "f/json", "-m", "{}",
                                                                  "-D", "publish", "user-property", "a", "b", "-D", "publish", "user-property", "a", "c",
                                                                  "-D", "publish", "content-type", "text/plain"])
            #expect(pub.status == 0, "\(pub)")
            func sub(_ topic: String, _ format: String, _ extra: [String] = []) async throws -> String {
                let r = try await run(tool("mqtt-sub"), at(broker) + ["-V", "5", "-q", "1", "-t", topic, "-C", "1", "-F", format] + extra)
                #expect(r.status == 0, "\(r)")
                return normalisedTimestamps(r.stdout)
            }
            #expect(try await sub("f/text", "%x|%.2:x|%.1x|%18x|%-18x|%X") ==
                    "6d657373616765|6d:65:73:73:61:67:65|6 d 6 5 7 3 7 3 6 1 6 7 6 5|    6d657373616765|6d657373616765    |6D657373616765\n")
            #expect(try await sub("f/text", "%4x|%-3p|%.3t") == "6d657373|mes|f/t\n")
            #expect(try await sub("f/float", "%.3f") == "0.707\n")
            #expect(try await sub("f/double", "%.3d|%8.2d") == "2.718|    2.72\n")
            #expect(try await sub("f/json", "%j") == #"{"tst":"T","topic":"f/json","qos":1,"retain":true,"payloadlen":2,"mid":1,"properties":{"user-properties":[{"a":"b"},{"a":"c"}],"content-type":"text/plain"},"payload":"{}"}"# + "\n")
            #expect(try await sub("f/json", "%J", ["--pretty"]) == """
                {
                \t"tst":"T",
                \t"topic":\t"f/json",
                \t"qos":\t1,
                \t"retain":\ttrue,
                \t"payloadlen":\t2,
                \t"mid":\t1,
                \t"properties":\t{
                \t\t"user-properties":\t[{
                \t\t\t\t"a":\t"b"
                \t\t\t}, {
                \t\t\t\t"a":\t"c"
                \t\t\t}],
                \t\t"content-type":\t"text/plain"
                \t},
                \t"payload":\t{
                \t}
                }

                """)
        }
    }
}
