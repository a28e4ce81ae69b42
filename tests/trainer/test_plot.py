"""curves.svg: what a person looks at to see a run learn (loss) or collapse (z_std)."""
from xml.etree import ElementTree

from trainer.plot import curves_svg, read_metrics

SVG = "{http://www.w3.org/2000/svg}"


def _points(polyline):
    return [tuple(map(float, p.split(","))) for p in polyline.get("points").split()]


def test_each_logged_series_becomes_a_panel_with_every_point():
    records = [{"type": "step", "global_step": s, "loss": -s / 10, "z_std": 0.06, "lr": 0.1} for s in range(1, 11)]
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
    most of the 122-px plot. A zoomed-in axis would draw both as full-height swings."""
    noisy = [{"type": "step", "global_step": s, "z_std": 0.0615 + 0.0012 * (s % 2)} for s in range(1, 7)]
    collapsed = [{"type": "step", "global_step": s, "z_std": 0.0625 * (6 - s) / 5} for s in range(1, 6)]
    noisy_ys = [y for _, y in _points(ElementTree.fromstring(curves_svg(noisy)).find(f".//{SVG}polyline"))]
    falling = _points(ElementTree.fromstring(curves_svg(collapsed)).find(f".//{SVG}polyline"))
    assert max(noisy_ys) - min(noisy_ys) < 5
    assert falling[-1][1] - falling[0][1] > 90


def test_nothing_to_plot_and_a_cut_off_last_line(tmp_path):
    assert curves_svg([{"type": "epoch", "global_step": 3, "loss": 1.0}]) is None
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"type": "step", "global_step": 1, "loss": 2.0}\n{"type": "step", "glo')
    assert read_metrics(path) == [{"type": "step", "global_step": 1, "loss": 2.0}]
