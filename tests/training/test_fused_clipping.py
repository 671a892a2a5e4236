"""Gradient clipping with a fused AdamW under bf16-mixed (FusedOptimizerClipping)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn

from unigen.training.classifier_module import ClassifierModule
from unigen.training.clip_module import ClipModule
from unigen.training.optim import FusedOptimizerClipping
from unigen.training.unified_module import UnifiedModule


class RecordingAdamW(torch.optim.AdamW):
    """Fused AdamW that records the gradient norm the step sees (after Lightning's clipping)."""

    norms: list[float]

    def step(self, closure=None):
        loss = closure() if closure is not None else None
        grads = [p.grad for group in self.param_groups for p in group["params"]]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(g) for g in grads]))))
        super().step()
        return loss


class Plain(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(8, 8)
        self.norms: list[float] = []

    def training_step(self, batch, batch_idx):
        return (self.net(batch[0]) * 100.0).square().mean()  # large gradients: clipping matters

    def configure_optimizers(self):
        opt = RecordingAdamW(self.parameters(), lr=1e-3, fused=True)
        opt.norms = self.norms
        return opt

    def train_dataloader(self):
        inputs = torch.randn(8, 8, generator=torch.Generator().manual_seed(0))
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(inputs), batch_size=4)


class Clipped(FusedOptimizerClipping, Plain):
    pass


def fit(module: L.LightningModule, clip: float, algorithm: str = "norm") -> None:
    L.Trainer(accelerator="cpu", precision="bf16-mixed", max_steps=2, gradient_clip_val=clip,
              gradient_clip_algorithm=algorithm, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False).fit(module)


def test_lightning_alone_refuses_to_clip_a_fused_optimizer():
    with pytest.raises(RuntimeError, match="does not allow for gradient clipping"):
        fit(Plain(), clip=0.5)


@pytest.mark.parametrize("algorithm", ["norm", "value"])
def test_mixin_clips_fused_gradients_under_bf16(algorithm):
    module = Clipped()
    fit(module, clip=0.5, algorithm=algorithm)
    assert len(module.norms) == 2
    bound = 0.5 if algorithm == "norm" else 0.5 * sum(p.numel() for p in module.parameters()) ** 0.5
    assert all(n <= bound * (1 + 1e-4) for n in module.norms), module.norms
    unclipped = Clipped()
    fit(unclipped, clip=0.0)  # 0 turns clipping off: the gradients are far above the bound
    assert unclipped.norms[0] > 10 * 0.5


@pytest.mark.parametrize("module", [UnifiedModule, ClassifierModule, ClipModule])
def test_modules_with_build_adamw_use_the_mixin(module):
    assert issubclass(module, FusedOptimizerClipping)


class ShardedRoot(nn.Module):
    """Stands in for the FSDP root Lightning wraps the module in: records ``clip_grad_norm_``."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[float] = []

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        self.calls.append(max_norm)
        return torch.tensor(0.0)


def test_under_fsdp_norm_clipping_goes_through_the_sharded_root(monkeypatch):
    """Lightning's FSDP precision plugin refuses norm clipping (each rank holds a shard: the norm
    needs a reduction); the mixin calls the FSDP root's own ``clip_grad_norm_`` instead."""
    from types import SimpleNamespace

    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.plugins.precision import FSDPPrecision

    module, root = Clipped(), ShardedRoot()
    plugin = FSDPPrecision("bf16-mixed")
    trainer = SimpleNamespace(precision_plugin=plugin, strategy=SimpleNamespace(model=root),
                              gradient_clip_val=None, gradient_clip_algorithm=None)
    monkeypatch.setattr(Clipped, "trainer", property(lambda self: trainer))
    opt = module.configure_optimizers()
    module.configure_gradient_clipping(opt, 0.5, "norm")
    assert root.calls == [0.5]
    module.configure_gradient_clipping(opt, 0.0, "norm")  # 0 turns clipping off
    assert root.calls == [0.5]
    with pytest.raises(MisconfigurationException, match="not supported for `FSDPPrecision`"):
        plugin.clip_grad_by_norm(opt, 0.5)  # what Lightning's own path would have done
