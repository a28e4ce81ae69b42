"""The collapse monitor warns only when z_std stays low for `patience` consecutive logs."""
from trainer.engine.pretrain import CollapseMonitor


def test_collapse_warning_needs_patience_consecutive_low_logs():
    monitor = CollapseMonitor(dim=2048, fraction=0.2, patience=3)       # healthy ~ 0.0221
    assert [monitor.update(0.022), monitor.update(0.001), monitor.update(0.001)] == [None, None, None]
    assert monitor.update(0.02) is None                                 # recovered: count resets
    warnings = [monitor.update(0.001) for _ in range(3)]
    assert warnings[:2] == [None, None]
    assert "possible collapse" in warnings[2] and "0.00100" in warnings[2]
