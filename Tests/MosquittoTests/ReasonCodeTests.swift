import Testing
import Mosquitto

@Suite("Typed reason codes and error codes")
struct ReasonCodeTests {
    @Test("reason codes carry the spec's names, keep their byte, and tell failures apart")
    func reasonCodes() {
        #expect(MQTTReasonCode.notAuthorized.rawValue == 0x87)
        #expect(MQTTReasonCode(rawValue: 0x10) == .noMatchingSubscribers)
        #expect(MQTTReasonCode.success == .normalDisconnection && MQTTReasonCode.success == .grantedQoS0)
        #expect(MQTTReasonCode.disconnectWithWillMessage.description == "Disconnect with Will Message (0x04)")
        #expect(MQTTReasonCode.unspecifiedError.description == "Unspecified error (0x80)")
        #expect(MQTTReasonCode(0xA3).name == nil && MQTTReasonCode(0xA3).description == "Unknown reason code (0xA3)")
        #expect(MQTTReasonCode.unspecifiedError.isFailure && !MQTTReasonCode.noMatchingSubscribers.isFailure)
    }

    @Test("error codes compare with == and match in a switch; library codes keep their number")
    func errorCodes() {
        let code = MQTTError.Code.notConnected
        #expect(code == .notConnected && code != .connectionLost)
        switch code {
        case .connectionLost: Issue.record("wrong case")
        case .notConnected: break
        default: Issue.record("no case matched")
        }
        #expect(MQTTError.Code.library(14) == .library(14) && MQTTError.Code.library(14) != .library(15))
        #expect(MQTTError.Code.library(14).libraryErrorCode == 14 && MQTTError.Code.tls.libraryErrorCode == nil)
        #expect(MQTTError.Code.requiresMQTT5.description == "requiresMQTT5")
        #expect(Set([MQTTError.Code.tls, .tls, .timeout]).count == 2)
        let error = MQTTError(.publishRejected, "refused", reasonCode: .quotaExceeded)
        #expect(error.reasonCode == .quotaExceeded && error.reasonCode?.rawValue == 0x97)
    }
}
