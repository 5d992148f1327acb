import MosquittoCLI

/// `mqtt-sub`: see ``MosquittoCLI/SubCommand``.
@main
struct MQTTSub {
    static func main() {
        CLIRunner.main(SubCommand.self)
    }
}
