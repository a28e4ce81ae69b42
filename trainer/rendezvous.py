"""How each pod of a multi-node Kubernetes job finds rank 0, runs paddle's launcher, and keeps a
restarted group from ever meeting a member of the group before it.

Paddle's launcher (``paddle.distributed.launch``) starts its rendezvous server on rank 0 only when
``--master`` names 127.0.0.1 or that node's own IP; given a DNS name it never listens, and every
node waits for a master that does not exist. So rank 0 passes its own pod IP (from the downward
API), and the other pods learn it from rank 0.

Rounds. When one pod of a group is lost, the Job controller replaces that index only, while the
others may still be alive for a while (blocked in a collective until the trainer's watchdog makes
them exit 75). A replacement must not join the old rank 0, nor a new rank 0 be joined by an old
member. With a shared output directory (``--rounds-dir``, on the output claim) every start of the
group is a numbered *round*, kept in one small file per rank under ROUNDS_DIR:

  - rank 0's pod opens round R = (highest round seen) + 1 and writes ``{round, master: IP:PORT}``;
  - any other pod first writes ``waiting`` with the round its index last joined (``after``), then
    waits for rank 0 to announce a round newer than that, records that it joined it, and only then
    starts the launcher with that round's master. A replacement pod therefore never uses the round
    its predecessor was in;
  - while the launcher runs, this process watches the files: a newer round from rank 0, or another
    rank waiting after this round, means this pod's group is over: the launcher and trainer are
    killed at once.

Restart in place. When only a process died (a trainer crashed, or a rank stopped because a peer
was lost), the pod stays: its supervisor records the outcome and joins the next round (rank 0 opens
it), so a restart costs no rescheduling, no image pull and no Job back-off, only a new launcher.
New pods come only when a pod is gone (deleted, evicted, its node lost): its replacement joins the
next round the same way. The restarts are bounded where the group starts (trainer.lock.count_start
on rank 0), from the outcomes every node copies to ``--outcomes-dir``.

The Job replaces a pod only once it has ended (podFailurePolicy implies podReplacementPolicy
Failed), so there is never more than one live pod per index, and only rank 0's pod writes rounds.
Without shared storage (a smoke job without an output claim) there are no rounds: the other pods
resolve rank 0's stable name (``<job>-0.<service>``, published by the headless Service).

A JobSet's pods share no directory (only rank 0 mounts the output claim): with ``--generation``
(JobSet's restart attempt) they meet over the network instead, and mirror their ranks' heartbeat
files through rank 0's supervisor (trainer.relay). They restart in place the same way, in rounds
that rank 0's supervisor numbers; the members hand it their outcomes, which it keeps in
``--outcomes-dir`` on its claim. A restart that needs new pods is JobSet's (a new generation).

Start timeout (``--start-timeout``): until a rank on this node has joined the whole group
(trainer.outcome.mark_started), the supervisor waits at most that long, for rank 0 and for the
launcher; then it ends the launcher and exits 69 (contract.EXIT_START_TIMEOUT, which fails the
job), naming on rank 0 the nodes that never joined, so no node holds its GPUs for peers that
cannot be scheduled.

Exit status: the launcher's; 143 when the pod was asked to stop (SIGTERM: deleted, evicted,
drained, cancelled; paddle's launcher itself exits 15 there), 75 when the group was superseded
(without rounds: with rounds the pod stays), 69 at the start timeout.

Paddle-free: the launcher builds this command (``command``), the image runs it::

    python -m trainer.rendezvous --rank0-host NAME --port PORT --node-rank N --pod-ip IP \
        [--start-timeout S] [--rounds-dir DIR | --generation G --heartbeats-dir DIR] \
        -- python -m paddle.distributed.launch ARGS...
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from trainer import contract
from trainer.launch_argv import launcher_nodes, with_master, with_rank
from trainer.rounds import POLL, Rounds

KILLED_BY_SIGTERM = 128 + signal.SIGTERM


def resolve(host: str, timeout: float, *, interval: float = 1.0, say=print) -> str:
    """The IPv4 address of ``host``, asking until DNS answers or ``timeout`` seconds have passed."""
    return resolve_all(host, timeout, interval=interval, say=say)[0]


def resolve_all(host: str, timeout: float, *, interval: float = 1.0, say=print) -> list[str]:
    """Every IPv4 address DNS gives for ``host`` (right after a restart a pod's name may also still
    give the address of the pod before it), asking until it answers or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    next_note = 0.0
    while True:
        try:
            found = socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)
            return list(dict.fromkeys(info[4][0] for info in found))
        except socket.gaierror as err:
            now = time.monotonic()
            if now >= deadline:
                raise TimeoutError(f"rank 0's address {host} did not resolve within {timeout:.0f}s "
                                   f"({err.strerror})") from None
            if now >= next_note:
                say(f"rendezvous: waiting for {host} to resolve ({err.strerror})", flush=True)
                next_note = now + 15
            time.sleep(interval)


class Group:
    """What this pod's supervisor knows of its group: who has not joined yet (for the start
    timeout's message), and whether the group is over (a newer round, rank 0 gone), else None."""

    def __init__(self, rounds: Rounds | None = None, leader=None, member=None, nodes: int = 1):
        self.rounds, self.leader, self.member, self.nodes = rounds, leader, member, nodes
        self.asked_to_stop = False          # this pod got SIGTERM/SIGINT: it is going away

    @property
    def in_rounds(self) -> bool:
        """The group restarts in place: its pods stay and meet again in a new round."""
        return self.rounds is not None or self.leader is not None or self.member is not None

    def where(self) -> str:
        meeting = self.rounds or self.leader or self.member
        return f"round {meeting.round}" if meeting is not None else "the group"

    def over(self) -> str | None:
        if self.rounds is not None:
            return self.rounds.superseded()
        if self.leader is not None:
            return self.leader.over()
        if self.member is not None and self.member.over:
            return f"rank 0 ended this group ({self.member.over})"
        return None

    def missing(self) -> list[int]:
        if self.leader is not None:
            return self.leader.missing()
        if self.rounds is not None and self.rounds.rank == 0:
            return self.rounds.missing(self.nodes)
        return []

    def stopping(self) -> None:
        self.asked_to_stop = True
        if self.leader is not None:
            self.leader.stop_admitting()


def formed(outcomes_dir: Path) -> bool:
    """A rank of this node has joined the whole group (trainer.outcome.mark_started)."""
    from trainer.outcome import STARTED
    return any(Path(outcomes_dir).glob(f"*{STARTED}"))


def supervise(launch: list[str], group: Group, say=print, *, outcomes_dir: Path | None = None,
              deadline: float | None = None, timeout: float = 0.0,
              rank: int | str = "this") -> int | contract.Outcome:
    """Run the launcher; forward SIGTERM/SIGINT to it; end it at once (exit 75) when this pod's
    group is over; at ``deadline`` (time.monotonic()) without the group formed, end it and return
    the start timeout's outcome. Returns the pod's exit status otherwise."""
    stopping, started = [], []

    def forward(signum, frame):
        stopping.append(signum)
        group.stopping()
        if started:
            started[0].send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    proc = subprocess.Popen(launch, start_new_session=True)
    started.append(proc)
    if stopping:                    # a signal that came while the launcher was being started
        proc.send_signal(stopping[0])
    while True:
        try:
            code = proc.wait(timeout=POLL)
            break
        except subprocess.TimeoutExpired:
            pass
        if stopping:
            continue
        if deadline is not None and time.monotonic() >= deadline:
            if outcomes_dir is not None and formed(outcomes_dir):
                deadline = None
            else:
                # Half a group holds its nodes (GPUs) for peers that may never be scheduled.
                _kill(proc)
                return start_timeout_outcome(timeout, group.missing())
        why = group.over()
        if why:
            # The group cannot go on (a member is gone): nothing to save, no collective to wait for.
            say(f"rendezvous: {group.where()} is over: {why}; node {rank} ends its launcher", flush=True)
            _kill(proc)
            return contract.EXIT_PEER_LOST
    if stopping and code in (signal.SIGTERM, KILLED_BY_SIGTERM, -signal.SIGTERM):
        code = contract.EXIT_PREEMPTED      # paddle's launcher exits with the signal's number
    return code


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def start_timeout_outcome(seconds: float, missing: list[int], detail: str = "") -> contract.Outcome:
    """How a node ended that gave up waiting for its group (contract.EXIT_START_TIMEOUT)."""
    nodes = ", ".join(map(str, missing))
    who = f": node{'s' if len(missing) > 1 else ''} {nodes} never joined" if missing else ""
    return contract.Outcome(contract.End.NOT_STARTED, None, contract.EXIT_START_TIMEOUT,
                            f"the group did not form within the start timeout ({seconds:.0f} s){who}"
                            + (f": {detail}" if detail else ""), host=socket.gethostname(),
                            time=round(time.time(), 3))


def node_outcome(outcomes_dir: Path, launcher_code: int) -> contract.Outcome:
    """How this node ended: the outcome that explains it among its ranks' (contract.decide's
    blame order), or the launcher's own when no rank said more (it was killed, or failed to start
    them). A success has no rank in it."""
    outcomes = contract.read_outcomes(outcomes_dir)
    cause = contract.root_cause(outcomes)
    if cause is not None and (launcher_code >= 0 or cause.end is contract.End.CRASHED):
        return cause
    if launcher_code == 0 and outcomes:
        return contract.Outcome(contract.End.DONE, None, 0)
    return contract.Outcome(contract.end_of_exit(launcher_code), None, launcher_code,
                            "" if outcomes else "no rank recorded how it ended", host=socket.gethostname(),
                            time=round(time.time(), 3))


def report(outcome: contract.Outcome, shared_dir: str) -> int:
    """Tell Kubernetes (the termination message, which `simsiam-job status` reads) and, with a
    shared directory, rank 0's next start (which bounds the group's restarts) how this node ended;
    returns the pod's exit status."""
    from trainer.outcome import write_termination_message
    if outcome.end is not contract.End.DONE:
        write_termination_message(outcome.to_json())
    copy_outcomes(shared_dir)
    code = outcome.exit_code
    return contract.EXIT_ERROR if code is None else code if code >= 0 else 128 - code


def copy_outcomes(shared_dir: str) -> None:
    """This node's ranks' outcomes into the shared directory (for the next start's decision)."""
    if not shared_dir:
        return
    try:
        for record in contract.read_outcomes(os.environ[contract.OUTCOME_DIR_ENV]):
            contract.write_outcome(shared_dir, record)
    except OSError as err:
        print(f"rendezvous: cannot record the outcome in {shared_dir}: {err.strerror or err}", flush=True)


class _Stopped(Exception):
    pass


def _stop_waiting(signum, frame):
    raise _Stopped


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer.rendezvous",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--rank0-host", default="", help="DNS name of rank 0's pod (none: a job of one node)")
    parser.add_argument("--port", type=int, default=0, help="rendezvous port of rank 0")
    parser.add_argument("--node-rank", required=True, help="this pod's rank (the Job's completion index)")
    parser.add_argument("--rank-offset", type=int, default=0,
                        help="added to --node-rank (a JobSet's workers count from 0 in their own Job)")
    parser.add_argument("--pod-ip", default="", help="this pod's IP (required on rank 0)")
    parser.add_argument("--rounds-dir", default="",
                        help="a directory every pod shares (on the output claim): numbered rounds keep "
                             "a restarted group apart from the one before")
    parser.add_argument("--generation", default="",
                        help="no shared directory: meet rank 0 over the network (trainer.relay), only one "
                             "of this generation (a JobSet's restart attempt)")
    parser.add_argument("--heartbeats-dir", default="",
                        help="with --generation: this pod's heartbeat folder, mirrored with the other pods'")
    parser.add_argument("--outcomes-dir", default="",
                        help="on the output claim: each node's ranks' outcomes are kept there for rank 0's "
                             "next start, which bounds restarts (with --generation: on rank 0 only, "
                             "which keeps the other nodes' there)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds to wait for rank 0 (its name or its round; default 600) before "
                             "exiting 1, when there is no --start-timeout")
    parser.add_argument("--start-timeout", type=float, default=0.0,
                        help="seconds for the whole group to form (every node up and joined); then every "
                             f"node still waiting exits {contract.EXIT_START_TIMEOUT}, which fails the job")
    parser.add_argument("launch", nargs=argparse.REMAINDER, help="-- the launcher's command")
    return parser


def _meet(args: argparse.Namespace, rank: int, nodes: int, started_at: float) -> tuple[str, Group, str]:
    """Find rank 0 (or, on rank 0, announce it): the master address, the group this pod is in,
    and a note of where it met ("" / ", round R" / ", generation G")."""
    wait = args.start_timeout or args.timeout
    if rank == 0 and not args.pod_ip and args.rank0_host:
        raise ValueError("rank 0 needs its own address: --pod-ip (the pod's status.podIP)")
    if not args.rank0_host:
        if rank != 0:
            raise ValueError("a node other than rank 0 needs --rank0-host")
        return "", Group(), ""
    if args.rounds_dir:
        rounds = Rounds(args.rounds_dir, rank)
        master = rounds.open(args.pod_ip, args.port) if rank == 0 else rounds.join(wait)
        return master, Group(rounds=rounds, nodes=nodes), f", round {rounds.round}"
    if args.generation:
        return _meet_over_the_network(args, rank, nodes, started_at + wait)
    ip = args.pod_ip if rank == 0 else resolve(args.rank0_host, wait)
    return f"{ip}:{args.port}", Group(), ""


def _meet_over_the_network(args: argparse.Namespace, rank: int, nodes: int, deadline: float):
    """_meet without shared storage (trainer.relay). Rank 0's relay and a member's identity last
    for the pod's life: a restart in place is the next round of the same ones."""
    from trainer import relay
    heartbeats = Path(args.heartbeats_dir) if args.heartbeats_dir else None
    if rank == 0:
        master = f"{args.pod_ip}:{args.port}"
        if args.relay is None:
            args.relay = relay.Leader(args.port + 1, args.generation, master, nodes, heartbeats,
                                      outcomes=Path(args.outcomes_dir) if args.outcomes_dir else None)
        else:
            args.relay.next_round()
        group = Group(leader=args.relay)
    else:
        if args.relay is None:
            args.relay = relay.Member(args.rank0_host, args.port + 1, args.generation, rank, uuid.uuid4().hex,
                                      heartbeats)
        master = args.relay.join(deadline, resolve_all)
        args.relay.start_mirroring()
        group = Group(member=args.relay)
    later_round = f", round {args.relay.round}" if args.relay.round > 1 else ""
    where = f", generation {args.generation}{later_round}"
    return master, group, where


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    launch = args.launch[1:] if args.launch[:1] == ["--"] else args.launch
    try:
        if not args.node_rank.isdigit():
            raise ValueError(f"--node-rank must be a number, got {args.node_rank!r}")
        rank = int(args.node_rank) + args.rank_offset
        with_master(launch, "")         # a malformed command fails before any waiting
        if args.rank_offset:
            launch = with_rank(launch, rank)
    except ValueError as err:       # a malformed command: retrying cannot help
        print(f"error: {err}", file=sys.stderr)
        return contract.EXIT_BAD_INPUT
    args.relay = None               # trainer.relay's Leader (rank 0) or Member, kept across rounds
    while True:
        code = _one_start(args, rank, launch)
        if code is not None:
            return code


def _one_start(args: argparse.Namespace, rank: int, launch: list[str]) -> int | None:
    """One start of the group on this node: meet, run the launcher, say how it ended. Returns the
    pod's exit status, or None when the pod stays and joins the group's next round."""
    started_at = time.monotonic()
    deadline = started_at + args.start_timeout if args.start_timeout else None
    nodes = launcher_nodes(launch)
    # Asked to stop before the launcher runs (as PID 1 a SIGTERM would otherwise be ignored).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop_waiting)
    try:
        master, group, where = _meet(args, rank, nodes, started_at)
        meeting = group.rounds or group.leader or group.member
        if master:
            launch = with_master(launch, master, meeting.round if meeting is not None else 0)
    except ValueError as err:       # a malformed command: retrying cannot help
        print(f"error: {err}", file=sys.stderr)
        return contract.EXIT_BAD_INPUT
    except TimeoutError as err:
        if not args.start_timeout:
            print(f"error: {err}", file=sys.stderr)
            return 1                # rank 0 may come up on a retry of the pod
        outcome = start_timeout_outcome(args.start_timeout, [], str(err))
        print(f"error: node {rank}: {outcome.message}", file=sys.stderr, flush=True)
        return report(outcome, "")
    except OSError as err:          # the shared directory cannot be written, the port is taken
        place = f"in {args.rounds_dir}" if args.rounds_dir else f"on port {args.port + 1}"
        print(f"error: rendezvous {place}: {err.strerror or err}", file=sys.stderr)
        return 1
    except _Stopped:
        print(f"rendezvous: node {rank} stopped by a signal while waiting for rank 0", flush=True)
        return contract.EXIT_PREEMPTED
    if master:
        print(f"rendezvous: node {rank}, master {master} ({args.rank0_host}){where}", flush=True)
    # Every rank of this node records its outcome here (trainer.outcome); /tmp is the pod's own.
    local = Path(tempfile.mkdtemp(prefix="simsiam-outcomes-"))
    os.environ[contract.OUTCOME_DIR_ENV] = str(local)
    # The group has formed once a rank of this node says so; a node of one has nobody to wait for.
    code = supervise(launch, group, outcomes_dir=local, deadline=deadline if nodes > 1 else None,
                     timeout=args.start_timeout, rank=rank)
    if group.member is not None:
        group.member.stop()
    if isinstance(code, contract.Outcome):
        print(f"error: node {rank}: {code.message}", file=sys.stderr, flush=True)
        return report(code, "")
    return _after(args, rank, group, code, local)


def _after(args: argparse.Namespace, rank: int, group: Group, code: int, local: Path) -> int | None:
    """How this node's start ended, told (see report); None to restart in place. With rounds a
    process that crashed, or a group that lost a member, costs no new pod: this pod stays, with
    its image and node, and joins the next round (rank 0 opens it at once, and the trainer's
    start bounds the restarts: trainer.lock.count_start); so does a pod whose ranks stopped with
    a checkpoint because another pod was preempted. A pod asked to stop itself always ends."""
    in_place = group.in_rounds and not group.asked_to_stop
    if code == contract.EXIT_PEER_LOST and not contract.read_outcomes(local):
        if not in_place:    # superseded round: the new round's ranks say the rest
            return code
        print(f"rendezvous: node {rank} joins the next round in place", flush=True)
        shutil.rmtree(local, ignore_errors=True)
        return None
    outcome = node_outcome(local, code)
    if in_place and outcome.end is not contract.End.DONE and not outcome.end.final:
        # Before the round is left: rank 0's next start decides from them.
        if group.member is not None:
            group.member.leave(contract.read_outcomes(local))
        else:
            copy_outcomes(args.outcomes_dir)
        print(f"rendezvous: node {rank} ended: {outcome.cause()}; it joins the next round in place",
              flush=True)
        shutil.rmtree(local, ignore_errors=True)
        return None
    return report(outcome, args.outcomes_dir)


if __name__ == "__main__":
    sys.exit(main())
