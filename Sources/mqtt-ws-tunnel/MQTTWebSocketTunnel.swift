#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import MQTTWebSocket

/// `mqtt-ws-tunnel`: the WebSocket tunnel that `mqtt-pub`, `mqtt-sub` and `mqtt-rr` start for `--ws` (see
/// `WebSocketTunnelHelper` in MQTTWebSocket).
@main
struct MQTTWebSocketTunnel {
    static func main() {
        exit(WebSocketTunnelHelper.run(arguments: Array(CommandLine.arguments.dropFirst())))
    }
}
