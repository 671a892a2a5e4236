"""Reading Lightning checkpoints safely.

Checkpoints are loaded with ``torch.load(weights_only=True)``: tensors, numbers, strings and plain
containers only, so a checkpoint from a stranger cannot run code.  Each unigen module writes its
class path into the checkpoint so ``unigen export`` knows what to rebuild; only classes inside the
``unigen`` package are accepted.
"""

from __future__ import annotations

import importlib
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

CLASS_KEY = "unigen_module_class"


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with open(path, "rb") as fh:
        head = fh.read(1)
    # torch.save writes a zip archive (older versions: a pickle, first byte 0x80); say that anything
    # else is not a checkpoint, rather than torch's advice about unpickling
    if not (head == b"\x80" or zipfile.is_zipfile(path)):
        raise ValueError(f"not a Lightning checkpoint: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"refusing to load {path}: it holds objects other than weights and plain "
                         f"data, which could run code when unpickled ({str(err).splitlines()[0]})") from None
    except (RuntimeError, EOFError) as err:
        raise ValueError(f"cannot read checkpoint {path} (truncated or not a checkpoint): "
                         f"{str(err).splitlines()[0]}") from None


class RecordsClassPath:
    """Mixin for LightningModules: remember the class in every checkpoint."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CLASS_KEY] = f"{type(self).__module__}.{type(self).__qualname__}"


def load_module_from_checkpoint(path: str | os.PathLike):
    """Rebuild the LightningModule a checkpoint was written by, with its weights."""
    ckpt = read_checkpoint(path)
    target = ckpt.get(CLASS_KEY)
    if not isinstance(target, str) or not target.startswith("unigen."):
        raise ValueError(f"{path} was not written by a unigen module (no {CLASS_KEY!r} entry)")
    module_name, _, cls_name = target.rpartition(".")
    cls = getattr(importlib.import_module(module_name), cls_name)
    # LightningCLI adds private entries (_class_path, _instantiator) that are not constructor args
    hparams = {k: v for k, v in ckpt.get("hyper_parameters", {}).items() if not k.startswith("_")}
    spec = ckpt.get("unigen_tokenizer")
    if spec is not None:  # TokenizerModule: its tokenizer is an object, rebuilt from its config
        from unigen.tokenizers.base import IMAGE_TOKENIZERS

        hparams["tokenizer"] = IMAGE_TOKENIZERS.get(spec["type"])(**spec["config"])
    module = cls(**hparams)
    if hasattr(module, "configure_model"):
        module.configure_model()
    optional = tuple(getattr(module, "optional_state_prefixes", ()))
    state = {k: v for k, v in ckpt["state_dict"].items() if not (optional and k.startswith(optional))}
    module.load_state_dict(state)
    return module.eval()
