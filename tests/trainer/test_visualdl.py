"""VisualDL (Paddle's TensorBoard): a real run with Global.use_visualdl=True, its scalars read back
with VisualDL's own reader, as the VisualDL web page would read them."""
import json

import pytest
from helpers.prereqs import unavailable
from helpers.trainer import run_cli, tiny_run_args

pytestmark = pytest.mark.slow


def test_a_run_with_visualdl_logs_the_curves_metrics_jsonl_has(tmp_path, image_root):
    try:
        from visualdl import LogReader
    except ImportError:
        unavailable("visualdl is not installed (it is in the test extra: pip install -e '.[test]')")
    out = tmp_path / "run"
    result = run_cli(tiny_run_args(out, image_root, "-o", "Global.use_visualdl=True"))
    assert result.returncode == 0, result.stderr

    logs = list((out / "visualdl").glob("vdlrecords.*.log"))
    assert len(logs) == 1, logs
    reader = LogReader(file_path=str(logs[0]))
    scalars = set(reader.get_tags()["scalar"])
    assert {"step/loss", "step/lr", "step/z_std", "step/images_per_sec", "epoch/loss"} <= scalars

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for kind, field in (("step", "loss"), ("step", "z_std"), ("step", "lr"), ("epoch", "loss")):
        expected = [(r["global_step"], r[field]) for r in records if r["type"] == kind]
        got = [(s.id, s.value) for s in reader.get_data("scalar", f"{kind}/{field}")]
        assert [step for step, _ in got] == [step for step, _ in expected], (kind, field)
        assert [value for _, value in got] == pytest.approx([value for _, value in expected], rel=1e-6)
    assert len(expected) == 2 and len(got) == 2                       # two epochs
