import Mosquitto
import MosquittoCLI
import MosquittoPOSIX
import MosquittoTestSupport
import Testing

/// `MessageFormatter` is Sendable, and programs (and the fuzz replay) call it from several threads at once. It
/// renders through mqtt-sub's C printing, which writes to process-wide streams: each call must still get its own
/// output, whole, and ThreadSanitizer must see no race.
@Suite("MessageFormatter from several threads", .timeLimit(.minutes(5 * testTimeScale)))
struct FormatterConcurrencyTests {
    @Test("four threads formatting at once each get exactly their own lines")
    func concurrentFormatting() async throws {
        let styles: [MessageFormatter.Style] = [.verbose, .format("%t=%p"), .jsonLines, .payload]
        let perThread = 300
        let problems = LockedValue<[String]>([])
        let done = LockedValue(0)
        for (index, style) in zip(styles.indices, styles) {
            startDetachedThread {
                do {
                    let formatter = try MessageFormatter(style: style)
                    for i in 0..<perThread {
                        let message = MQTTMessage(topic: "t\(index)/\(i)", string: "payload \(index)-\(i)", qos: .atMostOnce)
                        var out: [UInt8] = []
                        formatter.append(message, to: &out)
                        let text = String(decoding: out, as: UTF8.self)
                        // Each line names its own thread's topic or payload, and only once.
                        let own = style == .payload ? "payload \(index)-\(i)" : "t\(index)/\(i)"
                        if !text.contains(own) || text.filter({ $0 == "\n" }).count != 1 {
                            problems.withLock { $0.append("thread \(index) message \(i): \(text.debugDescription)") }
                            break
                        }
                    }
                } catch {
                    problems.withLock { $0.append("thread \(index): \(error)") }
                }
                done.withLock { $0 += 1 }
            }
        }
        let finished = await eventually(timeout: .seconds(120)) { done.withLock { $0 } == styles.count }
        #expect(finished, "the formatting threads did not finish")
        let found = problems.withLock { $0 }
        #expect(found.isEmpty, "\(found.count) wrong outputs; the first: \(found.first ?? "")")
    }

}
