"""``HostThreads``: one intra-op thread for the host side of accelerator training, every thread
for CPU training, and the previous count restored afterwards."""

from __future__ import annotations

from types import SimpleNamespace

import lightning as L
import pytest
import torch

from unigen.training.host_threads import HostThreads
from unigen.training.reliability import harden_trainer


class ThreadProbe(L.LightningModule):
    """Records the intra-op thread count inside every training step."""

    def __init__(self, seen: list[int]) -> None:
        super().__init__()
        self.layer, self.seen = torch.nn.Linear(2, 1), seen

    def training_step(self, batch, batch_idx):
        self.seen.append(torch.get_num_threads())
        return self.layer(batch).sum()

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.randn(4, 2), batch_size=2)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def trainer_on(device: str) -> SimpleNamespace:
    return SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)))


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_an_accelerator_run_gets_its_host_threads_and_gives_them_back(two_threads):
    callback = HostThreads(num_threads=1)
    callback.setup(trainer_on("cuda"), None, "fit")
    assert torch.get_num_threads() == 1
    callback.setup(trainer_on("cuda"), None, "validate")  # a second stage inside fit: no new save
    callback.teardown(trainer_on("cuda"), None, "fit")
    assert torch.get_num_threads() == 2
    callback.teardown(trainer_on("cuda"), None, "fit")  # nothing saved: nothing changes
    assert torch.get_num_threads() == 2


def test_cpu_training_keeps_every_thread(two_threads):
    callback = HostThreads(num_threads=1)
    callback.setup(trainer_on("cpu"), None, "fit")
    assert torch.get_num_threads() == 2
    callback.teardown(trainer_on("cpu"), None, "fit")
    assert torch.get_num_threads() == 2


def test_a_real_cpu_fit_leaves_the_threads_alone(two_threads, tmp_path):
    seen: list[int] = []
    L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
              callbacks=[HostThreads()]).fit(ThreadProbe(seen))
    assert seen == [2, 2] and torch.get_num_threads() == 2


def test_a_failed_fit_gives_the_threads_back(two_threads):
    callback = HostThreads(num_threads=1)
    callback.setup(trainer_on("cuda"), None, "fit")
    assert torch.get_num_threads() == 1  # the premise: there is something to give back
    callback.on_exception(trainer_on("cuda"), None, RuntimeError("out of memory"))
    assert torch.get_num_threads() == 2


def test_zero_threads_is_refused():
    with pytest.raises(ValueError, match="num_threads >= 1"):
        HostThreads(num_threads=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_gpu_fit_runs_its_steps_on_one_host_thread(tmp_path):
    seen: list[int] = []
    before = torch.get_num_threads()
    harden_trainer(L.Trainer(accelerator="gpu", devices=1, max_steps=2, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False,
                             default_root_dir=tmp_path)).fit(ThreadProbe(seen))
    assert seen == [1, 1] and torch.get_num_threads() == before
