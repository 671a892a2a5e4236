import warnings

import lightning as L
import pytest
import torch
from torch import nn

from unigen.training.frozen import FrozenImageTokenizer

MESSAGE = "module(s) in eval mode at the start of training"


class Holder(FrozenImageTokenizer, L.LightningModule):
    """A trained layer beside a frozen 'tokenizer' of three modules (Sequential, Linear, ReLU)."""

    def __init__(self, extra_eval: bool = False) -> None:
        super().__init__()
        self.image_tokenizer = nn.Sequential(nn.Linear(4, 4), nn.ReLU()).requires_grad_(False).eval()
        self.net = nn.Linear(4, 1)
        self.dropout = nn.Dropout(0.1)
        if extra_eval:
            self.dropout.eval()  # a module left in eval mode by mistake

    def configure_model(self) -> None:
        pass

    def training_step(self, batch, batch_idx):
        return self.net(self.dropout(self.image_tokenizer(batch[0]))).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.net.parameters(), lr=0.1)

    def train_dataloader(self):
        data = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data), batch_size=4)


def fit_messages(module: L.LightningModule) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False).fit(module)
    return [str(w.message) for w in caught if MESSAGE in str(w.message)]


def test_the_frozen_tokenizer_alone_does_not_make_lightning_warn():
    before = list(warnings.filters)
    module = Holder()
    assert fit_messages(module) == []
    assert not module.image_tokenizer.training and module.net.training
    assert warnings.filters == before  # the narrow filter lasts only until training starts


def test_any_other_module_in_eval_mode_still_warns():
    messages = fit_messages(Holder(extra_eval=True))
    assert len(messages) == 1 and messages[0].startswith("Found 4 module(s)"), messages


class FailsInSanityCheck(Holder):
    def validation_step(self, batch, batch_idx):
        raise RuntimeError("broken validation")

    def val_dataloader(self):
        return self.train_dataloader()


def test_a_fit_that_fails_before_training_lifts_the_filter():
    before = list(warnings.filters)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(RuntimeError, match="broken validation"):
        trainer.fit(FailsInSanityCheck())
    assert warnings.filters == before
