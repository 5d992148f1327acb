import Mosquitto

extension ConnectionOptions {
    /// The broker options to look at for a library error about the connection these options configured, e.g.
    /// `-u, -P, --password-file or --password-env`; nil when no option is to blame.
    ///
    /// The library says what is wrong in its own terms (a CA file, a client id); the command line that caught the
    /// error names its own flags with this.
    package static func flags(toCheckFor error: MQTTError, configuration: MQTTConfiguration) -> [String]? {
        switch error.code {
        case .badCredentials, .notAuthorized:
            return ["-u", "-P", "--password-file", "--password-env"]
        case .connectionFailed:
            if case .unixSocket = configuration.endpoint { return ["--unix"] }
            return ["-h", "-p", "-L"]
        case .tls:
            guard let tls = configuration.tls else { return nil }
            if tls.psk != nil { return ["--psk", "--psk-identity"] }
            if tls.caFile == nil && tls.caDirectory == nil && !tls.useSystemCertificates {
                return ["--cafile", "--capath", "--tls-use-os-certs"]
            }
            if (tls.certificateFile == nil) != (tls.keyFile == nil) { return ["--cert", "--key"] }
            return ["--cafile", "--capath", "--cert", "--key"]
        case .requiresMQTT5:
            return ["-V mqttv5"]
        case .invalidArgument:
            if let tls = configuration.tls, tls.psk != nil,
               tls.caFile != nil || tls.caDirectory != nil || tls.certificateFile != nil {
                return ["--psk", "--cafile", "--capath", "--cert"]
            }
            if case .persistent = configuration.session, configuration.clientID?.isEmpty ?? true { return ["-i", "-c"] }
            return nil
        default:
            return nil
        }
    }

    /// `error`'s message with the options to check appended (`…; check --cafile, --capath or --tls-use-os-certs`),
    /// unless no option is to blame or the message already names a flag.
    package static func messageWithFlagHint(for error: MQTTError, configuration: MQTTConfiguration) -> String {
        guard let flags = flags(toCheckFor: error, configuration: configuration), !namesAFlag(error.message) else {
            return error.message
        }
        let list = flags.count == 1 ? flags[0] : flags.dropLast().joined(separator: ", ") + " or " + flags.last!
        var message = error.message
        while message.last == "." || message.last == " " { message.removeLast() }
        return message + "; check " + list + "."
    }

    /// Whether `message` already names a command-line flag (`--cafile`, `-u`), as the library's messages once did.
    package static func namesAFlag(_ message: String) -> Bool {
        let words = message.split(whereSeparator: { " (/,".contains($0) })
        return words.contains { w in
            w.hasPrefix("--") && w.count > 2 || w.count == 2 && w.first == "-" && w.last!.isLetter
        }
    }
}
