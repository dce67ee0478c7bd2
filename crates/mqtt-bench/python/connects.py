"""mTLS connections per second from Python's `ssl` module, for
`mqtt-bench` (`cargo xtask bench`): TLS handshake with a client certificate, MQTT CONNECT,
CONNACK, DISCONNECT, close; sequentially. Prints one JSON object.

usage: python3 connects.py PORT CA CERT KEY COUNT

`mqtt-bench` embeds this file and runs it with `python -c`.
"""

import json
import socket
import ssl
import sys
import time


def connect_packet(client_id: bytes) -> bytes:
    variable = b"\x00\x04MQTT\x04\x02\x00\x3c"
    payload = len(client_id).to_bytes(2, "big") + client_id
    body = variable + payload
    return b"\x10" + bytes([len(body)]) + body


def main():
    port, ca, cert, key, count = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    context = ssl.create_default_context(cafile=ca)
    context.load_cert_chain(cert, key)
    start = time.perf_counter()
    for i in range(count):
        with socket.create_connection(("127.0.0.1", int(port))) as raw:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(connect_packet(f"py-{i}".encode()))
                connack = tls.recv(4)
                if connack[:1] != b"\x20":
                    raise SystemExit(f"no CONNACK: {connack!r}")
                tls.sendall(b"\xe0\x00")
    seconds = time.perf_counter() - start
    print(json.dumps({"what": "python_connects", "count": count, "per_second": count / seconds}))


if __name__ == "__main__":
    main()
