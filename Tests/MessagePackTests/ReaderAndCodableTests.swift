import Foundation
import MessagePack
import MessagePackCodable
import MosquittoPOSIX
import MosquittoTestSupport
import Testing

@Suite("MessagePack reader limits and Codable", .timeLimit(.minutes(5 * testTimeScale)))
struct ReaderAndCodableTests {
    @Test("Hostile and malformed inputs throw the right error instead of crashing or allocating")
    func hostileInputs() {
        let cases: [([UInt8], MessagePackError.Code)] = [
            ([], .truncated),
            ([0xc1], .invalidByte),
            ([0xdd, 0xff, 0xff, 0xff, 0xff], .truncated),          // array 32 of 4 billion elements, no data
            ([0xdf, 0xff, 0xff, 0xff, 0xff, 0x01], .truncated),    // map 32 of 4 billion entries
            ([0xc6, 0xff, 0xff, 0xff, 0xff], .truncated),          // bin 32 of 4 GiB
            ([0xdb, 0x00, 0x00, 0x00, 0x05, 0x61], .truncated),    // str 32 of 5 bytes, 1 present
            ([0xcf, 0x00, 0x01], .truncated),                      // uint 64 cut short
            ([0xa2, 0xc3, 0x28], .invalidUTF8),
            ([0xd5, 0xff, 0x00, 0x00], .invalidTimestamp),         // timestamp of 2 bytes
            ([0xd7, 0xff, 0xff, 0xff, 0xff, 0xfc, 0, 0, 0, 0], .invalidTimestamp),  // 64-bit, nanoseconds ≥ 10^9
            ([0xc0, 0xc0], .trailingBytes),
            ([UInt8](repeating: 0x91, count: 100_000) + [0xc0], .tooDeep),
            ([UInt8](repeating: 0x81, count: 300) + [0xc0], .tooDeep),
        ]
        for (bytes, code) in cases {
            #expect(throws: MessagePackError.self, "\(bytes.prefix(8))") { _ = try MessagePackValue(decoding: bytes) }
            do {
                _ = try MessagePackValue(decoding: bytes)
            } catch {
                #expect(error.code == code, "\(bytes.prefix(8)): \(error)")
            }
        }
        // Exactly at the limit still decodes.
        let nested = [UInt8](repeating: 0x91, count: 64) + [0xc0]
        #expect((try? MessagePackValue(decoding: nested)) != nil)
        #expect((try? MessagePackValue(decoding: nested, maximumDepth: 63)) == nil)
    }

    @Test("A value at the default depth limit is read, written, compared, hashed and printed on a 512 KiB stack")
    func depthFitsSmallStacks() async throws {
        let depth = MessagePackReader.defaultMaximumDepth
        var bytes: [UInt8] = []
        for i in 0 ..< depth { bytes += i % 2 == 0 ? [0x91] : [0x81, 0xa1, 0x6b] }
        bytes.append(0xc0)
        let input = bytes
        // 512 KiB in a normal build. A sanitizer's instrumented frames are several times larger (this test overflowed
        // 512 KiB under ThreadSanitizer and killed the test process): the budget is the normal build's property.
        let stack = ProcessInfo.processInfo.environment["MOSQUITTO_SANITIZER"] == nil ? 512 << 10 : 4 << 20
        let ok = await withCheckedContinuation { (c: CheckedContinuation<Bool, Never>) in
            let rc = startDetachedThread(stackSize: stack) {
                guard let v = try? MessagePackValue(decoding: input), v.encoded() == input,
                      let w = try? MessagePackValue(json: v.jsonText()) else { return c.resume(returning: false) }
                c.resume(returning: v == w && Set([v, w]).count == 1)
            }
            if rc != 0 { c.resume(returning: false) }
        }
        #expect(ok)
    }

    @Test("Non-canonical encodings decode, and re-encode canonically")
    func nonCanonical() throws {
        let v = try MessagePackValue(decoding: [0xd2, 0, 0, 0, 5])      // int 32 holding 5
        #expect(v == 5)
        #expect(v.encoded() == [0x05])
        let s = try MessagePackValue(decoding: [0xda, 0, 2, 0x68, 0x69])  // str 16 of two bytes
        #expect(s == "hi")
        #expect(s.encoded() == [0xa2, 0x68, 0x69])
        let t = try MessagePackValue(decoding: [0xc7, 12, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1])  // 96-bit form of 1 s
        #expect(t == .timestamp(.init(seconds: 1)))
        #expect(t.encoded() == [0xd6, 0xff, 0, 0, 0, 1])
    }

    struct Reading: Codable, Equatable {
        var device: String
        var sequence: UInt64
        var celsius: Double
        var humidity: Float
        var offset: Int8
        var ok: Bool
        var note: String?
        var raw: Data
        var bytes: [UInt8]
        var at: Date
        var tags: [String]
        var extra: [String: Int]
    }

    @Test("Codable: a struct round-trips, Date is a timestamp, Data and [UInt8] are binary, integers are smallest")
    func codableRoundTrip() throws {
        let reading = Reading(device: "kitchen", sequence: 1 << 40, celsius: 21.5, humidity: 0.25, offset: -3, ok: true,
                              note: nil, raw: Data([1, 2, 3]), bytes: [9, 8], at: Date(timeIntervalSince1970: 1_700_000_000.5),
                              tags: ["a", "b"], extra: ["x": 1])
        let bytes = try MessagePackEncoder().encode(reading)
        let back = try MessagePackDecoder().decode(Reading.self, from: bytes)
        #expect(back == reading)
        let tree = try MessagePackValue(decoding: bytes)
        #expect(tree["device"] == "kitchen")
        #expect(tree["sequence"]?.encoded() == [0xcf, 0, 0, 1, 0, 0, 0, 0, 0])
        #expect(tree["humidity"] == .float(0.25))
        #expect(tree["raw"] == .binary([1, 2, 3]))
        #expect(tree["bytes"] == .binary([9, 8]))
        #expect(tree["at"] == .timestamp(.init(seconds: 1_700_000_000, nanoseconds: 500_000_000)))
        #expect(tree["note"] == nil)  // encodeIfPresent leaves a nil optional out
        if case .map(let entries) = tree {
            #expect(entries.map { $0.key } == ["device", "sequence", "celsius", "humidity", "offset", "ok", "raw", "bytes", "at", "tags", "extra"])
        } else {
            Issue.record("not a map: \(tree)")
        }
    }

    @Test("Codable errors: wrong types, out-of-range integers and non-MessagePack bytes are DecodingErrors with a path")
    func codableErrors() throws {
        struct Small: Codable { var n: UInt8; var list: [Int] }
        let tooBig = MessagePackValue.map([.init(key: "n", value: 300), .init(key: "list", value: [])])
        #expect(throws: DecodingError.self) { try MessagePackDecoder().decode(Small.self, from: tooBig) }
        let wrongType = MessagePackValue.map([.init(key: "n", value: 3), .init(key: "list", value: [1, "two"])])
        do {
            _ = try MessagePackDecoder().decode(Small.self, from: wrongType)
            Issue.record("decoded a string as Int")
        } catch let DecodingError.typeMismatch(_, context) {
            #expect(context.codingPath.map(\.stringValue) == ["list", "1"])
        }
        #expect(throws: DecodingError.self) { try MessagePackDecoder().decode(Small.self, from: [0xc1]) }
        #expect(throws: DecodingError.self) { try MessagePackDecoder().decode(Small.self, from: Array("{\"n\":1}".utf8)) }
    }

    @Test("JSON rendering of what JSON lacks: binary as base64, timestamps as RFC 3339, extensions as objects")
    func jsonExtras() throws {
        let v: MessagePackValue = .map([
            .init(key: "bin", value: .binary([0xde, 0xad, 0xbe, 0xef, 0x01])),
            .init(key: "at", value: .timestamp(.init(seconds: 1_700_000_000, nanoseconds: 120_000_000))),
            .init(key: "old", value: .timestamp(.init(seconds: -1, nanoseconds: 0))),
            .init(key: "ext", value: .ext(type: 5, data: [1, 2])),
            .init(key: .binary([1]), value: 1),
        ])
        #expect(v.jsonText() == #"{"bin": "3q2+7wE=", "at": "2023-11-14T22:13:20.12Z", "old": "1969-12-31T23:59:59Z", "ext": {"ext": 5, "base64": "AQI="}, "\"AQ==\"": 1}"#)
        #expect(v.jsonText(style: .compact).hasPrefix(#"{"bin":"3q2+7wE=","at":"#))
        for bad in ["", "{", "[1,]", "{\"a\" 1}", "01", "1.", "\"\\ud800\"", "tru", "[1] x", "\"\u{1}\"", "18446744073709551616"] {
            #expect(throws: MessagePackError.self, "\(bad)") { _ = try MessagePackValue(json: bad) }
        }
    }
}
