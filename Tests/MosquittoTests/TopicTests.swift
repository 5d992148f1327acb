import CMosquitto
import Foundation
import Mosquitto
import MosquittoTestSupport
import Testing

@Suite("Topic helpers agree with libmosquitto", .timeLimit(.minutes(3 * testTimeScale)))
struct TopicTests {
    static func allCombinations(_ levels: [String], upTo n: Int) -> [String] {
        var out: [[String]] = [[]]
        var result: [String] = []
        for _ in 1...n {
            out = out.flatMap { prefix in levels.map { prefix + [$0] } }
            result += out.map { $0.joined(separator: "/") }
        }
        return result
    }

    @Test("matches(filter:topic:) equals mosquitto_topic_matches_sub over a generated table")
    func matchingTable() async throws {
        let filters = Self.allCombinations(["a", "b", "+", "#", "", "$SYS"], upTo: 4).filter { MQTTTopic.isValidFilter($0) }
        let topics = Self.allCombinations(["a", "b", "", "$SYS", "$x"], upTo: 4).filter { MQTTTopic.isValidName($0) }
        #expect(filters.count > 500)
        #expect(topics.count > 500)
        // A quarter of a million comparisons, off the cooperative pool. Under a sanitizer (a stage for threading and
        // memory errors; this is one thread computing) every 8th pair: the whole table took over 14 minutes there on
        // a loaded machine.
        let stride = ProcessInfo.processInfo.environment["MOSQUITTO_SANITIZER"] == nil ? 1 : 8
        let (compared, matched, problem) = try await onOwnThread { () -> (Int, Int, String?) in
            var compared = 0
            var matched = 0
            for i in filters.indices {
                let f = filters[i]
                for j in topics.indices where (i + j) % stride == 0 {
                    let t = topics[j]
                    var result = false
                    let rc = mosquitto_topic_matches_sub(f, t, &result)
                    if rc != MOSQ_ERR_SUCCESS.rawValue { return (compared, matched, "libmosquitto refused filter '\(f)' or topic '\(t)'") }
                    let ours = MQTTTopic.matches(filter: f, topic: t)
                    if ours != result { return (compared, matched, "filter '\(f)' topic '\(t)': ours \(ours), libmosquitto \(result)") }
                    compared += 1
                    if result { matched += 1 }
                }
            }
            return (compared, matched, nil)
        }
        #expect(problem == nil, "\(problem ?? "")")
        #expect(compared > 250_000 / stride)
        #expect(matched > 1000 / stride)
    }

    @Test("Known cases: '#' matches the parent level, '+' an empty level, '$' topics need an explicit first level")
    func knownCases() {
        #expect(MQTTTopic.matches(filter: "a/#", topic: "a"))
        #expect(MQTTTopic.matches(filter: "a/+/#", topic: "a/b"))
        #expect(MQTTTopic.matches(filter: "a/+", topic: "a/"))
        #expect(!MQTTTopic.matches(filter: "#", topic: "$SYS/broker"))
        #expect(!MQTTTopic.matches(filter: "+/broker", topic: "$SYS/broker"))
        #expect(MQTTTopic.matches(filter: "$SYS/#", topic: "$SYS/broker"))
        #expect(MQTTTopic.matches(filter: "$share/g/a/#", topic: "a/b"), "shared subscriptions match like their filter")
        #expect(!MQTTTopic.matches(filter: "a/b", topic: "a/b/c"))
        #expect(MQTTTopic.matches(filter: "caf\u{E9}", topic: "caf\u{E9}"))
        #expect(!MQTTTopic.matches(filter: "caf\u{E9}", topic: "cafe\u{301}"), "MQTT compares bytes, not canonical Unicode")
    }

    @Test("Filter and topic validation equals mosquitto_sub_topic_check/pub_topic_check + validate_utf8")
    func validationTable() {
        var rng = SeededGenerator(seed: 42)
        let pieces: [[UInt8]] = [
            Array("a".utf8), Array("/".utf8), Array("+".utf8), Array("#".utf8), Array("$".utf8),
            Array("é".utf8), Array("€".utf8), Array("😀".utf8), [0xEF, 0xBF, 0xBE], [0xC2, 0x85], [0xED, 0xA0, 0x80],
            [0xFF], [0x80], [0xC0, 0xAF], [0xE0, 0x80, 0xAF], [0x01], [0x7F], [0xF4, 0x90, 0x80, 0x80], [0xEF, 0xB7, 0x90],
        ]
        var agreed = 0
        for _ in 0..<20_000 {
            var bytes: [UInt8] = []
            for _ in 0..<Int.random(in: 1...6, using: &rng) { bytes += pieces.randomElement(using: &rng)! }
            let cstr = bytes + [0]
            let cValidUTF8 = cstr.withUnsafeBufferPointer { p in
                p.withMemoryRebound(to: CChar.self) { mosquitto_validate_utf8($0.baseAddress, Int32(bytes.count)) == 0 }
            }
            let cFilter = cstr.withUnsafeBufferPointer { p in
                p.withMemoryRebound(to: CChar.self) { mosquitto_sub_topic_check($0.baseAddress) == 0 }
            } && cValidUTF8
            let cTopic = cstr.withUnsafeBufferPointer { p in
                p.withMemoryRebound(to: CChar.self) { mosquitto_pub_topic_check($0.baseAddress) == 0 }
            } && cValidUTF8
            let oursFilter = (try? MQTTTopic.validateFilter(bytes: bytes)) != nil
            let oursTopic = (try? MQTTTopic.validateName(bytes: bytes)) != nil
            // $share/ forms are checked more strictly by us (the broker rejects the bad ones); none are generated here.
            #expect(oursFilter == cFilter, "filter \(bytes)")
            #expect(oursTopic == cTopic, "topic \(bytes)")
            if oursFilter == cFilter && oursTopic == cTopic { agreed += 1 }
        }
        #expect(agreed == 20_000)
    }

    @Test("Validation errors say what is wrong")
    func messages() {
        #expect(throws: MQTTError.self) { try MQTTTopic.validateName("a/+") }
        do { try MQTTTopic.validateName("a/+") } catch { #expect(error.message.contains("wildcard")) }
        do { try MQTTTopic.validateFilter("a/b#") } catch { #expect(error.message.contains("'#' must be the whole last level")) }
        do { try MQTTTopic.validateFilter("$share/grp") } catch { #expect(error.message.contains("$share/<group>/<filter>")) }
        do { try MQTTTopic.validateName(bytes: [0x61, 0x00]) } catch { #expect(error.message.contains("NUL")) }
        #expect(MQTTTopic.shareGroup(of: "$share/workers/jobs/#")! == ("workers", "jobs/#"))
    }

    @Test("mqtt:// URLs parse like mosquitto_pub -L")
    func urls() throws {
        let u = try MQTTURL("mqtts://user:p%ss@broker.example:8884/a/b")
        #expect(u.isTLS && u.username == "user" && u.password == "p%ss" && u.host == "broker.example" && u.port == 8884 && u.topic == "a/b")
        #expect(try MQTTURL("mqtt://h").port == 1883)
        #expect(try MQTTURL("mqtts://h").port == 8883)
        #expect(try MQTTURL("mqtt://[::1]:1999/t").host == "::1")
        #expect(throws: MQTTError.self) { try MQTTURL("http://h") }
        #expect(throws: MQTTError.self) { try MQTTURL("mqtt://h:99999") }
        #expect(throws: MQTTError.self) { try MQTTURL("mqtt://:1883") }
    }
}
