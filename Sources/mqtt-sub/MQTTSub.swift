import MosquittoCLI

/// `mqtt-sub`: see ``MosquittoCLI/SubCommand``.
@main
struct MQTTSub {
    static func main() async {
        await CLIRunner.main(SubCommand.self)
    }
}
