"""What every backend shares (simsiam_job/backends/base.py): following log files and cancel's order."""

from __future__ import annotations

import ast
from pathlib import Path

from simsiam_job.backends.base import Backend, FileLines, JobRef, follow_lines

BACKENDS = Path(__file__).resolve().parents[2] / "simsiam_job" / "backends"


def test_file_lines_picks_up_late_files_and_holds_a_partial_line_until_the_end(tmp_path):
    first, late = tmp_path / "rank0-node1.log", tmp_path / "rank0-node2.log"
    first.write_text("one\ntwo\nhal")
    reader = FileLines(lambda: sorted(tmp_path.glob("rank0-*.log")), tail=1)
    assert reader.read() == ["two"]                  # --tail 1; "hal" is still being written
    with first.open("a") as f:
        f.write("f\n")
    late.write_text("requeued on node2\nlast words")
    assert reader.read() == ["half", "requeued on node2"]
    assert reader.read(final=True) == ["last words"]
    assert reader.read(final=True) == []


def test_follow_lines_reads_once_more_after_the_job_ended():
    polls = iter([False, False, True])
    reads = []

    def read(final):
        reads.append(final)
        return [f"read {len(reads)}"]

    assert list(follow_lines(read, lambda: next(polls), follow=True, interval=0)) == [
        "read 1", "read 2", "read 3"]
    assert reads == [False, False, True]
    assert list(follow_lines(lambda final: ["once"], lambda: 1 / 0, follow=False)) == ["once"]


class Recorder(Backend):
    """Records the order of cancel's steps; ``stops_after`` polls until TERM has worked (None: never)."""

    name = "recorder"
    options_class = dict
    render = send = status = logs = list = output_location = _resume = None  # cancel needs none of them

    def __init__(self, stops_after):
        super().__init__({})
        self.grace_seconds = 0.2
        self.stops_after, self.steps = stops_after, []

    def _stop(self, ref):
        self.steps.append("TERM")

    def _stopped(self, ref):
        self.steps.append("poll")
        return self.stops_after is not None and self.steps.count("poll") >= self.stops_after

    def _kill(self, ref):
        self.steps.append("KILL")
        return "killed"


def test_cancel_is_term_then_grace_then_kill_only_if_needed():
    ref = JobRef("local", "x")
    polite = Recorder(stops_after=2)
    assert polite.cancel(ref) == "cancelled local://x: stopped after TERM"
    assert polite.steps == ["TERM", "poll", "poll"]
    stubborn = Recorder(stops_after=None)
    assert stubborn.cancel(ref) == "cancelled local://x: killed"
    assert stubborn.steps[0] == "TERM" and stubborn.steps[-1] == "KILL" and "poll" in stubborn.steps


def test_no_backend_imports_another():
    names = {"local", "slurm", "kubernetes"}
    for path in BACKENDS.rglob("*.py"):
        own = path.relative_to(BACKENDS).parts[0].removesuffix(".py")
        for node in ast.walk(ast.parse(path.read_text())):
            modules = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                       else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for module in modules:
                parts = module.split(".")
                if parts[:2] == ["simsiam_job", "backends"] and len(parts) > 2:
                    assert parts[2] not in names - {own}, f"{path.name} imports {module}"
