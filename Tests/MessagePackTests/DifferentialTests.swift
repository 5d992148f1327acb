import Foundation
import MessagePack
import MosquittoTestSupport
import Testing

/// Our MessagePack against the reference implementation, Python's `msgpack` (installed by scripts/bootstrap.sh),
/// over a generated table that covers every type family and the boundaries between formats.
@Suite("MessagePack against Python's msgpack", .timeLimit(.minutes(5 * testTimeScale)))
struct DifferentialTests {
    /// The table: every format and the values on both sides of each boundary between formats.
    static let table: [MessagePackValue] = {
        var t: [MessagePackValue] = [.nil, .bool(true), .bool(false)]
        // Integers: 0, the fixint edges, and ±1 around 2^7, 2^8, 2^15, 2^16, 2^31, 2^32, 2^63 and their negatives.
        t += [0, 1, -1, 31, 32, -31, -32, -33, 127, 128, 5]
        for bits in [7, 8, 15, 16, 31, 32, 63] {
            let p = UInt64(1) << UInt64(bits)
            t += [.uint(p - 1), .uint(p), .uint(p + 1)]
            if bits == 63 {
                t += [.int(.min), .int(.min + 1)]  // -(2^63) - 1 does not fit in 64 bits
            } else {
                t += [.int(-Int64(p) - 1), .int(-Int64(p)), .int(-Int64(p) + 1)]
            }
        }
        t += [.uint(.max), .uint(.max - 1), .int(.max), .int(.min + 1)]
        // Floats: float 64 for Double, float 32 for Float; NaN, ±inf, ±0, subnormals, extremes.
        for d in [0.0, -0.0, 1.5, -1.5, Double.pi, 1e300, -1e-300, Double.leastNonzeroMagnitude, Double.greatestFiniteMagnitude,
                  Double.nan, Double.infinity, -Double.infinity, 1e16, 123456789.125, 0.1] {
            t.append(.double(d))
        }
        for f: Float in [0, -0.0, 1.5, 0.1, Float.nan, Float.infinity, -Float.infinity, Float.greatestFiniteMagnitude] {
            t.append(.float(f))
        }
        // Strings and binaries at every length boundary (lengths in bytes), ASCII and multi-byte.
        for n in [0, 1, 31, 32, 33, 255, 256, 257, 65_535, 65_536, 65_537] {
            t.append(.string(String(repeating: "a", count: n)))
            t.append(.binary((0 ..< n).map { UInt8(truncatingIfNeeded: $0 &* 7) }))
        }
        t += ["é", "日本語", "😀 emoji", "quote \" backslash \\ newline \n tab \t nul \u{0} del \u{7f}",
              .string(String(repeating: "é", count: 15) + "a"), .string(String(repeating: "é", count: 16))]
        // Arrays and maps at their count boundaries.
        for n in [0, 1, 15, 16, 17, 65_535, 65_536] {
            t.append(.array((0 ..< n).map { .int(Int64($0 % 200) - 100) }))
            t.append(.map((0 ..< n).map { MessagePackMapEntry(key: .int(Int64($0)), value: .string("v\($0 % 10)")) }))
        }
        // Nested values, and maps with keys of several types.
        t.append(.map([
            .init(key: "id", value: "kitchen"), .init(key: "celsius", value: .double(21.5)), .init(key: "ok", value: true),
            .init(key: "none", value: .nil), .init(key: "raw", value: .binary([0, 1, 255])),
            .init(key: "at", value: .timestamp(.init(seconds: 1_700_000_000, nanoseconds: 5))),
            .init(key: "list", value: [1, -1, .double(1.5), ["deep", ["deeper", .map([.init(key: "k", value: [])])]]]),
        ]))
        t.append(.map([.init(key: 1, value: "one"), .init(key: -5, value: "minus five"), .init(key: .nil, value: 1),
                       .init(key: .double(1.5), value: 2), .init(key: .binary([1, 2]), value: 3),
                       .init(key: .timestamp(.init(seconds: 7)), value: 4), .init(key: "s", value: 5)]))
        t.append(.map([.init(key: true, value: "yes")]))
        var deep: MessagePackValue = "bottom"
        for i in 0 ..< 60 { deep = i % 2 == 0 ? [deep] : .map([.init(key: "d", value: deep)]) }
        t.append(deep)
        // Extensions: fixext 1/2/4/8/16 and ext 8/16/32 around their boundaries (Python refuses the
        // reserved negative types other than -1, which our reader accepts).
        for n in [0, 1, 2, 3, 4, 5, 8, 16, 17, 255, 256, 65_535, 65_536] {
            t.append(.ext(type: Int8(n % 128), data: (0 ..< n).map { UInt8(truncatingIfNeeded: $0) }))
        }
        // Timestamps in all three forms: 32-bit (0 ... 2^32-1, no nanoseconds), 64-bit (up to 2^34-1 with
        // nanoseconds, so after 2106), 96-bit (before 1970, after 2514, the extremes).
        let stamps: [(Int64, UInt32)] = [
            (0, 0), (1, 0), (1_700_000_000, 0), (4_294_967_295, 0),
            (0, 1), (1_700_000_000, 123_456_789), (4_294_967_296, 0), (4_294_967_295, 999_999_999),
            (17_179_869_183, 999_999_999), (5_000_000_000, 0),  // 2128
            (17_179_869_184, 0), (-1, 0), (-1, 999_999_999), (-2_208_988_800, 500), (-62_135_596_800, 0),
            (Int64.max, 999_999_999), (Int64.min, 0), (253_402_300_800, 1),
        ]
        t += stamps.map { .timestamp(.init(seconds: $0.0, nanoseconds: $0.1)) }
        return t
    }()

    @Test("Python packs → we decode the same value and re-encode the same bytes; we encode → the same bytes, and Python unpacks the same value")
    func bothDirections() async throws {
        let table = Self.table
        let ours = table.map { $0.encoded() }
        var script = Reference.prelude
        script += "V = [\n" + table.map { Reference.literal($0) }.joined(separator: ",\n") + "]\n"
        script += "F = {" + table.indices.filter { Reference.hasFloat32(table[$0]) }.map(String.init).joined(separator: ",") + "}\n"
        script += "OURS = [\n" + ours.map { "'\(Reference.hex($0))'" }.joined(separator: ",\n") + "]\n"
        script += """
            for i, (v, o) in enumerate(zip(V, OURS)):
                p = msgpack.packb(v, use_bin_type=True, use_single_float=(i in F))
                try:
                    ok = same(unpack(b(o)), v)
                except Exception as e:
                    print(e, file=sys.stderr)
                    ok = False
                print(i, p.hex(), 1 if ok else 0)

            """
        let output = try await Reference.runPython(script)
        let lines = output.split(separator: "\n")
        #expect(lines.count == table.count)
        for line in lines {
            let fields = line.split(separator: " ")
            guard fields.count == 3, let i = Int(fields[0]) else { Issue.record("bad line \(line.prefix(100))"); continue }
            let value = table[i]
            let python = Reference.unhex(fields[1])
            #expect(ours[i] == python, "entry \(i) \(value.description.prefix(120)): we encode \(Reference.hex(ours[i]).prefix(80)), Python \(fields[1].prefix(80))")
            #expect(fields[2] == "1", "entry \(i) \(value.description.prefix(120)): Python unpacks our bytes to something else")
            do {
                let decoded = try MessagePackValue(decoding: python)
                #expect(decoded == value, "entry \(i): Python's bytes decode to \(decoded.description.prefix(120))")
                #expect(decoded.encoded() == python, "entry \(i): re-encoding Python's bytes differs")
            } catch {
                Issue.record("entry \(i) \(value.description.prefix(120)): Python's bytes do not decode: \(error)")
            }
        }
    }

    /// Whether Python's json module can print what msgpack unpacks from this value.
    static func jsonable(_ v: MessagePackValue, key: Bool = false) -> Bool {
        switch v {
        case .nil, .bool, .int, .uint, .float, .double, .string: return true
        case .binary, .ext, .timestamp: return false
        case .array(let a): return !key && a.allSatisfy { jsonable($0) }
        case .map(let m): return !key && m.allSatisfy { jsonable($0.key, key: true) && jsonable($0.value) }
        }
    }

    @Test("JSON text: our rendering is json.dumps(msgpack.unpackb(...)), and JSON parsed and packed is msgpack.packb(json.loads(...))")
    func json() async throws {
        let values = Self.table.filter { Self.jsonable($0) }
        var texts = values.map { $0.jsonText() }
        texts += [
            #"{"id": "kitchen", "celsius": 21.5, "ok": true, "tags": ["a", "b"], "n": null}"#,
            "  [1, -1, 1.0, 1e2, 1E-7, -0, -0.0, 0.5, 18446744073709551615, -9223372036854775808, 3.0e300]  ",
            #""\u00e9\ud83d\ude00\n\/\"""#, "[]", "{}", "{\"a\":{\"a\":{\"a\":[[[]]]}}}", "NaN", "[Infinity, -Infinity]",
            #"{"dup": 1, "dup": 2}"#,
        ]
        var script = Reference.prelude
        script += "VALUES = [\n" + values.map { "'\(Reference.hex($0.encoded()))'" }.joined(separator: ",\n") + "]\n"
        script += "TEXTS = [\n" + texts.map { "s('\(Reference.hex(Array($0.utf8)))')" }.joined(separator: ",\n") + "]\n"
        script += """
            for v in VALUES:
                print('D', json.dumps(unpack(b(v))).encode().hex())
            for t in TEXTS:
                print('P', msgpack.packb(json.loads(t), use_bin_type=True).hex())

            """
        let output = try await Reference.runPython(script)
        let lines = output.split(separator: "\n")
        let dumps = lines.filter { $0.hasPrefix("D ") }.map { String(decoding: Reference.unhex($0.dropFirst(2)), as: UTF8.self) }
        let packs = lines.filter { $0.hasPrefix("P ") }.map { Reference.unhex($0.dropFirst(2)) }
        #expect(dumps.count == values.count && packs.count == texts.count)
        for (value, python) in zip(values, dumps) {
            let ours = value.jsonText()
            #expect(ours == python, "\(value.description.prefix(100)): we print \(ours.prefix(200)), Python \(python.prefix(200))")
        }
        for (text, python) in zip(texts, packs) {
            do {
                let ours = try MessagePackValue(json: text).encoded()
                #expect(ours == python, "\(text.prefix(100)): we pack \(Reference.hex(ours).prefix(100)), Python \(Reference.hex(python).prefix(100))")
            } catch {
                Issue.record("\(text.prefix(100)): we refuse JSON that Python reads: \(error)")
            }
        }
    }
}
