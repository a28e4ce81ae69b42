"""MomentumLARC against an update computed by hand with numpy."""
import numpy as np
import paddle

from trainer.optim.lars import MomentumLARC


def reference_step(w, g, v, lr, momentum, wd, tc, clip, excluded):
    """The LARS formula written out: trust = tc*||w||/||g + wd*w||, momentum on the scaled update."""
    if excluded:
        update = g
    else:
        update = g + wd * w
        trust = tc * np.linalg.norm(w) / (np.linalg.norm(update) + 1e-8)
        if clip:
            trust = min(trust / lr, 1.0)
        update = trust * update
    v = momentum * v + update
    return w - lr * v, v


def run(clip, wd, lr=1.6, steps=3):
    paddle.seed(0)
    layer = paddle.nn.Linear(5, 3)
    with paddle.no_grad():
        layer.bias.set_value(paddle.to_tensor([0.5, -0.25, 1.0]))
    opt = MomentumLARC(lr, layer.parameters(), momentum=0.9, weight_decay=wd,
                       trust_coefficient=0.001, clip=clip)
    rng = np.random.default_rng(0)
    w, b = layer.weight.numpy().copy(), layer.bias.numpy().copy()
    vw, vb = np.zeros_like(w), np.zeros_like(b)
    for _ in range(steps):
        x = rng.standard_normal((4, 5)).astype("float32")
        y = layer(paddle.to_tensor(x))
        (y ** 2).sum().backward()
        gw, gb = layer.weight.grad.numpy().copy(), layer.bias.grad.numpy().copy()
        opt.step()
        opt.clear_grad()
        w, vw = reference_step(w, gw, vw, lr, 0.9, wd, 0.001, clip, excluded=False)
        b, vb = reference_step(b, gb, vb, lr, 0.9, wd, 0.001, clip, excluded=True)
        np.testing.assert_allclose(layer.weight.numpy(), w, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(layer.bias.numpy(), b, rtol=1e-5, atol=1e-7)
    return layer


def test_lars_matches_hand_computed_update():
    run(clip=False, wd=0.0)


def test_lars_weight_decay_enters_the_trust_ratio():
    run(clip=False, wd=0.05)


def test_larc_clip_caps_the_local_rate_at_the_global_rate():
    # With a tiny lr the clipped trust ratio (tc*||w||/||g||/lr) exceeds 1, so the update is plain SGD.
    run(clip=True, wd=0.0, lr=1e-6)


def test_trust_ratio_scales_the_step_not_the_gradient_size():
    """A layer's step is ~tc*lr*||w|| whatever the gradient's magnitude (the point of LARS)."""
    sizes = []
    for scale in (1.0, 1000.0):
        paddle.seed(1)
        layer = paddle.nn.Linear(8, 8, bias_attr=False)
        w0 = layer.weight.numpy().copy()
        opt = MomentumLARC(1.0, layer.parameters(), trust_coefficient=0.001)
        (layer(paddle.ones([2, 8])).sum() * scale).backward()
        opt.step()
        sizes.append(np.linalg.norm(layer.weight.numpy() - w0) / np.linalg.norm(w0))
    np.testing.assert_allclose(sizes, [0.001, 0.001], rtol=1e-4)
