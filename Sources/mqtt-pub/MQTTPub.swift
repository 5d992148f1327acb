import MosquittoCLICore

/// `mqtt-pub`: see `MosquittoTools` in MosquittoCLICore.
@main
struct MQTTPub {
    static func main() {
        MosquittoTools.pub()
    }
}
