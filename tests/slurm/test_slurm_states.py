"""Slurm's job states and reasons, as `simsiam-job status` reports them."""

import pytest

from simsiam_job.backends.base import State
from simsiam_job.backends.slurm import _common_state, _one_line, _reason


@pytest.mark.parametrize("slurm_state, reason, restarts, exit_code, state, shown", [
    ("PENDING", "Resources", 0, "0:0", State.PENDING, "Resources"),
    ("PENDING", "Priority", 0, "0:0", State.PENDING, "Priority"),
    ("PENDING", "PartitionNodeLimit", 0, "0:0", State.PENDING, "PartitionNodeLimit"),
    ("PENDING", "None", 0, "0:0", State.PENDING, None),
    ("PENDING", "BeginTime", 2, "0:0", State.PENDING, "BeginTime, requeued 2 times"),
    ("REQUEUED", "None", 1, "0:0", State.PENDING, "REQUEUED, requeued 1 time"),
    ("RUNNING", "None", 0, "0:0", State.RUNNING, None),
    ("COMPLETING", "None", 0, "0:0", State.RUNNING, "COMPLETING"),
    ("COMPLETED", "None", 0, "0:0", State.SUCCEEDED, None),
    ("CANCELLED by 1000", "None", 0, "0:15", State.CANCELLED, None),
    ("FAILED", "NonZeroExitCode", 0, "1:0", State.FAILED, "exit code 1"),
    ("TIMEOUT", "TimeLimit", 0, "0:15", State.FAILED, "TIMEOUT, exit code 0, signal 15"),
    ("NODE_FAIL", "None", 0, "0:0", State.FAILED, "NODE_FAIL"),
    ("OUT_OF_MEMORY", "OutOfMemory", 0, "0:125", State.FAILED, "OUT_OF_MEMORY, exit code 0, signal 125"),
    ("PREEMPTED", "None", 0, "0:0", State.FAILED, "PREEMPTED"),
    ("SOMETHING_NEW", "None", 0, "0:0", State.UNKNOWN, None),
])
def test_slurm_states_map_to_the_common_ones_with_slurms_reason(slurm_state, reason, restarts, exit_code,
                                                                state, shown):
    assert _common_state(slurm_state) is state
    assert _reason(slurm_state, reason, restarts, exit_code) == shown


def test_a_failing_command_is_reported_in_one_line():
    stderr = ("sbatch: error: invalid partition specified: nope\n"
              "sbatch: error: Batch job submission failed: Invalid partition name specified\n")
    assert _one_line(stderr) == "Batch job submission failed: Invalid partition name specified"
    assert _one_line("scancel: error: Kill job error on job id 9: Invalid job id specified\n") == \
        "Kill job error on job id 9: Invalid job id specified"
