"""paho-mqtt over mutual TLS, for `mqtt-bench` (`cargo xtask bench`). Prints one JSON object.

usage: python3 paho.py throughput PORT CA CERT KEY QOS COUNT
       python3 paho.py connects PORT CA CERT KEY COUNT

`mqtt-bench` embeds this file and runs it with `python -c`.
"""

import json
import sys
import threading
import time

import paho.mqtt.client as mqtt


def client(name, ca, cert, key):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name)
    c.tls_set(ca_certs=ca, certfile=cert, keyfile=key)
    c.max_inflight_messages_set(200)
    c.max_queued_messages_set(0)
    return c


def connected(c, port):
    done = threading.Event()
    c.on_connect = lambda *args: done.set()
    c.connect("localhost", int(port))
    c.loop_start()
    if not done.wait(20):
        raise SystemExit("paho did not connect")


def throughput(port, ca, cert, key, qos, count):
    got = 0
    last = [time.perf_counter()]
    finished = threading.Event()

    def on_message(_c, _u, _m):
        nonlocal got
        got += 1
        last[0] = time.perf_counter()
        if got >= count:
            finished.set()

    sub = client("paho-sub", ca, cert, key)
    sub.on_message = on_message
    subscribed = threading.Event()
    sub.on_subscribe = lambda *args: subscribed.set()
    connected(sub, port)
    sub.subscribe("tp/paho", qos)
    subscribed.wait(20)
    pub = client("paho-pub", ca, cert, key)
    connected(pub, port)
    payload = b"x" * 64
    start = time.perf_counter()
    infos = [pub.publish("tp/paho", payload, qos) for _ in range(count)]
    for info in infos:
        info.wait_for_publish(60)
    # Everything, or a second of silence.
    while not finished.wait(0.05):
        if time.perf_counter() - last[0] > 1.0 and got > 0:
            break
    rate = got / (last[0] - start)
    pub.loop_stop()
    sub.loop_stop()
    print(json.dumps({"what": "paho_throughput", "qos": qos, "received": got, "per_second": rate}))


def connects(port, ca, cert, key, count):
    start = time.perf_counter()
    for i in range(count):
        c = client(f"paho-conn-{i}", ca, cert, key)
        connected(c, port)
        c.disconnect()
        c.loop_stop()
    rate = count / (time.perf_counter() - start)
    print(json.dumps({"what": "paho_connects", "count": count, "per_second": rate}))


if __name__ == "__main__":
    mode, port, ca, cert, key = sys.argv[1:6]
    if mode == "throughput":
        throughput(port, ca, cert, key, int(sys.argv[6]), int(sys.argv[7]))
    else:
        connects(port, ca, cert, key, int(sys.argv[6]))
