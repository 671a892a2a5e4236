"""Data parallelism: rank splits without overlap, batch-split invariant noise, and a real 2-process
DDP run (gloo, CPU) that ends with the weights of the single-process run with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from unigen.data.shards import DistributedEpochSampler, ShardDataModule, seeded_permutation

ROOT = Path(__file__).resolve().parents[2]


def _rank_batches(sampler: DistributedEpochSampler) -> list[list[int]]:
    order = list(sampler)
    b = sampler.batch_size
    return [order[i:i + b] for i in range(0, len(order) - b + 1, b)]


@pytest.mark.parametrize("n, world, batch", [(37, 3, 4), (32, 2, 4), (40, 4, 3)])
def test_ranks_split_each_global_batch_without_overlap(n, world, batch):
    def order(epoch):
        return seeded_permutation(n, 5, epoch)

    single = _rank_batches(DistributedEpochSampler(order, n, batch * world))
    ranks = [_rank_batches(DistributedEpochSampler(order, n, batch, world, r)) for r in range(world)]
    assert all(len(r) == len(single) == n // (batch * world) for r in ranks)
    seen: list[int] = []
    for step, global_batch in enumerate(single):
        parts = [r[step] for r in ranks]
        assert sorted(sum(parts, [])) == sorted(global_batch)  # the same samples, split
        seen += sum(parts, [])
    assert len(seen) == len(set(seen))  # no sample on two ranks or twice in an epoch


def test_skip_batches_resumes_mid_epoch_once():
    sampler = DistributedEpochSampler(lambda e: seeded_permutation(30, 0, e), 30, 3, 2, 1)
    full = list(sampler)
    sampler.skip_batches(2)
    assert list(sampler) == full[6:]
    assert list(sampler) == full  # only the next pass is shortened
    sampler.set_epoch(1)
    assert list(sampler) != full


def test_shard_datamodule_gives_each_rank_its_own_samples(shard_dir):
    seen = []
    for rank in range(2):
        dm = ShardDataModule(str(shard_dir), image_size=32, batch_size=4, num_val=8)
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank,
                                     fit_loop=SimpleNamespace(restarting=False))
        loader = dm.train_dataloader()
        assert loader.state_dict()["global_batch"] == 8
        seen.append([int(i) for batch in loader for i in batch["index"]])
    assert len(seen[0]) == len(seen[1]) == 16
    assert not set(seen[0]) & set(seen[1])


def _loss_and_grads(module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    module.net.zero_grad()
    noise = (module._sample_generators(batch) if module.hparams.per_sample_noise
             else module._generator(0))
    tb, _ = module._build_tasks(module.task_inputs(batch), noise)
    loss, _ = module.diffusion_loss(tb, noise)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in module.net.named_parameters()
                           if p.grad is not None}


@pytest.mark.parametrize("per_sample", [True, False])
def test_per_sample_noise_makes_the_batch_split_irrelevant(shard_dir, tokenizer_dirs, per_sample):
    """Two halves of a batch, averaged, train like the whole batch (what DDP computes)."""
    from unigen.training.unified_module import UnifiedModule

    module = UnifiedModule(**tokenizer_dirs, image_size=32, dim=32, depth=1, heads=4, seed=0,
                           tasks={"t2i": 1, "caption": 1, "vqa": 1, "inpaint": 1}, loss="elbo",
                           complementary_masking=True, cond_dropout=0.5,
                           per_sample_noise=per_sample)
    torch.manual_seed(0)
    module.configure_model()
    dm = ShardDataModule(str(shard_dir), image_size=32, batch_size=8, num_val=0)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    halves = [{k: v[s] for k, v in batch.items()} for s in (slice(0, 4), slice(4, 8))]
    loss, grads = _loss_and_grads(module, batch)
    parts = [_loss_and_grads(module, half) for half in halves]
    split_loss = (parts[0][0] + parts[1][0]) / 2
    split_grads = {n: (parts[0][1][n] + parts[1][1][n]) / 2 for n in grads}
    same = torch.allclose(loss, split_loss, atol=1e-6) and all(
        torch.allclose(grads[n], split_grads[n], atol=1e-6) for n in grads)
    assert same == per_sample  # batch-level noise: the halves draw other tasks and masks


def test_per_sample_noise_needs_the_sample_index(tokenizer_dirs):
    from unigen.training.unified_module import UnifiedModule

    module = UnifiedModule(**tokenizer_dirs, image_size=32, per_sample_noise=True)
    with pytest.raises(ValueError, match="'index'"):
        module._sample_generators({"codes": torch.zeros(2, 8, 8)})


def _fit(argv: list[str], cwd: Path, processes: int = 1) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if processes == 1:
        cmd = [sys.executable, "-m", "unigen", "fit", *argv]
    else:  # the multi-node launch path of docs/scale.md, on one node
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={processes}", "-m", "unigen", "fit", *argv]
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_matches_one_process(shard_dir, tokenizer_dirs, tmp_path):
    """recipes/debug/unified_shards_debug.yaml, 3 steps: 1 process x batch 8 vs 2 ranks x batch 4
    (gloo) give the same weights; without per-sample noise they do not."""
    from unigen.io import load_safetensors

    common = ["--config", str(ROOT / "recipes" / "debug" / "unified_shards_debug.yaml"),
              "--model.init_args.image_tokenizer", tokenizer_dirs["image_tokenizer"],
              "--model.init_args.text_tokenizer", tokenizer_dirs["text_tokenizer"],
              "--data.init_args.path", str(shard_dir), "--trainer.max_steps", "3",
              "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
              "--model.init_args.val_sampling", "{}"]
    ddp = ["--config", str(ROOT / "recipes" / "presets" / "ddp_cpu.yaml"),
           "--data.init_args.batch_size", "4"]
    runs = {"single": [], "ddp": ddp,
            "ddp_batch_noise": [*ddp, "--model.init_args.per_sample_noise", "false"]}
    weights = {}
    for name, extra in runs.items():
        _fit([*common, *extra, "--trainer.default_root_dir", str(tmp_path / name),
              "--export_dir", str(tmp_path / name / "model")], tmp_path, 2 if extra else 1)
        weights[name] = load_safetensors(tmp_path / name / "model" / "transformer" / "model.safetensors")

    def gap(a, b):
        return max((weights[a][k] - weights[b][k]).abs().max().item() for k in weights[a])

    assert gap("single", "ddp") < 1e-5  # float sums in another order, nothing more
    assert gap("single", "ddp_batch_noise") > 1e-3


@pytest.mark.parametrize("accelerator", [
    pytest.param("cpu", marks=pytest.mark.slow),  # gloo: host tensors gather as they are
    pytest.param("gpu", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                    reason="needs a CUDA device")]),
])
def test_validation_metrics_sync_under_ddp(accelerator, tokenizer_dirs, tmp_path):
    """A one-process DDP run's validation computes and logs its recipe metrics: under NCCL (GPU)
    neither the metrics' host-side states nor the logged values may stay on the CPU."""
    import csv

    _fit(["--config", str(ROOT / "recipes" / "debug" / "unified_debug.yaml"),
          "--model.init_args.image_tokenizer", tokenizer_dirs["image_tokenizer"],
          "--model.init_args.text_tokenizer", tokenizer_dirs["text_tokenizer"],
          "--trainer.accelerator", accelerator, "--trainer.devices", "1", "--trainer.strategy", "ddp",
          "--trainer.max_steps", "2", "--trainer.val_check_interval", "2",
          "--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false",
          "--trainer.default_root_dir", str(tmp_path / "run"),
          "--model.init_args.val_sampling",
          "{num_samples: 2, num_steps: 2, metrics: [vqa_exact_match, bleu4, compositional_accuracy]}"],
         tmp_path)
    with open(next((tmp_path / "run").rglob("metrics.csv"))) as fh:
        logged = {k for row in csv.DictReader(fh) for k, v in row.items() if v}
    assert {"val/vqa_exact_match", "val/bleu4", "val/t2i_checker_accuracy"} <= logged
    assert any(k.startswith("val/compositional_accuracy") for k in logged)  # a host metric: not synced
