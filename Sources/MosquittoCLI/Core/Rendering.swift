#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CMosquitto

/// mqtt-sub's printing of one message, for tests and fuzzing: the bytes it would write on standard output and
/// standard error, produced by the same code, into memory.
package enum MessageRendering {
    /// A PUBLISH property, by MQTT 5 identifier.
    package enum Property: Sendable, Hashable {
        case byte(Int32, UInt8)
        case int16(Int32, UInt16)
        case int32(Int32, UInt32)
        case varint(Int32, UInt32)
        case string(Int32, [UInt8])
        case binary(Int32, [UInt8])
        /// A user property.
        case pair([UInt8], [UInt8])
    }

    /// What mqtt-sub prints for an invalid `-F` format (without the `--help` hint), or nil when it is valid.
    package static func formatError(_ format: [UInt8]) -> String? {
        var ignored: [UInt8] = []
        var error: [UInt8] = []
        let valid = capture(stdout: &ignored, stderr: &error) {
            withCString(format) { MessagePrinter.checkFormat($0) }
        }
        return valid ? nil : String(decoding: error, as: UTF8.self)
    }

    /// The output for one message: `-F format` (else `-v` with `verbose`, else the payload), `-N` without
    /// `endOfLine`, `--pretty`, `--json`. The format must be valid (``formatError(_:)``).
    package static func render(format: [UInt8]? = nil, verbose: Bool = false, endOfLine: Bool = true, pretty: Bool = false,
                              json: Bool = false, topic: [UInt8], payload: [UInt8], qos: Int32 = 0, retain: Bool = false,
                              mid: Int32 = 0, properties: [Property] = []) -> (stdout: [UInt8], stderr: [UInt8]) {
        let config = ClientConfig(kind: .sub)
        config.verbose = verbose
        config.endOfLine = endOfLine
        config.pretty = pretty
        config.jsonLines = json
        config.format = format.map(ClientConfig.cStringFromBytes)
        defer { free(config.format) }
        var list: OpaquePointer?
        defer { mosquitto_property_free_all(&list) }
        for p in properties {
            switch p {
            case .byte(let id, let v): _ = mosquitto_property_add_byte(&list, id, v)
            case .int16(let id, let v): _ = mosquitto_property_add_int16(&list, id, v)
            case .int32(let id, let v): _ = mosquitto_property_add_int32(&list, id, v)
            case .varint(let id, let v): _ = mosquitto_property_add_varint(&list, id, v)
            case .string(let id, let v): _ = withCString(v) { mosquitto_property_add_string(&list, id, $0) }
            case .binary(let id, let v): _ = v.withUnsafeBytes { mosquitto_property_add_binary(&list, id, $0.baseAddress, UInt16(clamping: v.count)) }
            case .pair(let k, let v):
                _ = withCString(k) { key in withCString(v) { mosquitto_property_add_string_pair(&list, Int32(MQTT_PROP_USER_PROPERTY.rawValue), key, $0) } }
            }
        }
        // As libmosquitto hands a message over: the topic and the payload end with a NUL, an empty payload is NULL.
        let topicC = ClientConfig.cStringFromBytes(topic)
        defer { free(topicC) }
        var payloadC: UnsafeMutableRawPointer?
        if !payload.isEmpty {
            let p = UnsafeMutableRawPointer.allocate(byteCount: payload.count + 1, alignment: 1)
            payload.withUnsafeBytes { p.copyMemory(from: $0.baseAddress!, byteCount: payload.count) }
            p.storeBytes(of: 0, toByteOffset: payload.count, as: UInt8.self)
            payloadC = p
        }
        defer { payloadC?.deallocate() }
        var message = mosquitto_message(mid: mid, topic: topicC, payload: payloadC, payloadlen: Int32(payload.count), qos: qos, retain: retain)
        var out: [UInt8] = []
        var err: [UInt8] = []
        capture(stdout: &out, stderr: &err) {
            MessagePrinter.print(config, &message, list)
        }
        return (out, err)
    }

    private static func withCString<R>(_ bytes: [UInt8], _ body: (UnsafePointer<CChar>) -> R) -> R {
        let c = ClientConfig.cStringFromBytes(bytes)
        defer { free(c) }
        return body(c)
    }

    /// Serializes ``capture(stdout:stderr:_:)``: the C streams it redirects, and the printer's own state, are
    /// process-wide, and `MessageFormatter` may be called from any thread. (A pthread mutex: ThreadSanitizer sees
    /// it, and this target links nothing but the C libraries.)
    nonisolated(unsafe) private static let captureLock: UnsafeMutablePointer<pthread_mutex_t> = {
        let m = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        pthread_mutex_init(m, nil)
        return m
    }()

    /// Runs `body` with the C streams pointed at memory, and appends what was written. One at a time.
    @discardableResult
    private static func capture<R>(stdout out: inout [UInt8], stderr err: inout [UInt8], _ body: () -> R) -> R {
        pthread_mutex_lock(captureLock)
        defer { pthread_mutex_unlock(captureLock) }
        var outBuffer: UnsafeMutablePointer<CChar>?
        var outSize = 0
        var errBuffer: UnsafeMutablePointer<CChar>?
        var errSize = 0
        guard let outStream = open_memstream(&outBuffer, &outSize), let errStream = open_memstream(&errBuffer, &errSize) else {
            return body()
        }
        let (savedOut, savedErr) = (cStdout, cStderr)
        cStdout = outStream
        cStderr = errStream
        let result = body()
        cStdout = savedOut
        cStderr = savedErr
        fclose(outStream)
        fclose(errStream)
        if let outBuffer {
            out += UnsafeRawBufferPointer(start: outBuffer, count: outSize)
            free(outBuffer)
        }
        if let errBuffer {
            err += UnsafeRawBufferPointer(start: errBuffer, count: errSize)
            free(errBuffer)
        }
        return result
    }
}
