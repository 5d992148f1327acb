import CMosquitto

/// The libmosquitto client handle: the only holder of the `struct mosquitto *`, and the engine's whole C surface
/// for it (MQTT 5 property lists are built in `Properties.swift`, batched socket I/O lives in `CMosquittoIO`).
///
/// A thin value: each method is one libmosquitto call and returns its result code unchanged. Who may call what, and
/// when, is ``ClientCore``'s business (its invariants "One handle, destroyed once", "The gate", "No lock across C"
/// and "Nothing re-entrant from callbacks"); this type adds no lock and no state.
struct MosquittoHandle: @unchecked Sendable {
    private let raw: OpaquePointer

    /// A new handle (`mosquitto_new`); nil when libmosquitto could not make one (see `errno`).
    static func create(clientID: String?, cleanSession: Bool) -> MosquittoHandle? {
        mosquitto_new(clientID, cleanSession, nil).map(MosquittoHandle.init(raw:))
    }

    private init(raw: OpaquePointer) { self.raw = raw }

    /// `mosquitto_destroy`: exactly once per handle ("One handle, destroyed once").
    func destroy() { mosquitto_destroy(raw) }

    // MARK: Set-up (before any thread exists)

    func setUserData(_ data: UnsafeMutableRawPointer?) { mosquitto_user_data_set(raw, data) }

    typealias ConnectCallback = @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?, Int32, Int32, OpaquePointer?) -> Void
    typealias DisconnectCallback = @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?, Int32, OpaquePointer?) -> Void
    typealias PublishCallback = @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?, Int32, Int32, OpaquePointer?) -> Void
    typealias MessageCallback = @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?, UnsafePointer<mosquitto_message>?, OpaquePointer?) -> Void
    typealias SubscribeCallback = @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?, Int32, Int32, UnsafePointer<Int32>?, OpaquePointer?) -> Void
    typealias UnsubscribeCallback = @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?, Int32, OpaquePointer?) -> Void
    typealias LogCallback = @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?, Int32, UnsafePointer<CChar>?) -> Void

    /// Installs the MQTT 5 callbacks (once, before the network thread starts); `log` only when given.
    func setCallbacks(connect: ConnectCallback, disconnect: DisconnectCallback, publish: PublishCallback,
                      message: MessageCallback, subscribe: SubscribeCallback, unsubscribe: UnsubscribeCallback,
                      log: LogCallback?) {
        mosquitto_connect_v5_callback_set(raw, connect)
        mosquitto_disconnect_v5_callback_set(raw, disconnect)
        mosquitto_publish_v5_callback_set(raw, publish)
        mosquitto_message_v5_callback_set(raw, message)
        mosquitto_subscribe_v5_callback_set(raw, subscribe)
        mosquitto_unsubscribe_v5_callback_set(raw, unsubscribe)
        if let log { mosquitto_log_callback_set(raw, log) }
    }

    func setOption(_ option: mosq_opt_t, _ value: Int32) -> Int32 { mosquitto_int_option(raw, option, value) }
    func setOption(_ option: mosq_opt_t, _ value: String) -> Int32 { mosquitto_string_option(raw, option, value) }
    func setThreaded(_ on: Bool) -> Int32 { mosquitto_threaded_set(raw, on) }
    func setCredentials(username: String, password: String?) -> Int32 { mosquitto_username_pw_set(raw, username, password) }

    /// The will; `properties` (MQTT 5, or nil for 3.x) is taken over by libmosquitto on success only.
    func setWill(topic: String, payload: UnsafeRawBufferPointer, qos: Int32, retain: Bool, properties: OpaquePointer?, v5: Bool) -> Int32 {
        if v5 {
            return mosquitto_will_set_v5(raw, topic, Int32(payload.count), payload.baseAddress, qos, retain, properties)
        }
        return mosquitto_will_set(raw, topic, Int32(payload.count), payload.baseAddress, qos, retain)
    }

    func setTLSPSK(hexKey: String, identity: String, ciphers: String?) -> Int32 { mosquitto_tls_psk_set(raw, hexKey, identity, ciphers) }
    func setTLS(caFile: String?, caDirectory: String?, certificateFile: String?, keyFile: String?) -> Int32 {
        mosquitto_tls_set(raw, caFile, caDirectory, certificateFile, keyFile, nil)
    }
    func setTLSOptions(verifyPeer: Bool, version: String?, ciphers: String?) -> Int32 {
        mosquitto_tls_opts_set(raw, verifyPeer ? 1 : 0, version, ciphers)
    }
    func setTLSInsecure(_ insecure: Bool) -> Int32 { mosquitto_tls_insecure_set(raw, insecure) }
    func setSOCKS5(host: String, port: Int32, username: String?, password: String?) -> Int32 {
        mosquitto_socks5_set(raw, host, port, username, password)
    }

    // MARK: The connection (network thread)

    /// Opens the connection and queues CONNECT; `properties` nil on MQTT 3.x.
    func connect(host: String, port: Int32, keepalive: Int32, bindAddress: String?, properties: OpaquePointer?, v5: Bool) -> Int32 {
        if v5 { return mosquitto_connect_bind_v5(raw, host, port, keepalive, bindAddress, properties) }
        return mosquitto_connect_bind(raw, host, port, keepalive, bindAddress)
    }

    /// Queues DISCONNECT (MQTT 5 with a reason code and properties; 3.x ignores both).
    func disconnect(reason: Int32, properties: OpaquePointer?, v5: Bool) -> Int32 {
        v5 ? mosquitto_disconnect_v5(raw, reason, properties) : mosquitto_disconnect(raw)
    }

    /// The connection's socket, -1 when there is none.
    var socket: Int32 { mosquitto_socket(raw) }
    var wantsWrite: Bool { mosquitto_want_write(raw) }
    func loopRead() -> Int32 { mosquitto_loop_read(raw, 1) }
    func loopWrite() -> Int32 { mosquitto_loop_write(raw, 1) }
    /// Keepalive housekeeping (PINGREQ, and the end of a connection whose PINGRESP never came).
    func loopMisc() -> Int32 { mosquitto_loop_misc(raw) }

    // MARK: Packets (any thread, through ClientCore's gate)

    func publish(mid: inout Int32, topic: String, payload: UnsafeRawBufferPointer, qos: Int32, retain: Bool,
                 properties: OpaquePointer?) -> Int32 {
        mosquitto_publish_v5(raw, &mid, topic, Int32(payload.count), payload.baseAddress, qos, retain, properties)
    }

    /// SUBSCRIBE; `properties` nil and `options` ignored on MQTT 3.x.
    func subscribe(mid: inout Int32, filter: String, qos: Int32, options: Int32, properties: OpaquePointer?, v5: Bool) -> Int32 {
        if v5 { return mosquitto_subscribe_v5(raw, &mid, filter, qos, options, properties) }
        return mosquitto_subscribe(raw, &mid, filter, qos)
    }

    /// UNSUBSCRIBE; `mid` nil when nobody waits for the UNSUBACK, `properties` nil for none.
    func unsubscribe(mid: UnsafeMutablePointer<Int32>?, filter: String, properties: OpaquePointer?) -> Int32 {
        if let properties { return mosquitto_unsubscribe_v5(raw, mid, filter, properties) }
        return mosquitto_unsubscribe(raw, mid, filter)
    }
}

// MARK: - Library initialisation

enum MosquittoLibrary {
    /// `mosquitto_lib_init` is not thread-safe; a static `let` runs it exactly once.
    private static let initialized: Bool = {
        mosquitto_lib_init()
        return true
    }()

    static func ensureInitialized() { _ = initialized }

    /// The libmosquitto version, for example "2.0.11".
    static var version: String {
        var major: Int32 = 0, minor: Int32 = 0, rev: Int32 = 0
        mosquitto_lib_version(&major, &minor, &rev)
        return "\(major).\(minor).\(rev)"
    }
}
