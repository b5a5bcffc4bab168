"""Persistent-session phases with paho-mqtt; the Rust test restarts the broker in between.

usage: session.py PHASE --port P --id CLIENT [--protocol 5|311] [--topic T] [--qos Q] [--n N]
  park     connect with a persistent session, subscribe, disconnect normally
  publish  publish N messages m0..m{N-1} and wait for every acknowledgement
  hold     connect, receive N messages without acknowledging them, then exit abruptly
  collect  reconnect, receive N messages, wait for extras; report session present + messages
"""

import argparse
import os

from axle_paho import Client, result

ap = argparse.ArgumentParser()
ap.add_argument("phase", choices=["park", "publish", "hold", "collect"])
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--id", required=True)
ap.add_argument("--protocol", default="5", choices=["5", "311"])
ap.add_argument("--topic", default="py/session")
ap.add_argument("--qos", type=int, default=1)
ap.add_argument("--n", type=int, default=20)
a = ap.parse_args()
v5 = a.protocol == "5"


def persistent(manual_ack=False):
    return Client(a.port, a.id, v5=v5, clean=False, expiry=3600 if v5 else None, manual_ack=manual_ack)


if a.phase == "park":
    c = persistent()
    c.subscribe(a.topic, qos=a.qos)
    c.disconnect()
    result({"session_present": c.connack["session_present"]})
elif a.phase == "publish":
    c = Client(a.port, a.id, v5=v5)
    for i in range(a.n):
        c.publish(a.topic, f"m{i}", qos=a.qos)
    c.disconnect()
    result({"published": a.n})
elif a.phase == "hold":
    c = persistent(manual_ack=True)
    msgs = c.wait_messages(a.n)
    result({"session_present": c.connack["session_present"], "messages": msgs})
    # No DISCONNECT, no acknowledgements: the process just ends and the socket closes.
    os._exit(0)
else:
    c = persistent()
    c.wait_messages(a.n)
    msgs = c.settle(1.0)
    c.disconnect()
    result({"session_present": c.connack["session_present"], "messages": msgs})
