"""A group without shared storage (a JobSet: only rank 0's pod mounts the output claim) meets and
watches its ranks over the network, through rank 0's node supervisor.

The meeting. Rank 0's pod serves a small TCP service (``Leader``) beside paddle's rendezvous port
(port + 1). Every other pod resolves rank 0's DNS name and *joins*: it sends its node and the
group's generation (JobSet's restart attempt, the same on every pod of one start of the group), and
is let in only by a rank 0 of the same generation that is still forming its group. DNS may answer
with the address of the rank 0 before a restart for a while; that one is of an older generation (or
already formed, or stopping) and refuses, and the pod asks DNS again. So a restarted group never
meets the old rank 0, and rank 0 knows which nodes have joined (a start timeout names the others).

Rounds in place. When only a process died, no pod ends: each pod's supervisor stays and the group
starts again in a new *round* of the same generation. A member whose start ended tells rank 0 so
(``left``, with its ranks' outcomes, which rank 0 keeps in the outcomes folder on the output claim
for the next start's restart decision); rank 0 then ends its own launcher and opens the next round.
A member joins only a round newer than the last it was in, and rank 0 refuses the heartbeats of an
older round, which tells a member still running that its group is over.

The heartbeats. Each rank's watchdog (trainer.watchdog) keeps writing its heartbeat file in its own
pod (OUTPUT_DIR/heartbeats/<generation>/rank-N.json) and reading its peers' files there. The node
supervisors mirror those files: every second each member sends its node's records to rank 0 and
gets every other node's back, and writes them into its own pod's heartbeat folder. A frozen rank
stops its counter; a lost pod or a cut network stops the mirroring; either way the watchdogs see
no change for Global.peer_timeout_seconds and the group stops for a restart.

One JSON request per connection, one JSON answer. Paddle-free.
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
import time
from pathlib import Path

from trainer import contract
from trainer.watchdog import read_json, write_json

INTERVAL = 1.0          # seconds between a member's mirroring rounds
IO_TIMEOUT = 5.0        # seconds for one request and its answer
MAX_REQUEST = 1 << 20


# ---- the heartbeat files of one pod ---------------------------------------------------------------

def local_records(directory: Path, host: str) -> list[dict]:
    """This pod's ranks' heartbeat records (those its processes wrote: their host is this pod's)."""
    found = []
    for path in sorted(Path(directory).glob("*/rank-*.json")):
        record = read_json(path)
        if record is not None and record.get("host") == host:
            found.append({"generation": path.parent.name, "name": path.name, "record": record})
    return found


def store_records(directory: Path, records: list[dict], host: str, seen: dict) -> None:
    """Write the other pods' records into this pod's folder (only those that changed)."""
    for item in records:
        record = item.get("record")
        name, generation = str(item.get("name", "")), str(item.get("generation", ""))
        if not isinstance(record, dict) or record.get("host") == host or not name.startswith("rank-") \
                or "/" in name + generation or generation in ("", ".", ".."):
            continue
        key = (generation, name)
        if seen.get(key) == (record.get("beat"), record.get("state")):
            continue
        path = Path(directory) / generation / name
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, record)
        seen[key] = (record.get("beat"), record.get("state"))


# ---- requests -------------------------------------------------------------------------------------

def ask(address: tuple[str, int], request: dict, timeout: float = IO_TIMEOUT) -> dict:
    """One request to rank 0's supervisor; OSError when it cannot be reached or answers nonsense."""
    with socket.create_connection(address, timeout=timeout) as conn:
        conn.settimeout(timeout)
        conn.sendall(json.dumps(request).encode() + b"\n")
        answer = conn.makefile("rb").readline(MAX_REQUEST)
    try:
        reply = json.loads(answer)
    except ValueError:
        raise OSError(f"no answer from {address[0]}:{address[1]}") from None
    if not isinstance(reply, dict):
        raise OSError(f"a malformed answer from {address[0]}:{address[1]}")
    return reply


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True      # a restarted pod binds again at once
    daemon_threads = True


class Leader:
    """Rank 0's side: admits the members of its own generation while its group forms, and relays
    every node's heartbeat records to the others."""

    def __init__(self, port: int, generation: str, master: str, nodes: int, heartbeats: Path | None,
                 host: str | None = None, bind: str = "", outcomes: Path | None = None):
        self.generation, self.master, self.nodes = generation, master, nodes
        self.heartbeats, self.host = heartbeats, host or socket.gethostname()
        self.outcomes = outcomes                # where the members' outcomes are kept (rank 0's claim)
        self.round = 1
        self.joined: dict[int, str] = {}        # node -> the pod that joined for it, in this round
        self.records: dict[int, list[dict]] = {}
        self.left: list[int] = []               # nodes whose start of this round has ended
        self.stopping = False
        self.seen: dict = {}
        self._lock = threading.Lock()
        leader = self

        class Handler(socketserver.StreamRequestHandler):
            timeout = IO_TIMEOUT

            def handle(self):
                try:
                    request = json.loads(self.rfile.readline(MAX_REQUEST))
                    reply = leader.answer(request) if isinstance(request, dict) else {"ok": False, "why": "?"}
                except (ValueError, OSError):
                    return
                try:
                    self.wfile.write(json.dumps(reply).encode() + b"\n")
                except OSError:
                    pass

        self.server = _Server((bind, port), Handler)
        threading.Thread(target=self.server.serve_forever, name="simsiam-relay", daemon=True).start()

    def answer(self, request: dict) -> dict:
        node, pod = request.get("node"), request.get("pod")
        generation = str(request.get("generation"))
        with self._lock:
            if generation != self.generation:
                return {"ok": False, "generation": self.generation,
                        "why": f"rank 0 is of generation {self.generation}, not {generation}"}
            if request.get("op") == "join":
                return self._join(node, pod, request.get("after", 0))
            if self.joined.get(node) != pod or request.get("round", self.round) != self.round:
                return {"ok": False, "why": f"node {node}'s pod is not a member of round {self.round}"}
            if request.get("op") == "left":
                self._left(node, request.get("outcomes"))
                return {"ok": True}
            if request.get("op") == "beat":
                records = request.get("records")
                self.records[node] = records if isinstance(records, list) else []
                if self.heartbeats is not None:
                    store_records(self.heartbeats, self.records[node], self.host, self.seen)
                others = [r for n, rs in self.records.items() if n != node for r in rs]
                if self.heartbeats is not None:
                    others += local_records(self.heartbeats, self.host)
                return {"ok": True, "records": others}
        return {"ok": False, "why": f"unknown request {request.get('op')!r}"}

    def _join(self, node, pod, after) -> dict:
        if self.stopping:
            return {"ok": False, "why": "rank 0 is stopping"}
        if not isinstance(node, int) or not 0 < node < self.nodes:
            return {"ok": False, "why": f"no node {node} in a group of {self.nodes}"}
        if not isinstance(after, int) or after >= self.round:
            return {"ok": False, "why": f"rank 0 is still in round {self.round}"}
        if self.joined.get(node, pod) != pod:
            return {"ok": False, "why": f"node {node} has already joined (another pod)"}
        self.joined[node] = pod
        return {"ok": True, "master": self.master, "round": self.round}

    def _left(self, node: int, outcomes) -> None:
        if node not in self.left:
            self.left.append(node)
        for text in outcomes if isinstance(outcomes, list) and self.outcomes is not None else []:
            record = contract.Outcome.from_json(text) if isinstance(text, str) else None
            if record is not None:
                try:
                    contract.write_outcome(self.outcomes, record)
                except OSError:
                    pass                # the next start then counts that rank as lost without a word

    def over(self) -> str | None:
        """Why this round is over (a member's start ended), else None."""
        with self._lock:
            return f"node {self.left[0]} left it (its trainer ended)" if self.left else None

    def next_round(self) -> None:
        """Open the next round in place: the members join it anew."""
        with self._lock:
            self.round += 1
            self.joined, self.records, self.left = {}, {}, []

    def missing(self) -> list[int]:
        with self._lock:
            return [n for n in range(1, self.nodes) if n not in self.joined]

    def stop_admitting(self) -> None:
        with self._lock:
            self.stopping = True

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Member:
    """Any other rank's side: join rank 0 of this generation, then mirror the heartbeats."""

    def __init__(self, host: str, port: int, generation: str, node: int, pod: str, heartbeats: Path | None,
                 me: str | None = None):
        self.host, self.port, self.generation, self.node, self.pod = host, port, generation, node, pod
        self.heartbeats, self.me = heartbeats, me or socket.gethostname()
        self.address: tuple[str, int] | None = None
        self.round = 0                          # the round this pod last joined
        self.over: str | None = None            # why the group is over, once rank 0 says so
        self.seen: dict = {}
        self._stop = threading.Event()

    def join(self, deadline: float, resolve, say=print) -> str:
        """Rank 0's paddle master, once a rank 0 of our generation let us in; TimeoutError with
        the last refusal at ``deadline`` (time.monotonic()). ``resolve(host, timeout)`` gives the
        addresses DNS has for rank 0's name; each is asked."""
        why, next_note = "", 0.0
        while True:
            for ip in resolve(self.host, max(0.0, deadline - time.monotonic())):
                try:
                    reply = ask((ip, self.port), {"op": "join", "generation": self.generation,
                                                  "node": self.node, "pod": self.pod, "after": self.round})
                except OSError as err:
                    why = f"rank 0 at {ip} cannot be reached: {err.strerror or err}"
                    continue
                if reply.get("ok") and isinstance(reply.get("round"), int):
                    self.address, self.round, self.over = (ip, self.port), reply["round"], None
                    return str(reply["master"])
                why = f"rank 0 at {ip} refused: {reply.get('why')}"
            now = time.monotonic()
            if now >= deadline:
                raise TimeoutError(f"node {self.node} could not join rank 0 ({self.host}) of generation "
                                   f"{self.generation}: {why}")
            if now >= next_note:
                say(f"rendezvous: node {self.node} waiting to join rank 0 of generation "
                    f"{self.generation} ({why})",
                    flush=True)
                next_note = now + 15
            time.sleep(INTERVAL)

    def start_mirroring(self) -> None:
        self._stop = threading.Event()
        threading.Thread(target=self._mirror, args=(self._stop,), name="simsiam-relay", daemon=True).start()

    def _mirror(self, stop: threading.Event) -> None:
        while not stop.wait(INTERVAL):
            records = local_records(self.heartbeats, self.me) if self.heartbeats is not None else []
            try:
                reply = ask(self.address, {"op": "beat", "generation": self.generation, "round": self.round,
                                           "node": self.node, "pod": self.pod, "records": records})
            except OSError:
                continue                # rank 0's records then stop changing: its watchdogs decide
            if not reply.get("ok"):
                self.over = str(reply.get("why"))
                return
            if self.heartbeats is not None:
                store_records(self.heartbeats, reply.get("records") or [], self.me, self.seen)

    def stop(self) -> None:
        self._stop.set()

    def leave(self, outcomes: list[contract.Outcome]) -> None:
        """Tell rank 0 that this pod's start of the round ended, and how (best effort: a rank 0
        that cannot be reached learns it from its own watchdogs)."""
        self.stop()
        try:
            ask(self.address, {"op": "left", "generation": self.generation, "round": self.round,
                               "node": self.node, "pod": self.pod,
                               "outcomes": [o.to_json() for o in outcomes]})
        except OSError:
            pass
