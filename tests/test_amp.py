"""The GPU code paths, run on a CPU: bf16 autocast (which CPUs support) and channels_last memory, through
the training loop, evaluation and the guard's float32 island, so that a CUDA run meets no untested branch."""

import torch
from torch import nn

from eigenguard.data.image_dataset import ImageDataset
from eigenguard.data.transforms import Normalize
from eigenguard.guard import EigenGuard, find_guards, guard, inference_mode
from eigenguard.guard.spectral_filter import filter_jointly
from eigenguard.models import create_model
from eigenguard.training.evaluate import eval_logits
from eigenguard.training.loop import train_one_epoch


def test_guard_computes_in_float32_inside_bf16_autocast() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 4, 5, 5, generator=g)
    conv = nn.Conv2d(4, 4, 3, padding=1)
    module = EigenGuard(k=3).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = conv(x)
        assert features.dtype == torch.bfloat16
        out = module(features)
    assert out.dtype == torch.bfloat16  # back to the surrounding precision
    assert module.history.dtype == torch.float32  # His is never stored in bf16
    # the filter itself ran in float32 on the bf16 values: equal to the float32 filter of those values
    flat = features.float().flatten(1)
    expected = filter_jointly(flat, flat, k=3)
    assert torch.allclose(out.float().flatten(1), expected.to(torch.bfloat16).float(), rtol=0, atol=0)
    module.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for mode in ("per-sample", "batch"):
            with inference_mode([module], mode):
                assert module(conv(x)).dtype == torch.bfloat16


def test_guarded_epoch_under_autocast_and_channels_last() -> None:
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (96, 1, 16, 16), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (96,), generator=g)
    torch.manual_seed(0)
    model = create_model("resnet18", in_channels=1, num_classes=10, width=0.125)
    module = guard(model, at="stage1", k=4)
    model = model.to(memory_format=torch.channels_last)
    normalize = Normalize((0.5,), (0.25,), torch.device("cpu"))
    anchors = normalize(images[:8])
    module.anchor_rows = len(anchors)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)
    stats = train_one_epoch(
        model, optimizer, scheduler, images, labels, batch_size=32, normalize=normalize,
        generator=torch.Generator().manual_seed(2), amp=True, extra_inputs=anchors,
    )  # fmt: skip
    module.anchor_rows = 0
    assert torch.isfinite(torch.tensor(stats["train_loss"]))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert module.history.dtype == torch.float32 and torch.isfinite(module.history).all()
    test = ImageDataset(images[:40], labels[:40], [str(c) for c in range(10)])
    for mode in ("per-sample", "batch"):
        with inference_mode(find_guards(model), mode):
            logits = eval_logits(model, test, normalize, batch_size=16, amp=True)
            plain = eval_logits(model, test, normalize, batch_size=16, amp=False)
        assert logits.dtype == torch.float32 and logits.shape == (40, 10) and torch.isfinite(logits).all()
        assert (logits.argmax(1) == plain.argmax(1)).float().mean() >= 0.8  # bf16 moves a few ties at most
