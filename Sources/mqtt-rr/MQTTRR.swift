import MosquittoCLI

/// `mqtt-rr`: see ``MosquittoCLI/RRCommand``.
@main
struct MQTTRR {
    static func main() {
        CLIRunner.main(RRCommand.self)
    }
}
