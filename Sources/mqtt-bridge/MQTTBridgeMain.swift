import MQTTBridge

/// `mqtt-bridge`: everything lives in the MQTTBridge library; see ``BridgeCommand``.
@main
enum MQTTBridgeMain {
    static func main() async {
        await BridgeCommand.runCommandLine()
    }
}
