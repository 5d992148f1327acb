import MQTTBridgeCommand

/// `mqtt-bridge`: the command line lives in MQTTBridgeCommand (``BridgeCommand``), the bridge in MQTTBridge.
@main
enum MQTTBridgeMain {
    static func main() async {
        await BridgeCommand.runCommandLine()
    }
}
