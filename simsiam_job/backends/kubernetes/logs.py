"""Pod logs: one rank, all ranks interleaved by the kubelet's timestamps, and following to the end.

Following reconnects after the server closes the stream, after a quiet spell in which the job may
have ended, and after a read timeout, without repeating lines; it moves on to the newer pod when the
Job retries an index, and ends with the job.
"""

from __future__ import annotations

import datetime
import heapq
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator

from simsiam_job.backends.base import follow_lines
from simsiam_job.backends.kubernetes.status import newest_pods
from simsiam_job.errors import NotFoundError

CONTAINER = "trainer"
FOLLOW_QUIET_S = 5.0  # silence after which -f checks whether the job ended


class PodLogs:
    """The logs of one job's pods. ``state_and_pods()`` reads the job's state and its pods (two or
    three API calls)."""

    def __init__(self, api, namespace: str, state_and_pods: Callable[[], tuple]):
        self.api = api
        self.namespace = namespace
        self.state_and_pods = state_and_pods

    def read(self, pod, *, tail: int | None, timestamps: bool = False) -> str:
        """A pod's log now ("" before its container started)."""
        if (pod.status.phase or "Pending") == "Pending":
            return ""
        name = pod.metadata.name
        return self.api.call(f"reading the log of pod {name}", self.api.core.read_namespaced_pod_log,
                             name, self.namespace, container=CONTAINER, tail_lines=tail,
                             timestamps=timestamps)

    def lines(self, pods: dict, ranks: list[int], *, all_ranks: bool, follow: bool,
              tail: int | None) -> Iterator[str]:
        if not follow:
            for r in ranks:
                if pods.get(r) is None:
                    # The Job deletes its running pods when it fails; their logs go with them.
                    print(f"rank {r} has no pod (not created yet, or removed when the job ended): "
                          "no log to show; `simsiam-job status` says how the job ended",
                          file=sys.stderr, flush=True)
        if not all_ranks:
            yield from self.rank_lines(ranks[0], pods, follow=follow, tail=tail)
        elif follow:
            yield from self._follow_all(ranks, tail)
        else:
            # Interleave by the kubelet's timestamps: lines appear in the order they were written.
            streams = [self._timestamped(pods.get(r), r, tail) for r in ranks]
            for _, r, line in heapq.merge(*streams):
                yield f"[rank {r}] {line}"

    def _timestamped(self, pod, r: int, tail: int | None):
        if pod is None:
            return
        for line in self.read(pod, tail=tail, timestamps=True).splitlines():
            stamp, _, rest = line.partition(" ")
            yield _stamp_key(stamp), r, rest

    def rank_lines(self, r: int, pods: dict, *, follow: bool, tail: int | None) -> Iterator[str]:
        if not follow:
            pod = pods.get(r)
            if pod is not None:
                yield from self.read(pod, tail=tail).splitlines()
            return
        last_stamp: dict[str, str] = {}  # pod -> timestamp of the last line printed
        newest: dict = {}

        def finished() -> bool:
            try:
                state, all_pods = self.state_and_pods()
            except NotFoundError:
                newest.clear()
                return True  # cancelled while we followed
            newest.update(pod=newest_pods(all_pods).get(r))
            return state.finished

        def read(final: bool) -> Iterator[str]:
            pod = newest.get("pod")
            if pod is not None and pod.status.phase != "Pending":
                yield from self._stream(pod, last_stamp, follow=not final,
                                        tail=tail if not last_stamp else None)

        yield from follow_lines(read, finished, follow=True)

    def _stream(self, pod, last_stamp: dict[str, str], *, follow: bool, tail: int | None) -> Iterator[str]:
        """Lines of a pod's log after the last one printed (the API has no "since this line", so
        lines carry the kubelet's timestamps, and those already seen are skipped). A followed
        stream is given up after FOLLOW_QUIET_S without a line; the caller reconnects."""
        name = pod.metadata.name
        since = None
        if name in last_stamp:
            since = max(1, int(time.time() - _parse_stamp(last_stamp[name])) + 2)
        response = self.api.call(f"reading the log of pod {name}", self.api.core.read_namespaced_pod_log,
                                 name, self.namespace, container=CONTAINER, follow=follow,
                                 timestamps=True, since_seconds=since, tail_lines=tail,
                                 _preload_content=False)
        lines = _quiet_timeout(_lines(response), response, FOLLOW_QUIET_S) if follow else _lines(response)
        for line in lines:
            stamp, _, text = line.partition(" ")
            stamp = _stamp_key(stamp)
            if name in last_stamp and stamp <= last_stamp[name]:
                continue
            last_stamp[name] = stamp
            yield text

    def _follow_all(self, ranks: list[int], tail: int | None) -> Iterator[str]:
        lines: queue.Queue = queue.Queue()
        done = object()

        def pump(r: int) -> None:
            try:
                for line in self.rank_lines(r, {}, follow=True, tail=tail):
                    lines.put(f"[rank {r}] {line}")
            except Exception as err:  # surfaced in the caller's thread
                lines.put(err)
            finally:
                lines.put(done)

        for r in ranks:
            threading.Thread(target=pump, args=(r,), daemon=True).start()
        running = len(ranks)
        while running:
            item = lines.get()
            if item is done:
                running -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield item


def _lines(stream) -> Iterator[str]:
    """Lines of a streamed HTTP response, as they arrive."""
    buffer = b""
    try:
        for chunk in stream.stream(amt=4096, decode_content=True):
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            for line in complete:
                yield line.decode(errors="replace")
        if buffer:
            yield buffer.decode(errors="replace")
    finally:
        stream.release_conn()


def _quiet_timeout(lines: Iterator[str], response, quiet: float) -> Iterator[str]:
    """``lines`` until the stream ends or stays silent for ``quiet`` seconds (then the socket is
    shut down, which ends the reader thread; close() would wait for the reader's lock)."""
    box: queue.Queue = queue.Queue()
    end = object()

    def reader() -> None:
        try:
            for line in lines:
                box.put(line)
        except Exception:  # the response was closed under us, the connection dropped, a read timeout
            pass
        finally:
            box.put(end)

    threading.Thread(target=reader, daemon=True).start()
    while True:
        try:
            item = box.get(timeout=quiet)
        except queue.Empty:
            shutdown = getattr(response, "shutdown", None)  # urllib3 >= 2.3
            if shutdown is not None:
                shutdown()
            return
        if item is end:
            return
        yield item


def _stamp_key(stamp: str) -> str:
    """The kubelet's RFC 3339 UTC timestamp (trailing zeros of the nanoseconds trimmed) padded so
    that comparing two keys as strings compares the times."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    return f"{whole}.{fraction.ljust(9, '0')}"


def _parse_stamp(key: str) -> float:
    """Seconds since the epoch of a _stamp_key."""
    whole, _, fraction = key.partition(".")
    parsed = datetime.datetime.fromisoformat(whole).replace(tzinfo=datetime.timezone.utc)
    return parsed.timestamp() + float(f"0.{fraction}")
