"""Image-tokenizer benchmark on CPU: FSQ vs. VQ with tricks vs. plain VQ vs. LFQ.

Each tokenizer shares one architecture (64x64 shapes images -> 16x16 codes, downsample factor 4),
trains for the same number of steps with :class:`~unigen.training.TokenizerModule`, and is scored
on the shapes validation split: PSNR, SSIM, codebook usage (fraction of codes used over the whole
split), perplexity, and encode+decode throughput (images/s, batched, inference mode).  Plain VQ
(gradient-learned euclidean codebook, no k-means / EMA / dead-code replacement) is there to show the
codebook collapse the tricks prevent (ViT-VQGAN, Yu et al. 2022; LlamaGen, Sun et al. 2024; FSQ,
Mentzer et al. 2023).

    PYTHONPATH=. python benchmarks/tokenizer_throughput.py                 # writes benchmarks/results/tokenizer_throughput_cpu.json
    PYTHONPATH=. python benchmarks/tokenizer_throughput.py --steps 20 --only fsq --out /tmp/quick.json
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder heads sys.path and the file itself would shadow the Hugging
# Face `tokenizers` package (imported by transformers via torchmetrics); drop that folder.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import datetime  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import lightning as L  # noqa: E402
import torch  # noqa: E402

from unigen import io  # noqa: E402
from unigen.data.shapes_datamodule import ShapesDataModule  # noqa: E402
from unigen.tokenizers import FSQTokenizer, ImageTokenizer, LFQTokenizer, VQTokenizer  # noqa: E402
from unigen.training import TokenizerModule  # noqa: E402

# one architecture for all contenders: only the quantizer differs
ARCHITECTURE = dict(block_out_channels=[8, 16, 32], layers_per_block=1, latent_channels=16,
                    norm_num_groups=8, mid_block_attention=False, seed=0)
VQ_PLAIN = dict(cosine=False, ema_update=False, kmeans_init=False, dead_code_threshold=0.0,
                rotation_trick=False)
CONTENDERS: dict[str, tuple[type[ImageTokenizer], dict[str, Any]]] = {
    # codebooks of ~1000 entries for all, so usage percentages compare
    "fsq": (FSQTokenizer, dict(levels=[8, 5, 5, 5])),
    "vq_tricks": (VQTokenizer, dict(codebook_size=1024, codebook_dim=8, cosine=True,
                                    ema_update=True, kmeans_init=True, dead_code_threshold=0.5)),
    "vq_plain": (VQTokenizer, dict(codebook_size=1024, codebook_dim=8, **VQ_PLAIN)),
    "lfq": (LFQTokenizer, dict(codebook_size=1024, entropy_loss_weight=0.1)),
}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def quiet_trainer(**kwargs: Any) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False,
                     num_sanity_val_steps=0, **kwargs)


@torch.inference_mode()
def throughput(tokenizer: ImageTokenizer, images: torch.Tensor, batch_size: int,
               repeats: int = 3) -> float:
    """Images per second of batched encode + decode: the best of ``repeats`` passes over
    ``images`` after a warm-up batch (the best pass is the least disturbed by other processes)."""
    tokenizer.eval()
    tokenizer.decode(tokenizer.encode(images[:batch_size]))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for chunk in images.split(batch_size):
            tokenizer.decode(tokenizer.encode(chunk))
        best = min(best, time.perf_counter() - start)
    return len(images) / best


def shapes_data(args: argparse.Namespace) -> ShapesDataModule:
    return ShapesDataModule(image_size=64, batch_size=args.batch_size, num_train=args.num_train,
                            num_val=args.num_val, seed=args.seed, num_workers=0)


def calibrate_steps(args: argparse.Namespace) -> int:
    """Steps that fit ``args.time_budget`` seconds, from timing a few FSQ training steps now (the
    contenders differ only in the quantizer, whose cost is small next to the convolutions)."""
    cls, kwargs = CONTENDERS["fsq"]
    tokenizer = cls(**{**ARCHITECTURE, **kwargs})
    optimizer = torch.optim.AdamW(tokenizer.parameters(), lr=args.lr)
    data = shapes_data(args)
    data.setup("fit")
    batches = iter(data.train_dataloader())
    timings = []
    for _ in range(8):
        images = next(batches)["image"]
        start = time.perf_counter()
        loss = (tokenizer(images).reconstruction - images).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        timings.append(time.perf_counter() - start)
    per_step = sorted(timings[2:])[len(timings[2:]) // 2]  # median after warm-up
    return max(10, int(args.time_budget / (per_step * 1.15)))  # ~15% for data + logging


def run_one(name: str, steps: int, args: argparse.Namespace) -> dict[str, float]:
    cls, kwargs = CONTENDERS[name]
    L.seed_everything(args.seed, verbose=False)
    tokenizer = cls(**{**ARCHITECTURE, **kwargs})
    module = TokenizerModule(tokenizer, reconstruction_loss=args.loss, lr=args.lr,
                             warmup_steps=args.warmup_steps, min_lr_ratio=args.min_lr_ratio,
                             num_logged_images=0)
    data = shapes_data(args)
    start = time.perf_counter()
    # max_time guards the script's total budget if the machine slows down after calibration
    fit = quiet_trainer(max_steps=steps, limit_val_batches=0,
                        max_time={"seconds": 2 * args.time_budget} if args.time_budget else None)
    fit.fit(module, datamodule=data)
    train_seconds = time.perf_counter() - start
    scores = quiet_trainer().validate(module, datamodule=data, verbose=False)[0]
    data.setup("validate")
    images = torch.cat([batch["image"] for batch in data.val_dataloader()])
    return {
        "psnr_db": round(scores["val/psnr"], 2),
        "ssim": round(scores["val/ssim"], 4),
        "codebook_usage": round(scores["val/codebook_usage"], 4),
        "perplexity": round(scores["val/perplexity"], 1),
        "codebook_size": tokenizer.codebook_size,
        "encode_decode_images_per_s": round(throughput(tokenizer, images, 64), 1),
        "train_steps": fit.global_step,
        "train_seconds": round(train_seconds, 1),
        "parameters": sum(p.numel() for p in tokenizer.parameters()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps per tokenizer (default: what fits --time-budget)")
    parser.add_argument("--time-budget", type=float, default=120.0,
                        help="training seconds per tokenizer, used to choose the step count")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=4e-3)
    parser.add_argument("--loss", choices=["l1", "l2"], default="l2")
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--min-lr-ratio", type=float, default=0.02)
    parser.add_argument("--num-train", type=int, default=10000)
    parser.add_argument("--num-val", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", choices=sorted(CONTENDERS), default=None)
    parser.add_argument("--out", default="benchmarks/results/tokenizer_throughput_cpu.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    steps = args.steps or calibrate_steps(args)
    print(f"training each tokenizer for {steps} steps of batch {args.batch_size}", flush=True)
    results = {}
    for name in args.only or list(CONTENDERS):
        results[name] = run_one(name, steps, args)
        print(f"{name:>10}: " + ", ".join(f"{k}={v}" for k, v in results[name].items()), flush=True)

    settings = {k: v for k, v in vars(args).items() if k != "out"}
    settings["steps"] = steps
    settings.update(image_size=64, latent_grid=[16, 16], architecture=ARCHITECTURE,
                    quantizers={name: CONTENDERS[name][1] for name in results})
    io.write_json(args.out, {
        "device": f"cpu: {cpu_name()}", "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "settings": settings, "results": results})
    header = f"{'tokenizer':>10} {'PSNR dB':>8} {'usage %':>8} {'perplexity':>10} {'img/s':>8}"
    print(header)
    for name, r in results.items():
        print(f"{name:>10} {r['psnr_db']:>8.2f} {100 * r['codebook_usage']:>8.1f} "
              f"{r['perplexity']:>10.1f} {r['encode_decode_images_per_s']:>8.1f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
