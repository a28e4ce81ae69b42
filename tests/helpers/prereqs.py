"""Skipping a test whose prerequisite is absent; CI (SIMSIAM_REQUIRE_ALL=1) fails it instead."""

import os

import pytest

REQUIRE_ALL = os.environ.get("SIMSIAM_REQUIRE_ALL") == "1"


def unavailable(reason: str):
    """Skip when a prerequisite is absent; CI (SIMSIAM_REQUIRE_ALL=1) fails instead."""
    if REQUIRE_ALL:
        pytest.fail(f"{reason} (SIMSIAM_REQUIRE_ALL=1 forbids skipping)")
    pytest.skip(reason)
