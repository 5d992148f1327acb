/// The `--help` texts, grouped the way a user looks for an option, with examples.
enum HelpText {
    static let connection = """
    Connection:
      -h, --host HOST            broker host (default: localhost)
      -p, --port PORT            broker port (default: 1883, 8883 with --cafile/--capath/--psk)
          --unix PATH            connect through a Unix domain socket
      -L, --url URL              mqtt(s)://[user[:password]@]host[:port]/topic
      -V, --protocol-version V   mqttv5, mqttv311 or mqttv31
      -i, --id ID                client id          -I, --id-prefix P   id = P + process id
      -k, --keepalive SECONDS    5..65535 (default: 60)
      -c, --disable-clean-session keep the session (needs -i)
      -x SECONDS                 MQTT 5 session expiry; -1 or ∞ for never
      -A ADDRESS                 bind to this local address     --nodelay   disable Nagle
      -M N                       maximum QoS 1/2 messages in flight (default: 20)
          --proxy socks5h://[user[:password]@]host[:port]
      -D, --property CMD NAME VALUE
                                 MQTT 5 property, e.g. -D connect user-property site lab
                                 (CMD: connect, publish, subscribe, unsubscribe, disconnect, will)

    Authentication (keep passwords off the command line):
      -u, --username USER
          --password-file PATH   read the password from the first line of PATH
          --password-env VAR     read the password from environment variable VAR
          --password-prompt      ask on the terminal (also: -P as the last argument)
      -P, --pw PASSWORD          password on the command line (visible in 'ps')

    Will:
          --will-topic TOPIC  --will-payload TEXT  --will-qos 0|1|2  --will-retain

    TLS:
          --cafile FILE  --capath DIR     trusted CAs (turns TLS on)
          --cert FILE  --key FILE         client certificate and key (PEM)
          --tls-version tlsv1.3|tlsv1.2|tlsv1.1   --ciphers LIST   --tls-alpn PROTO
          --tls-use-os-certs              trust the system CA store
          --insecure                      do not check the broker's host name (testing only)
          --psk HEX  --psk-identity ID    TLS pre-shared key instead of certificates
          --tls-engine ID  --keyform pem|engine  --tls-engine-kpass-sha1 SHA1   OpenSSL engine keys

    Diagnostics:
      -d, --debug                print libmosquitto's log on standard output
          --quiet                do not print runtime errors
          --help                 this text
          --version              version
    Options are also read from $XDG_CONFIG_HOME/<mosquitto tool> or ~/.config/<mosquitto tool>
    (one option per line), before the command line.
    """

    static let pub = """
    mqtt-pub publishes a message to an MQTT broker; a drop-in for mosquitto_pub.

    Usage: mqtt-pub [connection options] -t topic {-m message | -f file | -s | -l | -n} [-q qos] [-r]

    Message:
      -t, --topic TOPIC          topic to publish to (no wildcards)
      -m, --message TEXT         the payload
      -f, --file PATH            the whole file is the payload
      -s, --stdin-file           all of standard input is the payload
      -l, --stdin-line           one message per line of standard input; at QoS 1/2 every line is
                                 acknowledged, in order, before mqtt-pub exits 0
      -n, --null-message         an empty payload
      -q, --qos 0|1|2            quality of service (default: 0)
      -r, --retain               retain the message
          --repeat N             publish N times        --repeat-delay SECONDS   gap between them

    \(connection)

    Examples:
      mqtt-pub -t sensors/kitchen/temp -m 21.5
      mqtt-pub -h broker -u alice --password-file ~/.mqtt-pw -t cmd/light -m on -q 1
      seq 1 100000 | mqtt-pub -t numbers -l -q 1
      mqtt-pub -L mqtts://broker:8883/alerts -f alert.json -D publish content-type application/json
    """

    static let sub = """
    mqtt-sub subscribes to topics and prints the messages; a drop-in for mosquitto_sub.

    Usage: mqtt-sub [connection options] -t filter [-t filter …] [-q qos] [output options]

    Subscription:
      -t, --topic FILTER         filter to subscribe to (repeatable; + and # wildcards)
      -T, --filter-out FILTER    do not print topics matching FILTER (repeatable)
      -U, --unsubscribe FILTER   unsubscribe from FILTER after subscribing (repeatable)
      -q, --qos 0|1|2            subscription QoS (default: 0)
      -R                         ignore retained messages
          --retained-only        print retained messages only; exit at the first live one
          --remove-retained      clear each retained message received
          --retain-as-published  MQTT 5: keep the publisher's retain flag
      -C COUNT                   exit after COUNT messages
      -E                         exit once subscribed
      -W SECONDS                 exit with code 27 after SECONDS
          --random-filter PCT    print about PCT % of the messages
          --no-reconnect         exit with an error when the connection is lost (default: reconnect,
                                 resume the session with -c -i, re-subscribe otherwise)

    Output:
      -v, --verbose              print "topic payload"
      -N                         no newline after each message
      -F FORMAT                  %t topic  %p payload  %x/%X hex  %l length  %q qos  %r retain  %m mid
                                 %j/%J JSON  %I/%U time  %C %D %E %F %P %R %S %A MQTT 5 properties
                                 @X strftime  @N nanoseconds  \\n \\t escapes; widths: %-10t %05l %.3p
          --pretty               multi-line JSON for %j/%J
          --json                 one JSON object per line: every MQTT 5 property, base64 for binary
                                 payloads (for jq)

    \(connection)

    Examples:
      mqtt-sub -t 'sensors/#' -v
      mqtt-sub -t 'sensors/+/temp' -C 10 -F '%I %t %p'
      mqtt-sub -t events -V mqttv5 --json | jq .payload
      mqtt-sub -c -i logger -q 1 -t 'logs/#' >> logs.txt
    """

    static let rr = """
    mqtt-rr sends an MQTT 5 request and prints the reply; a drop-in for mosquitto_rr.

    Usage: mqtt-rr [connection options] -t topic -e response-topic {-m message | -f file | -s | -n}

    Request:
      -t, --topic TOPIC          request topic
      -e TOPIC                   response topic (subscribed before the request is sent)
      -m, --message TEXT  -f, --file PATH  -s, --stdin-file  -n, --null-message
      -q, --qos 0|1|2            QoS of the request and the subscription
      -R                         ignore retained replies
      -W SECONDS                 give up with code 27 after SECONDS
    The request carries the response topic and correlation data (random unless given with
    -D publish correlation-data); only the matching reply is printed.

    Output:
      -v, -N, -F FORMAT, --pretty, --json    as for mqtt-sub

    \(connection)

    Examples:
      mqtt-rr -t service/time -e replies/me -m now -W 5
    """
}
