import Foundation
import Mosquitto
import MosquittoBroker
import MosquittoTestSupport
import Testing

/// Python with `msgpack` (installed by scripts/bootstrap.sh): runs `script` and returns its standard output.
private func python(_ script: String) async throws -> [UInt8] {
    let paths = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin").split(separator: ":").map { "\($0)/python3" }
    guard let python = paths.first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else {
        throw CLICodecError(message: "python3 is not on PATH")
    }
    let result = try await run(python, ["-c", script])
    guard result.status == 0 else {
        throw CLICodecError(message: "python failed (run scripts/bootstrap.sh, or python3 -m pip install msgpack): \(result.stderr)")
    }
    return result.stdout
}

private struct CLICodecError: Error { var message: String }

@Suite("mqtt-sub --decode and mqtt-pub --encode (MessagePack)", .timeLimit(.minutes(5 * testTimeScale)))
struct MessagePackCLITests {
    /// A reading with ten fields, as Python's msgpack packs it.
    static let reading = """
        {"device": "kitchen-\\u00e9", "sequence": 4294967296, "celsius": 21.5, "humidity": 0.1, "pressure": -1013.25,
         "battery": -3, "ok": True, "note": None, "tags": ["a", "b\\n", 1e-07], "nested": {"x": [1, {"y": 1e+300}]}}
        """

    @Test("mosquitto_pub -f reading.msgpack seen through mqtt-sub --decode msgpack prints what Python's json.dumps(msgpack.unpackb(...)) prints; a malformed payload is reported and skipped; --json embeds the value")
    func subDecodesLikePython() async throws {
        guard let mosquittoPub = mosquittoTool("mosquitto_pub") else { Issue.record("mosquitto_pub is not installed"); return }
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let file = dir + "/reading.msgpack"
        let expected = try await python("""
            import json, msgpack, sys
            v = \(Self.reading)
            open('\(file)', 'wb').write(msgpack.packb(v, use_bin_type=True))
            print(json.dumps(msgpack.unpackb(open('\(file)', 'rb').read())))
            """)
        try "\u{92}\u{1}\u{c1}".data(using: .isoLatin1)!.write(to: URL(fileURLWithPath: dir + "/bad.msgpack"))
        let expectedLine = String(decoding: expected, as: UTF8.self)
        #expect(expectedLine.hasPrefix("{\"device\": \"kitchen-\\u00e9\""))

        try await withBroker { broker in
            // A retained copy first: once the subscribers printed it they are surely subscribed.
            _ = try await run(mosquittoPub, at(broker) + ["-t", "cli/mp/retained", "-r", "-q", "1", "-f", file])
            let plain = try Child(tool("mqtt-sub"), at(broker) + ["-t", "cli/mp/#", "-v", "--decode", "msgpack", "-C", "3", "-W", "30"])
            let lines = try Child(tool("mqtt-sub"), at(broker) + ["-V", "5", "-t", "cli/mp/#", "--json", "--decode", "auto", "-C", "3", "-W", "30"])
            // --json alone decodes by content type too (MessagePack only), so that `mqtt-sub --json | jq` works.
            let bare = try Child(tool("mqtt-sub"), at(broker) + ["-V", "5", "-t", "cli/mp/#", "--json", "-C", "3", "-W", "30"])
            #expect(await printedSomething(plain))
            #expect(await printedSomething(lines))
            #expect(await printedSomething(bare))
            _ = try await run(mosquittoPub, at(broker) + ["-t", "cli/mp/bad", "-q", "1", "-f", dir + "/bad.msgpack"])
            // From mqtt-pub on MQTT 5 with the content type, so that --decode auto decodes it.
            let json = try await python("import json; print(json.dumps(\(Self.reading)))")
            let pub = try await run(tool("mqtt-pub"), at(broker) + ["-V", "5", "-t", "cli/mp/live", "-q", "1", "--encode", "msgpack",
                                                                  "-m", String(decoding: json, as: UTF8.self)])
            #expect(pub.status == 0, "\(pub)")

            let p = await plain.wait()
            #expect(p.status == 0, "\(p)")
            #expect(p.out == "cli/mp/retained \(expectedLine)cli/mp/live \(expectedLine)", "\(p.out)")
            #expect(p.stderr.contains("Error: Message payload is not valid MessagePack on topic cli/mp/bad"), "\(p.stderr)")

            // --json with --decode auto: the retained and the malformed message have no content type (printed as
            // they are, base64), the one from mqtt-pub --encode msgpack carries application/msgpack and is embedded
            // as a value.
            for child in [lines, bare] {
                let l = await child.wait()
                let objects = l.stdout.split(separator: 10).map { try? JSONSerialization.jsonObject(with: Data($0)) as? [String: Any] }
                #expect(objects.count == 3, "\(l)")
                if objects.count == 3, let first = objects[0], let second = objects[2] {
                    #expect(first["payload_base64"] != nil && objects[1]?["payload_base64"] as? String == "kgHB")
                    let want = try JSONSerialization.jsonObject(with: Data(expected)) as? NSDictionary
                    #expect((second["payload"] as? NSDictionary) == want, "\(l.out)")
                    #expect((second["properties"] as? [String: Any])?["content_type"] as? String == "application/msgpack")
                }
            }
        }
    }

    @Test("mqtt-pub --encode msgpack sends Python's packing of the JSON with the content type; invalid JSON exits 1 and sends nothing; with -l a bad line is reported by number and skipped")
    func pubEncodesLikePython() async throws {
        let text = #"{"id": "kitchen", "celsius": 21.5, "list": [1, -1, 18446744073709551615, null, true], "u": "\u00e9"}"#
        let hex = try await python("import json, msgpack; print(msgpack.packb(json.loads('\(text)'), use_bin_type=True).hex())")
        let expected = String(decoding: hex, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        try await withBroker { broker in
            let client = try await libraryClient(broker)
            let stream = try await client.subscribe("cli/enc/#", qos: .atLeastOnce)
            let good = try await run(tool("mqtt-pub"), at(broker) + ["-V", "5", "-t", "cli/enc/a", "-q", "1", "--encode", "msgpack", "-m", text])
            #expect(good.status == 0, "\(good)")
            let bad = try await run(tool("mqtt-pub"), at(broker) + ["-t", "cli/enc/bad", "-q", "1", "--encode", "msgpack", "-m", "{\"a\": }"])
            #expect(bad.status == 1)
            #expect(bad.stderr.contains("Error: --encode msgpack: the message is not valid JSON"), "\(bad.stderr)")
            let unknown = try await run(tool("mqtt-pub"), at(broker) + ["-t", "cli/enc/bad", "--encode", "cbor", "-m", "1"])
            #expect(unknown.status == 1 && unknown.stderr.contains("--encode takes msgpack"), "\(unknown)")
            let lines = try await run(tool("mqtt-pub"), at(broker) + ["-t", "cli/enc/l", "-q", "1", "-l", "--encode", "msgpack"],
                                      stdin: Array("[1]\nnot json\n{\"b\": 2}\n".utf8))
            #expect(lines.status == 1, "\(lines)")
            #expect(lines.stderr.contains("line 2 is not valid JSON"), "\(lines.stderr)")

            var got: [MQTTMessage] = []
            for try await m in stream {
                got.append(m)
                if got.count == 3 { break }
            }
            #expect(got.map(\.topic) == ["cli/enc/a", "cli/enc/l", "cli/enc/l"])   // nothing on cli/enc/bad
            #expect(got.first.map { $0.payload.map { String(format: "%02x", $0) }.joined() } == expected)
            #expect(got.first?.properties.contentType == "application/msgpack")
            #expect(got.dropFirst().map(\.payload) == [[0x91, 0x01], [0x81, 0xa1, 0x62, 0x02]])
            await client.shutdown()
        }
    }
}
