"""Tests of lightning_modules/losses: hand-computed values, training decreases the loss, MC-Loss specifics,
parameter creation in bind(), predict() shapes, compute_loss() dispatch and fp32 maths under bf16 autocast.

Expected values are computed here with plain Python ``math`` on tiny inputs, independently of the code
under test.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.losses._exports import (
    ASoftmaxLoss,
    CenterLoss,
    COCOLoss,
    CosFaceLoss,
    FocalLoss,
    LGMLoss,
    MCLoss,
)
from lightning_modules.losses.base import TaskLoss, compute_loss


# ----------------------------------------------------------------------------------------------- helpers
def softmax(row: list[float]) -> list[float]:
    mx = max(row)
    e = [math.exp(v - mx) for v in row]
    s = sum(e)
    return [v / s for v in e]


def ce(row: list[float], y: int) -> float:
    mx = max(row)
    return -(row[y] - mx - math.log(sum(math.exp(v - mx) for v in row)))


def norm(v: list[float]) -> float:
    return math.sqrt(sum(a * a for a in v))


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def cosine(a: list[float], b: list[float]) -> float:
    return dot(a, b) / (norm(a) * norm(b))


def set_param(loss: nn.Module, name: str, value: list[list[float]]) -> None:
    with torch.no_grad():
        getattr(loss, name).copy_(torch.tensor(value))


# ------------------------------------------------------------------------------------- (a) hand values
def test_focal_hand_value() -> None:
    logits = [[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]]
    target = [0, 2]
    expected = 0.0
    for row, y in zip(logits, target):
        p = softmax(row)[y]
        expected += -((1 - p) ** 2) * math.log(p)
    expected /= 2
    got = FocalLoss(gamma=2.0)(torch.tensor(logits), torch.tensor(target))
    assert got.item() == pytest.approx(expected, rel=1e-5)

    # per-class alpha and label smoothing: L = -sum_k alpha_k q_k (1 - p_k)^gamma log p_k
    alpha, eps, gamma = [0.25, 0.5, 1.0], 0.1, 1.5
    expected = 0.0
    for row, y in zip(logits, target):
        p = softmax(row)
        for k in range(3):
            q = (1 - eps) * (k == y) + eps / 3
            expected += -alpha[k] * q * (1 - p[k]) ** gamma * math.log(p[k])
    expected /= 2
    got = FocalLoss(gamma=gamma, alpha=alpha, label_smoothing=eps)(torch.tensor(logits), torch.tensor(target))
    assert got.item() == pytest.approx(expected, rel=1e-5)

    # scalar alpha is a constant factor; gamma = 0 is cross-entropy
    x, t = torch.tensor(logits), torch.tensor(target)
    assert FocalLoss(gamma=0.0, alpha=0.25)(x, t).item() == pytest.approx(
        0.25 * (ce(logits[0], 0) + ce(logits[1], 2)) / 2, rel=1e-5
    )


def test_mcloss_hand_value() -> None:
    # K = 2 classes, xi = 2 channels per class, 1 x 2 spatial map, one sample of class 1.
    feats = [[0.0, 1.0], [2.0, 0.0], [1.0, 1.0], [0.5, 3.0]]  # channel -> [pos0, pos1]
    logits = [0.3, -0.2]
    alpha, beta = 1.5, 20.0
    sm = [softmax(ch) for ch in feats]
    ccmp_sum = [sum(max(sm[2 * k][i], sm[2 * k + 1][i]) for i in range(2)) for k in range(2)]
    div = 1 - (sum(ccmp_sum) / 2) / 2
    # eval mode: no mask -> CCMP over both channels, GAP over the two positions
    dis_logits = [sum(max(feats[2 * k][i], feats[2 * k + 1][i]) for i in range(2)) / 2 for k in range(2)]
    expected = ce(logits, 1) + alpha * ce(dis_logits, 1) + beta * div

    loss = MCLoss(channels_per_class=2, alpha=alpha, beta=beta, mask_keep=1).eval()
    loss.bind(4, 2)
    outputs = {"features": torch.tensor(feats).reshape(1, 4, 1, 2), "logits": torch.tensor([logits])}
    out = loss(outputs, torch.tensor([1]))
    assert out["div"].item() == pytest.approx(div, rel=1e-5)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)

    # a given mask (keep channel 1 of class 0, channel 0 of class 1): masked channels become 0
    keep = [[0, 1], [1, 0]]
    masked = [[v * keep[c // 2][c % 2] for v in feats[c]] for c in range(4)]
    dis_m = [sum(max(masked[2 * k][i], masked[2 * k + 1][i]) for i in range(2)) / 2 for k in range(2)]
    got = loss.discriminality_logits(outputs["features"], 2, torch.tensor(keep, dtype=torch.float32))
    assert got[0].tolist() == pytest.approx(dis_m, rel=1e-6)

    # training mode draws the mask with make_mask(): same seed -> same mask -> same value
    loss.train()
    torch.manual_seed(3)
    mask = loss.make_mask(2)
    dis_t = [
        sum(
            max(feats[2 * k][i] * mask[k, 0].item(), feats[2 * k + 1][i] * mask[k, 1].item())
            for i in range(2)
        )
        / 2
        for k in range(2)
    ]
    torch.manual_seed(3)
    out = loss(outputs, torch.tensor([1]))
    assert out["dis"].item() == pytest.approx(ce(dis_t, 1), rel=1e-5)


def test_center_hand_value_and_update() -> None:
    emb = [[1.0, 2.0], [0.0, -1.0], [3.0, 0.0]]
    logits = [[1.0, 0.0], [0.5, 0.5], [-1.0, 2.0]]
    target = [0, 1, 0]
    centers = [[1.0, 1.0], [0.0, 0.0]]
    lam, alpha = 0.1, 0.5
    center = sum(sum((e - c) ** 2 for e, c in zip(emb[i], centers[target[i]])) for i in range(3)) / (2 * 3)
    expected = sum(ce(logits[i], target[i]) for i in range(3)) / 3 + lam * center

    loss = CenterLoss(weight=lam, alpha=alpha)
    loss.bind(2, 2)
    set_param(loss, "centers", centers)
    out = compute_loss(
        loss, {"embeddings": torch.tensor(emb), "logits": torch.tensor(logits)}, torch.tensor(target)
    )
    assert out["center"].item() == pytest.approx(center, rel=1e-6)
    assert out["loss"].item() == pytest.approx(expected, rel=1e-6)

    # paper Eq. 4: delta c_j = sum_{y_i=j} (c_j - x_i) / (1 + n_j); c_j <- c_j - alpha * delta c_j
    new = []
    for j in range(2):
        members = [emb[i] for i in range(3) if target[i] == j]
        delta = [sum(centers[j][d] - x[d] for x in members) / (1 + len(members)) for d in range(2)]
        new.append([centers[j][d] - alpha * delta[d] for d in range(2)])
    assert loss.centers.tolist() == [pytest.approx(r, rel=1e-6) for r in new]

    # eval mode leaves the centres alone; alpha=None makes them a learned parameter
    loss.eval()
    loss({"embeddings": torch.tensor(emb), "logits": torch.tensor(logits)}, torch.tensor(target))
    assert loss.centers.tolist() == [pytest.approx(r, rel=1e-6) for r in new]
    learned = CenterLoss(alpha=None)
    learned.bind(2, 2)
    assert [n for n, _ in learned.named_parameters()] == ["centers"]
    assert list(loss.parameters()) == [] and "centers" in loss.state_dict()


def test_asoftmax_hand_value_and_annealing() -> None:
    w = [[2.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]  # rows get normalised
    x = [[3.0, 4.0], [-1.0, 0.2], [1.0, 0.1], [-1.0, 1.5]]
    target = [0, 0, 0, 0]
    m, lam = 4, 5.0
    expected = 0.0
    for xi, y in zip(x, target):
        xn = norm(xi)
        cos = [cosine(xi, wj) for wj in w]
        theta = math.acos(cos[y])
        k = math.floor(m * theta / math.pi)
        psi = (-1) ** k * math.cos(m * theta) - 2 * k
        row = [xn * c for c in cos]
        row[y] = (lam * xn * cos[y] + xn * psi) / (1 + lam)
        expected += ce(row, y)
    expected /= 4
    # the four samples fall in the four segments k = 0..3 of psi, so every branch is checked
    assert {math.floor(m * math.acos(cosine(xi, w[y])) / math.pi) for xi, y in zip(x, target)} == {0, 1, 2, 3}

    loss = ASoftmaxLoss(m=m, lambda_base=lam, lambda_min=lam).eval()
    loss.bind(2, 3)
    set_param(loss, "weight", w)
    out = loss({"embeddings": torch.tensor(x)}, torch.tensor(target))
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)
    pred = loss.predict({"embeddings": torch.tensor(x)})
    assert pred[0].tolist() == pytest.approx([norm(x[0]) * cosine(x[0], wj) for wj in w], rel=1e-5)

    # lambda = max(lambda_min, base * (1 + gamma * it)^-power), it = training forwards done so far
    sched = ASoftmaxLoss().train()
    sched.bind(2, 3)
    seen = [sched({"embeddings": torch.tensor(x)}, torch.tensor(target))["lambda"].item() for _ in range(3)]
    assert seen == pytest.approx([1000.0, 1000.0 / 1.12, 1000.0 / 1.24], rel=1e-6)
    sched.iteration.fill_(10**6)
    assert sched.current_lambda().item() == pytest.approx(5.0)
    assert int(sched.state_dict()["iteration"]) == 10**6


def test_cosface_hand_value() -> None:
    w = [[1.0, 1.0], [1.0, -2.0], [0.0, 3.0]]
    x = [[2.0, 1.0], [0.0, -1.0]]
    target = [2, 1]
    s, m = 4.0, 0.35
    expected = (
        sum(
            ce([s * (cosine(xi, wj) - m * (j == y)) for j, wj in enumerate(w)], y) for xi, y in zip(x, target)
        )
        / 2
    )
    loss = CosFaceLoss(s=s, m=m)
    loss.bind(2, 3)
    set_param(loss, "weight", w)
    assert loss({"embeddings": torch.tensor(x)}, torch.tensor(target))["loss"].item() == pytest.approx(
        expected, rel=1e-5
    )
    pred = loss.predict({"embeddings": torch.tensor(x)})
    assert pred[1].tolist() == pytest.approx([s * cosine(x[1], wj) for wj in w], rel=1e-5)


def test_coco_hand_value() -> None:
    c = [[1.0, 0.0], [1.0, 1.0], [-2.0, 1.0]]
    x = [[0.5, 0.5], [3.0, -1.0]]
    target = [1, 0]
    alpha = 3.0
    expected = sum(ce([alpha * cosine(xi, ck) for ck in c], y) for xi, y in zip(x, target)) / 2
    loss = COCOLoss(alpha=alpha)
    loss.bind(2, 3)
    set_param(loss, "weight", c)
    assert loss({"embeddings": torch.tensor(x)}, torch.tensor(target))["loss"].item() == pytest.approx(
        expected, rel=1e-5
    )
    # COCO is CosFace's normalised classifier with s = alpha and no margin
    cosface = CosFaceLoss(s=alpha, m=0.0)
    cosface.bind(2, 3)
    cosface.load_state_dict(loss.state_dict())
    out = cosface({"embeddings": torch.tensor(x)}, torch.tensor(target))["loss"]
    assert out.item() == pytest.approx(expected, rel=1e-5)
    # a checkpoint written when the centroids were called "centers" still loads
    legacy = COCOLoss(alpha=alpha)
    legacy.bind(2, 3)
    legacy.load_state_dict({"centers": torch.tensor(c)})
    assert legacy.centers.tolist() == c


def test_lgm_hand_value() -> None:
    mu = [[0.0, 0.0], [1.0, 2.0], [-1.0, 1.0]]
    x = [[0.5, 1.0], [-2.0, 0.0]]
    target = [1, 2]
    alpha, lam = 0.5, 0.1
    expected = 0.0
    for xi, y in zip(x, target):
        d = [0.5 * sum((a - b) ** 2 for a, b in zip(xi, mk)) for mk in mu]
        row = [-dk * (1 + alpha * (k == y)) for k, dk in enumerate(d)]
        expected += ce(row, y) + lam * d[y]
    expected /= 2
    loss = LGMLoss(alpha=alpha, likelihood_weight=lam)
    loss.bind(2, 3)
    set_param(loss, "means", mu)
    out = compute_loss(loss, {"embeddings": torch.tensor(x)}, torch.tensor(target))
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)
    pred = loss.predict({"embeddings": torch.tensor(x)})
    assert pred[1].tolist() == pytest.approx([-0.5 * ((-2 - a) ** 2 + (0 - b) ** 2) for a, b in mu], rel=1e-5)


# ------------------------------------------------------------------------------ (b) training decreases
NUM_CLASSES, IN_DIM, EMB_DIM, XI = 4, 8, 6, 3


def toy_data(seed: int = 0) -> tuple[Tensor, Tensor]:
    """32 separable points: class means far apart in IN_DIM dimensions plus small noise."""
    g = torch.Generator().manual_seed(seed)
    means = 3.0 * torch.randn(NUM_CLASSES, IN_DIM, generator=g)
    y = torch.arange(32) % NUM_CLASSES
    return means[y] + 0.3 * torch.randn(32, IN_DIM, generator=g), y


class ToyNet(nn.Module):
    """A linear 'backbone' producing logits, embeddings and a (B, XI*K, 2, 2) feature map."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(IN_DIM, EMB_DIM)
        self.fc = nn.Linear(EMB_DIM, NUM_CLASSES)
        self.conv = nn.Linear(IN_DIM, XI * NUM_CLASSES * 4)
        self.mc_fc = nn.Linear(XI * NUM_CLASSES, NUM_CLASSES)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        emb = self.embed(x)
        feats = F.relu(self.conv(x)).reshape(x.shape[0], XI * NUM_CLASSES, 2, 2)
        mc_logits = self.mc_fc(feats.mean((2, 3)))
        return {"embeddings": emb, "logits": self.fc(emb), "features": feats, "mc_logits": mc_logits}


def make_loss(name: str) -> nn.Module:
    losses = {
        "focal": lambda: FocalLoss(gamma=2.0),
        "mc": lambda: MCLoss(channels_per_class=XI),
        "center": lambda: CenterLoss(weight=0.01, alpha=0.5),
        "center_learned": lambda: CenterLoss(weight=0.01, alpha=None),
        "asoftmax": lambda: ASoftmaxLoss(m=4, lambda_base=5.0, lambda_min=5.0),
        "asoftmax_anneal": lambda: ASoftmaxLoss(),
        "cosface": lambda: CosFaceLoss(),
        "coco": lambda: COCOLoss(),
        "lgm": lambda: LGMLoss(),
    }
    loss = losses[name]()
    if isinstance(loss, TaskLoss):
        loss.bind(XI * NUM_CLASSES if isinstance(loss, MCLoss) else EMB_DIM, NUM_CLASSES)
    return loss


def outputs_for(loss: nn.Module, out: dict[str, Tensor]) -> dict[str, Tensor]:
    if isinstance(loss, MCLoss):  # MC-Loss reads the classifier on the MC feature map
        return {"features": out["features"], "logits": out["mc_logits"]}
    return {k: out[k] for k in ("embeddings", "logits")}


LOSS_NAMES = [
    "focal",
    "mc",
    "center",
    "center_learned",
    "asoftmax",
    "asoftmax_anneal",
    "cosface",
    "coco",
    "lgm",
]


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_loss_decreases_on_separable_toy_problem(name: str) -> None:
    torch.manual_seed(0)
    x, y = toy_data()
    net, loss = ToyNet(), make_loss(name)
    opt = torch.optim.SGD(list(net.parameters()) + list(loss.parameters()), lr=0.05, momentum=0.9)

    def measure() -> float:
        loss.eval()  # MC: no random mask; Center: no centre update; A-Softmax: no lambda step
        with torch.no_grad():
            value = compute_loss(loss, outputs_for(loss, net(x)), y)["loss"].item()
        loss.train()
        return value

    before = measure()
    for _ in range(50):
        value = compute_loss(loss, outputs_for(loss, net(x)), y)["loss"]
        assert torch.isfinite(value)
        opt.zero_grad()
        value.backward()
        opt.step()
    after = measure()
    assert after < 0.25 * before, f"{name}: {before:.4f} -> {after:.4f}"
    # and the scores the metrics use classify the (separable) training data
    scores = loss.predict(outputs_for(loss, net(x))) if isinstance(loss, TaskLoss) else net(x)["logits"]
    assert (scores.argmax(1) == y).float().mean() >= 0.9


# -------------------------------------------------------------------------------------- (c) MC-Loss
def test_mcloss_diversity_range_and_extremes() -> None:
    loss = MCLoss(channels_per_class=3)
    torch.manual_seed(0)
    for scale in (0.1, 1.0, 10.0):
        div = loss.diversity(scale * torch.randn(4, 3 * 5, 3, 3), 5).item()
        assert 0.0 <= div <= 1.0 - 1.0 / 3 + 1e-6
    # identical maps in a group -> CCMP sums to 1 -> the upper bound 1 - 1/xi
    assert loss.diversity(torch.ones(2, 15, 4, 4), 5).item() == pytest.approx(1 - 1 / 3, abs=1e-6)
    # the three channels of a group peak at three different positions -> about 0
    peaked = torch.zeros(2, 15, 2, 2)
    for c in range(15):
        peaked.view(2, 15, 4)[:, c, c % 3] = 50.0
    assert loss.diversity(peaked, 5).item() == pytest.approx(0.0, abs=1e-6)


def test_mcloss_mask_keeps_exactly_mask_keep() -> None:
    for xi, keep in ((3, 2), (4, 1), (5, 3)):
        loss = MCLoss(channels_per_class=xi, mask_keep=keep)
        masks = [loss.make_mask(200) for _ in range(3)]
        for mask in masks:
            assert mask.shape == (200, xi)
            assert set(mask.unique().tolist()) <= {0.0, 1.0}
            assert (mask.sum(1) == keep).all()
        assert not torch.equal(masks[0], masks[1])  # regenerated every call
        # every channel position is dropped somewhere (random, not a fixed pattern)
        assert (masks[0].sum(0) < 200).all()


def test_mcloss_wrong_channel_count_is_a_clear_error() -> None:
    loss = MCLoss(channels_per_class=3)
    loss.bind(4096, 200)  # the embedding width (VGG's pre-logits) need not be the feature-map width
    outputs = {"features": torch.rand(2, 512, 4, 4), "logits": torch.randn(2, 200)}
    with pytest.raises(
        ValueError, match=r"3 x 200 = 600 channels, but the feature map has 512.*mc_channels_per_class: 3"
    ):
        loss(outputs, torch.tensor([0, 1]))
    loss.eval()  # also in eval mode (Lightning's sanity check runs validation first)
    with pytest.raises(ValueError, match=r"resnet18_mc"):
        loss(outputs, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="feature map"):
        loss({"features": torch.rand(2, 16, 600), "logits": torch.randn(2, 200)}, torch.tensor([0, 1]))
    with pytest.raises(KeyError, match="features"):
        loss({"logits": torch.randn(2, 200)}, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="mask_keep"):
        MCLoss(channels_per_class=3, mask_keep=4)


def test_mcloss_600_channel_cub_shape() -> None:
    loss = MCLoss()
    loss.bind(600, 200)
    feats = torch.rand(2, 600, 14, 14, requires_grad=True)
    out = loss({"features": feats, "logits": torch.randn(2, 200)}, torch.tensor([3, 199]))
    out["loss"].backward()
    assert torch.isfinite(feats.grad).all() and feats.grad.abs().sum() > 0
    assert set(out) == {"loss", "ce", "dis", "div"}


# ------------------------------------------------------------------------------- (d) owned parameters
OWNING = {
    "asoftmax": (ASoftmaxLoss, "weight"),
    "cosface": (CosFaceLoss, "weight"),
    "coco": (COCOLoss, "weight"),
    "lgm": (LGMLoss, "means"),
    "center_learned": (lambda: CenterLoss(alpha=None), "centers"),
}


@pytest.mark.parametrize("name", list(OWNING))
def test_bind_creates_parameters_and_predict_shape(name: str) -> None:
    factory, attr = OWNING[name]
    loss = factory()
    assert list(loss.parameters()) == []
    outputs = {"embeddings": torch.randn(5, 7), "logits": torch.randn(5, 11)}
    with pytest.raises(RuntimeError, match="bind"):
        loss(outputs, torch.zeros(5, dtype=torch.long))
    loss.bind(7, 11)
    params = dict(loss.named_parameters())
    assert list(params) == [attr] and params[attr].shape == (11, 7)
    assert loss.predict(outputs).shape == (5, 11)
    with pytest.raises(ValueError, match="num_features=7"):
        loss(
            {"embeddings": torch.randn(5, 8), "logits": torch.randn(5, 11)}, torch.zeros(5, dtype=torch.long)
        )
    with pytest.raises(ValueError, match="num_features"):
        factory().bind(0, 11)
    # the loss's parameters receive gradients
    compute_loss(loss, outputs, torch.arange(5))["loss"].backward()
    assert params[attr].grad is not None and params[attr].grad.abs().sum() > 0


def test_bind_on_meta_device() -> None:
    """The lead's YAML tests build the task on the meta device; bind() must not touch data there."""
    with torch.device("meta"):
        for name in OWNING:
            loss = OWNING[name][0]()
            loss.bind(512, 200)
            assert all(p.device.type == "meta" for p in loss.parameters())


# ------------------------------------------------------------------ compute_loss, bf16, edge gradients
ALL_TASK_LOSSES = ["mc", "center", "center_learned", "asoftmax", "asoftmax_anneal", "cosface", "coco", "lgm"]


@pytest.mark.parametrize("name", ALL_TASK_LOSSES + ["focal"])
def test_fp32_maths_under_bf16_autocast(name: str) -> None:
    torch.manual_seed(0)
    x, y = toy_data()
    net, loss = ToyNet(), make_loss(name)
    loss.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = outputs_for(loss, net(x))
        assert out["logits"].dtype == torch.bfloat16
        low = compute_loss(loss, out, y)
    ref = compute_loss(loss, {k: v.detach().float() for k, v in out.items()}, y)
    assert low["loss"].dtype == torch.float32
    # same bf16 inputs, maths in fp32 either way -> equal up to fp32 rounding
    assert low["loss"].item() == pytest.approx(ref["loss"].item(), rel=1e-5)
    low["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", ["asoftmax", "cosface", "coco", "lgm"])
def test_predict_is_fp32_under_autocast(name: str) -> None:
    loss = make_loss(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        scores = loss.predict({"embeddings": torch.randn(3, EMB_DIM).bfloat16()})
    assert scores.dtype == torch.float32 and scores.shape == (3, NUM_CLASSES)


@pytest.mark.parametrize("name", ["asoftmax", "asoftmax_anneal", "cosface", "coco", "lgm"])
def test_finite_gradients_at_degenerate_angles(name: str) -> None:
    loss = make_loss(name).train()
    w = dict(loss.named_parameters())
    row = next(iter(w.values()))[1].detach()
    # embedding on its class direction (cos = 1; the L-GM mean itself: distance 0), exactly opposite
    # (cos = -1), and zero
    emb = torch.stack([3 * row, row, -2 * row, torch.zeros_like(row)]).requires_grad_(True)
    value = compute_loss(loss, {"embeddings": emb}, torch.tensor([1, 1, 1, 0]))["loss"]
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(emb.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in loss.parameters())


@pytest.mark.parametrize("name", ALL_TASK_LOSSES)
def test_compute_loss_dispatch(name: str) -> None:
    torch.manual_seed(0)
    x, y = toy_data()
    net, loss = ToyNet(), make_loss(name)
    loss.eval()
    out = outputs_for(loss, net(x))
    assert loss.requires <= set(out)
    direct = loss(out, y)
    via = compute_loss(loss, out, y)
    assert set(via) == set(direct) and "loss" in via
    assert via["loss"].item() == pytest.approx(direct["loss"].item(), rel=1e-6)
    assert all(v.ndim == 0 for v in via.values())


def test_focal_through_compute_loss_and_edge_cases() -> None:
    logits = torch.tensor([[30.0, -30.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    out = compute_loss(FocalLoss(gamma=0.5), {"logits": logits}, torch.tensor([0, 1]))
    out["loss"].backward()  # p_t = 1 for the first sample: gamma < 1 must not give inf/nan gradients
    assert torch.isfinite(logits.grad).all()
    assert out["loss"].item() == pytest.approx(-((2 / 3) ** 0.5) * math.log(1 / 3) / 2, rel=1e-4)
    with pytest.raises(ValueError, match="per-class alpha"):
        FocalLoss(alpha=[1.0, 2.0])(torch.zeros(2, 3), torch.tensor([0, 1]))


# ----------------------------------------------------------------------------------- with the real task
def test_package_exports_every_loss() -> None:
    import lightning_modules.losses as package

    for cls in (FocalLoss, MCLoss, CenterLoss, ASoftmaxLoss, CosFaceLoss, COCOLoss, LGMLoss):
        assert getattr(package, cls.__name__) is cls


@pytest.mark.parametrize(
    ("backbone", "name"),
    [("resnet18_mc", "mc"), ("resnet18", "center"), ("resnet18", "asoftmax"), ("resnet18", "lgm")],
)
def test_one_step_inside_classification_task(backbone: str, name: str) -> None:
    """bind() through the task, the loss's parameters belong to the task, gradients reach them."""
    task_module = pytest.importorskip("lightning_modules.task")
    losses = {
        "mc": MCLoss(),
        "center": CenterLoss(alpha=None),
        "asoftmax": ASoftmaxLoss(),
        "lgm": LGMLoss(),
    }
    loss = losses[name]
    task = task_module.ClassificationTask(backbone=backbone, num_classes=3, loss=loss, metrics=["acc1"])
    own = {f"loss.{n}" for n, _ in loss.named_parameters()}
    assert own <= {n for n, _ in task.named_parameters()}
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    outputs = task.forward_outputs(x)
    result = compute_loss(task.loss, outputs, y)
    result["loss"].backward()
    assert torch.isfinite(result["loss"])
    assert task.predict_logits(outputs).shape == (2, 3)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in loss.parameters())
