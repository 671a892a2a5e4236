"""What every unigen metric shares: a registry name, a ``kind`` that fixes its ``update`` signature,
and the update/compute/reset protocol of torchmetrics.

Metrics with tensor state subclass :class:`torchmetrics.Metric` (device moves, distributed sync).
Metrics whose state is Python objects (captions, checker results) subclass :class:`HostMetric`:
torchmetrics can only sync tensors, so they are computed in one process.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from unigen.registry import Registry

METRICS: Registry[type] = Registry("metric")

# kind -> the update signature an evaluation loop must call
DISTRIBUTION = "distribution"  # update(images [B,3,H,W] in [0,1], real: bool)
RECONSTRUCTION = "reconstruction"  # update(reconstruction, original), both [B,3,H,W] in [0,1]
TEXT_IMAGE = "text_image"  # update(images, texts: list[str])
CAPTION = "caption"  # update(candidates: list[str], references: list[list[str]])
VQA = "vqa"  # update(predictions: list[str], answers: list[str] | list[list[str]])
COMPOSITIONAL = "compositional"  # update(results: Sequence[objects with .correct and .category])
KINDS = (DISTRIBUTION, RECONSTRUCTION, TEXT_IMAGE, CAPTION, VQA, COMPOSITIONAL)

# A metric may also define a classmethod ``check_options(options, num_samples)`` that raises
# ValueError (naming the option) for constructor options it cannot work with; ``num_samples`` is
# how many samples it will be fed, None when not known yet.  ``unigen eval`` calls it while checking
# a recipe, before any network is loaded or image generated, and the constructor should call it too
# (:func:`check_option_values` for the common cases).
#
# An image-fed metric that judges each sample (a classifier's verdict, say) may also define
# ``sample_fields() -> list[dict]``: one dict per sample of its last ``update`` call, which
# ``unigen eval`` adds to those samples' records, so a run shows which samples failed and two runs
# can be compared sample by sample (benchmarks/paired_eval.py).


def collective_device(group: Any = None) -> torch.device | None:
    """The device a collective on ``group`` needs its tensors on: the current CUDA device for an
    NCCL-only group (NCCL gathers no host tensors), else None (gloo, or a group with a backend per
    device, takes them where they are)."""
    if torch.distributed.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return None


def gather_on_collective_device(result: Tensor, group: Any = None) -> list[Tensor]:
    """torchmetrics' ``gather_all_tensors`` for a metric whose state stays on the host under an
    NCCL process group (a Lightning DDP run's validation metrics, kept off the model's device):
    the state travels through the GPU and comes back, where the plain gather raises "No backend
    type associated with device type cpu" (torchmetrics issue 2477).  Set as ``dist_sync_fn``."""
    from torchmetrics.utilities.distributed import gather_all_tensors

    device = collective_device(group)
    if device is None or result.device == device:
        return gather_all_tensors(result, group)
    return [t.to(result.device) for t in gather_all_tensors(result.to(device), group)]


def register_metric(name: str, kind: str):
    """Class decorator: register under ``name`` (the word a recipe lists) with update ``kind``."""
    if kind not in KINDS:
        raise ValueError(f"unknown metric kind {kind!r}; known: {', '.join(KINDS)}")

    def wrap(cls: type) -> type:
        cls.metric_name = name
        cls.kind = kind
        return METRICS.register(name)(cls)

    return wrap


class HostMetric(ABC):
    """update/compute/reset over Python-object state, kept on the host."""

    metric_name: str = ""
    kind: str = ""
    higher_is_better: bool = True

    def __init__(self) -> None:
        self.reset()

    @abstractmethod
    def reset(self) -> None: ...

    @abstractmethod
    def update(self, *args: Any, **kwargs: Any) -> None: ...

    @abstractmethod
    def compute(self) -> Tensor | dict[str, Tensor]: ...

    def to(self, *args: Any, **kwargs: Any) -> "HostMetric":
        # state is plain Python, so there is nothing to move; present so loops can move every metric
        return self


def check_same_length(a: Sequence, b: Sequence, what_a: str, what_b: str) -> None:
    for value, what in ((a, what_a), (b, what_b)):
        if isinstance(value, (str, bytes)):  # would pair up character by character
            raise ValueError(f"{what} must be a list with one entry per sample, got the single "
                             f"string {value!r}")
    if len(a) != len(b):
        raise ValueError(f"got {len(a)} {what_a} but {len(b)} {what_b}; "
                         "they must pair up one to one")


# torchmetrics.Metric takes these keywords (besides objects no recipe can write, e.g. a process
# group) through ``**kwargs``; any other keyword it refuses
_TORCHMETRICS_OPTIONS = ("compute_on_cpu", "dist_sync_on_step", "sync_on_compute",
                         "compute_with_cache")


def metric_options(cls: type) -> tuple[list[str], list[str]]:
    """``(accepted, required)`` keyword options of metric class ``cls``: the named parameters of its
    constructor and of the base constructors its ``**kwargs`` reach."""
    accepted: list[str] = []
    required: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        if klass.__module__.startswith("torchmetrics"):
            accepted += [k for k in _TORCHMETRICS_OPTIONS if k not in accepted]
            break
        if klass is object:
            break
        params = list(inspect.signature(init).parameters.values())[1:]  # not self
        for p in params:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in accepted:
                accepted.append(p.name)
                if p.default is p.empty:
                    required.append(p.name)
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return accepted, required


def option_value(cls: type, options: Mapping[str, Any], name: str) -> Any:
    """``options[name]``, else the default of that constructor parameter of ``cls``."""
    if name in options:
        return options[name]
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        param = inspect.signature(init).parameters.get(name) if init is not None else None
        if param is not None and param.default is not param.empty:
            return param.default
    raise KeyError(f"{cls.__name__} has no option {name!r}")


def check_option_values(metric: str, options: Mapping[str, Any], least: Mapping[str, int],
                        at_most_samples: Sequence[str] = (), num_samples: int | None = None
                        ) -> None:
    """Each option ``name`` of ``least`` must be an integer >= ``least[name]``; those named in
    ``at_most_samples`` also <= ``num_samples`` (when known). Errors start with ``metric``."""
    for name, low in least.items():
        value = options[name]
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{metric}: option {name} must be an integer, got {value!r}")
        if value < low:
            raise ValueError(f"{metric}: option {name} must be >= {low}, got {value}")
        if num_samples is not None and name in at_most_samples and value > num_samples:
            raise ValueError(f"{metric}: option {name}={value} is more than the {num_samples} "
                             f"samples it would be computed on; lower {name}")


def build_metric(name: str, shared: Mapping[str, Any] | None = None, **kwargs: Any):
    """Instantiate metric ``name``; entries of ``shared`` (e.g. one loaded ``extractor`` or ``clip``
    used by several metrics) are passed only to metrics whose constructor takes them."""
    cls = METRICS.get(name)
    params = inspect.signature(cls.__init__).parameters
    for key, value in (shared or {}).items():
        if key in params and key not in kwargs:
            kwargs[key] = value
    return cls(**kwargs)


def metric_entries(spec: Sequence[str | Mapping[str, Any]] | Mapping[str, Mapping[str, Any] | None]
                   ) -> list[tuple[str, dict[str, Any]]]:
    """``(name, kwargs)`` pairs of a recipe's metric list: ``[fid, kid]``,
    ``[{name: kid, subset_size: 100}]`` or ``{fid: {}, kid: {subset_size: 100}}``, in order; a
    malformed entry or a name listed twice is one clear error."""
    items: list[tuple[str, dict[str, Any]]] = []
    if isinstance(spec, Mapping):
        items = [(name, dict(kw or {})) for name, kw in spec.items()]
    else:
        for entry in spec:
            if isinstance(entry, str):
                items.append((entry, {}))
            elif isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
                kw = dict(entry)
                items.append((kw.pop("name"), kw))
            else:
                raise ValueError(f"a metric entry must be a name or a mapping with 'name', "
                                 f"got {entry!r}")
    names = [n for n, _ in items]
    if len(set(names)) != len(names):
        raise ValueError(f"a metric is listed twice in {names}")
    return items


def build_metrics(spec: Sequence[str | Mapping[str, Any]] | Mapping[str, Mapping[str, Any] | None],
                  shared: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Build the metrics a recipe lists (forms: :func:`metric_entries`). Returns
    ``{name: metric}`` in recipe order."""
    items = metric_entries(spec)
    return {name: build_metric(name, shared, **kw) for name, kw in items}
