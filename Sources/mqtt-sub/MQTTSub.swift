import MosquittoCLICore

/// `mqtt-sub`: see `MosquittoTools` in MosquittoCLICore.
@main
struct MQTTSub {
    static func main() {
        MosquittoTools.sub()
    }
}
