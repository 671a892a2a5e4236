"""LoRA adapters for ``nn.Linear`` (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language
Models").

A wrapped layer computes ``W x + (alpha / r) B A x`` with ``A`` [r, in] Kaiming-uniform and ``B``
[out, r] zero, so an adapted model starts out identical to its base and only ``A``, ``B`` train.
Adapters are saved alone (``adapter_config.json`` + ``adapter_model.safetensors``, the file names of
``peft``), loaded back onto a base model, and merged into it (``W + (alpha / r) B A``), after which
the model is a plain network again with the adapted outputs.

Targets are ``fnmatch`` patterns over the names of the model's linear layers, or the presets of
:data:`LORA_TARGETS` named after the unified transformer's layout (``attention``, ``mlp``, ``head``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unigen import io
from unigen.registry import Registry
from unigen.saved_config import check_saved_config

FORMAT_VERSION = 1
CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"

# preset name -> patterns over linear-layer names of unigen.modules.transformer.UnifiedTransformer
LORA_TARGETS: Registry[tuple[str, ...]] = Registry("LoRA target preset")
LORA_TARGETS.register("attention")(("blocks.*.attn.qkv", "blocks.*.attn.proj"))
LORA_TARGETS.register("mlp")(("blocks.*.mlp.gate_up", "blocks.*.mlp.down"))
LORA_TARGETS.register("head")(("head.*",))
LORA_TARGETS.register("all_linear")(("*",))


@dataclass
class LoRAConfig:
    """Adapter hyperparameters.  ``targets``: preset names (:data:`LORA_TARGETS`) or patterns;
    ``seed`` draws the initial ``A`` matrices (``B`` starts at zero)."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["attention"])
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must lie in [0, 1), got {self.dropout}")
        if not self.targets:
            raise ValueError("LoRA needs at least one target (a preset name or a pattern)")
        self.targets = list(self.targets)

    def patterns(self) -> list[str]:
        return [p for t in self.targets for p in (LORA_TARGETS.get(t) if t in LORA_TARGETS else (t,))]


class LoRALinear(nn.Module):
    """``base(x) + (alpha / rank) * B(A(dropout(x)))`` around a frozen ``nn.Linear``."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRA wraps nn.Linear layers, got {type(base).__name__}")
        self.base = base.requires_grad_(False)
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        w = base.weight
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, dtype=w.dtype, device=w.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=w.dtype, device=w.device))
        # nn.Linear's own init for A (as in the LoRA reference code); B = 0 keeps outputs unchanged
        a = torch.empty(self.lora_a.shape, dtype=torch.float32)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        with torch.no_grad():
            self.lora_a.copy_(a)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + F.linear(F.linear(self.dropout(x), self.lora_a), self.lora_b) * self.scaling

    def delta_weight(self) -> Tensor:
        """``(alpha / rank) B A``: what merging adds to the base weight."""
        return (self.lora_b @ self.lora_a) * self.scaling

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` computing this layer's output (dropout off)."""
        base = self.base
        out = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                        device=base.weight.device, dtype=base.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(base.weight + self.delta_weight())
            if base.bias is not None:
                out.bias.copy_(base.bias)
        return out


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def _linear_names(model: nn.Module) -> list[str]:
    inside = set(lora_layers(model))
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and name.rpartition(".")[0] not in inside]


def resolve_targets(model: nn.Module, patterns: list[str]) -> list[str]:
    """Names of the linear layers matched by ``patterns``; a pattern that matches none is an error."""
    linear = _linear_names(model)
    chosen: set[str] = set()
    for pattern in patterns:
        hits = [n for n in linear if fnmatchcase(n, pattern)]
        if not hits:
            shown = ", ".join(linear[:6]) + (", ..." if len(linear) > 6 else "")
            raise ValueError(f"LoRA target {pattern!r} matches no linear layer of "
                             f"{type(model).__name__} (its linear layers: {shown}; presets: "
                             f"{', '.join(LORA_TARGETS.names())})")
        chosen.update(hits)
    return [n for n in linear if n in chosen]


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def apply_lora(model: nn.Module, config: LoRAConfig, names: list[str] | None = None) -> list[str]:
    """Wrap the targeted linear layers (or exactly ``names``) in :class:`LoRALinear`, in place.
    Only the wrapped layers' base weights are frozen here; choose what else trains with
    :func:`unigen.training.finetune.freeze`.  Returns the wrapped names."""
    if lora_layers(model):
        raise ValueError(f"{type(model).__name__} already has LoRA adapters; merge or reload the "
                         "base model before adding new ones")
    names = resolve_targets(model, config.patterns()) if names is None else list(names)
    linear = set(_linear_names(model))
    missing = [n for n in names if n not in linear]
    if missing:
        raise ValueError(f"LoRA layers {missing[:3]} are not linear layers of {type(model).__name__}")
    generator = torch.Generator().manual_seed(config.seed)
    for name in names:  # in model order, so the initial A matrices depend only on the seed
        base = model.get_submodule(name)
        # in the base layer's mode: an adapter added to a model in eval() draws no dropout
        adapter = LoRALinear(base, config.rank, config.alpha, config.dropout, generator).train(base.training)
        _set_module(model, name, adapter)
    return names


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The adapter weights alone: ``<layer>.lora_a`` / ``<layer>.lora_b``."""
    return {f"{name}.{part}": getattr(layer, part).detach()
            for name, layer in lora_layers(model).items() for part in ("lora_a", "lora_b")}


def merge_lora(model: nn.Module) -> list[str]:
    """Replace every :class:`LoRALinear` by its merged ``nn.Linear``, in place; returns the names."""
    layers = lora_layers(model)
    for name, layer in layers.items():
        _set_module(model, name, layer.merged())
    return list(layers)


def state_fingerprint(state: dict[str, Tensor], meta: dict[str, Any] | None = None) -> str:
    """SHA-256 over tensor names, dtypes, shapes and bytes (+ JSON ``meta``): identifies weights
    independently of where and how they were saved."""
    digest = hashlib.sha256(json.dumps(meta or {}, sort_keys=True).encode())
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def base_fingerprint(model: nn.Module) -> str:
    """Fingerprint of the model's weights without adapters (as if every LoRA layer were unwrapped)."""
    unwrap = {f"{name}.base.": f"{name}." for name in lora_layers(model)}
    state = {}
    for key, value in model.state_dict().items():
        layer, _, leaf = key.rpartition(".")
        if f"{layer}." in unwrap.values() and leaf in ("lora_a", "lora_b"):
            continue
        prefix = next((p for p in unwrap if key.startswith(p)), None)
        state[unwrap[prefix] + key[len(prefix):] if prefix else key] = value
    return state_fingerprint(state)


def save_lora(model: nn.Module, config: LoRAConfig, path: str | os.PathLike,
              trained_tasks: list[str] | None = None) -> None:
    """Write the adapters alone (and the ``trained_tasks`` they learned, which a merged pipeline
    adds to its base's); the directory is complete or absent."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no LoRA adapters to save")
    meta = {"format_version": FORMAT_VERSION, "type": "lora", **asdict(config),
            "target_modules": list(layers), "base_fingerprint": base_fingerprint(model)}
    if trained_tasks is not None:
        meta["trained_tasks"] = sorted(set(trained_tasks))
    with io.atomic_directory(path, marker=CONFIG_NAME) as tmp:
        io.write_json(tmp / CONFIG_NAME, meta)
        io.save_safetensors(lora_state_dict(model), tmp / WEIGHTS_NAME, config=meta)


def read_lora_config(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"LoRA adapter directory not found: {path}")
    meta = io.read_json(path / CONFIG_NAME, "LoRA adapter config")
    if meta.get("type") != "lora" or meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path / CONFIG_NAME} is not a unigen LoRA adapter of format version "
                         f"{FORMAT_VERSION} (found type {meta.get('type')!r}, version "
                         f"{meta.get('format_version')!r})")
    return meta


def load_lora(model: nn.Module, path: str | os.PathLike, check_base: bool = True) -> LoRAConfig:
    """Add the adapters saved at ``path`` to ``model`` (its base weights untouched).  With
    ``check_base`` the model must hold the base weights the adapters were trained on."""
    path = Path(path)
    meta = read_lora_config(path)
    check_saved_config(path / CONFIG_NAME, meta, path / WEIGHTS_NAME)  # e.g. an edited alpha
    if check_base and base_fingerprint(model) != meta["base_fingerprint"]:
        raise ValueError(f"the LoRA adapter at {path} was trained on other base weights than this "
                         f"{type(model).__name__} (fingerprint {meta['base_fingerprint'][:12]} vs "
                         f"{base_fingerprint(model)[:12]}); load the base model it was made for")
    config = LoRAConfig(**{k: meta[k] for k in ("rank", "alpha", "dropout", "targets", "seed")})
    apply_lora(model, config, meta["target_modules"])
    state = io.load_safetensors(path / WEIGHTS_NAME)
    own = lora_state_dict(model)
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"{path / WEIGHTS_NAME} does not match {CONFIG_NAME}: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    wrong = [k for k in own if own[k].shape != state[k].shape]
    if wrong:
        raise ValueError(f"{path / WEIGHTS_NAME}: {wrong[0]} is {list(state[wrong[0]].shape)}, the "
                         f"model needs {list(own[wrong[0]].shape)}")
    layers = lora_layers(model)
    with torch.no_grad():
        for key, value in state.items():
            name, _, part = key.rpartition(".")
            getattr(layers[name], part).copy_(value)
    return config


__all__ = ["LORA_TARGETS", "LoRAConfig", "LoRALinear", "apply_lora", "base_fingerprint",
           "load_lora", "lora_layers", "lora_state_dict", "merge_lora", "read_lora_config",
           "resolve_targets", "save_lora", "state_fingerprint"]
