import MosquittoCLI

/// `mqtt-pub`: see ``MosquittoCLI/PubCommand``.
@main
struct MQTTPub {
    static func main() {
        CLIRunner.main(PubCommand.self)
    }
}
