"""Reading Lightning checkpoints safely.

Checkpoints are loaded with ``torch.load(weights_only=True)``: tensors, numbers, strings and plain
containers only, so a checkpoint from a stranger cannot run code.  Each unigen module writes its
class path into the checkpoint so ``unigen export`` knows what to rebuild; only classes inside the
``unigen`` package are accepted.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

CLASS_KEY = "unigen_module_class"


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format: a zip archive opens with a local file header


def check_archive(path: Path) -> None:
    """Raise one line naming ``path`` (and the bad member) unless every member of the checkpoint's
    zip archive matches its CRC-32.  torch's reader does not check them, so bytes overwritten on
    disk or in a copy would otherwise load as silently wrong weights.  Reads the whole file once
    (about as fast as the disk: docs/reliability.md, "Safe weights")."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise ValueError(f"checkpoint {path} is truncated or corrupt: its zip archive cannot be "
                         f"read ({err})") from None
    if bad is not None:
        # torch.save puts every record under a folder named after the file it wrote (for unigen's
        # atomic writes a temporary name): the record's own name is what identifies it
        member = bad.split("/", 1)[-1]
        raise ValueError(f"checkpoint {path} is corrupt: member {member} does not match its CRC-32 "
                         "(damaged on disk or in a copy)")


def _unsafe_detail(err: pickle.UnpicklingError) -> str:
    """What torch's weights-only unpickler refused (e.g. ``GLOBAL posix.system``), without its
    advice to retry with ``weights_only=False``, which would run the file's code."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    found = [ln for ln in lines if "GLOBAL" in ln or ln.lower().startswith("unsupported")]
    return f" ({found[0]})" if found else ""


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A Lightning checkpoint's contents, on the CPU, read with ``weights_only=True`` after its zip
    CRCs are checked; one ``ValueError`` line naming the file when it is not a checkpoint, is
    truncated or corrupt, or holds objects that could run code."""
    path = Path(path)
    if not path.is_file():
        if Path(path).is_dir():  # a pipeline or run folder: say so, not "not found"
            raise ValueError(f"{path} is a directory; a checkpoint is a .ckpt file (e.g. "
                             f"{Path(path) / 'checkpoints' / 'last.ckpt'})")
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with open(path, "rb") as fh:
        head = fh.read(len(ZIP_MAGIC))
    # torch.save writes a zip archive (older versions: a pickle, first byte 0x80); say that anything
    # else is not a checkpoint, rather than torch's advice about unpickling
    if head == ZIP_MAGIC:
        check_archive(path)
    elif head[:1] != b"\x80":
        raise ValueError(f"not a Lightning checkpoint: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"refusing to load {path}: it holds objects other than weights and plain "
                         f"data, which could run code when unpickled{_unsafe_detail(err)}") from None
    except (RuntimeError, EOFError) as err:
        raise ValueError(f"cannot read checkpoint {path} (truncated or corrupt): "
                         f"{str(err).splitlines()[0]}") from None


def module_class_of(checkpoint: dict[str, Any]) -> str | None:
    """The LightningModule class a checkpoint was written by (``unigen`` modules record it; a
    LightningCLI run records its ``class_path`` in the hyper-parameters), or None if unknown."""
    recorded = checkpoint.get(CLASS_KEY)
    if isinstance(recorded, str):
        return recorded
    cli = (checkpoint.get("hyper_parameters") or {}).get("_class_path")
    return cli if isinstance(cli, str) else None


def check_state_shapes(own: dict[str, Any], state_dict: dict[str, Any], hint: str) -> None:
    """One line naming the first tensor whose shape differs between a checkpoint's ``state_dict``
    and the model's own (torch would print a page of size mismatches); ``hint`` says what to
    check."""
    wrong = [k for k, v in state_dict.items()
             if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        k = wrong[0]
        raise ValueError(f"checkpoint weights do not fit this model: {k} is "
                         f"{list(state_dict[k].shape)} in the checkpoint, {list(own[k].shape)} "
                         f"here ({len(wrong)} tensors differ; {hint})")


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
    # a starting point that only loads weights (the checkpoint's own replace them) may be gone by now
    for name in getattr(cls, "weights_only_init_args", ()):
        if name in hparams:
            hparams[name] = None
    params = inspect.signature(cls).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        # a subclass may record settings it fixes for its base (reward fine-tuning's tasks): as
        # Lightning's load_from_checkpoint, each class gets the arguments it takes
        hparams = {k: v for k, v in hparams.items() if k in params}
    module = cls(**hparams)
    if hasattr(module, "configure_model"):
        module.configure_model()
    optional = tuple(getattr(module, "optional_state_prefixes", ()))
    state = {k: v for k, v in ckpt["state_dict"].items() if not (optional and k.startswith(optional))}
    module.load_state_dict(state)
    return module.eval()
