"""simsiam-train: PASSL's interface, `simsiam-train -c CONFIG.yaml [-o Dotted.Key=VALUE ...]`.

The config's Global.task_type picks the loop: ContrastiveLearning (SimSiam pretraining) or
Classification (the linear probe). Further subcommands (`simsiam-train eval ...`,
`simsiam-train convert ...`) register in SUBCOMMANDS.

Exit codes (trainer.contract): 0 done; 2 bad config, data, checkpoint or usage, or an output
directory another run holds (one line on stderr); 3 diverged (a non-finite loss or parameter; no
checkpoint written after it); 75 a peer rank was lost (restart the whole group); 143 stopped by
SIGTERM after saving a checkpoint; 1 anything else.
"""
from __future__ import annotations

import argparse
import difflib
import os
import sys

from trainer import lock, outcome, watchdog
from trainer.config import LARGEST_DEVICE_MEMORY, ConfigError, check_memory, load_config, machine_memory
from trainer.contract import (
    EXIT_BAD_INPUT,
    EXIT_DIVERGED,
    EXIT_DONE,
    EXIT_ERROR,
    EXIT_PREEMPTED,
    PHASE_TASKS,
    End,
)
from trainer.sections import Global

# name -> "module:function"; the function takes the remaining argv and returns an exit code.
SUBCOMMANDS: dict[str, str] = {
    "eval": "trainer.cli:eval_main",            # top-k of a trained linear probe
    "convert": "trainer.convert:main",          # weights to/from PyTorch
}

# Global.task_type -> "module:function" taking the validated config.
TASKS = {
    PHASE_TASKS["pretrain"]: "trainer.engine.pretrain:train",
    PHASE_TASKS["linear-probe"]: "trainer.engine.linear_probe:train",
    PHASE_TASKS["smoke"]: "trainer.engine.smoke:smoke_test",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):           # one line, exit 2 (argparse's default prints usage too)
        print(f"simsiam-train: error: {message} (see simsiam-train --help)", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)

    def parse_args(self, args=None, namespace=None):
        """Unknown options first: argparse reports a missing -c or positional before them, which
        hides the mistyped flag that caused it."""
        args = sys.argv[1:] if args is None else list(args)
        known = [o for action in self._actions for o in action.option_strings]
        for token in args:
            if token == "--":
                break
            name = token.partition("=")[0]
            if not token.startswith("-") or token == "-" or _is_number(token) or name in known \
                    or (not token.startswith("--") and token[:2] in known) \
                    or (token.startswith("--") and any(o.startswith(name) for o in known)):
                continue
            close = difflib.get_close_matches(name, known, n=1)
            self.error(f"unrecognized argument: {token}" + (f" (did you mean {close[0]}?)" if close else ""))
        return super().parse_args(args, namespace)


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _resolve(target: str):
    import importlib
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


def main(argv: list[str] | None = None) -> int:
    """Under a launcher of ours this process becomes the rank's keeper (trainer.outcome) and a
    child trains; either way the rank's outcome is recorded however it ends."""
    argv = sys.argv[1:] if argv is None else argv
    kept = outcome.fork_keeper()
    if kept is not None:
        return kept
    code, said = EXIT_ERROR, None
    try:
        code = _main(argv)
    except SystemExit as e:             # argparse's usage errors (exit 2), --help (exit 0)
        code = e.code if isinstance(e.code, int) else EXIT_BAD_INPUT if e.code else EXIT_DONE
        raise
    except BaseException as e:          # a traceback follows: its last line is the message
        said = f"{type(e).__name__}: {e}".strip()
        raise
    finally:
        outcome.record(code, _said or said or "", _end)
    return code


def _main(argv: list[str]) -> int:
    if argv and argv[0] in SUBCOMMANDS:
        return _resolve(SUBCOMMANDS[argv[0]])(argv[1:])
    return _config_command(argv, "simsiam-train", "SimSiam pretraining and linear probe on "
                           "PaddlePaddle (PASSL config schema).", None)


def eval_main(argv: list[str]) -> int:
    """simsiam-train eval -c CONFIG -o Global.pretrained_model=PROBE: evaluate a trained probe."""
    return _config_command(argv, "simsiam-train eval", "Top-1/top-5 of a trained linear probe on "
                           "DataLoader.Eval (all ranks).", "trainer.engine.linear_probe:evaluate_only")


def _config_command(argv: list[str], prog: str, description: str, target: str | None) -> int:
    parser = _Parser(prog=prog, description=description,
                     epilog=("subcommands: " + ", ".join(SUBCOMMANDS))
                     if SUBCOMMANDS and not target else None)
    parser.add_argument("-c", "--config", required=True, help="PASSL-schema YAML config")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. -o Global.epochs=1 (repeatable)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.override)
        check_memory(cfg, host_memory=machine_memory(), machine="this machine",
                     device_memory=None if Global.of(cfg).device == "cpu" else LARGEST_DEVICE_MEMORY,
                     processes=int(os.environ.get("PADDLE_LOCAL_SIZE", "1")))   # ranks on this machine
        return run_task(cfg, target)
    except ConfigError as e:
        return _fail(str(e))


def run_task(cfg: dict, target: str | None = None) -> int:
    """Run the config's task (or `target`); map the outcomes to exit codes."""
    import warnings
    # paddle's import-time and BatchNorm notices say nothing actionable to a user of this tool
    warnings.filterwarnings("ignore", message="No ccache found")
    warnings.filterwarnings("ignore", message="When training, we now always track")
    from trainer.data import DataError  # imports paddle lazily; keep `--help` and errors fast
    try:
        task = _resolve(target or TASKS[Global.of(cfg).task_type])
    except (ImportError, AttributeError):
        return _fail(f"Global.task_type {Global.of(cfg).task_type!r} is not available in this install")
    from trainer.engine.hooks import Preempted
    from trainer.guard import Diverged
    code = EXIT_ERROR
    try:
        task(cfg)
        code = EXIT_DONE
    except (ConfigError, DataError) as e:
        code = _fail(str(e))
    except Preempted as e:
        _note(str(e))
        print(f"simsiam-train: {e}", file=sys.stderr)
        code = EXIT_PREEMPTED
    except Diverged as e:
        _error(str(e))
        code = EXIT_DIVERGED
    except outcome.Failed as e:         # a task's own verdict (the smoke test's FAIL)
        _error(e.message, e.end)
        code = e.code
    except KeyboardInterrupt:
        print("simsiam-train: interrupted", file=sys.stderr)
        code = 130
    except Exception:
        # a collective fails at once when a peer's connection drops: that is the peer's loss
        # (exit 75, from the watchdog), not this rank's error
        watchdog.wait_for_lost_peer()
        raise
    finally:
        watchdog.finish(code, _said or "")     # tell the peers how this rank ended
        lock.release_held()
    return code


# Kubernetes shows a container's termination message in the pod's status: the error line goes there.
TERMINATION_LOG = outcome.TERMINATION_LOG
_said: str | None = None                # this process's one error line, for its outcome
_end: End | None = None                 # its class, where the exit code alone does not say it


def _note(message: str, end: End | None = None) -> None:
    global _said, _end
    _said, _end = message, end


def _error(message: str, end: End | None = None) -> None:
    _note(message, end)
    print(f"simsiam-train: error: {message}", file=sys.stderr)
    outcome.write_termination_message(message, TERMINATION_LOG)


def _fail(message: str) -> int:
    _error(message)
    return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
