"""Pretokenized shards: images encoded once by the image tokenizer, streamed as codes in training.

Tokenizing every image at every step costs as much as a large part of the transformer step and ties
the training job to the tokenizer's GPU memory; Show-o, MaskGIT-style trainers and LlamaGen all
pre-extract codes.  ``unigen tokenize`` (:func:`write_shards`) encodes a data set in batches and
writes `litdata <https://github.com/Lightning-AI/litData>`_ chunks, one per shard of ``shard_size``
samples::

    out/
      manifest.json          what the shards hold: tokenizer (type, codebook size, fingerprint of its
                             weights), image size, code grid, counts, the source data set
      index.json             litdata's index (StreamingDataset reads it)
      chunk-0-<k>.bin        shard k: codes uint16 [h, w] (int32 above 65536 codes), caption,
                             question, answer, scene, index
      reconstructions.png    originals | decoded codes, for a person to look at

Resume: a shard's chunk is moved into place only when complete, then journaled in ``parts/``; a
killed run started again with the same arguments re-encodes only the shards not journaled (and a
different tokenizer or data set in the same ``out`` is refused).  ``index.json`` and the manifest
are written last, so a directory with a manifest is complete.

Training: :class:`ShardDataModule` reads the chunks by index (litdata ``StreamingDataset``) and
yields ``codes`` [B, h, w] with the texts, so the image tokenizer never runs in the training loop;
at the first batch it checks the shards against the model's image tokenizer (codebook size, grid,
fingerprint) and stops with one clear error on a mismatch.  The order of samples is a pure function
of ``(seed, epoch)``, split across ranks by :class:`DistributedEpochSampler` so that N ranks with
batch B see, step by step, exactly the samples of one process with batch N*B, and a resumed run
continues with the batch after the last one trained (:mod:`unigen.data.resumable`, shared with the
other data modules; its names are re-exported here).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from unigen import io
from unigen.data.batch_transforms import BatchTransforms
from unigen.data.loaders import data_loader
from unigen.data.resumable import DistributedEpochSampler, seeded_permutation, shuffled_loader
from unigen.registry import Registry
from unigen.tokenizers.base import ImageTokenizer

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INDEX = "index.json"  # litdata's
JOB = "tokenize_job.json"  # the unfinished run's settings: a resumed run must match them
JOURNAL = "parts"  # one litdata index per finished shard
# the texts a shard keeps of each sample ("" where its source has none; shards written before
# "description" read it as "")
TEXT_FIELDS = ("caption", "description", "question", "answer", "scene")
CODE_DTYPES = {"uint16": np.uint16, "int32": np.int32}


# -- sources: the data sets `unigen tokenize --data NAME` encodes ----------------------------------
SHARD_SOURCES: Registry[Callable[..., Dataset]] = Registry("shard source")


@SHARD_SOURCES.register("shapes")
def shapes_source(root: str | None = None, split: str = "train", image_size: int = 64,
                  num_samples: int = 10000, seed: int = 0) -> Dataset:
    from unigen.data.shapes import ShapesDataset

    if root is not None:
        raise ValueError("--root is for --data folder / fashion_mnist; the shapes world is rendered")
    return ShapesDataset(split, num_samples, image_size, seed)


@SHARD_SOURCES.register("folder")
def folder_source(root: str | None = None, split: str | None = None, image_size: int = 64,
                  num_samples: int | None = None, seed: int = 0) -> Dataset:
    """The folder's images in metadata order (``seed`` is unused: nothing here is random)."""
    from unigen.data.imagefolder import ImageFolderDataset

    if not root:
        raise ValueError("--data folder needs --root DIR (a folder with metadata.jsonl)")
    if split is not None:
        raise ValueError("an image folder has no splits (make one folder per split)")
    dataset = ImageFolderDataset(root, image_size)
    return _first(dataset, num_samples)


@SHARD_SOURCES.register("fashion_mnist")
def fashion_mnist_source(root: str | None = None, split: str = "train", image_size: int = 32,
                         num_samples: int | None = None, seed: int = 0) -> Dataset:
    from unigen.data.fashion_mnist import FashionMNISTDataset

    return FashionMNISTDataset(root, split, image_size, num_samples, seed)


def _first(dataset: Dataset, num_samples: int | None) -> Dataset:
    if num_samples is None:
        return dataset
    if not 0 < num_samples <= len(dataset):
        raise ValueError(f"num_samples must lie in [1, {len(dataset)}], got {num_samples}")
    return Subset(dataset, range(num_samples))


# -- fingerprints and manifests --------------------------------------------------------------------
# the precisions a model may cast its frozen tokenizer to (``precision: bf16-true``): the shards
# record the fingerprint of its weights in each, so the check still knows it
CAST_DTYPES = (torch.bfloat16, torch.float16)


def tokenizer_fingerprint(tokenizer: ImageTokenizer, dtype: torch.dtype | None = None) -> str:
    """SHA-256 of the tokenizer's config and weights (floating ones cast to ``dtype`` if given)."""
    from unigen.modules.lora import state_fingerprint

    state = tokenizer.state_dict()
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    return state_fingerprint(state, {"type": tokenizer.type_name, "config": tokenizer.config})


def tokenizer_info(tokenizer: ImageTokenizer) -> dict[str, Any]:
    """What the shards record about the tokenizer that made them."""
    return {"type": tokenizer.type_name, "codebook_size": int(tokenizer.codebook_size),
            "downsample_factor": int(tokenizer.downsample_factor),
            "fingerprint": tokenizer_fingerprint(tokenizer),
            "cast_fingerprints": {str(d).removeprefix("torch."): tokenizer_fingerprint(tokenizer, d)
                                  for d in CAST_DTYPES}}


def code_dtype(codebook_size: int) -> str:
    return "uint16" if codebook_size <= np.iinfo(np.uint16).max + 1 else "int32"


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not (path / MANIFEST).is_file():
        unfinished = " (an unfinished tokenize run is there: run it again to finish)" \
            if (path / JOB).is_file() else ""
        raise FileNotFoundError(f"no shard manifest at {path / MANIFEST}{unfinished}; make shards with "
                                f"`unigen tokenize --tokenizer DIR --data ... --out {path}`")
    manifest = io.read_json(path / MANIFEST, "shard manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path / MANIFEST} has format version {manifest.get('format_version')!r}; "
                         f"this unigen reads {FORMAT_VERSION}")
    check_chunks(path)
    return manifest


def check_chunks(path: Path) -> None:
    """Every chunk litdata's index lists is there with its full size: a chunk deleted or cut short
    after the run (a copy that stopped, a full disk) is named now, not as a litdata timeout
    "waiting for" it in the middle of training."""
    index = io.read_json(path / INDEX, "litdata shard index")
    for chunk in index.get("chunks", []):
        file = path / chunk["filename"]
        if not file.is_file():
            raise ValueError(f"shard chunk {file} is missing (the shards at {path} are incomplete: "
                             "tokenize again into a new --out)")
        size = file.stat().st_size
        if size != chunk["chunk_bytes"]:
            raise ValueError(f"shard chunk {file} holds {size} bytes, its index says "
                             f"{chunk['chunk_bytes']} (cut short or changed: tokenize again into a new --out)")


def check_tokenizer(manifest: dict[str, Any], tokenizer: ImageTokenizer, where: str) -> None:
    """One clear error when ``tokenizer`` is not the one the shards at ``where`` were made with."""
    made, size = manifest["tokenizer"], manifest["image_size"]
    if made["codebook_size"] != tokenizer.codebook_size:
        raise ValueError(f"codebook size mismatch: the shards at {where} hold codes of a "
                         f"{made['codebook_size']}-code {made['type']} tokenizer, the model's image "
                         f"tokenizer has {tokenizer.codebook_size} codes (re-tokenize with it)")
    grid = list(tokenizer.latent_grid(size))
    if grid != list(manifest["grid"]):
        raise ValueError(f"code grid mismatch: the shards at {where} hold {manifest['grid'][0]}x"
                         f"{manifest['grid'][1]} codes per {size}px image, the model's image "
                         f"tokenizer makes {grid[0]}x{grid[1]} (re-tokenize with it)")
    ours = tokenizer_fingerprint(tokenizer)
    dtype = str(tokenizer.dtype).removeprefix("torch.")
    if ours not in (made["fingerprint"], made.get("cast_fingerprints", {}).get(dtype)):
        raise ValueError(f"the shards at {where} were made by another image tokenizer (same "
                         f"codebook size and grid, other weights: fingerprint {made['fingerprint'][:12]}"
                         f" vs the model's {ours[:12]}); re-tokenize with the model's tokenizer")


# -- writing -----------------------------------------------------------------------------------
def _job(dataset: Dataset, tokenizer: ImageTokenizer, image_size: int, shard_size: int,
         source: dict[str, Any]) -> dict[str, Any]:
    info = tokenizer_info(tokenizer)
    return {"format_version": FORMAT_VERSION, "num_samples": len(dataset), "shard_size": shard_size,
            "image_size": image_size, "grid": list(tokenizer.latent_grid(image_size)),
            "code_dtype": code_dtype(info["codebook_size"]), "tokenizer": info, "source": source,
            "fields": ["codes", *TEXT_FIELDS, "index"]}


def _require_same_job(out: Path, found: dict[str, Any], job: dict[str, Any], what: str) -> None:
    differ = sorted(k for k in job if found.get(k) != job[k])
    if differ:
        raise ValueError(f"{out} already holds {what} made with other settings (they differ in "
                         f"{', '.join(differ)}); use another --out or delete it")


def _fsync(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _write_shard(out: Path, k: int, dataset: Dataset, indices: range, tokenizer: ImageTokenizer,
                 job: dict[str, Any], batch_size: int, num_workers: int, progress) -> None:
    from litdata.streaming.writer import BinaryWriter

    tmp = out / f".shard-{k}.tmp"
    if tmp.exists():  # left by a killed run
        shutil.rmtree(tmp)
    # one chunk per shard; every shard's writer gets the same chunk_size (litdata merges only
    # identical configs), the last shard's chunk is simply shorter
    writer = BinaryWriter(str(tmp), chunk_size=job["shard_size"], chunk_index=k)
    dtype = CODE_DTYPES[job["code_dtype"]]
    loader = data_loader(Subset(dataset, indices), batch_size=batch_size, num_workers=num_workers)
    position = indices.start
    for batch in loader:
        codes = tokenizer.encode(batch["image"]).cpu().numpy().astype(dtype)
        for j in range(len(codes)):
            texts = {f: str(batch[f][j]) if f in batch else "" for f in TEXT_FIELDS}
            writer.add_item(position, {"codes": codes[j], **texts, "index": position})
            position += 1
        progress.update(len(codes))
    writer.done()
    chunks = sorted(tmp.glob("chunk-*.bin"))
    if len(chunks) != 1:
        raise RuntimeError(f"litdata wrote {len(chunks)} chunk files for shard {k}, expected one")
    _fsync(chunks[0])
    os.replace(chunks[0], out / chunks[0].name)  # complete chunks only ever appear under out/
    index = json.loads((tmp / f"0.{INDEX}").read_text())
    io.write_json(out / JOURNAL / f"{k}.{INDEX}", index)  # journaled: this shard is done
    shutil.rmtree(tmp)


def _finish_index(out: Path, num_shards: int, num_samples: int) -> None:
    """litdata's index.json from the journal (copied to ``{k}.index.json``, merged by litdata)."""
    from litdata.processing.complete import complete_dataset

    if not (out / INDEX).is_file():
        for k in range(num_shards):
            shutil.copyfile(out / JOURNAL / f"{k}.{INDEX}", out / f"{k}.{INDEX}")
        complete_dataset(str(out))
    chunks = json.loads((out / INDEX).read_text())["chunks"]
    held = sum(c["chunk_size"] for c in chunks)
    if len(chunks) != num_shards or held != num_samples:
        raise RuntimeError(f"{out / INDEX} lists {len(chunks)} chunks with {held} samples, expected "
                           f"{num_shards} with {num_samples}")


def write_shards(dataset: Dataset, tokenizer: ImageTokenizer, out: str | os.PathLike,
                 image_size: int, shard_size: int = 4096, batch_size: int = 64,
                 num_workers: int = 0, source: dict[str, Any] | None = None,
                 grid_path: str | os.PathLike | None = None, grid_samples: int = 8,
                 progress: bool = True) -> dict[str, Any]:
    """Encode ``dataset`` (unigen samples with ``image`` [3, H, W]) into shards at ``out`` and return
    the manifest; resumes an unfinished run with the same settings (module docstring).

    ``source`` describes the data set in the manifest; ``grid_path`` (default
    ``out/reconstructions.png``) receives originals | decodings of the first ``grid_samples``."""
    from tqdm.auto import tqdm

    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size and batch_size must be positive, got {shard_size}, {batch_size}")
    if len(dataset) == 0:
        raise ValueError("the data set to tokenize is empty")
    out = Path(out)
    tokenizer = tokenizer.eval()
    job = _job(dataset, tokenizer, image_size, shard_size, source or {})
    grid_path = Path(grid_path or out / "reconstructions.png")
    if (out / MANIFEST).is_file():
        manifest = read_manifest(out)
        _require_same_job(out, manifest, job, "finished shards")
        _finish(out, dataset, tokenizer, grid_path, grid_samples)  # in case a kill came in between
        return manifest
    if out.exists() and any(out.iterdir()) and not (out / JOB).is_file():
        raise ValueError(f"{out} is not empty and holds no unfinished tokenize run; use another --out")
    if (out / JOB).is_file():
        _require_same_job(out, io.read_json(out / JOB, "tokenize job"), job, "an unfinished run")
    else:
        io.write_json(out / JOB, job)

    n = len(dataset)
    num_shards = math.ceil(n / shard_size)
    spans = [range(k * shard_size, min(n, (k + 1) * shard_size)) for k in range(num_shards)]
    done = [(out / JOURNAL / f"{k}.{INDEX}").is_file() for k in range(num_shards)]
    already = sum(len(s) for s, d in zip(spans, done) if d)
    with tqdm(total=n, initial=already, desc="tokenize", unit="img", disable=not progress) as bar:
        for k, span in enumerate(spans):
            if not done[k]:
                _write_shard(out, k, dataset, span, tokenizer, job, batch_size, num_workers, bar)
    _finish_index(out, num_shards, n)
    manifest = {**job, "num_shards": num_shards}
    io.write_json(out / MANIFEST, manifest)  # last: a directory with a manifest is complete
    _finish(out, dataset, tokenizer, grid_path, grid_samples)
    return manifest


def _finish(out: Path, dataset: Dataset, tokenizer: ImageTokenizer, grid_path: Path,
            grid_samples: int) -> None:
    """After the manifest: drop the resume state, draw the reconstruction grid if missing."""
    (out / JOB).unlink(missing_ok=True)
    if (out / JOURNAL).exists():
        shutil.rmtree(out / JOURNAL)
    if not grid_path.is_file():
        save_reconstruction_grid(dataset, ShardDataset(out), tokenizer, grid_path, grid_samples)


def save_reconstruction_grid(dataset: Dataset, shards: "ShardDataset", tokenizer: ImageTokenizer,
                             path: str | os.PathLike, num: int = 8) -> Path:
    """Originals (left) next to the decoded codes read back from the shards (right)."""
    from unigen.tokenizers.visualize import comparison_grid, save_png

    rows = range(min(num, len(shards)))
    originals = torch.stack([dataset[i]["image"] for i in rows])
    decoded = tokenizer.decode(torch.stack([shards[i]["codes"] for i in rows])).cpu()
    save_png(comparison_grid(originals, decoded, max_images=len(rows)), path)
    return Path(path)


# -- reading -----------------------------------------------------------------------------------
class ShardDataset(Dataset):
    """A shard directory as a map-style data set: item ``i`` is ``codes`` long [h, w], ``caption``,
    ``question``, ``answer``, ``scene`` and ``index`` (= ``i``).  The litdata reader is opened
    lazily in each process (DataLoader workers included)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.image_size: int = self.manifest["image_size"]
        self.grid: tuple[int, int] = tuple(self.manifest["grid"])
        self._stream = None
        self._pid = -1

    def __len__(self) -> int:
        return self.manifest["num_samples"]

    def _reader(self):
        if self._stream is None or self._pid != os.getpid():  # never share a reader across fork
            from litdata import StreamingDataset

            # batch_decode decodes a window of items around each one read: 30x slower for the
            # random access of a shuffled epoch (0.15 ms an item without it on a 2-core CPU)
            self._stream = StreamingDataset(str(self.path), batch_decode=False)
            self._pid = os.getpid()
        return self._stream

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples in {self.path}")
        item = self._reader()[index]
        if item["index"] != index:
            raise ValueError(f"{self.path} is inconsistent: item {index} is stored as {item['index']}")
        codes = torch.from_numpy(np.asarray(item["codes"]).astype(np.int64))
        return {"codes": codes, **{f: item.get(f, "") for f in TEXT_FIELDS}, "index": index}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_stream": None, "_pid": -1}


# -- data module -------------------------------------------------------------------------------
class ShardDataModule(BatchTransforms, L.LightningDataModule):
    """Pretokenized shards for training (module docstring).

    Args:
        path: shard directory written by ``unigen tokenize``.
        image_size: must be the shards' image size (the CLI links it to the model).
        batch_size: per rank.
        seed: the training order and the validation hold-out.
        num_val: samples of ``path`` held out for validation (seeded), unless ``val_path``.
        val_path: a separate shard directory for validation (same tokenizer and image size).
        test_path: a shard directory for ``unigen test`` / ``unigen predict`` (same tokenizer and
            image size); without one those verbs stop with one line asking for it.
        num_workers: DataLoader workers.
        check_tokenizer: at the first batch, require the model's ``image_tokenizer`` to be the one
            the shards were made with.
    """

    def __init__(self, path: str, image_size: int = 64, batch_size: int = 32, seed: int = 0,
                 num_val: int = 256, val_path: str | None = None, test_path: str | None = None,
                 num_workers: int = 0, check_tokenizer: bool = True) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if num_val < 0:
            raise ValueError(f"num_val must be >= 0, got {num_val}")
        self.save_hyperparameters()
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.manifest: dict[str, Any] | None = None
        self._checked = not check_tokenizer

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        from unigen.data.imagefolder import seeded_split

        hp = self.hparams
        full = ShardDataset(hp.path)
        self.manifest = full.manifest
        if full.image_size != hp.image_size:
            raise ValueError(f"the shards at {hp.path} hold {full.image_size}px images ({full.grid[0]}x"
                             f"{full.grid[1]} codes); set data.init_args.image_size: {full.image_size}")
        if hp.test_path is not None:
            self.test_set = self._matching(full, hp.test_path, "test")
        if hp.val_path is not None:
            self.train_set, self.val_set = full, self._matching(full, hp.val_path, "validation")
        elif hp.num_val:
            train_idx, val_idx = seeded_split(len(full), hp.num_val, hp.seed)
            self.train_set, self.val_set = Subset(full, train_idx), Subset(full, val_idx)
        else:
            self.train_set = full

    @staticmethod
    def _matching(full: ShardDataset, path: str, split: str) -> ShardDataset:
        shards = ShardDataset(path)
        if shards.manifest["tokenizer"] != full.manifest["tokenizer"] or shards.image_size != full.image_size:
            raise ValueError(f"the {split} shards at {path} were made with another tokenizer or "
                             f"image size than {full.path}")
        return shards

    def train_dataloader(self) -> DataLoader:
        self.setup()
        hp = self.hparams
        return shuffled_loader(self, self.train_set, hp.seed, hp.batch_size, hp.num_workers,
                               collate_fn=self.worker_collate())

    def val_dataloader(self) -> DataLoader | list:
        self.setup()
        if self.val_set is None:
            return []  # validation disabled
        return data_loader(self.val_set, batch_size=self.hparams.batch_size, shuffle=False,
                          num_workers=self.hparams.num_workers, collate_fn=self.worker_collate())

    def test_dataloader(self) -> DataLoader:
        self.setup()
        if self.test_set is None:
            raise ValueError("ShardDataModule has no test set: set data.init_args.test_path to a "
                             "shard directory (`unigen tokenize --split heldout ...`)")
        return data_loader(self.test_set, batch_size=self.hparams.batch_size, shuffle=False,
                          num_workers=self.hparams.num_workers, collate_fn=self.worker_collate())

    def predict_dataloader(self) -> DataLoader:
        """``unigen predict`` reads the test shards, as the other data modules read their test set."""
        return self.test_dataloader()

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if not self._checked:  # the model's tokenizer is loaded by now (configure_model ran)
            module = self.trainer.lightning_module if self.trainer is not None else None
            tokenizer = getattr(module, "image_tokenizer", None)
            if not isinstance(tokenizer, ImageTokenizer):
                raise ValueError(f"cannot check the shards at {self.hparams.path} against the model: "
                                 f"it has no image_tokenizer (set data.init_args.check_tokenizer: "
                                 "false to skip the check)")
            check_tokenizer(self.manifest, tokenizer, self.hparams.path)
            self._checked = True
        return batch


__all__ = ["DistributedEpochSampler", "SHARD_SOURCES", "ShardDataModule", "ShardDataset",
           "check_tokenizer", "read_manifest", "save_reconstruction_grid", "seeded_permutation",
           "tokenizer_fingerprint", "tokenizer_info", "write_shards"]
