"""What every benchmark shares: model sizes, throwaway tokenizers, pretokenized data, the
environment record and the JSON result files (``benchmarks/results/<name>_<device>.json``)."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.utils.data import Dataset

from unigen import io

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class ModelSize:
    """A transformer size with the data shape it is benchmarked at by default.  ``fsq_levels`` sets
    the image codebook (``prod(levels)`` codes, FSQ paper level sets), which sets the head's width."""

    dim: int
    depth: int
    heads: int
    fsq_levels: tuple[int, ...]
    image_size: int
    batch_size: int


# names give the approximate parameter count (blocks + output head) at the default codebook
SIZES: dict[str, ModelSize] = {
    "tiny": ModelSize(64, 2, 4, (8, 5, 5, 5), 32, 16),
    "small": ModelSize(256, 6, 4, (8, 5, 5, 5), 32, 16),
    # the GPU legs' compact shapes model (recipes/presets/unified_compact.yaml, batch 256 of
    # unified_task_balance.yaml): 20M in blocks + head, 26M with the token table; its recipe's text
    # segment is 40 long, MAX_TEXT_LEN here
    "compact": ModelSize(384, 8, 6, (8, 8, 8, 6, 5), 64, 256),
    "34m": ModelSize(512, 10, 8, (7, 5, 5, 5, 5), 64, 64),
    "219m": ModelSize(1024, 16, 16, (8, 8, 8, 6, 5), 128, 32),
    "1b": ModelSize(2048, 20, 16, (8, 8, 8, 6, 5), 128, 16),
}
MAX_TEXT_LEN = 24  # the shapes captions' longest is 20 word-level tokens, plus <eos>
PRECISIONS = {"32-true": None, "bf16-mixed": torch.bfloat16}


def add_common_args(parser: argparse.ArgumentParser, default_size: str = "tiny") -> None:
    parser.add_argument("--size", default=default_size, choices=sorted(SIZES), help="model size preset")
    add_device_args(parser)
    parser.add_argument("--precision", default="32-true", choices=sorted(PRECISIONS),
                        help="32-true or bf16-mixed (autocast, fp32 weights)")


def add_device_args(parser: argparse.ArgumentParser) -> None:
    """--device, --threads, --seed and --out: what :func:`setup` and :func:`save_result` read."""
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice); 1 gives stable numbers on a shared machine")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="result JSON (default benchmarks/results/<name>_<device>.json)")


def setup(args: argparse.Namespace) -> torch.device:
    """Threads, matmul precision and the device; refuses a CUDA run without CUDA."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is visible to torch")
        # TF32 for any fp32 matmul left outside autocast, as Lightning recommends on Ampere+
        torch.set_float32_matmul_precision("high")
    torch.manual_seed(args.seed)
    return device


def autocast(device: torch.device, precision: str):
    dtype = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def environment(device: torch.device) -> dict[str, Any]:
    """Where and with what the numbers were measured."""
    import lightning

    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "torch": torch.__version__, "lightning": lightning.__version__,
           "python": platform.python_version(), "platform": platform.platform(),
           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "load_average_1m": os.getloadavg()[0]}
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    else:
        env["device_name"] = _cpu_name()
    return env


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def result_path(name: str, device: torch.device, out: str | None = None) -> Path:
    """Where a benchmark's JSON goes: ``out``, else ``benchmarks/results/<name>_<device>.json``."""
    return Path(out) if out else RESULTS_DIR / f"{name}_{device.type}.json"


def save_result(name: str, device: torch.device, payload: dict[str, Any], out: str | None = None) -> Path:
    path = result_path(name, device, out)
    io.write_json(path, {"benchmark": name, "environment": environment(device), **payload})
    print(f"wrote {path}")
    return path


class TokenizerDirs:
    """A word-level shapes text tokenizer and a randomly initialised FSQ image tokenizer (4x
    downsampling) in a temporary directory: benchmarks need their vocabularies and layouts, and the
    image decoder for pixels, never trained weights."""

    def __init__(self, fsq_levels: Sequence[int], root: str | None = None) -> None:
        from unigen.commands import build_text_tokenizer
        from unigen.tokenizers.fsq import FSQTokenizer

        self._tmp = tempfile.TemporaryDirectory(prefix="unigen-bench-") if root is None else None
        base = Path(root or self._tmp.name)
        self.text_tokenizer = str(base / "text_tokenizer")
        self.image_tokenizer = str(base / "image_tokenizer")
        if not Path(self.text_tokenizer).exists():
            build_text_tokenizer("shapes", self.text_tokenizer, num_samples=2000, vocab_size=512)
        FSQTokenizer(levels=list(fsq_levels), block_out_channels=[32, 32, 64], latent_channels=8,
                     norm_num_groups=8).save_pretrained(self.image_tokenizer)

    def as_kwargs(self) -> dict[str, str]:
        return {"image_tokenizer": self.image_tokenizer, "text_tokenizer": self.text_tokenizer}


def shapes_captions(num: int, split: str = "train", seed: int = 0) -> list[str]:
    from unigen.data.shapes import ShapesWorld

    world = ShapesWorld(split, seed)
    return [world.caption(i) for i in range(num)]


class PretokenizedSamples(Dataset):
    """Pretokenized training samples: random image codes ``[h, w]`` (uniform over the codebook; the
    network's cost does not depend on their values) with real shapes captions, questions, answers."""

    def __init__(self, num: int, grid: tuple[int, int], codebook_size: int, seed: int = 0) -> None:
        from unigen.data.shapes import ShapesWorld

        gen = torch.Generator().manual_seed(seed)
        self.codes = torch.randint(0, codebook_size, (num, *grid), generator=gen, dtype=torch.int32)
        world = ShapesWorld("train", seed)
        scenes = [world.scene(i) for i in range(num)]
        self.captions = [world.caption(i, scene) for i, scene in enumerate(scenes)]
        self.qa = [world.qa(i, scene)[:2] for i, scene in enumerate(scenes)]

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> dict[str, Any]:
        question, answer = self.qa[index]
        return {"codes": self.codes[index], "caption": self.captions[index], "question": question,
                "answer": answer}


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def build_module(kind: str, dirs: TokenizerDirs, size: ModelSize, image_size: int, seed: int,
                 **overrides: Any):
    """A configured training module of ``size`` with fresh weights from ``seed``: ``masked``
    (:class:`~unigen.training.unified_module.UnifiedModule`) or ``autoregressive``
    (:class:`~unigen.training.ar_module.AutoregressiveModule`); both build the same network."""
    from unigen.training.ar_module import AutoregressiveModule
    from unigen.training.unified_module import UnifiedModule

    cls = {"masked": UnifiedModule, "autoregressive": AutoregressiveModule}[kind]
    torch.manual_seed(seed)
    module = cls(**dirs.as_kwargs(), image_size=image_size, max_text_len=MAX_TEXT_LEN, dim=size.dim,
                 depth=size.depth, heads=size.heads, seed=seed, **overrides)
    module.configure_model()
    return module


def comma_list(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``: a comma-separated command-line option's items."""
    return [item.strip() for item in text.split(",") if item.strip()]


def parse_shapes(text: str, form: str) -> list[tuple[int, ...]]:
    """``"64x36x15488,64x64x15488"`` -> ``[(64, 36, 15488), (64, 64, 15488)]``: a comma-separated
    ``--shapes`` option whose items have ``form``'s fields (e.g. ``BATCHxPOSITIONSxVOCAB``)."""
    fields = len(form.split("x"))
    shapes = []
    for item in text.split(","):
        parts = item.lower().split("x")
        if len(parts) != fields or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise SystemExit(f"--shapes: {item!r} is not {form}")
        shapes.append(tuple(int(p) for p in parts))
    return shapes


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def params_millions(net) -> float:
    return round(net.num_parameters(non_embedding=False) / 1e6, 3)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    """A plain fixed-width table on stdout."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return "-" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
