"""EigenGuard: the three numerical paths agree, degenerate inputs stay finite, inference is honest."""

from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from eigenguard import TrainConfig, create_model, train
from eigenguard.defenses.eigenguard import EigenGuardDefense
from eigenguard.errors import EigenguardError
from eigenguard.guard import (
    EigenGuard,
    GuardOptions,
    filter_each_against,
    filter_rows_gram,
    filter_rows_svd,
    find_guards,
    guard,
)
from eigenguard.guard.safe_eigh import safe_eigh
from eigenguard.guard.spectral_filter import SPECTRA, filter_jointly
from eigenguard.models import MODELS
from eigenguard.training.guarded import pick_by_loss

D64 = torch.float64


def inputs(n: int = 24, d: int = 60) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "random": torch.randn(n, d, generator=g, dtype=D64),
        "low-rank": torch.randn(n, 3, generator=g, dtype=D64) @ torch.randn(3, d, generator=g, dtype=D64),
        "duplicated-rows": torch.randn(1, d, generator=g, dtype=D64).repeat(n, 1),
        "all-zero": torch.zeros(n, d, dtype=D64),
        "relu-features": torch.relu(torch.randn(n, d, generator=g, dtype=D64)) + 0.5,
    }


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize("name", list(inputs()))
@pytest.mark.parametrize("k", [1, 5, 20, 100])
@pytest.mark.parametrize("spectrum", SPECTRA)
def test_gram_path_matches_literal_svd(name: str, k: int, spectrum: str) -> None:
    feat = inputs()[name]
    for rows in (1, 12):
        ref = filter_rows_svd(feat, rows, k=k, spectrum=spectrum)
        for grad in ("constant", "full"):
            fast = filter_rows_gram(feat, rows, k=k, grad=grad, spectrum=spectrum)
            assert torch.isfinite(fast).all()
            assert rel_err(fast, ref) < 1e-4 or ref.abs().max() == fast.abs().max() == 0


def test_filter_definition_on_a_known_spectrum() -> None:
    # feat = U diag(s) V^T with chosen s: the top k rows must come out at sigma_k, the rest at 0.001 sigma_k.
    g = torch.Generator().manual_seed(1)
    u, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=D64))
    v, _ = torch.linalg.qr(torch.randn(30, 8, generator=g, dtype=D64))
    s = torch.tensor([9.0, 7, 5, 4, 3, 2, 1, 0.5], dtype=D64)
    feat = u @ torch.diag(s) @ v.T
    out = filter_rows_gram(feat, 8, k=3)
    s_out = torch.linalg.svdvals(out)
    expected = torch.tensor([5.0, 5, 5] + [0.005] * 5, dtype=D64)
    assert torch.allclose(s_out, expected, rtol=1e-8)


def test_spectrum_variants_separate_the_two_halves() -> None:
    # the same known spectrum: "equalize" caps the top k at sigma_k and keeps the tail, "shrink" keeps the top
    # k and shrinks the tail; floor=1 with "shrink" and k = n leave the features as they are.
    g = torch.Generator().manual_seed(1)
    u, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=D64))
    v, _ = torch.linalg.qr(torch.randn(30, 8, generator=g, dtype=D64))
    s = torch.tensor([9.0, 7, 5, 4, 3, 2, 1, 0.5], dtype=D64)
    feat = u @ torch.diag(s) @ v.T
    equalized = torch.linalg.svdvals(filter_rows_gram(feat, 8, k=3, spectrum="equalize"))
    assert torch.allclose(equalized, torch.tensor([5.0, 5, 5, 4, 3, 2, 1, 0.5], dtype=D64), rtol=1e-8)
    shrunk = torch.linalg.svdvals(filter_rows_gram(feat, 8, k=3, floor=0.01, spectrum="shrink"))
    assert torch.allclose(shrunk, torch.tensor([9.0, 7, 5] + [0.05] * 5, dtype=D64), rtol=1e-8)
    assert torch.allclose(filter_rows_gram(feat, 8, k=8, spectrum="shrink"), feat, atol=1e-10)
    assert torch.allclose(filter_rows_gram(feat, 8, k=3, floor=0.1, spectrum="equalize"),
                          filter_rows_gram(feat, 8, k=3, floor=0.9, spectrum="equalize"))  # fmt: skip
    with pytest.raises(ValueError, match="unknown spectrum"):
        filter_rows_gram(feat, 8, k=3, spectrum="flat")
    # each variant is the paper's filter where the half it leaves out has nothing to do: "shrink" when the
    # top k are already equal, "equalize" when the tail already sits at floor * sigma_k
    flat_top = u @ torch.diag(torch.tensor([5.0, 5, 5, 4, 3, 2, 1, 0.5], dtype=D64)) @ v.T
    assert rel_err(filter_rows_gram(flat_top, 8, k=3, spectrum="shrink"), filter_rows_gram(flat_top, 8, k=3)) < 1e-10
    low_tail = u @ torch.diag(torch.tensor([9.0, 7, 5] + [0.005] * 5, dtype=D64)) @ v.T
    assert rel_err(filter_rows_gram(low_tail, 8, k=3, spectrum="equalize"), filter_rows_gram(low_tail, 8, k=3)) < 1e-8


@pytest.mark.parametrize("grad", ["constant", "full"])
def test_joint_filter_with_a_context_equals_the_concatenated_one(grad: str) -> None:
    # the guard's split product (context rows without gradient) is the same function and the same gradient
    g = torch.Generator().manual_seed(6)
    context = torch.randn(14, 40, generator=g, dtype=D64)
    x = torch.randn(6, 40, generator=g, dtype=D64, requires_grad=True)
    w = torch.randn(6, 40, generator=g, dtype=D64)
    joint = filter_jointly(context, x, k=4, grad=grad)
    whole = filter_rows_gram(torch.cat([context, x]), 6, k=4, grad=grad)
    assert rel_err(joint, whole) < 1e-12
    (g_joint,) = torch.autograd.grad((joint * w).sum(), x)
    (g_whole,) = torch.autograd.grad((whole * w).sum(), x)
    assert rel_err(g_joint, g_whole) < 1e-10


def test_rank_below_k_uses_sigma_r_and_zero_maps_to_zero() -> None:
    feat = inputs()["low-rank"]  # rank 3
    out = filter_rows_gram(feat, feat.shape[0], k=20)
    s_in, s_out = torch.linalg.svdvals(feat), torch.linalg.svdvals(out)
    assert torch.allclose(s_out[:3], s_in[2].expand(3), rtol=1e-8)
    assert s_out[3:].max() < 1e-6 * s_out[0]
    assert filter_rows_gram(torch.zeros(4, 10, dtype=D64), 4, k=2).abs().max() == 0


@pytest.mark.parametrize("name", list(inputs()))
@pytest.mark.parametrize("grad", ["constant", "full"])
@pytest.mark.parametrize("spectrum", SPECTRA)
def test_gradients_finite_on_degenerate_inputs(name: str, grad: str, spectrum: str) -> None:
    x = inputs()[name].clone().requires_grad_(True)
    history = inputs()[name].flip(0)
    out = filter_rows_gram(torch.cat([history, x]), x.shape[0], k=5, grad=grad, spectrum=spectrum)
    (g,) = torch.autograd.grad((out * torch.linspace(-1, 1, out.numel(), dtype=D64).view_as(out)).sum(), x)
    assert torch.isfinite(out).all() and torch.isfinite(g).all()


def test_full_gradient_equals_autograd_through_the_svd() -> None:
    g = torch.Generator().manual_seed(2)
    history = torch.randn(10, 40, generator=g, dtype=D64)
    x = torch.randn(10, 40, generator=g, dtype=D64, requires_grad=True)
    w = torch.randn(10, 40, generator=g, dtype=D64)
    (g_svd,) = torch.autograd.grad((filter_rows_svd(torch.cat([history, x]), 10, k=4) * w).sum(), x)
    (g_full,) = torch.autograd.grad((filter_rows_gram(torch.cat([history, x]), 10, k=4, grad="full") * w).sum(), x)
    (g_const,) = torch.autograd.grad((filter_rows_gram(torch.cat([history, x]), 10, k=4) * w).sum(), x)
    assert rel_err(g_full, g_svd) < 1e-8
    assert rel_err(g_const, g_svd) > 1e-3  # a different (cheaper) gradient, by design


def test_safe_eigh_backward_matches_torch_where_defined() -> None:
    a = torch.randn(6, 6, dtype=D64)
    a = (a + a.T).requires_grad_(True)
    w1, w2 = torch.randn(6, dtype=D64), torch.randn(6, 6, dtype=D64)

    def loss(fn):  # sign-invariant function of the eigenvectors
        values, vectors = fn(a)
        return (values * w1).sum() + ((vectors @ torch.diag(values) @ vectors.T) * w2).sum() + (vectors**2 * w2).sum()

    (g_torch,) = torch.autograd.grad(loss(torch.linalg.eigh), a)
    (g_safe,) = torch.autograd.grad(loss(safe_eigh), a)
    assert torch.allclose(g_safe, 0.5 * (g_torch + g_torch.T), atol=1e-10)


@pytest.mark.parametrize("spectrum", SPECTRA)
def test_per_sample_equals_one_image_at_a_time_and_is_batch_independent(spectrum: str) -> None:
    g = torch.Generator().manual_seed(3)
    history = torch.randn(16, 50, generator=g, dtype=D64)
    x = torch.randn(9, 50, generator=g, dtype=D64)
    together = filter_each_against(history, x, k=5, spectrum=spectrum)
    alone = torch.cat(
        [filter_rows_svd(torch.cat([history, x[i : i + 1]]), 1, k=5, spectrum=spectrum) for i in range(9)]
    )
    assert rel_err(together, alone) < 1e-8
    perm = torch.randperm(9, generator=g)
    assert torch.allclose(filter_each_against(history, x[perm], k=5, spectrum=spectrum), together[perm], atol=1e-12)
    assert torch.allclose(filter_each_against(history, x[:1], k=5, spectrum=spectrum), together[:1], atol=1e-12)


@pytest.mark.parametrize("spectrum", SPECTRA)
def test_per_sample_with_gradient_is_the_same_filter(spectrum: str) -> None:
    # the per-sample training path: the inference values, gradients only into x, the full gradient exact
    g = torch.Generator().manual_seed(7)
    history = torch.randn(12, 30, generator=g, dtype=D64)
    x = torch.randn(5, 30, generator=g, dtype=D64, requires_grad=True)
    reference = filter_each_against(history, x, k=4, spectrum=spectrum)
    assert not reference.requires_grad
    for grad in ("constant", "full"):
        out = filter_each_against(history, x, k=4, spectrum=spectrum, grad=grad)
        assert rel_err(out, reference) < 1e-12
        (gx,) = torch.autograd.grad(out.sum(), x)
        assert torch.isfinite(gx).all() and gx.abs().max() > 0
    alone = lambda xi: filter_rows_svd(torch.cat([history, xi]), 1, k=4, spectrum=spectrum)  # noqa: E731
    w = torch.randn(5, 30, generator=g, dtype=D64)
    (g_full,) = torch.autograd.grad((filter_each_against(history, x, k=4, spectrum=spectrum, grad="full") * w).sum(), x)
    (g_svd,) = torch.autograd.grad(sum((alone(x[i : i + 1]) * w[i]).sum() for i in range(5)), x)
    assert rel_err(g_full, g_svd) < 1e-8
    degenerate = inputs(5, 30)["duplicated-rows"].clone().requires_grad_(True)
    (g_deg,) = torch.autograd.grad(filter_each_against(history, degenerate, k=4, grad="full").sum(), degenerate)
    assert torch.isfinite(g_deg).all()


def test_per_sample_training_matches_per_sample_inference() -> None:
    # training="per-sample": each training image is filtered against His as it was before the step (what a
    # test image meets at inference), independently of the rest of the batch; His is updated afterwards.
    g = torch.Generator().manual_seed(8)
    module = EigenGuard(k=3, training="per-sample").train()
    x1, x2 = torch.randn(6, 2, 3, 3, generator=g), torch.randn(6, 2, 3, 3, generator=g)
    module(x1)
    assert torch.allclose(module.history, x1.flatten(1))  # the first step: His starts from the batch, once
    before = module.history.clone()
    out = module(x2)
    # training goes through the dense float32 eigh (it needs gradients), inference through the secular
    # solver, which is the more exact of the two (tests/test_arrowhead.py): they agree to float32 accuracy
    expected = filter_each_against(before, x2.flatten(1), k=3).view_as(x2)
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.allclose(module.history, 0.7 * before + 0.3 * x2.flatten(1))
    module.history.copy_(before)
    swapped = x2.clone()
    swapped[1:] = torch.randn(5, 2, 3, 3, generator=g)
    assert torch.allclose(module(swapped)[:1], out[:1], atol=1e-6)  # batch independence in training
    module.eval()
    module.history.copy_(before)
    assert torch.allclose(module(x2), out, atol=1e-5)  # = per-sample inference against the same His
    anchored = EigenGuard(k=3, training="per-sample").train()
    anchored(x1)
    anchored.anchor_rows = 2
    xa = torch.cat([x2, x1[:2]]).requires_grad_(True)
    out = anchored(xa)
    context = torch.cat([x1.flatten(1), x1[:2].flatten(1)])
    assert out.shape == x2.shape
    assert torch.allclose(out, filter_each_against(context, x2.flatten(1), k=3).view_as(x2), atol=1e-5)
    out.sum().backward()
    assert xa.grad[6:].abs().max() == 0 and xa.grad[:6].abs().max() > 0


def test_anchor_rules() -> None:
    losses = torch.tensor([0.5, 0.1, 0.9, 0.2, 0.05, 0.7, 0.3, 0.8, 0.6, 0.4])
    labels = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    assert sorted(pick_by_loss(losses, labels, 3, "lowest-loss").tolist()) == [1, 3, 4]
    assert sorted(pick_by_loss(losses, labels, 4, "lowest-loss-per-class").tolist()) == [1, 4, 6, 9]
    assert sorted(pick_by_loss(losses, labels, 5, "lowest-loss-per-class").tolist()) == [1, 3, 4, 6, 9]
    assert sorted(pick_by_loss(losses, labels, 2, "median-loss").tolist()) == [0, 9]  # ranks 5 and 6 of 10
    assert len(pick_by_loss(losses, labels, 50, "median-loss")) == 10
    assert EigenGuardDefense(anchors="clean").needs_clean_pool and not EigenGuardDefense().needs_clean_pool
    with pytest.raises(EigenguardError, match=r"anchors = 'best' for defense 'eigenguard'; allowed: lowest-loss \| "):
        EigenGuardDefense(anchors="best")
    with pytest.raises(EigenguardError, match=r"anchor_count = 0 for defense .eigenguard.; allowed: a whole number"):
        EigenGuardDefense(anchor_count=0)
    with pytest.raises(EigenguardError, match="spectrum = 'flat' for defense 'eigenguard'; allowed: paper"):
        EigenGuardDefense(spectrum="flat")
    with pytest.raises(EigenguardError, match="training = 'joint' for defense 'eigenguard'; allowed: batch"):
        EigenGuardDefense(training="joint")
    with pytest.raises(EigenguardError, match=r"ranking = 'eval' for defense 'eigenguard'; allowed: pass \| training"):
        EigenGuardDefense(ranking="eval")


def test_training_steps_record_each_samples_loss() -> None:
    from eigenguard.data.transforms import Normalize
    from eigenguard.training.loop import train_one_epoch

    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (100, 1, 12, 12), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (100,), generator=g)
    torch.manual_seed(0)
    model = create_model("resnet18", in_channels=1, num_classes=10, width=0.125)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)
    normalize = Normalize((0.5,), (0.25,), torch.device("cpu"))
    losses = torch.zeros(100)
    args = (model, optimizer, scheduler, images, labels)
    stats = train_one_epoch(
        *args, batch_size=32, normalize=normalize, generator=torch.Generator().manual_seed(1), sample_losses=losses
    )
    seen = torch.isfinite(losses)
    assert int(seen.sum()) == 96 and bool((losses[~seen] == float("inf")).all())  # the dropped batch: +inf
    assert losses[seen].mean().item() == pytest.approx(stats["train_loss"], rel=1e-5)  # the loss it trained on
    with pytest.raises(ValueError, match="cannot be combined"):
        train_one_epoch(
            *args, batch_size=32, normalize=normalize, generator=torch.Generator(), sample_losses=losses,
            loss_fn=lambda logits, y, x: logits.sum(),
        )  # fmt: skip


@pytest.mark.parametrize("ranking", ["pass", "training"])
def test_anchors_ranked_by_a_pass_or_by_the_training_losses(
    mnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ranking: str
) -> None:
    from eigenguard.training import guarded as defense_module

    passes, ranked = [], []
    real_pass, real_pick = defense_module.per_sample_loss, defense_module.pick_by_loss

    def counting_pass(*args, **kwargs):
        passes.append(1)
        return real_pass(*args, **kwargs)

    def recording_pick(losses, labels, count, rule):
        ranked.append(losses.clone())
        return real_pick(losses, labels, count, rule)

    monkeypatch.setattr(defense_module, "per_sample_loss", counting_pass)
    monkeypatch.setattr(defense_module, "pick_by_loss", recording_pick)
    config = TrainConfig(
        dataset="mnist", data_root=str(mnist_root), width=0.125, epochs=3, batch_size=64, device="cpu",
        attack="badnets", defense={"name": "eigenguard", "k": 5, "anchor_count": 16, "ranking": ranking},
        out=str(tmp_path / "g"), eval_every=3,
    )  # fmt: skip
    result = train(config, progress=False)
    assert len(ranked) == 2  # before epochs 2 and 3
    n = len(ranked[0])
    if ranking == "pass":
        assert len(passes) == 2 and all(torch.isfinite(r).all() for r in ranked)
    else:  # no pass: the losses of the previous epoch's steps, the dropped last batch unranked
        assert passes == [] and all(int(torch.isfinite(r).sum()) == n - n % 64 for r in ranked)
        assert not torch.equal(ranked[0], ranked[1])
        assert result.metrics["defense"]["ranking"] == "training"


def test_detached_anchors_run_apart_from_the_batch() -> None:
    from eigenguard.training.guarded import detached_features

    g = torch.Generator().manual_seed(6)
    batch, anchors = torch.randn(16, 1, 12, 12, generator=g), torch.randn(6, 1, 12, 12, generator=g)

    def model_and_guard() -> tuple[nn.Module, EigenGuard]:
        torch.manual_seed(0)
        model = create_model("resnet18", in_channels=1, num_classes=10, width=0.125)
        return model, guard(model, at="stage1", k=3)

    def stem_statistics(model: nn.Module) -> list[torch.Tensor]:
        layers = nn.ModuleList(model.stages_through("stage1"))
        return [b.running_mean.clone() for b in layers.modules() if isinstance(b, nn.BatchNorm2d)]

    alone, _ = model_and_guard()
    alone.train()(batch)
    joint, g_joint = model_and_guard()
    g_joint.anchor_rows = len(anchors)
    joint.train()(torch.cat([batch, anchors]))
    detached, g_detached = model_and_guard()
    source, seen, io = detached_features(detached, "stage1", anchors), [], []
    g_detached.anchor_source = lambda: seen.append(source()) or seen[-1]
    g_detached.register_forward_hook(lambda _m, inputs, output: io.append((inputs[0], output)))
    detached.train()(batch)
    assert all(m.training for m in detached.modules())  # the layers' mode is restored
    # what the model computes for the anchors at inference, at that step (stem and stage 1 unchanged since)
    expected = detached.eval().features(anchors, "stage1", through_point=False)
    detached.train()
    assert len(seen) == 1 and torch.equal(seen[0], expected) and not seen[0].requires_grad
    (guard_in, guard_out) = io[0]
    context = torch.cat([g_detached.history, expected.flatten(1)])
    assert torch.allclose(guard_out.flatten(1), filter_jointly(context, guard_in.flatten(1), k=3), atol=1e-5)
    # the batch's BatchNorm statistics are its own: as without anchors, unlike the joint pass
    for a, j, d in zip(stem_statistics(alone), stem_statistics(joint), stem_statistics(detached), strict=True):
        assert torch.allclose(a, d, atol=1e-6) and not torch.allclose(a, j, atol=1e-6)
    with pytest.raises(
        EigenguardError, match=r"anchor_features = 'frozen' for defense 'eigenguard'; allowed: joint \|"
    ):
        EigenGuardDefense(anchor_features="frozen")


def trained_guard(**options) -> EigenGuard:
    module = EigenGuard(k=4, **options).train()
    g = torch.Generator().manual_seed(4)
    for _ in range(3):
        module(torch.randn(8, 2, 3, 3, generator=g))
    return module.eval()


def test_module_inference_modes() -> None:
    module = trained_guard()
    g = torch.Generator().manual_seed(5)
    clean, triggered = torch.randn(6, 2, 3, 3, generator=g), torch.randn(6, 2, 3, 3, generator=g)
    history_before = module.history.clone()
    # per-sample (default): an image's output does not depend on the batch around it
    alone = module(clean[:1])
    mixed = module(torch.cat([clean[:1], triggered]))[:1]
    assert torch.allclose(alone, mixed, atol=1e-5)
    # batch (the paper's Algorithm 1): it does
    module.inference = "batch"
    assert not torch.allclose(module(clean[:1]), module(torch.cat([clean[:1], triggered]))[:1], atol=1e-3)
    assert torch.equal(module.history, history_before)  # eval never updates His


def test_history_initialisation_and_update() -> None:
    x1, x2 = torch.randn(4, 1, 2, 2), torch.randn(4, 1, 2, 2)
    first = EigenGuard(k=2, momentum=0.7, history_init="first").train()
    first(x1)
    assert torch.allclose(first.history, x1.flatten(1))
    first(x2)
    assert torch.allclose(first.history, 0.7 * x1.flatten(1) + 0.3 * x2.flatten(1))
    zeros = EigenGuard(k=2, momentum=0.7, history_init="zeros").train()
    zeros(x1)
    assert torch.allclose(zeros.history, 0.3 * x1.flatten(1))
    small = torch.randn(2, 1, 2, 2)
    before = zeros.history.clone()
    zeros(small)  # a smaller batch updates only the first rows
    assert torch.allclose(zeros.history[:2], 0.7 * before[:2] + 0.3 * small.flatten(1))
    assert torch.equal(zeros.history[2:], before[2:])
    with pytest.raises(EigenguardError, match="features of size"):
        zeros(torch.randn(4, 2, 2, 2))


def test_anchor_rows_join_the_decomposition_but_are_not_returned() -> None:
    module = EigenGuard(k=3).train()
    module.anchor_rows = 5
    x = torch.randn(13, 2, 3, 3, requires_grad=True)
    out = module(x)
    assert out.shape == (8, 2, 3, 3)
    assert module.history.shape == (8, 18)
    out.sum().backward()
    assert x.grad[8:].abs().max() == 0 and x.grad[:8].abs().max() > 0


def test_state_dict_round_trip() -> None:
    model = create_model("resnet18", in_channels=1, num_classes=10, width=0.125)
    guard(model, at="stage1", k=5)
    model.train()
    model(torch.randn(8, 1, 16, 16))
    state = model.state_dict()
    assert state["points.stage1.history"].shape == (8, 8 * 16 * 16)
    fresh = create_model("resnet18", in_channels=1, num_classes=10, width=0.125)
    guard(fresh, at="stage1", k=5)
    fresh.load_state_dict(state)
    model.eval()
    fresh.eval()
    x = torch.randn(3, 1, 16, 16)
    assert torch.equal(find_guards(fresh)[0].history, find_guards(model)[0].history)
    assert torch.allclose(fresh(x), model(x), atol=1e-6)


@pytest.mark.parametrize("name", MODELS.names())
def test_insertion_into_our_models(name: str) -> None:
    model = create_model(name, in_channels=3, num_classes=10, width=0.125)
    module = guard(model, at="stage1", k=4)
    assert model.points["stage1"] is module
    model.train()
    y = model(torch.randn(4, 3, 16, 16))
    y.sum().backward()
    assert y.shape == (4, 10) and module.history.shape[0] == 4
    model.eval()
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_insertion_into_torchvision_resnet18() -> None:
    model = torchvision.models.resnet18(num_classes=10)
    module = guard(model, at="layer1", k=4)
    assert find_guards(model) == [module]
    model.train()
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    assert module.history.shape == (4, 64 * 8 * 8)  # layer1 of torchvision's resnet18 at 32x32 input
    assert "eigenguard_layer1.history" in model.state_dict()
    with pytest.raises(EigenguardError, match="cannot place a guard at 'layer9'"):
        guard(model, at="layer9")
    with pytest.raises(EigenguardError, match="already placed"):
        guard(model, at="layer1")
    with pytest.raises(EigenguardError, match="container"):
        guard(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()), at="0")


def test_bad_options() -> None:
    for kwargs, pattern in (
        ({"k": 0}, "k = 0 for guard 'eigenguard'; allowed: a whole number >= 1"),
        ({"momentum": 1.0}, "momentum"),
        ({"history_init": "ones"}, "history_init = 'ones'"),
        ({"inference": "single"}, "inference 'single'"),
        ({"grad": "exact"}, "grad = 'exact'"),
    ):
        with pytest.raises(EigenguardError, match=pattern):
            EigenGuard(**kwargs)
    with pytest.raises(
        EigenguardError, match=r"spectrum = 'flat' for guard 'eigenguard'; allowed: paper \| equalize \|"
    ):
        GuardOptions(spectrum="flat")  # type: ignore[arg-type]


def test_guard_options_are_one_frozen_object_passed_whole() -> None:
    import dataclasses

    from eigenguard.defenses.eigenguard import EigenGuardDefense
    from eigenguard.models import create_model

    options = GuardOptions(k=7, spectrum="shrink")
    assert EigenGuard(options).options is options and EigenGuard(k=7, spectrum="shrink").options == options
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.k = 8  # type: ignore[misc]
    with pytest.raises(TypeError, match="not both"):
        EigenGuard(options, k=7)
    defense = EigenGuardDefense(k=7, spectrum="shrink", anchor_count=16)
    module = defense.rebuild(create_model("resnet18", in_channels=1, num_classes=10, width=0.125))
    assert module.options is defense.guard and defense.guard == options
    assert "k=7" in repr(module) and "spectrum=shrink" in repr(module)


@pytest.mark.parametrize(
    "options",
    [
        {"anchor_count": 16},
        {"anchors": "clean", "anchor_count": 16, "training": "per-sample", "spectrum": "shrink"},
        {"anchor_count": 16, "ranking": "training", "anchor_features": "detached"},
    ],
    ids=["paper", "variants", "fast-anchors"],
)
def test_guarded_pipeline_run(mnist_root: Path, tmp_path: Path, options: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    rows, forward = [], EigenGuard.forward

    def counting_forward(self: EigenGuard, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            rows.append((x.shape[0], self.anchor_rows, self.anchor_source is not None))
        return forward(self, x)

    monkeypatch.setattr(EigenGuard, "forward", counting_forward)
    config = TrainConfig(
        profile="quick",
        dataset="mnist",
        data_root=str(mnist_root),
        width=0.125,
        epochs=2,
        batch_size=64,
        train_subset=None,
        device="cpu",
        defense={"name": "eigenguard", "k": 5, **options},
        clean_samples=40,  # the tiny set's defense split holds 60
        out=str(tmp_path / "g"),
    )
    result = train(config, progress=False)
    detached = options.get("anchor_features") == "detached"
    with_anchors = [r for r in rows if r[1] or r[2]]  # epoch 2's steps
    assert with_anchors and all(r == ((64, 0, True) if detached else (80, 16, False)) for r in with_anchors)
    m = result.metrics
    assert m["protocol"] == "per-sample" and m["defense"]["name"] == "eigenguard"
    for key in ("acc", "asr", "acc_paper", "asr_paper"):
        assert 0.0 <= m[key] <= 1.0
    log = (tmp_path / "g" / "log.csv").read_text().splitlines()
    assert log[0].split(",")[5:10] == ["acc", "asr", "acc_paper", "asr_paper", "anchors_poisoned"]
    assert log[1].split(",")[9] == "" and log[2].split(",")[9] != ""  # anchors from epoch 2 on
    if options.get("anchors") == "clean":
        assert log[2].split(",")[9] == "0" and m["clean_images"] > 0
    from safetensors.torch import load_file

    assert load_file(tmp_path / "g" / "model.safetensors")["points.stage1.history"].shape == (64, 8 * 28 * 28)


def test_guard_config_errors() -> None:
    from eigenguard.pipeline import resolve

    with pytest.raises(EigenguardError, match="at 'stage9' is not an insertion point of resnet18"):
        resolve(TrainConfig(defense={"name": "eigenguard", "at": "stage9"}))
    with pytest.raises(EigenguardError, match="unknown defense"):
        resolve(TrainConfig(defense="strip"))


def test_k_is_bounded_by_the_rows_of_the_guards_matrix() -> None:
    """[His; batch; anchors] has 2 x batch_size + anchor_count rows; sigma_k past them is the last one."""
    from eigenguard.pipeline import resolve

    guard_only = {"name": "eigenguard", "anchors": "none"}
    assert resolve(TrainConfig(batch_size=16, defense={**guard_only, "k": 32})).defense.options["k"] == 32
    with pytest.raises(EigenguardError, match=r"k = 33: .* = 32 rows; allowed: 1..32"):
        resolve(TrainConfig(batch_size=16, defense={**guard_only, "k": 33}))
    resolve(TrainConfig(batch_size=16, defense={"name": "eigenguard", "k": 132, "anchor_count": 100}))
