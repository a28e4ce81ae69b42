"""LARS/LARC with momentum: the linear-probe optimizer of the SimSiam recipe (PASSL's MomentumLARC).

Per layer (You et al., 2017, "Large Batch Training of Convolutional Networks"):

    trust   = trust_coefficient * ||w|| / (||g + wd * w|| + eps)     (1 when ||w|| or ||g|| is 0)
    trust   = min(trust / lr, 1)                                      (only with clip=True: LARC)
    v       = momentum * v + trust * (g + wd * w)
    w       = w - lr * v

Biases and normalization parameters (every 1-D parameter) are excluded, as in the reference LARS:
they get neither weight decay nor the trust ratio, i.e. plain momentum SGD. The momentum update itself
is paddle's Momentum, so the optimizer state, LR schedulers and checkpoints behave like any paddle
optimizer; this class only rescales each layer's gradient before it.
"""

from __future__ import annotations

import paddle


class MomentumLARC(paddle.optimizer.Momentum):
    def __init__(
        self,
        learning_rate,
        parameters,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        clip: bool = False,
        eps: float = 1e-8,
        grad_clip=None,
    ):
        # Weight decay is folded into the adapted gradient below, so paddle's own decay stays off.
        super().__init__(
            learning_rate=learning_rate,
            momentum=momentum,
            parameters=parameters,
            weight_decay=None,
            grad_clip=grad_clip,
        )
        self.lars_weight_decay = float(weight_decay)
        self.trust_coefficient = float(trust_coefficient)
        self.clip = bool(clip)
        self.eps = float(eps)

    @staticmethod
    def is_excluded(param) -> bool:
        """Biases and BatchNorm/LayerNorm scales and shifts: all the 1-D parameters."""
        return len(param.shape) <= 1

    def _parameters(self):
        """Every parameter, whether the optimizer was given a list or parameter groups."""
        for item in self._param_groups:
            yield from (item["params"] if isinstance(item, dict) else [item])

    @paddle.no_grad()
    def step(self) -> None:
        # The trust ratio stays on the device: reading norms back to the host would wait for
        # the GPU at every parameter of every step. Norms in float32 (AMP O2 has float16 weights).
        for param in self._parameters():
            grad = param.grad
            if param.stop_gradient or grad is None or self.is_excluded(param):
                continue
            update = grad + self.lars_weight_decay * param if self.lars_weight_decay else grad
            w_norm = paddle.linalg.norm(param.astype("float32"))
            u_norm = paddle.linalg.norm(update.astype("float32"))
            trust = self.trust_coefficient * w_norm / (u_norm + self.eps)
            if self.clip:  # the lr this parameter will see, incl. its per-parameter factor
                lr = self.get_lr() * param.optimize_attr.get("learning_rate", 1.0)
                trust = paddle.minimum(trust / lr, paddle.ones_like(trust))
            trust = paddle.where((w_norm > 0) & (u_norm > 0), trust, paddle.ones_like(trust))
            paddle.assign((update * trust.astype(update.dtype)).astype(grad.dtype), output=grad)
        super().step()
