"""The numbered rounds of a multi-node group in a shared directory (see trainer.rendezvous's
docstring): rank 0 opens a round, every other pod joins one newer than the one its index last
joined, and a running pod watches for a newer round or a replacement waiting after its own."""
from __future__ import annotations

import time
import uuid
from pathlib import Path

from trainer.watchdog import read_json, write_json

POLL = 1.0                      # seconds between looks at the rounds while waiting or running


class Rounds:
    """This pod's view of the rounds in ``directory`` (see the module's docstring)."""

    def __init__(self, directory, rank: int):
        self.directory, self.rank = Path(directory), rank
        self.pod = uuid.uuid4().hex      # this start of this pod (a pod may take part in several rounds)
        self.round = 0                   # the round this pod joined

    def path(self, rank: int) -> Path:
        return self.directory / f"rank-{rank:05d}.json"

    def records(self) -> dict[int, dict]:
        found = {}
        for path in self.directory.glob("rank-*.json"):
            record = read_json(path)
            if record is not None and isinstance(record.get("rank"), int):
                found[record["rank"]] = record
        return found

    @staticmethod
    def last_round(record: dict | None) -> int:
        """The newest round a rank's pods took part in (or are waiting to follow)."""
        if not record:
            return 0
        return int(record.get("round") or record.get("after") or 0)

    def open(self, master_ip: str, port: int) -> str:
        """Rank 0: announce the next round, master at our own address. Returns the master."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.round = max([self.last_round(r) for r in self.records().values()], default=0) + 1
        master = f"{master_ip}:{port}"
        write_json(self.path(0), {"rank": 0, "pod": self.pod, "round": self.round, "master": master,
                              "time": round(time.time(), 3)})
        return master

    def join(self, timeout: float, say=print) -> str:
        """Any other rank: wait for a round newer than the one this index last joined; join it.
        Returns its master."""
        self.directory.mkdir(parents=True, exist_ok=True)
        after = self.last_round(read_json(self.path(self.rank)))
        write_json(self.path(self.rank), {"rank": self.rank, "pod": self.pod, "round": None, "after": after,
                                      "time": round(time.time(), 3)})
        deadline, next_note = time.monotonic() + timeout, 0.0
        while True:
            rank0 = read_json(self.path(0)) or {}
            if self.last_round(rank0) > after and rank0.get("master"):
                self.round = rank0["round"]
                write_json(self.path(self.rank), {"rank": self.rank, "pod": self.pod, "round": self.round,
                                              "time": round(time.time(), 3)})
                return rank0["master"]
            now = time.monotonic()
            if now >= deadline:
                raise TimeoutError(f"rank 0 announced no round after round {after} in {self.directory} "
                                   f"within {timeout:.0f}s")
            if now >= next_note:
                say(f"rendezvous: node {self.rank} waiting for rank 0 to open a round after round {after}",
                    flush=True)
                next_note = now + 15
            time.sleep(POLL)

    def missing(self, nodes: int) -> list[int]:
        """The nodes that have not joined this pod's round (rank 0's view)."""
        records = self.records()
        return [n for n in range(1, nodes) if (records.get(n) or {}).get("round") != self.round]

    def superseded(self) -> str | None:
        """Why this pod's round is over (a member was replaced, or rank 0 opened a newer round),
        else None."""
        for rank, record in sorted(self.records().items()):
            if rank == self.rank:
                continue
            if rank == 0 and self.last_round(record) > self.round:
                return f"rank 0 opened round {record['round']}"
            if record.get("round") is None and record.get("after") == self.round:
                return f"rank {rank} left it (its trainer ended or its pod was replaced)"
        return None


# ---- the launcher, supervised ---------------------------------------------------------------------
