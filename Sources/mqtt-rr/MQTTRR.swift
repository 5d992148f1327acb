import MosquittoCLICore

/// `mqtt-rr`: see `MosquittoTools` in MosquittoCLICore.
@main
struct MQTTRR {
    static func main() {
        MosquittoTools.rr()
    }
}
