import Foundation
import Mosquitto
import MosquittoBroker
import MosquittoTestSupport
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// `mqtt-pub --outbox DIR` (with `-m`, `-l` and `--drain`) against a real broker that is away, then back.
@Suite(.timeLimit(.minutes(4 * testTimeScale)))
struct OutboxCLITests {
    /// Collects the payloads of `topic` on the broker.
    func collector(_ broker: MosquittoBroker, _ topic: String) async throws -> (MQTTClient, Locked<[String]>, Task<Void, Never>) {
        let client = try await libraryClient(broker)
        let stream = try await client.subscribe([Subscription(topic, qos: .atLeastOnce)],
                                                buffer: .init(capacity: 200_000, overflow: .backpressure(maxWait: .seconds(60))))
        let got = Locked<[String]>([])
        let task = Task {
            do {
                for try await m in stream { got.withLock { $0.append(m.string ?? "") } }
            } catch {}
        }
        return (client, got, task)
    }

    @Test("broker down: -m is kept in the outbox with exit status 75 and says so; --drain delivers it once the broker is back, and exits 0")
    func keptThenDrained() async throws {
        try await withBroker { broker in
            let dir = temporaryDirectory() + "/outbox"
            defer { try? FileManager.default.removeItem(atPath: dir) }
            await broker.stop()
            let holder = try PortHolder(port: broker.port)
            // A port that refuses: nothing listens there.
            let refusing = ["-h", "127.0.0.1", "-p", String(freeLoopbackPort())]
            let first = try await run(tool("mqtt-pub"), refusing + ["--outbox", dir, "-t", "gw/a", "-m", "one", "-q", "1"])
            #expect(first.status == 75, "\(first)")
            #expect(first.stderr.contains("1 message kept in the outbox \(dir); a later run, or mqtt-pub --outbox \(dir) --drain, sends it."), "\(first)")
            let second = try await run(tool("mqtt-pub"), refusing + ["--outbox", dir, "-t", "gw/a", "-m", "two", "-q", "2"])
            #expect(second.status == 75)
            #expect(second.stderr.contains("2 messages kept"), "\(second)")
            holder.release()
            try await broker.start()
            let (client, got, task) = try await collector(broker, "gw/#")
            let drained = try await run(tool("mqtt-pub"), at(broker) + ["--outbox", dir, "--drain"])
            #expect(drained.status == 0, "\(drained)")
            #expect(await eventually { got.value.count == 2 })
            #expect(got.value == ["one", "two"])
            // Nothing left: a second drain sends nothing and exits 0.
            let again = try await run(tool("mqtt-pub"), at(broker) + ["--outbox", dir, "--drain"])
            #expect(again.status == 0, "\(again)")
            try await Task.sleep(for: .milliseconds(300))
            #expect(got.value == ["one", "two"])
            task.cancel()
            await client.shutdown()
        }
    }

    @Test("-l with --outbox: every line read is stored before it is sent, so kill -9 loses nothing; a later run sends the rest first, in order")
    func killedWhileReading() async throws {
        try await withBroker { broker in
            let dir = temporaryDirectory() + "/outbox"
            defer { try? FileManager.default.removeItem(atPath: dir) }
            // The broker is away but its port is held: mqtt-pub's CONNECT goes unanswered, it keeps reading its input.
            await broker.stop()
            let holder = try PortHolder(port: broker.port)
            let count = 10_000
            let input = (1...count).map { "line \($0)\n" }.joined()
            let inputFile = temporaryDirectory() + "/input"
            try Data(input.utf8).write(to: URL(fileURLWithPath: inputFile))
            let child = try Child(tool("mqtt-pub"), at(broker) + ["--outbox", dir, "-t", "lines/k", "-l", "-q", "1"], stdinPath: inputFile)
            // Each stored line takes 8 + 12 bytes of header, the topic and the line (without its newline).
            let expected = (1...count).reduce(0) { $0 + 20 + "lines/k".utf8.count + "line \($1)".utf8.count }
            func stored() -> Int {
                let segments = (try? FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix("seg-") }) ?? []
                return segments.reduce(0) { $0 + ((try? FileManager.default.attributesOfItem(atPath: dir + "/" + $1)[.size] as? Int) ?? 0) }
            }
            #expect(await eventually(timeout: .seconds(60)) { stored() == expected }, "stored \(stored()) of \(expected) bytes")
            child.signal(SIGKILL)
            _ = await child.wait()
            holder.release()
            try await broker.start()
            let (client, got, task) = try await collector(broker, "lines/k")
            let drained = try await run(tool("mqtt-pub"), at(broker) + ["--outbox", dir, "--drain"], timeout: .seconds(120) * testTimeScale)
            #expect(drained.status == 0, "\(drained)")
            #expect(await eventually(timeout: .seconds(60)) { Set(got.value).count == count })
            var firsts: [String] = []
            var seen = Set<String>()
            for line in got.value where seen.insert(line).inserted { firsts.append(line) }
            #expect(firsts == (1...count).map { "line \($0)" })
            print("mqtt-pub --outbox -l killed with SIGKILL: \(count) lines kept, \(got.value.count - seen.count) duplicates after the drain")
            task.cancel()
            await client.shutdown()
        }
    }

    @Test("--outbox and --drain refuse what they cannot do, with a clear error and nothing stored")
    func badInput() async throws {
        try await withBroker { broker in
            let dir = temporaryDirectory() + "/outbox"
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let qos0 = try await run(tool("mqtt-pub"), at(broker) + ["--outbox", dir, "-t", "x", "-m", "y"])
            #expect(qos0.status == 1)
            #expect(qos0.stderr.contains("--outbox needs -q 1 or -q 2"), "\(qos0)")
            let noOutbox = try await run(tool("mqtt-pub"), at(broker) + ["--drain"])
            #expect(noOutbox.status == 1)
            #expect(noOutbox.stderr.contains("give the outbox with --outbox DIR"), "\(noOutbox)")
            let drainWithMessage = try await run(tool("mqtt-pub"), at(broker) + ["--outbox", dir, "--drain", "-t", "x", "-m", "y", "-q", "1"])
            #expect(drainWithMessage.status == 1)
            #expect(drainWithMessage.stderr.contains("--drain sends what the outbox holds and takes no message"), "\(drainWithMessage)")
            let badTopic = try await run(tool("mqtt-pub"), at(broker) + ["--outbox", dir, "-t", "a/+", "-m", "y", "-q", "1"])
            #expect(badTopic.status == 1)
            // Nothing was stored by any of them.
            let segments = (try? FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasPrefix("seg-") }) ?? []
            #expect(segments.allSatisfy { (try? FileManager.default.attributesOfItem(atPath: dir + "/" + $0)[.size] as? Int) == 0 })

            // A second mqtt-pub on an outbox in use: exit 1, naming the process that holds it.
            // It waits for a CONNACK that never comes: its port is held by a socket that never accepts.
            let silentPort = freeLoopbackPort()
            let silent = try PortHolder(port: silentPort)
            defer { silent.release() }
            let holder = try Child(tool("mqtt-pub"), ["-h", "127.0.0.1", "-p", String(silentPort), "--outbox", dir, "-t", "x", "-m", "z", "-q", "1"])
            defer { holder.killIfRunning() }
            #expect(await eventually { FileManager.default.fileExists(atPath: dir + "/lock")
                && ((try? String(contentsOfFile: dir + "/lock", encoding: .utf8)) ?? "").contains("\(holder.pid)") })
            let second = try await run(tool("mqtt-pub"), at(broker) + ["--outbox", dir, "-t", "x", "-m", "y", "-q", "1"])
            #expect(second.status == 1)
            #expect(second.stderr.contains("in use by another live client (process \(holder.pid))"), "\(second)")
        }
    }
}
