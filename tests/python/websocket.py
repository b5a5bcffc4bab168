"""paho-mqtt over WebSocket (ws, or wss with --tls-ca): a subscriber and a publisher on the
same listener; QoS 0, 1 and 2 messages, one of them larger than a typical WebSocket frame.

usage: websocket.py --port P [--path /mqtt] [--tls-ca CA.pem] [--protocol 5|311]
Prints {"messages": [{"topic", "payload_len", "qos"}...]} in arrival order (topics on different
partitions may arrive in any order).
"""

import argparse

from axle_paho import Client, result

ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--path", default="/mqtt")
ap.add_argument("--tls-ca", default=None)
ap.add_argument("--protocol", default="5", choices=["5", "311"])
a = ap.parse_args()
v5 = a.protocol == "5"


def client(cid):
    return Client(a.port, cid, v5=v5, transport="websockets", ws_path=a.path, tls_ca=a.tls_ca)


sub = client("ws-sub")
sub.subscribe("ws/#", qos=2)
pub = client("ws-pub")
payloads = [("ws/q0", b"zero", 0), ("ws/q1", b"one", 1), ("ws/q2", b"two", 2), ("ws/big", b"x" * 200_000, 1)]
for topic, payload, qos in payloads:
    pub.publish(topic, payload, qos=qos)
got = sub.wait_messages(len(payloads))
pub.disconnect()
sub.disconnect()
result({"messages": [{"topic": m["topic"], "payload_len": len(m["payload"]), "qos": m["qos"]} for m in got]})
