import FuzzTargets
import Foundation

// Built two ways:
//  - normally: a command that replays files through a target (`mosquitto-fuzz TARGET FILE|DIR...`);
//  - with `-DFUZZING -sanitize=fuzzer` (Fuzz/run.sh): a libFuzzer binary; the target comes from
//    $MOSQUITTO_FUZZ_TARGET because libFuzzer owns main() and the command line.

#if FUZZING
nonisolated(unsafe) var selectedTarget: FuzzTarget?

@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt

/// SwiftPM links an executable's entry point as `<module>_main`; hand the process to libFuzzer's driver.
@_cdecl("mosquitto_fuzz_main")
public func mosquittoFuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var count = argc
    var vector = argv
    return LLVMFuzzerRunDriver(&count, &vector) { data, size in fuzzOneInput(data, size) }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    if selectedTarget == nil {
        let name = ProcessInfo.processInfo.environment["MOSQUITTO_FUZZ_TARGET"] ?? ""
        guard let t = FuzzTarget(rawValue: name) else {
            fatalError("set MOSQUITTO_FUZZ_TARGET to one of: \(FuzzTarget.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        selectedTarget = t
    }
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    selectedTarget!.run(bytes)
    return 0
}
#else
@main
struct Replay {
    static func main() throws {
        let args = Array(CommandLine.arguments.dropFirst())
        guard let name = args.first, let target = FuzzTarget(rawValue: name) else {
            print("usage: mosquitto-fuzz TARGET [FILE|DIR ...]   targets: \(FuzzTarget.allCases.map(\.rawValue).joined(separator: " "))")
            return
        }
        var count = 0
        for path in args.dropFirst() {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir) else {
                print("mosquitto-fuzz: no such file or directory: \(path)")
                continue
            }
            let files = isDir.boolValue
                ? try FileManager.default.contentsOfDirectory(atPath: path).map { "\(path)/\($0)" }
                : [path]
            for f in files {
                target.run(Array(try Data(contentsOf: URL(fileURLWithPath: f))))
                count += 1
            }
        }
        print("replayed \(count) inputs through \(target.rawValue)")
    }
}
#endif
