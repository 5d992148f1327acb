import MosquittoCLI

/// `mqtt-pub`: see ``MosquittoCLI/PubCommand``.
@main
struct MQTTPub {
    static func main() async {
        await CLIRunner.main(PubCommand.self)
    }
}
