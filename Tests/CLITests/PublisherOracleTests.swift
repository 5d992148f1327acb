import Foundation
import Mosquitto
import MosquittoBroker
import MosquittoTestSupport
import Testing

/// mqtt-pub against mosquitto_pub: a mosquitto_sub listener must see the same messages from both.
@Suite(.serialized, .enabled(if: hasMosquittoClients, "mosquitto_sub/mosquitto_pub are not installed"), .timeLimit(.minutes(5 * testTimeScale)))
struct PublisherOracleTests {
    static let listenerFormat = "%t|%q|%r|%l|%x|%F|%C|%R|%D|%P|%E"

    /// Publishes with `publisher` for each command line and returns what a mosquitto_sub listener printed.
    func listen(_ broker: MosquittoBroker, publisher: String, commands: [[String]], stdin: [[UInt8]?], expected: Int) async throws -> RunResult {
        let tag = UUID().uuidString.prefix(6)
        let listener = at(broker) + ["-V", "mqttv5", "-q", "2", "-t", "p/#", "-c", "-i", "l-\(tag)"]
        let created = try await run(mosquittoTool("mosquitto_sub")!, listener + ["-E"])
        #expect(created.status == 0)
        for (command, input) in zip(commands, stdin) {
            let r = try await run(publisher, at(broker) + command, stdin: input)
            #expect(r.status == 0, "\(publisher) \(command): \(r)")
        }
        return try await run(mosquittoTool("mosquitto_sub")!, listener + ["-C", String(expected), "-W", "10", "-F", Self.listenerFormat])
    }

    @Test("A mosquitto_sub listener sees mqtt-pub's messages exactly as mosquitto_pub's")
    func sameMessages() async throws {
        let directory = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let binary = directory + "/binary"
        try Data([0, 1, 2, 0xFF, 10, 13]).write(to: URL(fileURLWithPath: binary))
        let empty = directory + "/empty"
        try Data().write(to: URL(fileURLWithPath: empty))
        let commands: [([String], [UInt8]?)] = [
            (["-t", "p/m", "-m", "hello", "-q", "1"], nil),
            (["-t", "p/q1", "-m", "qos one", "-q", "1"], nil),
            (["-t", "p/q2", "-m", "qos two", "-q", "2"], nil),
            (["-t", "p/n", "-n", "-q", "1"], nil),
            (["-t", "p/f", "-f", binary, "-q", "1"], nil),
            (["-t", "p/fe", "-f", empty, "-q", "1"], nil),
            (["-t", "p/s", "-s", "-q", "1"], Array("stdin\nas one\n".utf8)),
            (["-t", "p/l", "-l", "-q", "1"], Array("one\ntwo\n\nthree".utf8)),
            (["-t", "p/rep", "-m", "again", "--repeat", "3", "-q", "1"], nil),
            (["-t", "p/v5", "-m", "props", "-q", "1", "-D", "publish", "payload-format-indicator", "1",
              "-D", "publish", "content-type", "text/plain", "-D", "publish", "response-topic", "p/answer",
              "-D", "publish", "correlation-data", "c-42", "-D", "publish", "user-property", "k", "v",
              "-D", "publish", "user-property", "k", "w", "-D", "publish", "message-expiry-interval", "3600"], nil),
            (["-L", "mqtt://BROKER/p/url", "-m", "via url", "-q", "1"], nil),
            (["-t", "p/v311", "-m", "old", "-V", "mqttv311", "-q", "1"], nil),
        ]
        let expected = 1 + 1 + 1 + 1 + 1 + 1 + 1 + 4 + 3 + 1 + 1 + 1
        try await withBroker { broker in
            let cmds = commands.map { $0.0.map { $0.replacingOccurrences(of: "BROKER", with: "\(broker.host):\(broker.port)") } }
            let inputs = commands.map(\.1)
            let ours = try await listen(broker, publisher: tool("mqtt-pub"), commands: cmds, stdin: inputs, expected: expected)
            let theirs = try await listen(broker, publisher: mosquittoTool("mosquitto_pub")!, commands: cmds, stdin: inputs, expected: expected)
            #expect(ours.status == 0, "ours \(ours)")
            #expect(theirs.status == 0, "theirs \(theirs)")
            // The remaining message expiry drops a second for every second the message waited in the broker's
            // queue, and a loaded machine may take a few between publishing and reading.
            let normalise = { (r: RunResult) in
                r.out.replacingOccurrences(of: #"\|35[5-9][0-9]\n"#, with: "|3600\n", options: .regularExpression)
            }
            #expect(normalise(ours) == normalise(theirs), "ours:\n\(ours.out)\ntheirs:\n\(theirs.out)")
        }
    }

    @Test("Retained messages, clearing them, and a will: as mosquitto_pub")
    func retainAndWill() async throws {
        try await withBroker { broker in
            for publisher in [tool("mqtt-pub"), mosquittoTool("mosquitto_pub")!] {
                let r = try await run(publisher, at(broker) + ["-t", "p/retained", "-m", "kept", "-r", "-q", "1"])
                #expect(r.status == 0)
                let seen = try await run(mosquittoTool("mosquitto_sub")!, at(broker) + ["-t", "p/retained", "-C", "1", "-W", "5", "-F", "%t %r %p"])
                #expect(seen.out == "p/retained 1 kept\n", "\(publisher)")
                let clear = try await run(publisher, at(broker) + ["-t", "p/retained", "-n", "-r", "-q", "1"])
                #expect(clear.status == 0)
                let none = try await run(mosquittoTool("mosquitto_sub")!, at(broker) + ["-t", "p/retained", "-W", "1"])
                #expect(none.out == "" && none.status == 27, "\(publisher): \(none)")
            }
        }
    }
}
