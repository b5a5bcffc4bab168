"""Small synchronous wrapper over paho-mqtt 2.x for Axle's end-to-end tests.

Scripts print one JSON object on stdout as their result, or exit non-zero with a message on
stderr. Every wait is bounded so that a misbehaving broker fails a test instead of hanging it.
"""

import json
import sys
import threading
import time

try:
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties
    from paho.mqtt.subscribeoptions import SubscribeOptions
except ImportError as e:  # never skip silently
    print(f"paho-mqtt 2.x is required (pip install -r tests/python/requirements.txt): {e}", file=sys.stderr)
    sys.exit(2)

if not mqtt.__dict__.get("CallbackAPIVersion"):
    print("paho-mqtt 2.x is required (CallbackAPIVersion missing)", file=sys.stderr)
    sys.exit(2)

TIMEOUT = 20.0
HOST = "127.0.0.1"


def fail(message):
    print(message, file=sys.stderr)
    sys.exit(1)


def result(obj):
    print(json.dumps(obj), flush=True)


def props_dict(p):
    """The interesting MQTT 5 properties of a message as JSON-friendly values."""
    if p is None:
        return {}
    out = {}
    for name in (
        "PayloadFormatIndicator",
        "MessageExpiryInterval",
        "ContentType",
        "ResponseTopic",
        "SubscriptionIdentifier",
        "TopicAlias",
    ):
        if hasattr(p, name):
            out[name] = getattr(p, name)
    if hasattr(p, "CorrelationData"):
        out["CorrelationData"] = p.CorrelationData.decode("latin-1")
    if hasattr(p, "UserProperty"):
        out["UserProperty"] = [list(kv) for kv in p.UserProperty]
    if hasattr(p, "AssignedClientIdentifier"):
        out["AssignedClientIdentifier"] = p.AssignedClientIdentifier
    if hasattr(p, "ServerKeepAlive"):
        out["ServerKeepAlive"] = p.ServerKeepAlive
    return out


class Client:
    """A connected paho client that records messages and the disconnect reason."""

    def __init__(self, port, client_id, v5=True, clean=True, expiry=None, keepalive=30, will=None,
                 manual_ack=False, connect_props=None, transport="tcp", ws_path=None, tls_ca=None):
        self.cond = threading.Condition()
        self.messages = []
        self.connack = None
        self.connack_props = {}
        self.disconnected = None
        self.acks = set()
        self.subacks = {}
        self.v5 = v5
        proto = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        kwargs = {} if v5 else {"clean_session": clean}
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=proto,
                             manual_ack=manual_ack, transport=transport, **kwargs)
        if ws_path is not None:
            self.c.ws_set_options(path=ws_path)
        if tls_ca is not None:
            self.c.tls_set(ca_certs=tls_ca)
        self.c.on_connect = self._on_connect
        self.c.on_message = self._on_message
        self.c.on_disconnect = self._on_disconnect
        self.c.on_publish = self._on_publish
        self.c.on_subscribe = self._on_subscribe
        if will is not None:
            self.c.will_set(**will)
        if v5:
            props = connect_props or Properties(PacketTypes.CONNECT)
            if expiry is not None:
                props.SessionExpiryInterval = expiry
            self.c.connect(HOST, port, keepalive, clean_start=clean, properties=props)
        else:
            self.c.connect(HOST, port, keepalive)
        self.c.loop_start()
        self.wait(lambda: self.connack is not None, "CONNACK")
        if self.connack["reason"] != 0:
            fail(f"{client_id}: connection refused: {self.connack}")

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        with self.cond:
            self.connack = {"session_present": bool(flags.session_present), "reason": reason_code.value}
            self.connack_props = props_dict(properties) if self.v5 else {}
            self.cond.notify_all()

    def _on_message(self, client, userdata, msg):
        with self.cond:
            self.messages.append({
                "topic": msg.topic,
                "payload": msg.payload.decode("utf-8", "replace"),
                "qos": msg.qos,
                "retain": bool(msg.retain),
                "dup": bool(msg.dup),
                "mid": msg.mid,
                "properties": props_dict(getattr(msg, "properties", None)) if self.v5 else {},
            })
            self.cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        with self.cond:
            self.disconnected = reason_code.value if hasattr(reason_code, "value") else int(reason_code)
            self.cond.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self.cond:
            self.acks.add(mid)
            self.cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self.cond:
            self.subacks[mid] = [r.value for r in reason_codes]
            self.cond.notify_all()

    def wait(self, pred, what, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred():
                left = deadline - time.monotonic()
                if left <= 0:
                    fail(f"timed out waiting for {what}")
                self.cond.wait(left)

    def subscribe(self, topic, qos=1, no_local=False, rap=False, retain_handling=0, sub_id=None):
        if self.v5:
            opts = SubscribeOptions(qos=qos, noLocal=no_local, retainAsPublished=rap, retainHandling=retain_handling)
            props = None
            if sub_id is not None:
                props = Properties(PacketTypes.SUBSCRIBE)
                props.SubscriptionIdentifier = sub_id
            rc, mid = self.c.subscribe(topic, options=opts, properties=props)
        else:
            rc, mid = self.c.subscribe(topic, qos)
        if rc != 0:
            fail(f"subscribe {topic}: rc {rc}")
        self.wait(lambda: mid in self.subacks, f"SUBACK for {topic}")
        return self.subacks[mid]

    def publish(self, topic, payload, qos=1, retain=False, props=None):
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if qos > 0:
            self.wait(lambda: info.mid in self.acks, f"acknowledgement of {topic}")
        return info

    def wait_messages(self, n, what="messages", timeout=TIMEOUT):
        self.wait(lambda: len(self.messages) >= n, f"{n} {what} (got {len(self.messages)})", timeout)
        return list(self.messages)

    def settle(self, seconds=1.0):
        """Waits a little for anything more (duplicates) and returns all messages."""
        time.sleep(seconds)
        with self.cond:
            return list(self.messages)

    def disconnect(self, reason=None):
        if reason is not None and self.v5:
            from paho.mqtt.reasoncodes import ReasonCode
            self.c.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, identifier=reason))
        else:
            self.c.disconnect()
        self.wait(lambda: self.disconnected is not None, "disconnect")
        self.c.loop_stop()
