#!/usr/bin/env python3
"""Two consumer-group members share a stream across rebalances, with the real grpcio client.

Usage: consumer_group.py HOST:PORT [--records N] [--stream NAME] [--proto PATH]

Stubs are generated at run time from proto/axle/v1/consumer.proto with grpc_tools.protoc
into a temporary directory. The scenario, against a running broker whose stream has
several partitions:

1. Publish part of the records (gRPC Publish to v/{i%50}/telemetry, payload = unique id)
   before any consumer runs; a publisher thread publishes the rest while they run.
2. Member A joins alone and owns every partition. Each member polls (one Fetch batch per owned
   partition, from its committed offset or the earliest one), processes, commits the poll with
   its generation, heartbeats,
   and on `rebalance_needed` (or a commit refused as stale) rejoins with its member id,
   dropping partitions it lost and starting new ones at the group's committed offset.
3. Member B joins late: a rebalance. Once both have processed records in the new generation,
   A commits and leaves (LeaveGroup): another rebalance, B owns everything.
4. B stops once every record is processed and committed.

Checks: every published record was processed at least once; every duplicate is explained by
the at-least-once window (the old owner processed it in an older generation, after its last
successful commit, and the new owner started at the committed offset of the handover, at or
below it); members of one generation own disjoint partitions; final committed offsets equal
the high watermarks. Prints a JSON summary on stdout. Exit status: 0 pass, 1 a check failed,
3 grpcio or grpcio-tools is not installed.
"""

import argparse
import atexit
import importlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback

try:
    import grpc
    from grpc_tools import protoc
except ImportError as e:  # a clear message, never a silent skip
    print(
        f"GRPC_MISSING: cannot import the gRPC client ({e}) in {sys.executable}: "
        "pip install -r tests/python/requirements.txt (scripts/test does it in its venv)",
        file=sys.stderr,
    )
    sys.exit(3)

GROUP = "py-analytics"
TOPICS = 50
BATCH = 25  # max_records per Fetch: small batches, so rebalances land mid-stream
TAIL_WAIT_MS = 50  # Fetch max_wait_ms at the tail
HEARTBEAT_EVERY_S = 0.1
BACKLOG = 300  # the publisher stays at most this many records ahead of the consumers
SESSION_TIMEOUT_MS = 30_000


class CheckFailed(Exception):
    pass


def load_stubs(proto_path):
    """Generates consumer_pb2 and consumer_pb2_grpc from the .proto into a temp dir."""
    proto_path = os.path.abspath(proto_path)
    if not os.path.isfile(proto_path):
        raise CheckFailed(f"proto file not found: {proto_path}")
    out = tempfile.mkdtemp(prefix="axle-pystubs-")
    atexit.register(shutil.rmtree, out, True)
    include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{os.path.dirname(proto_path)}",
            f"-I{include}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            os.path.basename(proto_path),
        ]
    )
    if rc != 0:
        raise CheckFailed(f"grpc_tools.protoc failed ({rc}) on {proto_path}")
    sys.path.insert(0, out)
    base = os.path.splitext(os.path.basename(proto_path))[0]
    return importlib.import_module(f"{base}_pb2"), importlib.import_module(f"{base}_pb2_grpc")


class Recorder:
    """Everything that happened, in one order (seq), for the checks afterwards."""

    def __init__(self):
        self.lock = threading.Condition()
        self.seq = 0
        self.events = []  # processed records
        self.joins = []
        self.handovers = []  # a member starting a partition it did not own before
        self.commits = []
        self.noticed = []  # a member learning of a new generation
        self.published = {}  # id -> (partition, offset)
        self.published_during = 0
        self.unique = set()
        self.errors = []
        self.left = []  # LeaveGroup calls

    def _next(self):
        self.seq += 1
        return self.seq

    def add(self, kind, **fields):
        with self.lock:
            fields["seq"] = self._next()
            getattr(self, kind).append(fields)
            self.lock.notify_all()
            return fields["seq"]

    def processed(self, member, generation, partition, record):
        rid = record.payload.decode("utf-8", "replace")
        with self.lock:
            self.events.append(
                dict(seq=self._next(), member=member, gen=generation, p=partition, o=record.offset, id=rid)
            )
            self.unique.add(rid)
            self.lock.notify_all()

    def fail(self, message):
        with self.lock:
            self.errors.append(message)
            self.lock.notify_all()

    def wait_for(self, what, predicate, deadline):
        """Waits until predicate() (called under the lock) holds; fails on error or deadline."""
        with self.lock:
            while not predicate():
                if self.errors:
                    raise CheckFailed(f"while waiting for {what}: {self.errors[0]}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CheckFailed(f"timed out waiting for {what} (a hang guard, not a timing check)")
                self.lock.wait(min(left, 0.5))


class Member(threading.Thread):
    def __init__(self, name, addr, pb, pb_grpc, stream, rec, ctx):
        super().__init__(name=f"member-{name}", daemon=True)
        self.label = name
        self.pb = pb
        self.channel = grpc.insecure_channel(addr)
        self.stub = pb_grpc.ConsumerStub(self.channel)
        self.stream = stream
        self.rec = rec
        self.ctx = ctx
        self.member_id = ""
        self.generation = 0
        self.positions = {}  # owned partition -> next offset to process
        self.committed = {}  # owned partition -> last offset this member committed (or started at)
        self.need_rejoin = False
        self.leave = threading.Event()
        self.done = threading.Event()
        self.last_heartbeat = 0.0

    # --- group protocol -------------------------------------------------------------------

    def join(self):
        old = self.generation
        r = self.stub.JoinGroup(
            self.pb.JoinGroupRequest(
                group=GROUP, stream=self.stream, member_id=self.member_id, session_timeout_ms=SESSION_TIMEOUT_MS
            ),
            timeout=30,
        )
        if self.member_id and r.member_id != self.member_id:
            raise CheckFailed(f"{self.label}: rejoined as {self.member_id} but got member_id {r.member_id}")
        if r.generation < old:
            raise CheckFailed(f"{self.label}: generation went back from {old} to {r.generation}")
        self.member_id = r.member_id
        self.generation = r.generation
        owned = sorted(r.partitions)
        self.rec.add("joins", member=self.label, gen=r.generation, partitions=owned, members=list(r.members))
        for p in list(self.positions):
            if p not in owned:  # lost: stop processing it at once
                del self.positions[p]
                self.committed.pop(p, None)
        new = [p for p in owned if p not in self.positions]
        if new:
            c = self.stub.FetchCommitted(self.pb.FetchCommittedRequest(group=GROUP, partitions=new), timeout=30)
            committed = {o.partition: o.offset for o in c.offsets}
            missing = [p for p in new if p not in committed]
            earliest = {}
            if missing:
                lo = self.stub.ListOffsets(
                    self.pb.ListOffsetsRequest(stream=self.stream, partitions=missing, earliest=True), timeout=30
                )
                earliest = {o.partition: o.offset for o in lo.offsets}
            for p in new:
                start = committed[p] if p in committed else earliest[p]
                self.positions[p] = start
                self.committed[p] = start
                self.rec.add(
                    "handovers",
                    member=self.label,
                    gen=self.generation,
                    p=p,
                    start=start,
                    source="committed" if p in committed else "earliest",
                )
        self.need_rejoin = False

    def heartbeat(self):
        now = time.monotonic()
        if self.need_rejoin or now - self.last_heartbeat < HEARTBEAT_EVERY_S:
            return
        self.last_heartbeat = now
        try:
            r = self.stub.Heartbeat(
                self.pb.HeartbeatRequest(group=GROUP, member_id=self.member_id, generation=self.generation), timeout=30
            )
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                raise CheckFailed(f"{self.label}: heartbeat says the member is gone: {e.details()}")
            raise
        moved = r.generation != self.generation
        if r.rebalance_needed != moved:
            raise CheckFailed(
                f"{self.label}: Heartbeat(generation={self.generation}) returned rebalance_needed="
                f"{r.rebalance_needed} with generation={r.generation}"
            )
        if r.rebalance_needed:
            self.rec.add("noticed", member=self.label, old=self.generation, new=r.generation, how="heartbeat")
            self.need_rejoin = True

    def commit(self):
        dirty = {p: o for p, o in self.positions.items() if self.committed.get(p) != o}
        if not dirty or self.need_rejoin:
            return
        offsets = [self.pb.PartitionOffset(partition=p, offset=o) for p, o in sorted(dirty.items())]
        req = self.pb.CommitOffsetsRequest(
            group=GROUP, member_id=self.member_id, generation=self.generation, offsets=offsets
        )
        try:
            self.stub.CommitOffsets(req, timeout=30)
        except grpc.RpcError as e:
            self.rec.add(
                "commits", member=self.label, gen=self.generation, offsets=dirty, ok=False, code=e.code().name
            )
            if e.code() == grpc.StatusCode.FAILED_PRECONDITION:  # stale generation: rejoin
                self.rec.add("noticed", member=self.label, old=self.generation, new=None, how="commit")
                self.need_rejoin = True
                return
            raise CheckFailed(f"{self.label}: CommitOffsets({dirty}) failed: {e.code().name} {e.details()}")
        self.rec.add("commits", member=self.label, gen=self.generation, offsets=dirty, ok=True, code="OK")
        self.committed.update(dirty)

    # --- processing -----------------------------------------------------------------------

    def fetch_batch(self, p):
        start = self.positions[p]
        call = self.stub.Fetch(
            self.pb.FetchRequest(
                stream=self.stream, partition=p, offset=start, max_records=BATCH, max_wait_ms=TAIL_WAIT_MS
            ),
            timeout=60,
        )
        try:
            r = next(call)
        finally:
            call.cancel()
        expect = start
        for record in r.records:
            if record.offset != expect:
                raise CheckFailed(f"{self.label}: partition {p} from {start}: got offset {record.offset}, not {expect}")
            expect += 1
        if r.next_offset != expect:
            raise CheckFailed(f"{self.label}: partition {p}: next_offset {r.next_offset}, expected {expect}")
        return r.records

    def finished(self):
        """B's stop condition: A gone, publishing done, all partitions committed to their end."""
        ctx = self.ctx
        if not (ctx["publish_done"].is_set() and ctx["a_left"].is_set()):
            return False
        ends = ctx["ends"]
        return set(self.positions) == set(ends) and all(self.committed.get(p) == e for p, e in ends.items())

    def run(self):
        try:
            self.join()
            while True:
                if self.leave.is_set():
                    self.commit()
                    self.stub.LeaveGroup(self.pb.LeaveGroupRequest(group=GROUP, member_id=self.member_id), timeout=30)
                    self.rec.add("left", member=self.label, gen=self.generation)
                    return
                if self.ctx["finisher"] == self.label and self.finished():
                    self.stub.LeaveGroup(self.pb.LeaveGroupRequest(group=GROUP, member_id=self.member_id), timeout=30)
                    return
                # One poll: a batch from each owned partition, processed, then committed together
                # (like a Kafka poll loop); a rebalance is noticed at the commit or heartbeat.
                for p in sorted(self.positions):
                    records = self.fetch_batch(p)
                    for record in records:
                        self.rec.processed(self.label, self.generation, p, record)
                    if records:
                        self.positions[p] = records[-1].offset + 1
                        time.sleep(0.002)  # the "work" of a batch
                self.commit()
                self.heartbeat()
                if self.need_rejoin:
                    self.join()
        except CheckFailed as e:
            self.rec.fail(str(e))
        except Exception as e:  # noqa: BLE001 - any client error fails the run with its trace
            self.rec.fail(f"{self.label}: {type(e).__name__}: {e}\n{traceback.format_exc()}")
        finally:
            self.done.set()
            with self.rec.lock:
                self.rec.lock.notify_all()


def publish(stub, pb, rec, i, during):
    r = stub.Publish(
        pb.PublishRequest(topic=f"v/{i % TOPICS}/telemetry", payload=f"id-{i:06d}".encode(), qos=1, publisher="pytest"),
        timeout=30,
    )
    with rec.lock:
        rec.published[f"id-{i:06d}"] = (r.partition, r.offset)
        if during:
            rec.published_during += 1
        rec.lock.notify_all()
    return r


def run(args):
    pb, pb_grpc = load_stubs(args.proto)
    deadline = time.monotonic() + args.timeout
    channel = grpc.insecure_channel(args.addr)
    grpc.channel_ready_future(channel).result(timeout=30)
    stub = pb_grpc.ConsumerStub(channel)
    info = stub.DescribeStream(pb.DescribeStreamRequest(stream=args.stream), timeout=30)
    partitions = sorted(p.partition for p in info.partitions)
    if len(partitions) < 2:
        raise CheckFailed(f"stream {args.stream} has {len(partitions)} partitions; the scenario needs at least 2")
    if any(p.high_watermark for p in info.partitions):
        raise CheckFailed(f"stream {args.stream} is not empty: {info}")

    rec = Recorder()
    n = args.records
    before = n // 3
    for i in range(before):
        publish(stub, pb, rec, i, during=False)

    ctx = {"publish_done": threading.Event(), "a_left": threading.Event(), "ends": {}, "finisher": "B"}

    def publisher():
        try:
            for i in range(before, n):
                rec.wait_for("consumers to keep up with the publisher", lambda: len(rec.unique) >= i - BACKLOG, deadline)
                publish(stub, pb, rec, i, during=True)
            with rec.lock:
                ends = {p: 0 for p in partitions}
                for p, o in rec.published.values():
                    ends[p] = max(ends[p], o + 1)
                ctx["ends"] = ends
            ctx["publish_done"].set()
        except CheckFailed as e:
            rec.fail(f"publisher: {e}")
        except Exception as e:  # noqa: BLE001
            rec.fail(f"publisher: {type(e).__name__}: {e}\n{traceback.format_exc()}")

    a = Member("A", args.addr, pb, pb_grpc, args.stream, rec, ctx)
    b = Member("B", args.addr, pb, pb_grpc, args.stream, rec, ctx)
    a.start()
    rec.wait_for("A to join", lambda: any(j["member"] == "A" for j in rec.joins), deadline)
    pub = threading.Thread(target=publisher, name="publisher", daemon=True)
    pub.start()

    # B joins late, while A is busy.
    rec.wait_for("A to process a third of the records", lambda: len(rec.unique) >= n // 3 - BATCH, deadline)
    b.start()
    rec.wait_for("B to join", lambda: any(j["member"] == "B" for j in rec.joins), deadline)
    gen_b = next(j["gen"] for j in rec.joins if j["member"] == "B")

    # Both share the stream in B's generation; then A leaves.
    def shared():
        counts = {"A": 0, "B": 0}
        for e in rec.events:
            if e["gen"] >= gen_b:
                counts[e["member"]] += 1
        return all(c >= 2 * BATCH for c in counts.values())

    rec.wait_for("A and B both to process records in the shared generation", shared, deadline)
    a.leave.set()
    rec.wait_for("A to leave", lambda: a.done.is_set(), deadline)
    if not rec.left:
        raise CheckFailed(f"A stopped without leaving: {rec.errors}")
    ctx["a_left"].set()

    rec.wait_for("B to process and commit every record", lambda: b.done.is_set(), deadline)
    if rec.errors:
        raise CheckFailed(rec.errors[0])
    pub.join(timeout=max(1.0, deadline - time.monotonic()))

    # Final state from the server.
    info = stub.DescribeStream(pb.DescribeStreamRequest(stream=args.stream), timeout=30)
    hw = {p.partition: p.high_watermark for p in info.partitions}
    fc = stub.FetchCommitted(pb.FetchCommittedRequest(group=GROUP), timeout=30)
    final_committed = {o.partition: o.offset for o in fc.offsets}
    return check(rec, n, partitions, hw, final_committed, gen_b)


def check(rec, n, partitions, hw, final_committed, gen_b):
    errors = []

    def err(msg):
        if len(errors) < 30:
            errors.append(msg)

    # Publishing: ids are unique, offsets dense per partition, and they are the log.
    if len(rec.published) != n:
        err(f"published {len(rec.published)} ids, expected {n}")
    by_partition = {p: [] for p in partitions}
    for p, o in rec.published.values():
        by_partition[p].append(o)
    for p, offs in by_partition.items():
        if sorted(offs) != list(range(len(offs))):
            err(f"partition {p}: Publish offsets are not 0..{len(offs)}")
        if hw.get(p) != len(offs):
            err(f"partition {p}: high watermark {hw.get(p)}, but {len(offs)} records were published to it")
    where = {v: k for k, v in rec.published.items()}

    # Every processed record is the published one at that position; none lost.
    seen = {}
    for e in rec.events:
        if rec.published.get(e["id"]) != (e["p"], e["o"]):
            err(f"{e['member']} processed {e['id']} at p{e['p']}@{e['o']}, published at {rec.published.get(e['id'])}")
        seen.setdefault((e["p"], e["o"]), []).append(e)
    lost = sorted(rid for rid in rec.published if rid not in rec.unique)
    if lost:
        err(f"{len(lost)} published records were never processed, e.g. {lost[:10]}")

    # Assignments: within one generation, members own disjoint partitions covering the stream.
    by_gen = {}
    for j in rec.joins:
        by_gen.setdefault(j["gen"], {})[j["member"]] = j["partitions"]
    for g, owners in sorted(by_gen.items()):
        flat = [p for ps in owners.values() for p in ps]
        if len(flat) != len(set(flat)):
            err(f"generation {g}: members own overlapping partitions {owners}")
        members = next(j["members"] for j in rec.joins if j["gen"] == g)
        if len(owners) == len(members) and sorted(flat) != partitions:
            err(f"generation {g}: assignment {owners} does not cover partitions {partitions}")
    assigned = {(j["member"], j["gen"]): set(j["partitions"]) for j in rec.joins}
    for e in rec.events:
        if e["p"] not in assigned.get((e["member"], e["gen"]), set()):
            err(f"{e['member']} processed p{e['p']} in generation {e['gen']} without owning it")

    # Duplicates: each extra processing is the at-least-once window of a handover.
    duplicates = 0
    dup_records = 0
    for (p, o), evs in seen.items():
        if len(evs) == 1:
            continue
        dup_records += 1
        duplicates += len(evs) - 1
        evs.sort(key=lambda e: (e["gen"], e["seq"]))
        for prev, nxt in zip(evs, evs[1:]):
            why = f"{where[(p, o)]} (p{p}@{o}) processed by {prev['member']}@gen{prev['gen']} then {nxt['member']}@gen{nxt['gen']}"
            if prev["member"] == nxt["member"]:
                err(f"{why}: the same member processed a record twice")
                continue
            if prev["gen"] >= nxt["gen"]:
                err(f"{why}: two members processed it in the same generation")
                continue
            hand = [
                h
                for h in rec.handovers
                if h["member"] == nxt["member"] and h["p"] == p and prev["gen"] < h["gen"] <= nxt["gen"]
            ]
            if not hand:
                err(f"{why}: no handover of p{p} to {nxt['member']} between those generations")
                continue
            h = hand[-1]
            if h["start"] > o:
                err(f"{why}: the new owner started at committed offset {h['start']} > {o}, yet processed it")
            later = [
                c
                for c in rec.commits
                if c["ok"] and c["member"] == prev["member"] and c["gen"] < h["gen"] and c["offsets"].get(p, 0) > o
            ]
            if later:
                err(f"{why}: the old owner had committed {later[-1]['offsets'][p]} > {o} before the handover")

    # A new owner starts where the group's last accepted commit (of an older generation) left it.
    for h in rec.handovers:
        before = [c["offsets"][h["p"]] for c in rec.commits if c["ok"] and c["gen"] < h["gen"] and h["p"] in c["offsets"]]
        want = max(before) if before else None
        got = h["start"] if h["source"] == "committed" else None
        if got != want:
            err(f"{h['member']} took over p{h['p']} in generation {h['gen']} at committed offset {got}, "
                f"but the last accepted commit before it was {want}")

    # Final committed offsets are the high watermarks.
    for p in partitions:
        if final_committed.get(p) != hw.get(p):
            err(f"partition {p}: final committed offset {final_committed.get(p)} != high watermark {hw.get(p)}")

    # The scenario really happened.
    a_joins = [j for j in rec.joins if j["member"] == "A"]
    b_joins = [j for j in rec.joins if j["member"] == "B"]
    if not a_joins or a_joins[0]["partitions"] != partitions:
        err(f"A did not start alone with every partition: {a_joins[:1]}")
    if not any(j["gen"] >= gen_b for j in a_joins):
        err("A never rejoined after B joined (it did not notice the rebalance)")
    if not b_joins or b_joins[-1]["partitions"] != partitions:
        err(f"B does not own every partition at the end: {b_joins[-1:]}")
    if not any(x["member"] == "A" for x in rec.left):
        err("A never left")
    per_member = {"A": 0, "B": 0}
    for e in rec.events:
        per_member[e["member"]] += 1
    if not all(per_member.values()):
        err(f"a member processed nothing: {per_member}")
    if rec.published_during == 0:
        err("nothing was published while the consumers ran")

    generations = sorted({j["gen"] for j in rec.joins})
    summary = {
        "ok": not errors,
        "records": n,
        "published_before_consumers": n - rec.published_during,
        "published_while_consuming": rec.published_during,
        "processed": len(rec.events),
        "unique_processed": len(rec.unique),
        "lost": len(lost),
        "duplicates": duplicates,
        "duplicate_records": dup_records,
        "processed_per_member": per_member,
        "generations": generations,
        "rebalances": len(generations) - 1,
        "rebalances_noticed": [
            {"member": x["member"], "generation": x["old"], "how": x["how"]} for x in rec.noticed
        ],
        "commits_ok": sum(1 for c in rec.commits if c["ok"]),
        "commits_refused": sum(1 for c in rec.commits if not c["ok"]),
        "handovers": [{k: h[k] for k in ("member", "gen", "p", "start", "source")} for h in rec.handovers],
        "assignments": {str(g): owners for g, owners in sorted(by_gen.items())},
        "high_watermarks": {str(p): hw.get(p) for p in partitions},
        "final_committed": {str(p): final_committed.get(p) for p in partitions},
        "errors": errors,
    }
    return summary


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("addr", help="gRPC address, HOST:PORT")
    ap.add_argument("--records", type=int, default=3000)
    ap.add_argument("--stream", default="telemetry")
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--proto", default=os.path.join(here, "..", "..", "proto", "axle", "v1", "consumer.proto"))
    ap.add_argument("--timeout", type=float, default=240.0, help="hang guard for the whole run (s)")
    args = ap.parse_args()
    try:
        summary = run(args)
    except CheckFailed as e:
        print(json.dumps({"ok": False, "errors": [str(e)]}))
        print(f"FAIL: {e}", file=sys.stderr)
        return 1
    except grpc.RpcError as e:
        print(json.dumps({"ok": False, "errors": [f"{e.code().name}: {e.details()}"]}))
        print(f"FAIL: gRPC call failed: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    print(json.dumps(summary, sort_keys=True))
    if not summary["ok"]:
        for e in summary["errors"]:
            print(f"FAIL: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
