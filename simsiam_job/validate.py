"""Checks of values that reach a cluster: Kubernetes names, label values and resource quantities.

Each check returns the value or raises ValueError with one line that says what is allowed (the
option resolver adds where the value came from). Backends call them when their Options are built,
so a bad ``--set`` fails at render time, on the laptop, not in the API server.
"""

from __future__ import annotations

import re
from decimal import Decimal

from simsiam_job.errors import UsageError

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
# A Kubernetes quantity: a decimal number and an optional binary (Ki..Ei), decimal (m, k..E) or
# exponent suffix, e.g. 16Gi, 500m, 2, 1.5G, 1e9.
_QUANTITY = re.compile(r"^(?P<number>[0-9]+(\.[0-9]*)?|\.[0-9]+)"
                       r"(?P<suffix>[KMGTPE]i|[mkMGTPE]|[eE][-+]?[0-9]+)?$")
INT64_MAX = 2**63 - 1
MAX_QUANTITY = INT64_MAX    # what Kubernetes stores (an int64)
# Our own parser, not the kubernetes client's parse_quantity: render and option checks must work
# without the client installed (it is imported lazily, for cluster calls only).
_SUFFIX: dict[str, Decimal | int] = {
    "": 1, "m": Decimal("0.001"), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
    "E": 10**18, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def dns1123_label(name: str, value: str) -> str:
    if len(value) > 63 or not DNS1123_LABEL.match(value):
        raise ValueError(f"{name} {value!r} is not a DNS-1123 label: at most 63 lowercase letters, "
                         "digits and '-', starting and ending with a letter or digit")
    return value


def dns1123_subdomain(name: str, value: str) -> str:
    if len(value) > 253 or not DNS1123_SUBDOMAIN.match(value):
        raise ValueError(f"{name} {value!r} is not a DNS-1123 name: at most 253 lowercase letters, "
                         "digits, '-' and '.', starting and ending with a letter or digit")
    return value


def label_value(name: str, value: str) -> str:
    if len(value) > 63 or not LABEL_VALUE.match(value):
        raise ValueError(f"{name} {value!r} is not a label value: at most 63 letters, digits, '-', "
                         "'_' and '.', starting and ending with a letter or digit")
    return value


def quantity(name: str, value: str) -> Decimal:
    """The quantity in base units (bytes, cores); ValueError unless a positive quantity."""
    match = _QUANTITY.match(value)
    if not match:
        raise ValueError(f"{name} {value!r} is not a Kubernetes quantity (e.g. 16Gi, 512Mi, 8, 500m)")
    suffix = match["suffix"] or ""
    try:
        number = Decimal(match["number"])
        amount = (number * Decimal(10) ** int(suffix[1:]) if suffix[:1] in ("e", "E")
                  else number * _SUFFIX[suffix])
    except (ArithmeticError, ValueError):   # decimal's overflow and invalid operations
        raise ValueError(f"{name} {value!r} is not a Kubernetes quantity "
                         "(e.g. 16Gi, 512Mi, 8, 500m)") from None
    if amount <= 0:
        raise ValueError(f"{name} {value!r} must be more than zero")
    if amount > MAX_QUANTITY:
        raise ValueError(f"{name} {value!r} is more than any machine has")
    return amount


def port(name: str, value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError(f"{name} {value} is not a port number (1-65535)")
    return value


def at_least_zero(name: str, value: int | float, most: int | float = float("inf")) -> int | float:
    if not 0 <= value < float("inf") or value > most:
        raise ValueError(f"{name} must be 0 or more" + (f" and at most {most}" if most < float("inf") else "")
                         + f", got {value}")
    return value


INT32_MAX = 2**31 - 1    # Kubernetes counts such as a Job's backoffLimit are int32
# Whole-group restarts of one attempt, on every backend: a group that failed this often will not
# recover by itself (and the Slurm script counts in shell arithmetic).
MAX_GROUP_RESTARTS = 1000


DEFAULT_SHM = "16Gi"


def shm_size(requested: str, memory: str) -> str:
    """The size limit of a memory-backed /dev/shm (called at render time, when the memory limit is
    known). Its pages count against the container's memory limit, so it is never larger than that:
    the default (16Gi) shrinks to half the limit, and a larger request is refused."""
    try:
        limit = quantity("memory", memory)
        if requested and quantity("shm_size", requested) > limit:
            raise ValueError(f"shm_size {requested} is larger than the memory limit {memory} (/dev/shm "
                             "lives in the pod's memory): lower --set shm_size or raise --set memory")
    except ValueError as err:
        raise UsageError(f"kubernetes options: {err}") from None
    if requested:
        return requested
    if quantity("shm_size", DEFAULT_SHM) * 2 <= limit:
        return DEFAULT_SHM
    return f"{int(limit / 2 / 2**20)}Mi"
