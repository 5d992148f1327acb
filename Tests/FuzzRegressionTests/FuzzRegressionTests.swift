import Foundation
import FuzzTargets
import MosquittoTestSupport
import Testing

/// Replays every committed fuzzing corpus and crash input (Fuzz/corpus/TARGET, Fuzz/crashes/TARGET) through
/// its target, so a crash found once stays fixed.
@Suite("Fuzzing regressions")
struct FuzzRegressionTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fuzz")

    @Test("Every committed corpus and crash input passes its target's properties", arguments: FuzzTarget.allCases)
    func replay(target: FuzzTarget) async throws {
        // Seconds of synchronous work per target (far more under ThreadSanitizer): off the cooperative pool.
        let root = Self.root
        let count = try await onOwnThread { () -> Int in
            var count = 0
            for kind in ["corpus", "crashes"] {
                let dir = root.appendingPathComponent(kind).appendingPathComponent(target.rawValue)
                guard let files = try? FileManager.default.contentsOfDirectory(atPath: dir.path) else { continue }
                for f in files.sorted() where !f.hasPrefix(".") {
                    target.run(Array(try Data(contentsOf: dir.appendingPathComponent(f))))
                    count += 1
                }
            }
            return count
        }
        #expect(count > 0, "no corpus committed for \(target.rawValue): run Fuzz/run.sh \(target.rawValue)")
    }

    @Test("Hand-picked hostile inputs")
    func hostile() {
        let long = [UInt8](repeating: UInt8(ascii: "a"), count: 70_000)
        for t in FuzzTarget.allCases {
            for input: [UInt8] in [[], [0], [0xFF, 0xFE], Array("+/#/\u{0}".utf8), long, Array("%%%-0999999d@@\\".utf8)] {
                t.run(input)
            }
        }
    }
}
