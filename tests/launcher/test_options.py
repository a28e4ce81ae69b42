"""Backend options and user defaults: config file < environment < flags."""

import dataclasses
from typing import Literal

import pytest
from helpers.cli import assert_one_line_error, run_cli

from simsiam_job.defaults import load_user_config, resolve_options
from simsiam_job.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Options:
    namespace: str = dataclasses.field(default="default", metadata={"help": "namespace"})
    gpu_product: str | None = "A100"
    backoff_limit: int = 3
    grace: float = 30.0
    pull_secrets: tuple[str, ...] = ()
    runtime: Literal["none", "pyxis", "apptainer"] = "none"
    host_network: bool = False


def test_precedence_file_then_env_then_set():
    user = {"kubernetes": {"namespace": "from-file", "backoff_limit": 5, "grace": 10}}
    env = {"SIMSIAM_JOB_KUBERNETES_NAMESPACE": "from-env", "SIMSIAM_JOB_KUBERNETES_GRACE": "20"}
    opts = resolve_options("kubernetes", Options, ["grace=40"], user_config=user, environ=env)
    assert (opts.namespace, opts.backoff_limit, opts.grace) == ("from-env", 5, 40.0)


def test_values_are_converted_to_the_field_type():
    opts = resolve_options("kubernetes", Options, [
        "gpu-product=none", "pull-secrets=a,b", "runtime=pyxis", "host_network=yes", "backoff_limit=0",
    ], user_config={}, environ={})
    assert opts == Options(gpu_product=None, pull_secrets=("a", "b"), runtime="pyxis",
                           host_network=True, backoff_limit=0)


@pytest.mark.parametrize("sets, message", [
    (["namspace=x"], "did you mean 'namespace'"),
    (["backoff_limit=three"], "expected an integer"),
    (["runtime=docker"], "not one of none, pyxis, apptainer"),
    (["host_network=maybe"], "expected true or false"),
    (["no-equals-sign"], "expects KEY=VALUE"),
])
def test_bad_options_name_the_problem(sets, message):
    with pytest.raises(UsageError, match=message):
        resolve_options("kubernetes", Options, sets, user_config={}, environ={})


def test_unknown_key_in_the_config_file_is_named_with_its_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("backnd: slurm\n")
    with pytest.raises(UsageError, match="did you mean 'backend'"):
        load_user_config({"SIMSIAM_JOB_CONFIG": str(path)})


def test_cli_reads_config_file_and_env_and_set_wins(user_env, tmp_path):
    config_dir = tmp_path / "config" / "simsiam-job"
    config_dir.mkdir(parents=True)
    (config_dir / "config.yaml").write_text("local:\n  grace_seconds: 5\n  runs_dir: /from/file\n")
    env = {**user_env, "SIMSIAM_JOB_LOCAL_RUNS_DIR": "/from/env"}
    out = run_cli(["options", "local", "--set", "grace_seconds=7"], env, check=True).stdout
    values = {line.split()[0]: line.split()[1] for line in out.splitlines()}
    assert values["grace_seconds"] == "7.0" and values["runs_dir"] == "'/from/env'"


def test_cli_unknown_backend_option_is_one_line(user_env):
    proc = run_cli(["render", "pretrain", "-c", "x.yaml", "--set", "gracе_seconds=1"], user_env)
    assert_one_line_error(proc, contains="unknown local option")
