"""curves.svg: what a person looks at to see a run learn (loss, kNN top-1) or collapse (z_std)."""
import math
from xml.etree import ElementTree

import pytest

from trainer.plot import MARGIN_BOTTOM, MARGIN_TOP, PANEL_HEIGHT, curves_svg, read_metrics

SVG = "{http://www.w3.org/2000/svg}"


def _points(polyline):
    return [tuple(map(float, p.split(","))) for p in polyline.get("points").split()]


def test_each_logged_series_becomes_a_panel_with_every_point():
    records = [{"type": "step", "global_step": s, "loss": -s / 10, "z_std": 0.06, "lr": 0.1}
               for s in range(1, 11)]
    records.append({"type": "eval", "global_step": 10, "top1": 0.5})
    root = ElementTree.fromstring(curves_svg(records, title="run"))
    titles = [t.text for t in root.iter(f"{SVG}text") if t.get("font-weight") == "bold"]
    assert titles[0] == "training loss" and titles[-1] == "validation top-1" and len(titles) == 4
    loss, z_std, lr, top1 = (_points(p) for p in root.iter(f"{SVG}polyline"))
    assert len(loss) == 10 and len(top1) == 1
    ys = [y for _, y in loss]
    assert ys == sorted(ys)            # loss falls, so its line goes down the page (SVG y grows downwards)
    assert [x for x, _ in loss] == sorted(x for x, _ in loss)


def test_collapse_is_visible_because_z_std_is_drawn_from_zero():
    """Healthy noise (0.0615-0.0627) stays a nearly flat line; a fall to a fifth (collapse) drops
    more than half the plot. A zoomed-in axis would draw both as full-height swings."""
    noisy = [{"type": "step", "global_step": s, "z_std": 0.0615 + 0.0012 * (s % 2)} for s in range(1, 7)]
    collapsed = [{"type": "step", "global_step": s, "z_std": 0.0625 * (6 - s) / 5} for s in range(1, 6)]
    noisy_ys = [y for _, y in _points(ElementTree.fromstring(curves_svg(noisy)).find(f".//{SVG}polyline"))]
    falling = _points(ElementTree.fromstring(curves_svg(collapsed)).find(f".//{SVG}polyline"))
    assert max(noisy_ys) - min(noisy_ys) < 5
    assert falling[-1][1] - falling[0][1] > 0.5 * (PANEL_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM)


def test_nothing_to_plot_and_a_cut_off_last_line(tmp_path):
    assert curves_svg([{"type": "epoch", "global_step": 3, "loss": 1.0}]) is None
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"type": "step", "global_step": 1, "loss": 2.0}\n{"type": "step", "glo')
    assert read_metrics(path) == [{"type": "step", "global_step": 1, "loss": 2.0}]


def _labels(root, cls):
    return [t.text for t in root.iter(f"{SVG}text") if t.get("class") == cls]


@pytest.mark.parametrize("low, high", [(-0.93, 0.012), (0.0312, 0.0627), (1e-5, 3.1e-4), (2.0, 2.0),
                                       (7.3, 1234.5)])
def test_axes_carry_round_values_in_steps_of_1_2_or_5(low, high):
    records = [{"type": "step", "global_step": s, "loss": low + (high - low) * s / 37} for s in range(1, 38)]
    root = ElementTree.fromstring(curves_svg(records))
    for cls, data_low, data_high in (("y-tick", low, high), ("x-tick", 1, 37)):
        values = [float(label) for label in _labels(root, cls)]
        steps = {round(b - a, 12) for a, b in zip(values, values[1:], strict=False)}
        assert len(steps) == 1 and 3 <= len(values) <= 7, (cls, values)
        step = steps.pop()
        mantissa = step / 10 ** math.floor(math.log10(step))
        assert round(mantissa, 6) in (1, 2, 5), (cls, values)
        assert all(abs(v / step - round(v / step)) < 1e-6 for v in values), (cls, values)   # multiples of it
        assert values[0] <= data_low and values[-1] >= data_high, (cls, values)   # the data lies within


def test_an_epoch_axis_marks_where_each_epoch_ends():
    """3 epochs of 10 steps: the epoch labels sit above the steps where the epoch records say each
    epoch ended, at the x of the loss points of those steps."""
    records = [{"type": "step", "epoch": s // 10 + 1, "global_step": s, "loss": 1 / s} for s in range(1, 31)]
    records += [{"type": "epoch", "epoch": e, "global_step": 10 * e, "loss": 0.5} for e in (1, 2, 3)]
    root = ElementTree.fromstring(curves_svg(records))
    epoch_ticks = [t for t in root.iter(f"{SVG}text") if t.get("class") == "epoch-tick"]
    assert [t.text for t in epoch_ticks] == ["1", "2", "3"]
    x_of_step = {s: x for s, (x, _) in zip(range(1, 31), _points(root.find(f".//{SVG}polyline")),
                                           strict=True)}
    assert [float(t.get("x")) for t in epoch_ticks] == [x_of_step[10], x_of_step[20], x_of_step[30]]
    assert "epoch above" in next(root.iter(f"{SVG}text")).text


def test_pretraining_draws_the_knn_curve_from_eval_records_when_present():
    steps = [{"type": "step", "global_step": s, "loss": -s / 100, "z_std": 0.06, "lr": 0.05}
             for s in range(1, 101)]
    knn = [{"type": "eval", "epoch": e, "global_step": 20 * e, "knn_top1": 0.3 + 0.05 * e}
           for e in range(1, 6)]

    def titles(records):
        root = ElementTree.fromstring(curves_svg(records))
        return [t.text for t in root.iter(f"{SVG}text") if t.get("font-weight") == "bold"], root

    without, _ = titles(steps)
    assert not any("kNN" in t for t in without)
    with_knn, root = titles(steps + knn)
    assert with_knn[-1].startswith("representation quality: kNN top-1")
    curve = _points(list(root.iter(f"{SVG}polyline"))[-1])
    assert len(curve) == 5 and [y for _, y in curve] == sorted((y for _, y in curve), reverse=True)  # rising
