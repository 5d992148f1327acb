import MosquittoCLI

/// `mqtt-rr`: see ``MosquittoCLI/RRCommand``.
@main
struct MQTTRR {
    static func main() async {
        await CLIRunner.main(RRCommand.self)
    }
}
