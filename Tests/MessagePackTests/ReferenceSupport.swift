import Foundation
import MessagePack
import MosquittoTestSupport

/// Python with the `msgpack` package (the reference implementation), which scripts/bootstrap.sh installs.
enum Reference {
    static let installHint = "Python's msgpack is missing: run scripts/bootstrap.sh, or python3 -m pip install msgpack"

    /// The path of python3, from PATH.
    static var python: String? {
        for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin").split(separator: ":") {
            let path = "\(dir)/python3"
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        return nil
    }

    /// Runs a Python script and returns its standard output; throws with its standard error when it fails.
    static func runPython(_ script: String) async throws -> String {
        guard let python else { throw ReferenceError(message: "python3 is not on PATH. " + installHint) }
        let dir = temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = dir + "/reference.py"
        try script.write(toFile: path, atomically: true, encoding: .utf8)
        let result = try await run(python, [path], timeout: .seconds(120))
        guard result.status == 0 else {
            if result.stderr.contains("No module named 'msgpack'") { throw ReferenceError(message: installHint) }
            throw ReferenceError(message: "python failed: \(result.stderr.suffix(2000))")
        }
        return result.out
    }

    /// The prelude every generated script starts with: msgpack, and helpers to build exact values.
    static let prelude = """
        import json, struct, sys
        import msgpack
        from msgpack import ExtType, Timestamp
        def d(h): return struct.unpack('>d', bytes.fromhex(h))[0]
        def s(h): return bytes.fromhex(h).decode('utf-8')
        def b(h): return bytes.fromhex(h)
        def same(a, e):
            if type(a) is not type(e): return False
            if isinstance(a, float): return struct.pack('>d', a) == struct.pack('>d', e)
            if isinstance(a, list): return len(a) == len(e) and all(same(x, y) for x, y in zip(a, e))
            if isinstance(a, dict):
                return len(a) == len(e) and all(same(k1, k2) and same(v1, v2) for (k1, v1), (k2, v2) in zip(a.items(), e.items()))
            return a == e
        def unpack(data): return msgpack.unpackb(data, raw=False, strict_map_key=False, timestamp=0)

        """

    /// `value` as a Python expression that evaluates to what `msgpack.unpackb` returns for its encoding.
    static func literal(_ value: MessagePackValue) -> String {
        switch value {
        case .nil: return "None"
        case .bool(let v): return v ? "True" : "False"
        case .int(let i): return String(i)
        case .uint(let u): return String(u)
        case .float(let f): return "d('\(hex(Double(f).bitPattern))')"
        case .double(let v): return "d('\(hex(v.bitPattern))')"
        case .string(let v): return "s('\(hex(Array(v.utf8)))')"
        case .binary(let v): return "b('\(hex(v))')"
        case .array(let a): return "[" + a.map(literal).joined(separator: ",") + "]"
        case .map(let m): return "{" + m.map { literal($0.key) + ":" + literal($0.value) }.joined(separator: ",") + "}"
        case .ext(let t, let data): return "ExtType(\(t), b('\(hex(data))'))"
        case .timestamp(let t): return "Timestamp(\(t.seconds), \(t.nanoseconds))"
        }
    }

    /// Whether a value holds a float 32 anywhere (Python packs those only with use_single_float).
    static func hasFloat32(_ value: MessagePackValue) -> Bool {
        switch value {
        case .float: return true
        case .array(let a): return a.contains(where: hasFloat32)
        case .map(let m): return m.contains { hasFloat32($0.key) || hasFloat32($0.value) }
        default: return false
        }
    }

    static func hex(_ v: UInt64) -> String {
        let s = String(v, radix: 16)
        return String(repeating: "0", count: 16 - s.count) + s
    }

    static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count * 2)
        for b in bytes { out.append(digits[Int(b >> 4)]); out.append(digits[Int(b & 15)]) }
        return String(decoding: out, as: UTF8.self)
    }

    static func unhex(_ s: Substring) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(s.utf8.count / 2)
        var high: UInt8?
        for c in s.utf8 {
            let v: UInt8 = c <= 0x39 ? c - 0x30 : c - 0x61 + 10
            if let h = high { out.append(h << 4 | v); high = nil } else { high = v }
        }
        return out
    }
}

struct ReferenceError: Error, CustomStringConvertible {
    var message: String
    var description: String { message }
}
