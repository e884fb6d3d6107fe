"""PDB's mechanism on tiny models and data where the answer is known: the stamp and the label inversion,
batch independence at inference, the defensive set and its augmentation, and the saved model loaded back."""

from pathlib import Path

import pytest
import torch

from eigenguard import train
from eigenguard.analysis.run_loading import load_run
from eigenguard.defenses import create_defense
from eigenguard.defenses.pdb import PDB, DefensiveStamp, LabelShift, per_class_choice, rotate
from eigenguard.errors import EigenguardError
from eigenguard.models import create_model
from tests.test_defenses import defended, tiny_context, tiny_dataset


def test_label_shift_inverts_h_at_inference_and_passes_through_in_training() -> None:
    k, shift = 10, 3
    shifted = LabelShift(shift).eval()
    for y in range(k):
        logits = torch.zeros(1, k)
        logits[0, (y + shift) % k] = 1.0  # the model answers h(y) = (y + shift) mod K
        assert shifted(logits).argmax(1).item() == y
    logits = torch.randn(4, k)
    assert torch.equal(shifted.train()(logits), logits)


def test_stamp_pastes_its_value_at_inference_only() -> None:
    stamp = DefensiveStamp(channels=3, size=2)
    stamp.value.copy_(torch.tensor([5.0, 6.0, 7.0]))
    x = torch.randn(4, 3, 6, 6)
    assert torch.equal(stamp.train()(x), x)
    out = stamp.eval()(x)
    assert torch.equal(out[:, :, :2, :2], torch.tensor([5.0, 6.0, 7.0])[None, :, None, None].expand(4, 3, 2, 2))
    outside = torch.ones(6, 6, dtype=torch.bool)
    outside[:2, :2] = False
    assert torch.equal(out[:, :, outside], x[:, :, outside])
    assert not torch.equal(x[:, :, :2, :2], out[:, :, :2, :2])  # the input itself is left alone


def test_pdb_model_is_batch_independent_at_inference() -> None:
    model = create_model("resnet18", in_channels=1, num_classes=4, width=0.0625)
    PDB(size=2).rebuild(model)
    assert isinstance(model.on_input, DefensiveStamp) and isinstance(model.on_output, LabelShift)
    model.on_input.value.fill_(3.0)
    model.eval()
    x = torch.randn(6, 1, 8, 8)
    together = model(x)
    alone = torch.cat([model(x[i : i + 1]) for i in range(6)])
    assert torch.allclose(together, alone, atol=1e-5)
    # the stamp decides: inputs that differ only under it give the same logits
    y = x.clone()
    y[:, :, :2, :2] = torch.randn(6, 1, 2, 2)
    assert torch.allclose(model(y), together, atol=1e-6)


def test_defensive_set_is_balanced_over_the_given_labels() -> None:
    labels = torch.arange(100) % 4
    chosen = per_class_choice(labels, 20, 4, torch.Generator().manual_seed(0))
    assert len(chosen) == 20 and len(set(chosen.tolist())) == 20
    assert torch.equal(torch.bincount(labels[chosen], minlength=4), torch.full((4,), 5))
    few = torch.tensor([0] * 50 + [1] * 2)
    assert torch.bincount(few[per_class_choice(few, 20, 2, torch.Generator().manual_seed(0))]).tolist() == [10, 2]


def test_defensive_augmentation_stamps_then_scales_and_rotates() -> None:
    x = torch.full((8, 1, 8, 8), 0.25)
    plain = PDB(size=3, value=2.0, scale_p=0.0, rotate_p=0.0).augment_defensive(x, torch.Generator().manual_seed(0))
    assert (plain[:, :, :3, :3] == 2.0).all() and (plain[:, :, 3:, :] == 0.25).all()
    scaled = PDB(size=3, value=2.0, scale_p=1.0, rotate_p=0.0).augment_defensive(x, torch.Generator().manual_seed(0))
    factor = scaled[:, 0, 0, 0] / 2.0
    assert ((factor >= 0.5) & (factor <= 1.0)).all()
    assert torch.allclose(scaled[:, 0, 5, 5], 0.25 * factor)  # the image and its stamp scale together
    quarter = rotate(plain[:1], torch.tensor([90.0]))
    assert (quarter[0, 0, -3:, :3] == 2.0).all()  # a quarter turn takes the top-left square to the bottom-left


def test_pdb_options_are_checked() -> None:
    for bad in ({"ratio": 0}, {"ratio": 1.5}, {"repeat": 0}, {"size": 0}, {"shift": 0}, {"value": float("inf")},
                {"scale_p": 2.0}, {"rotate_degrees": -1.0}):  # fmt: skip
        with pytest.raises(EigenguardError, match=f"option {next(iter(bad))} = .* for defense 'pdb'; allowed: "):
            create_defense("pdb", **bad)


def test_pdb_trains_on_the_union_and_reports_its_defensive_set() -> None:
    ctx = tiny_context(tiny_dataset(64), tiny_dataset(32, seed=1), poisoned=torch.tensor([0, 1, 2, 3]))
    model, report = PDB(ratio=0.25, repeat=2, size=2).run(ctx)
    assert report["defensive_images"] == 16 and report["defensive_copies"] == 32
    assert 0 <= report["defensive_poisoned"] <= 4
    assert ctx.trainer.images_trained == 64 + 32 - (64 + 32) % 16  # the union, last partial batch dropped
    assert isinstance(model.on_input, DefensiveStamp)
    assert torch.allclose(model.on_input.value, torch.tensor([(2.0 - 0.5) / 0.5]))


def test_pdb_draws_from_the_defenders_clean_images_when_asked() -> None:
    clean = tiny_dataset(40, seed=1)
    clean.images[:, :, -1, -1] = 7  # marks the clean pool's images
    ctx = tiny_context(tiny_dataset(64), clean, poisoned=torch.tensor([0, 1, 2, 3]))
    assert PDB(source="clean").needs_clean_pool and not PDB().needs_clean_pool
    seen = []
    fit = ctx.trainer.fit
    ctx.trainer.fit = lambda model, data, **kw: seen.append(data) or fit(model, data, **kw)  # type: ignore[method-assign]
    _, report = PDB(ratio=0.5, repeat=1, size=2, source="clean").run(ctx)
    assert report["defensive_images"] == 32 and report["defensive_poisoned"] == 0  # 8 a class, of 10 a class
    (union,) = seen
    assert len(union) == 64 + 32 and (union.images[64:, :, -1, -1] == 7).all()
    true_class = ((union.images[64:].float().mean((1, 2, 3)) - 30) / 60).round().long()  # class c: 60c + noise
    assert torch.equal(union.labels[64:], (true_class + 1) % 4)


def test_pdb_run_loads_back_with_its_stamp(mnist_root: Path, tmp_path: Path) -> None:
    result = train(defended(mnist_root, tmp_path / "run", tmp_path / "cache", "pdb", {"size": 5}), progress=False)
    loaded = load_run(tmp_path / "run", data_root=str(mnist_root))
    assert isinstance(loaded.model.on_input, DefensiveStamp) and loaded.model.on_input.size == 5
    x = loaded.normalize(loaded.test.images[:16])
    result.model.eval()
    assert torch.equal(loaded.model(x), result.model(x))
    assert result.metrics["defense_report"]["defensive_images"] > 0
