"""Angular-margin softmax losses that own a normalised classifier: A-Softmax (SphereFace) and LMCL (CosFace).

Both read the pooled penultimate vector ``"embeddings"`` (B, D) and replace the backbone's classifier: their
:meth:`predict` gives the scores the task's metrics use. All margin maths runs in fp32 with autocast off.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.losses._utils import (
    LossConfigError,
    autocast_off,
    check_bind_args,
    check_target,
    check_width,
    get_output,
    require_bound,
)
from lightning_modules.losses.base import TaskLoss

_EPS = 1e-12


def chebyshev_cos_m(cos: Tensor, m: int) -> Tensor:
    """``cos(m * theta)`` from ``cos(theta)`` by the Chebyshev recursion T_{n+1} = 2c T_n - T_{n-1}.

    A polynomial in ``cos``, so its gradient stays finite at ``cos = +-1`` (unlike ``cos(m * acos(c))``).
    """
    prev, cur = torch.ones_like(cos), cos
    if m == 0:
        return prev
    for _ in range(m - 1):
        prev, cur = cur, 2.0 * cos * cur - prev
    return cur


class _NormalisedClassifierLoss(TaskLoss):
    """Shared part: a (num_classes, num_features) weight created in bind(), Xavier-initialised."""

    requires: ClassVar[frozenset[str]] = frozenset({"embeddings"})

    def __init__(self) -> None:
        super().__init__()
        self.register_parameter("weight", None)

    def bind(self, num_features: int, num_classes: int) -> None:
        """Create the classifier weight (num_classes, num_features); rows are normalised in forward."""
        check_bind_args(self, num_features, num_classes)
        weight = torch.empty(num_classes, num_features)
        nn.init.xavier_uniform_(weight)
        self.weight = nn.Parameter(weight)

    def _embeddings_and_weight(self, outputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        x = get_output(self, outputs, "embeddings")
        weight = require_bound(self, self.weight)
        check_width(self, x, weight)
        return x.float(), F.normalize(weight.float(), dim=1, eps=_EPS)


class ASoftmaxLoss(_NormalisedClassifierLoss):
    r"""A-Softmax loss (Liu, Wen, Yu, Li, Raj, Song, "SphereFace: Deep Hypersphere Embedding for Face
    Recognition", CVPR 2017).

    Classifier rows normalised, no bias; the target logit gets a multiplicative angular margin (paper
    Sec. 3.3):

    ``f_j = ||x|| cos(theta_j)`` for j != y,
    ``psi(theta_y) = (-1)^k cos(m theta_y) - 2k`` for ``theta_y in [k pi/m, (k+1) pi/m]``, k in 0..m-1,
    ``L = CE([f_1 .. ||x|| psi(theta_y) .. f_K], y)``.

    Annealing (the paper's "lambda" training trick, as in the official Caffe ``MarginInnerProduct`` layer):
    the target logit is ``(lambda ||x|| cos(theta_y) + ||x|| psi(theta_y)) / (1 + lambda)`` with
    ``lambda = max(lambda_min, lambda_base * (1 + lambda_gamma * it)^(-lambda_power))`` and ``it`` the
    number of training forwards done before this one (a checkpointed buffer). Defaults are those of the
    official SphereFace-20 prototxt (base 1000, gamma 0.12, power 1, lambda_min 5, m 4); lambda_min = 0
    gives the pure A-Softmax at the end of training.

    ``cos(m theta)`` is the Chebyshev polynomial of ``cos theta`` (as in the official code); ``k`` is
    ``floor(m acos(cos theta) / pi)``, taken without gradient. :meth:`predict` returns the margin-free
    logits ``||x|| cos(theta_j) = x . w_j / ||w_j||`` (same ranking as the plain cosines). Outputs needed:
    ``"embeddings"``; the backbone's own classifier is unused.

    Args:
        m: the integer angular margin (1 = normalised-weight softmax, no margin).
        lambda_base: initial lambda.
        lambda_gamma: decay rate of lambda per training iteration.
        lambda_power: decay exponent.
        lambda_min: floor of lambda.
    """

    def __init__(
        self,
        m: int = 4,
        lambda_base: float = 1000.0,
        lambda_gamma: float = 0.12,
        lambda_power: float = 1.0,
        lambda_min: float = 5.0,
    ) -> None:
        super().__init__()
        if int(m) != m or m < 1:
            raise LossConfigError(f"ASoftmaxLoss margin m must be a positive integer, got {m}.")
        if lambda_min < 0 or lambda_base < 0:
            raise LossConfigError("ASoftmaxLoss lambda_base and lambda_min must be >= 0.")
        self.m = int(m)
        self.lambda_base = float(lambda_base)
        self.lambda_gamma = float(lambda_gamma)
        self.lambda_power = float(lambda_power)
        self.lambda_min = float(lambda_min)
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    def current_lambda(self) -> Tensor:
        """The annealing weight for the next training forward (a 0-d fp32 tensor; no host sync)."""
        it = self.iteration.float()
        lam = self.lambda_base * (1.0 + self.lambda_gamma * it) ** (-self.lambda_power)
        return lam.clamp_min(self.lambda_min)

    def psi(self, cos: Tensor) -> Tensor:
        """``psi(theta) = (-1)^k cos(m theta) - 2k`` of a cosine tensor (monotone decreasing in theta)."""
        cos = cos.clamp(-1.0, 1.0)
        k = torch.floor(self.m * torch.acos(cos.detach()) / math.pi).clamp(0, self.m - 1)
        sign = 1.0 - 2.0 * torch.remainder(k, 2.0)
        return sign * chebyshev_cos_m(cos, self.m) - 2.0 * k

    def forward(self, outputs: dict[str, Tensor], target: Tensor) -> dict[str, Tensor]:
        """Return ``{"loss", "lambda"}``; advances the annealing counter in training mode."""
        lam = self.current_lambda()
        x_dev = get_output(self, outputs, "embeddings").device
        with autocast_off(x_dev):
            x, w = self._embeddings_and_weight(outputs)
            target = check_target(target, w.shape[0], self)
            wx = x @ w.t()  # ||x|| cos(theta_j)
            x_norm = x.norm(dim=1, keepdim=True)
            cos_y = (wx.gather(1, target[:, None]) / x_norm.clamp_min(_EPS)).clamp(-1.0, 1.0)
            f_y = x_norm * (lam * cos_y + self.psi(cos_y)) / (1.0 + lam)
            logits = wx.scatter(1, target[:, None], f_y)
            loss = F.cross_entropy(logits, target)
        if self.training:
            self.iteration += 1
        return {"loss": loss, "lambda": lam}

    def predict(self, outputs: dict[str, Tensor]) -> Tensor:
        """Margin-free logits ``||x|| cos(theta_j)`` (B, num_classes)."""
        with autocast_off(get_output(self, outputs, "embeddings").device):
            x, w = self._embeddings_and_weight(outputs)
            return x @ w.t()


class CosFaceLoss(_NormalisedClassifierLoss):
    r"""Large Margin Cosine Loss, LMCL (Wang, Wang, Zhou, Ji, Gong, Zhou, Li, Liu, "CosFace: Large Margin
    Cosine Loss for Deep Face Recognition", CVPR 2018).

    Paper Eq. 4: features and classifier rows L2-normalised, an additive cosine margin on the target:

    ``L = -1/N sum_i log( e^{s (cos theta_{y_i} - m)} / (e^{s (cos theta_{y_i} - m)}
    + sum_{j != y_i} e^{s cos theta_j}) )``.

    The paper uses s = 64, m = 0.35 for face recognition (thousands of classes) and gives the lower bound
    ``s >= (K-1)/K * log((K-1) P_W / (1 - P_W))`` (Eq. 7) for an expected minimum posterior P_W; for K = 200
    and P_W = 0.9 that is about 7.5, so our default s = 30 (the usual choice for ~100-1000 classes) is well
    above it; set ``s: 64`` for the paper's value. :meth:`predict` returns ``s cos(theta_j)`` (no margin).
    Outputs needed: ``"embeddings"``; the backbone's own classifier is unused.

    Args:
        s: the scale of the normalised logits.
        m: the additive cosine margin.
    """

    def __init__(self, s: float = 30.0, m: float = 0.35) -> None:
        super().__init__()
        if s <= 0:
            raise LossConfigError(f"CosFaceLoss scale s must be > 0, got {s}.")
        self.s = float(s)
        self.m = float(m)

    def cosine(self, outputs: dict[str, Tensor]) -> Tensor:
        """``cos(theta_j)`` between normalised embeddings and normalised classifier rows (B, K), fp32."""
        x, w = self._embeddings_and_weight(outputs)
        return F.normalize(x, dim=1, eps=_EPS) @ w.t()

    def forward(self, outputs: dict[str, Tensor], target: Tensor) -> dict[str, Tensor]:
        """Return ``{"loss"}``."""
        with autocast_off(get_output(self, outputs, "embeddings").device):
            cos = self.cosine(outputs)
            target = check_target(target, cos.shape[1], self)
            margin = torch.zeros_like(cos).scatter_(1, target[:, None], self.m)
            loss = F.cross_entropy(self.s * (cos - margin), target)
        return {"loss": loss}

    def predict(self, outputs: dict[str, Tensor]) -> Tensor:
        """Margin-free logits ``s cos(theta_j)`` (B, num_classes)."""
        with autocast_off(get_output(self, outputs, "embeddings").device):
            return self.s * self.cosine(outputs)
