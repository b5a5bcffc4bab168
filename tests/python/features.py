"""MQTT features seen by paho-mqtt clients; prints what was observed as JSON.

usage: features.py SCENARIO --port P [--protocol 5|311] [--qos Q]
"""

import argparse
import time

from axle_paho import Client, PacketTypes, Properties, fail, result

ap = argparse.ArgumentParser()
ap.add_argument("scenario")
ap.add_argument("--port", type=int, required=True)
ap.add_argument("--protocol", default="5", choices=["5", "311"])
ap.add_argument("--qos", type=int, default=1)
a = ap.parse_args()
v5 = a.protocol == "5"
port = a.port


def pubsub():
    """QoS a.qos both ways: publisher and subscriber at the same QoS."""
    s = Client(port, "py-sub", v5=v5)
    s.subscribe("py/qos", qos=a.qos)
    p = Client(port, "py-pub", v5=v5)
    for i in range(10):
        p.publish("py/qos", f"m{i}", qos=a.qos)
    s.wait_messages(10)
    return {"messages": s.settle(0.5)}


def properties():
    s = Client(port, "py-sub")
    s.subscribe("py/props")
    p = Client(port, "py-pub")
    props = Properties(PacketTypes.PUBLISH)
    props.PayloadFormatIndicator = 1
    props.ContentType = "text/plain; charset=utf-8"
    props.ResponseTopic = "py/reply"
    props.CorrelationData = b"corr-1"
    props.UserProperty = [("a", "1"), ("b", "2"), ("a", "3")]
    props.MessageExpiryInterval = 3600
    p.publish("py/props", "héllo", qos=1, props=props)
    return {"messages": s.wait_messages(1)}


def assigned_id():
    c = Client(port, "")
    return {"connack": c.connack, "properties": c.connack_props}


def will_with_disconnect_reason_4():
    w = Client(port, "py-watch")
    w.subscribe("py/will/#")
    c = Client(port, "py-mortal", will={"topic": "py/will/x", "payload": "bye", "qos": 1})
    c.disconnect(reason=4)
    msgs = w.wait_messages(1, "will")
    return {"messages": w.settle(0.5)}


def normal_disconnect_no_will():
    w = Client(port, "py-watch")
    w.subscribe("py/will/#")
    c = Client(port, "py-polite", will={"topic": "py/will/x", "payload": "bye", "qos": 1})
    c.disconnect()
    return {"messages": w.settle(1.0)}


def takeover():
    first = Client(port, "py-twin")
    second = Client(port, "py-twin")
    first.wait(lambda: first.disconnected is not None, "DISCONNECT of the first connection")
    return {"first_disconnect_reason": first.disconnected, "second_connack": second.connack}


def sub_ids_and_no_local():
    me = Client(port, "py-me")
    me.subscribe("py/nl/#", no_local=True, sub_id=11)
    me.subscribe("py/nl/+", sub_id=12)
    me.publish("py/nl/x/y", "own-deep", qos=1)
    other = Client(port, "py-other")
    other.publish("py/nl/x", "other", qos=1)
    me.wait_messages(1)
    return {"messages": me.settle(1.0)}


def retain_handling():
    p = Client(port, "py-pub")
    p.publish("py/rh", "kept", qos=1, retain=True)
    out = {}
    for rh in (0, 1, 2):
        c = Client(port, f"py-rh{rh}")
        c.subscribe("py/rh", retain_handling=rh)
        c.subscribe("py/rh", retain_handling=rh)
        out[f"rh{rh}"] = c.settle(1.0)
    return out


def dollar_topics():
    s = Client(port, "py-all", v5=v5)
    s.subscribe("#")
    s.subscribe("+/info")
    p = Client(port, "py-pub", v5=v5)
    p.publish("$SYS/info", "sys", qos=1)
    p.publish("plain/info", "plain", qos=1)
    s.wait_messages(1)
    return {"messages": s.settle(1.0)}


def shared():
    a1 = Client(port, "py-m1")
    a1.subscribe("$share/py/py/shared")
    a2 = Client(port, "py-m2")
    a2.subscribe("$share/py/py/shared")
    p = Client(port, "py-pub")
    for i in range(10):
        p.publish("py/shared", f"{i}", qos=1)
    deadline = time.monotonic() + 20
    while len(a1.messages) + len(a2.messages) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    return {"m1": list(a1.messages), "m2": list(a2.messages)}


def topic_alias():
    s = Client(port, "py-sub")
    s.subscribe("py/alias/#")
    p = Client(port, "py-pub")
    props = Properties(PacketTypes.PUBLISH)
    props.TopicAlias = 2
    p.publish("py/alias/one", "first", qos=1, props=props)
    props = Properties(PacketTypes.PUBLISH)
    props.TopicAlias = 2
    p.publish("", "second", qos=1, props=props)
    s.wait_messages(2)
    return {"messages": s.settle(0.5)}


def server_topic_alias():
    props = Properties(PacketTypes.CONNECT)
    props.TopicAliasMaximum = 4
    s = Client(port, "py-sub", connect_props=props)
    s.subscribe("py/sta")
    p = Client(port, "py-pub")
    for i in range(3):
        p.publish("py/sta", f"m{i}", qos=1)
    s.wait_messages(3)
    return {"messages": s.settle(0.5)}


SCENARIOS = {f.__name__: f for f in [
    pubsub, properties, assigned_id, will_with_disconnect_reason_4, normal_disconnect_no_will, takeover,
    sub_ids_and_no_local, retain_handling, dollar_topics, shared, topic_alias, server_topic_alias,
]}

if a.scenario not in SCENARIOS:
    fail(f"unknown scenario {a.scenario}; known: {sorted(SCENARIOS)}")
result(SCENARIOS[a.scenario]())
