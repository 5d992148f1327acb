import Foundation
import Mosquitto
import MosquittoBroker
import MosquittoTestSupport
import Testing

/// What the originals do not have, or do differently: secrets, JSON lines, rr, options file, exit codes.
@Suite(.serialized, .timeLimit(.minutes(5 * testTimeScale)))
struct FeatureTests {
    static let password = "s3cr3t-Pa55word-xyzzy"

    @Test("Passwords from a file, the environment or -P work, and never appear in any output, even with -d")
    func passwordSources() async throws {
        try await withBroker(.init(users: ["alice": Self.password])) { broker in
            let directory = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let file = directory + "/pw"
            try Data((Self.password + "\n").utf8).write(to: URL(fileURLWithPath: file))
            var env = ProcessInfo.processInfo.environment
            env["CLI_TEST_PASSWORD"] = Self.password
            let listener = try await run(tool("mqtt-sub"), at(broker) + ["-u", "alice", "--password-file", file, "-t", "pw/#", "-E", "-d"])
            #expect(listener.status == 0, "\(listener)")
            for source in [["--password-file", file], ["--password-env", "CLI_TEST_PASSWORD"], ["-P", Self.password]] {
                let ok = try await run(tool("mqtt-pub"), at(broker) + ["-u", "alice"] + source + ["-t", "pw/a", "-m", "x", "-d", "-q", "1"],
                                       environment: env)
                #expect(ok.status == 0, "\(source): \(ok)")
                #expect(!ok.out.contains(Self.password) && !ok.stderr.contains(Self.password), "password printed with \(source)")
                #expect(ok.out.contains("sending CONNECT"), "-d prints libmosquitto's log: \(ok.out)")
            }
            // A wrong password: refused with the CONNACK code, as mosquitto_pub (5 on MQTT 3.1.1, 135 on MQTT 5: mosquitto answers "not authorised").
            let wrongFile = directory + "/wrong"
            try Data("not-\(Self.password)\n".utf8).write(to: URL(fileURLWithPath: wrongFile))
            for (version, code) in [("mqttv311", Int32(5)), ("mqttv5", Int32(135))] {
                let bad = try await run(tool("mqtt-pub"), at(broker) + ["-V", version, "-u", "alice", "--password-file", wrongFile, "-t", "a", "-m", "x", "-d"])
                #expect(bad.status == code, "\(version): \(bad)")
                #expect(!bad.out.contains(Self.password) && !bad.stderr.contains(Self.password))
                #expect(bad.stderr.hasPrefix("Connection error: "), "\(bad)")
                if let theirs = mosquittoTool("mosquitto_pub") {
                    let m = try await run(theirs, at(broker) + ["-V", version, "-u", "alice", "-P", "wrong", "-t", "a", "-m", "x"])
                    #expect(m.status == bad.status, "mosquitto_pub exits \(m.status): \(m.stderr)")
                }
            }
            // No user: not authorised.
            let anonymous = try await run(tool("mqtt-sub"), at(broker) + ["-t", "a", "-W", "2"])
            #expect(anonymous.status == 5, "\(anonymous)")
        }
    }

    @Test("--json keeps binary payloads (base64) and every MQTT 5 property, one object per line")
    func jsonLines() async throws {
        try await withBroker { broker in
            let sub = try Child(tool("mqtt-sub"), at(broker) + ["-V", "mqttv5", "-q", "1", "-t", "j/#", "-C", "2", "--json", "-W", "20"])
            let client = try await libraryClient(broker)
            var props = MessageProperties()
            props.contentType = "application/octet-stream"
            props.correlationData = [0xDE, 0xAD, 0xBE, 0xEF]
            props.userProperties = [UserProperty("k", "1"), UserProperty("k", "2")]
            props.responseTopic = "j/reply"
            props.payloadFormat = .bytes
            props.messageExpiryInterval = 600
            let binary: [UInt8] = [0, 1, 2, 0xC3, 0x28, 0xFF, 10]
            // The first message is retained, so the subscriber gets it exactly once whenever it subscribes; once it
            // has printed it, it is surely subscribed.
            try await client.publish(MQTTMessage(topic: "j/text", string: "héllo \"json\"\n", qos: .atLeastOnce, retain: true))
            #expect(await printedSomething(sub))
            try await client.publish(MQTTMessage(topic: "j/bin", payload: binary, qos: .atLeastOnce, properties: props))
            let r = await sub.wait(timeout: .seconds(30))
            await client.shutdown()
            #expect(r.status == 0, "\(r)")
            let lines = r.out.split(separator: "\n").map(String.init)
            #expect(lines.count == 2, "\(r.out)")
            guard lines.count == 2 else { return }
            let text = try #require(try JSONSerialization.jsonObject(with: Data(lines[0].utf8)) as? [String: Any])
            #expect(text["payload"] as? String == "héllo \"json\"\n")
            #expect(text["topic"] as? String == "j/text")
            let bin = try #require(try JSONSerialization.jsonObject(with: Data(lines[1].utf8)) as? [String: Any])
            #expect(bin["payload"] == nil)
            #expect((bin["payload_base64"] as? String).flatMap { Data(base64Encoded: $0) } == Data(binary))
            #expect(bin["payloadlen"] as? Int == binary.count)
            #expect(bin["qos"] as? Int == 1)
            let p = try #require(bin["properties"] as? [String: Any])
            #expect(p["content_type"] as? String == "application/octet-stream")
            #expect((p["correlation_data_base64"] as? String).flatMap { Data(base64Encoded: $0) } == Data([0xDE, 0xAD, 0xBE, 0xEF]))
            #expect(p["response_topic"] as? String == "j/reply")
            #expect(p["payload_format_indicator"] as? Int == 0)
            #expect((p["message_expiry_interval"] as? Int).map { $0 >= 590 && $0 <= 600 } == true)
            #expect((p["user_properties"] as? [[String]]) == [["k", "1"], ["k", "2"]])
            #expect((bin["received_at"] as? String)?.hasSuffix("Z") == true)
        }
    }

    @Test("mqtt-rr sends the request with its response topic and prints the first reply, as mosquitto_rr")
    func requestResponse() async throws {
        try await withBroker { broker in
            let responder = try await libraryClient(broker)
            let requests = try await responder.subscribe("svc/echo", qos: .atLeastOnce)
            let serving = Task {
                for try await request in requests {
                    guard let topic = request.properties.responseTopic else { continue }
                    var props = MessageProperties()
                    props.correlationData = request.properties.correlationData
                    try await responder.publish(MQTTMessage(topic: topic, payload: Array("re: ".utf8) + request.payload, qos: .atLeastOnce, properties: props))
                }
            }
            let r = try await run(tool("mqtt-rr"), at(broker) + ["-t", "svc/echo", "-e", "me/replies", "-m", "ping", "-q", "1", "-v", "-W", "10"])
            #expect(r.status == 0, "\(r)")
            #expect(r.out == "me/replies re: ping\n")
            let f = try await run(tool("mqtt-rr"), at(broker) + ["-t", "svc/echo", "-e", "me/replies", "-f", "/etc/hostname", "-W", "10"])
            let hostname = try String(contentsOfFile: "/etc/hostname", encoding: .utf8)
            #expect(f.out == "re: " + hostname + "\n", "-f sends the file (mosquitto_rr 2.0.11 sent nothing): \(f)")
            let c = try await run(tool("mqtt-rr"), at(broker) + ["-t", "svc/echo", "-e", "me/replies", "-m", "x", "-W", "10",
                                                                "-D", "publish", "correlation-data", "c-1", "-F", "%D %p"])
            #expect(c.out == "c-1 re: x\n", "correlation data when asked for: \(c)")
            serving.cancel()
            // Nobody answers: -W gives up with mosquitto's code 27.
            let timeout = try await run(tool("mqtt-rr"), at(broker) + ["-t", "nobody/home", "-e", "me/replies", "-m", "x", "-W", "1"])
            #expect(timeout.status == 27 && timeout.stderr == "Timed out\n", "\(timeout)")
            await responder.shutdown()
        }
    }

    @Test("The mosquitto options file is read before the command line, with the command line winning")
    func optionsFile() async throws {
        try await withBroker { broker in
            let config = temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: config) }
            try "# defaults\n-p \(broker.port)\n-h \(broker.host)\n-q 1\n-m from the file with spaces\n-t cfg/a\n"
                .write(toFile: config + "/mosquitto_pub", atomically: true, encoding: .utf8)
            try "-p \(broker.port)\n-t cfg/#\n-v\n".write(toFile: config + "/mosquitto_sub", atomically: true, encoding: .utf8)
            var env = ProcessInfo.processInfo.environment
            env["XDG_CONFIG_HOME"] = config
            let sub = try Child(tool("mqtt-sub"), ["-C", "2", "-W", "20", "-t", "other/x"], environment: env)
            let client = try await libraryClient(broker)
            try await client.publish(MQTTMessage(topic: "other/x", string: "ready", qos: .atLeastOnce, retain: true))
            #expect(await printedSomething(sub))
            let pub = try await run(tool("mqtt-pub"), ["-t", "cfg/b"], environment: env)
            #expect(pub.status == 0, "\(pub)")
            let r = await sub.wait()
            await client.shutdown()
            #expect(r.out == "other/x ready\ncfg/b from the file with spaces\n", "\(r)")
        }
    }

    @Test("SIGINT and SIGTERM end mqtt-sub with exit 0 after printing what arrived; -W exits 27")
    func signalsAndTimeout() async throws {
        try await withBroker { broker in
            for sig in [SIGINT, SIGTERM] {
                let sub = try Child(tool("mqtt-sub"), at(broker) + ["-t", "s/#"])
                let client = try await libraryClient(broker)
                while sub.currentOutput().isEmpty {
                    try await client.publish(to: "s/a", string: "x", qos: .atMostOnce)
                    try await Task.sleep(for: .milliseconds(100))
                }
                sub.signal(sig)
                let r = await sub.wait(timeout: .seconds(10))
                #expect(r.status == 0 && !r.signalled, "signal \(sig): \(r)")
                await client.shutdown()
            }
            let w = try await run(tool("mqtt-sub"), at(broker) + ["-t", "quiet/#", "-W", "1"])
            #expect(w.status == 27 && w.stderr == "Timed out\n", "\(w)")
        }
    }

    @Test("Interrupted like mosquitto_sub: SIGINT and -W disconnect with reason 4, so the broker publishes the MQTT 5 will")
    func interruptPublishesWill() async throws {
        try await withBroker { broker in
            let watcher = try await libraryClient(broker)
            let wills = try await watcher.subscribe("wills/#")
            let sub = try Child(tool("mqtt-sub"), at(broker) + ["-V", "5", "-t", "w/#", "--will-topic", "wills/sigint", "--will-payload", "bye"])
            let probe = try await libraryClient(broker)
            while sub.currentOutput().isEmpty {
                try await probe.publish(to: "w/a", string: "x", qos: .atMostOnce)
                try await Task.sleep(for: .milliseconds(100))
            }
            sub.signal(SIGINT)
            _ = await sub.wait(timeout: .seconds(10))
            let timedOut = try await run(tool("mqtt-sub"), at(broker) + ["-V", "5", "-t", "quiet/#", "-W", "1", "--will-topic", "wills/timeout", "--will-payload", "late"])
            #expect(timedOut.status == 27)
            var got: [String] = []
            let deadline = Task { try await Task.sleep(for: .seconds(10)); wills.cancel() }
            defer { deadline.cancel() }
            for try await m in wills {
                got.append("\(m.topic)=\(m.string ?? "")")
                if got.count == 2 { break }
            }
            #expect(got == ["wills/sigint=bye", "wills/timeout=late"])
            await probe.shutdown()
            await watcher.shutdown()
        }
    }

    @Test("mqtt-sub reconnects and resumes by default; --no-reconnect fails fast with code 7")
    func reconnect() async throws {
        try await withBroker(.init(persistence: true)) { broker in
            let resumes = try Child(tool("mqtt-sub"), at(broker) + ["-t", "rc/#", "-c", "-i", "resumer", "-q", "1"])
            let failsFast = try Child(tool("mqtt-sub"), at(broker) + ["-t", "rc/#", "--no-reconnect"])
            let client = try await libraryClient(broker)
            while resumes.currentOutput().isEmpty || failsFast.currentOutput().isEmpty {
                try await client.publish(to: "rc/a", string: "first", qos: .atMostOnce)
                try await Task.sleep(for: .milliseconds(100))
            }
            await client.shutdown()
            try await broker.restart()
            let fast = await failsFast.wait(timeout: .seconds(20))
            #expect(fast.status == 7, "\(fast)")
            #expect(fast.stderr.hasPrefix("Error: "), "\(fast)")
            let again = try await libraryClient(broker)
            try await again.publish(to: "rc/b", string: "after restart", qos: .atLeastOnce)
            let deadline = ContinuousClock.now + .seconds(30)
            while !String(decoding: resumes.currentOutput(), as: UTF8.self).contains("after restart") && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(50))
            }
            resumes.signal(SIGTERM)
            let resumed = await resumes.wait(timeout: .seconds(30))
            await again.shutdown()
            #expect(resumed.status == 0, "\(resumed)")
            #expect(resumed.out.hasSuffix("after restart\n"), "\(resumed)")
        }
    }
}
