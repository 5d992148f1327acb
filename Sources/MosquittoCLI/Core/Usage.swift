#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CMosquitto

/// The `--help` texts (printed on standard output; the tools then exit 1, as mosquitto's do), with the name the
/// program was invoked as.
enum Usage {
    static func header(_ name: CStr, _ what: StaticString) {
        var major: Int32 = 0, minor: Int32 = 0, revision: Int32 = 0
        mosquitto_lib_version(&major, &minor, &revision)
        outPrintf("%s %s\n", name, staticC(what))
        outPrintf("%s version %s running on libmosquitto %d.%d.%d.\n\n", name, staticC(toolsVersion), major, minor, revision)
    }

    static func body(_ name: CStr, _ text: String) {
        // "NAME" in the text is the program name.
        var out: [UInt8] = []
        let n = Array(cBytes(name))
        let t = Array(text.utf8)
        var k = 0
        while k < t.count {
            if k + 4 <= t.count && t[k] == 78 && t[k + 1] == 65 && t[k + 2] == 77 && t[k + 3] == 69 {
                out += n
                k += 4
            } else {
                out.append(t[k])
                k += 1
            }
        }
        outBytes(out)
    }

    static let connection = """
    Broker:
      -h, --host HOST        broker host (default: localhost)
      -p, --port PORT        broker port (default: 1883, or 8883 with --cafile, --capath or --psk)
          --unix PATH        connect through a Unix domain socket instead of TCP
      -L, --url URL          mqtt(s)://[user[:password]@]host[:port]/topic in one argument; ws:// and wss://
                             (MQTT over WebSockets, TLS for wss) take the same form
          --ws               connect using WebSockets (HTTP path /mqtt, subprotocol mqtt), for brokers reachable
                             only through a web port; with --cafile, --capath or --tls-use-os-certs it is wss
      -V, --protocol-version mqttv5, mqttv311 (the default; mqttv5 for rr) or mqttv31
      -A ADDRESS             bind the outgoing socket to this local address
          --nodelay          disable Nagle's algorithm
          --proxy URL        SOCKS5 proxy: socks5h://[user[:password]@]host[:port]
    Session:
      -i, --id ID            client id (default: chosen by the broker)
      -I, --id-prefix P      client id = P followed by the process id
      -k, --keepalive SECS   keepalive, 5 to 65535 (default: 60)
      -c, --disable-clean-session   keep the session on the broker (needs -i)
      -x SECS                MQTT 5 session expiry interval; -1 or ∞: never
      -M N                   at most N QoS 1/2 messages in flight (default: 20)
      -D, --property CMD NAME VALUE  an MQTT 5 property, sent in the order given, e.g.
                             -D publish content-type text/plain; -D connect user-property key value
                             CMD: connect, publish, subscribe, unsubscribe, disconnect, will
    User:
      -u, --username USER
      -P, --pw PASSWORD      password on the command line (others can see it in 'ps')
          --password-file F  the password is the first line of file F
          --password-env V   the password is in environment variable V
          --password-prompt  ask for the password on the terminal
    Will:
          --will-topic T  --will-payload TEXT  --will-qos 0|1|2  --will-retain
    TLS:
          --cafile FILE | --capath DIR   trusted CA certificates; turns TLS on
          --cert FILE --key FILE         client certificate and key
          --tls-use-os-certs             trust the system's CA certificates
          --insecure                     do not check the broker's certificate name (testing only)
          --tls-version tlsv1.3|tlsv1.2  --ciphers LIST  --tls-alpn PROTOCOL
          --tls-engine ID  --keyform pem|engine  --tls-engine-kpass-sha1 SHA1
          --tls-keylog FILE              append the session keys to FILE (for Wireshark)
          --psk HEX --psk-identity ID    TLS with a pre-shared key instead of certificates
          --no-tls                       ignore every TLS option
    Other:
      -d, --debug            print libmosquitto's log on standard output
          --quiet            do not print runtime errors
      -o FILE                read options from FILE (one per line) instead of the default options file,
                             $XDG_CONFIG_HOME/mosquitto_xxx or ~/.config/mosquitto_xxx
          --help             this text      --version   the version

    """

    static func pub(_ name: CStr) {
        header(name, "publishes one message, a repeated message, or one message per line of its input, and exits.")
        body(name, """
        Usage: NAME [options] -t topic {-m message | -f file | -s | -l | -n} [-q qos] [-r]

        Message:
          -t, --topic TOPIC      topic to publish to
          -m, --message TEXT     the payload
          -f, --file FILE        the whole file is the payload
          -s, --stdin-file       all of standard input is the payload
          -l, --stdin-line       one message per line of standard input
          -n, --null-message     an empty payload
          -q, --qos 0|1|2        quality of service (default: 0)
          -r, --retain           the broker keeps the message for later subscribers
              --repeat N         publish N times         --repeat-delay SECS   wait between them
              --encode msgpack   the message (-m, -f, -s, each -l line) is JSON, sent as MessagePack, with
                                 content type application/msgpack on MQTT 5 (unless -D sets one); invalid JSON
                                 is an error and nothing is sent; with -l such a line is reported with its
                                 number and skipped, the others are sent, and the exit status is 1
              --outbox DIR       store every message in the durable outbox DIR before it is sent (-q 1 or 2);
                                 it leaves DIR when the broker acknowledged it. With -l every line read is
                                 stored first, so kill -9 loses nothing read. If the broker cannot be
                                 reached the messages stay in DIR and the exit status is 75
              --drain            with --outbox and no message: send what DIR holds, exit 0 once the broker
                                 acknowledged all of it (75 if it cannot be reached)

        \(connection)
        Examples:
          NAME -t sensors/kitchen/temperature -m 21.5 -q 1
          seq 1 100 | NAME -t numbers -l
          NAME -L mqtts://broker.example.com/alerts -f alert.json -D publish content-type application/json
          NAME --outbox /var/lib/readings -t sensors/gw1 -m 21.5 -q 1    (exit 75: stored, broker away)
          NAME --outbox /var/lib/readings --drain                         (later: send what is stored)

        """)
    }

    static func sub(_ name: CStr) {
        header(name, "subscribes to topics and prints the messages that arrive.")
        body(name, """
        Usage: NAME [options] {-t filter ... | -U filter ...} [-q qos] [-C count] [-W seconds] [-v | -F format]

        Subscription:
          -t, --topic FILTER     subscribe to FILTER (repeatable; + and # wildcards)
          -T, --filter-out F     do not print messages whose topic matches F (repeatable)
          -U, --unsubscribe F    unsubscribe from F (repeatable)
          -q, --qos 0|1|2        subscription QoS (default: 0)
          -R                     do not print retained messages
              --retained-only    print retained messages only; exit at the first other one
              --remove-retained  clear the retained messages received
              --retain-as-published   MQTT 5: keep the publisher's retain flag
              --retain-handling always|new|never   MQTT 5: which retained messages the broker sends
          -C COUNT               exit after COUNT messages
          -E                     exit once subscribed
          -W SECS                exit (code 27) after SECS seconds
              --random-filter P  print about P percent of the messages
              --no-reconnect     exit (code 7) when the connection is lost instead of reconnecting
        Output:
          -v, --verbose          print "topic payload"
          -N                     no newline after each message
          -F FORMAT              %t topic, %p payload, %x/%X hex (%.2:x: a ':' every 2 digits), %l length,
                                 %q qos, %r retain, %m message id, %j/%J JSON, %I/%U time, %f/%d float/double,
                                 %C %D %E %F %P %R %S %A MQTT 5 properties; @X strftime; \\n \\t escapes;
                                 widths and precisions: %-10t %05l %.3p
              --pretty           multi-line JSON for %j and %J
              --json             one JSON object per line, binary-safe (base64), every MQTT 5 property; a
                                 payload with content type application/msgpack is embedded as its value
              --decode msgpack|json|auto   print payloads as JSON: msgpack decodes MessagePack, json checks
                                 JSON text, auto chooses by the MQTT 5 content type (others print as they
                                 are); --json embeds the payload as a JSON value; a payload that does not
                                 decode is reported on standard error and not printed
          -w, --watch            each topic on its own line of the terminal
              --message-rate     print the number of messages per second instead of the messages

        \(connection)
        Examples:
          NAME -t 'sensors/#' -v
          NAME -t 'sensors/+/temperature' -C 10 -F '%I %t %p'

        """)
    }

    static func rr(_ name: CStr) {
        header(name, "publishes a request and prints the response (MQTT 5 request-response).")
        body(name, """
        Usage: NAME [options] -t topic -e response-topic {-m message | -f file | -s | -n}

        Request:
          -t, --topic TOPIC      request topic
          -e TOPIC               response topic: subscribed to first, sent with the request
          -m, --message TEXT  -f, --file FILE  -s, --stdin-file  -n, --null-message
          -q, --qos 0|1|2        QoS of the request and of the subscription
          -R                     ignore retained responses
          -W SECS                give up (code 27) after SECS seconds
              --latency          print the time between request and response
          The request carries correlation data only when given: -D publish correlation-data DATA.
        Output:
          -v, -N, -F FORMAT, --pretty, --json, --decode   as for the subscriber

        \(connection)
        Example:
          NAME -t service/time -e replies/me -m now -W 5

        """)
    }
}
