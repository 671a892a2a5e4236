"""Evaluation of the tasks of further modalities: every registered
:class:`~unigen.diffusion.tasks.SegmentTask` (``t2layout``, ``layout2i``, ``i2layout``, or a
plugin's) is an eval task with no entry of its own in :data:`EVAL_TASKS`.

A sample feeds each segment the task is given from its fields: ``text`` its prompt, ``image`` its
image, a modality's segment the sample's field of that modality's name (``Modality.field``: the
shapes data's ``scene`` is the layout's).  The records hold what was given and predicted (a
modality's items as ``Modality.to_json`` writes them and as ``describe`` reads them; a predicted
item's codes too, which keep what decoding drops, e.g. malformed layout cells), plus:

- ``reference`` check (``code_accuracy``, ``segment_exact_match``, ``layout_*``): the predicted
  codes against the codes of the sample's own item (``Modality.scores``), e.g. scene parsing;
- ``compositional`` check (``compositional_accuracy``): a predicted image against the prompt, or,
  with no text given, against the given item itself (layout to image: exactly the scene?); a
  predicted item against the prompt through its picture (``Modality.render``: is a plan from a
  caption true to it?), as the shapes checker reads text-to-image samples (GenEval-style).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

from unigen.data.checker import check
from unigen.diffusion.tasks import TASKS, SegmentTask
from unigen.evaluate.config import TaskSettings
from unigen.evaluate.data import EvalSample
from unigen.evaluate.record_metrics import RECORD
from unigen.evaluate.tasks import (EVAL_TASKS, BatchOutput, TaskSpec, _base_record,
                                   sampling_kwargs, verdict_fields)
from unigen.metrics import COMPOSITIONAL, DISTRIBUTION
from unigen.modalities import segment_tasks

_SPECS: dict[str, TaskSpec] = {}
# what a record of a task predicting a modality holds when the reference check ran
SCORE_FIELDS = ("code_accuracy", "exact_match")


def _is_segment_task(name: str) -> bool:
    return name in segment_tasks()


def eval_task_names() -> list[str]:
    """Every task an eval recipe may name: :data:`EVAL_TASKS`, then the segment tasks."""
    return [*EVAL_TASKS.names(), *(n for n in segment_tasks() if n not in EVAL_TASKS)]


def is_eval_task(name: str) -> bool:
    return name in EVAL_TASKS or _is_segment_task(name)


def eval_task(name: str) -> TaskSpec:
    """The :class:`TaskSpec` of an eval task: registered, or made for a segment task."""
    if name in EVAL_TASKS or not _is_segment_task(name):
        return EVAL_TASKS.get(name)  # (an unknown name: the registry's error listing the known)
    if name not in _SPECS:
        _SPECS[name] = _segment_spec(name, TASKS.get(name))
    return _SPECS[name]


def _segment_spec(name: str, cls: type[SegmentTask]) -> TaskSpec:
    draws = "image" in cls.predicted
    reads = [s for s in cls.predicted if s not in ("text", "image")]
    return TaskSpec(
        generate=lambda *args: _generate(name, cls, *args),
        record_kinds=(COMPOSITIONAL, RECORD),
        image_kinds=(DISTRIBUTION,) if draws else (),
        grid_text=_grid_text,
        grid_from_generated=True,  # the drawn image, the picture of the item or the input image
        method="run_task", needs=("prompt",) if "text" in cls.given else (),
        default_sampler=lambda pipe: cls.sampler or "maskgit",
        record_fields=SCORE_FIELDS if reads else ())


def _modality(pipe: Any, segment: str, task: str):
    modalities = getattr(pipe, "modalities", None) or {}
    if segment not in modalities:
        raise ValueError(f"tasks.{task} needs the {segment!r} segment, which this model lacks (its "
                         f"modalities: {list(modalities) or 'none'})")
    return modalities[segment]


def _field(sample: EvalSample, modality: Any, segment: str, task: str) -> Any:
    value = getattr(sample, modality.field, None) if modality.field else None
    if value is None:
        raise ValueError(f"tasks.{task} needs each sample's {segment} ({type(modality).__name__} "
                         f"reads the data's {modality.field!r} field); sample {sample.index} has "
                         "none")
    return value


def _generate(task: str, cls: type[SegmentTask], pipe: Any, settings: TaskSettings,
              samples: Sequence[EvalSample], seeds: list[int], checks: set[str]) -> BatchOutput:
    if not callable(getattr(pipe, "run_task", None)):
        raise ValueError(f"tasks.{task} runs a further modality's task, which needs a masked "
                         f"(unified) pipeline with that modality; got {type(pipe).__name__}")
    inputs: dict[str, Any] = {}
    for segment in cls.given:
        if segment == "text":
            inputs["text"] = [s.prompt for s in samples]
        elif segment == "image":
            inputs["image"] = torch.stack([s.image for s in samples])
        else:
            modality = _modality(pipe, segment, task)
            inputs[segment] = [_field(s, modality, segment, task) for s in samples]
    out, calls = pipe.run_task(task, inputs, seed=seeds, output="tensor", return_calls=True,
                               **sampling_kwargs(settings))
    records = [_base_record(task, s, seed, n) for s, seed, n in zip(samples, seeds, calls)]
    for segment, items in inputs.items():
        if segment == "text":
            _put(records, "prompt", items)
        elif segment != "image":
            modality = pipe.modalities[segment]
            _put(records, segment, [modality.to_json(i) for i in items])
            _put(records, f"{segment}_text", modality.describe(items))
    reads = [s for s in cls.predicted if s not in ("text", "image")]
    if "text" in out:
        _put(records, "text", out["text"])
    for segment in reads:
        modality = pipe.modalities[segment]
        _put(records, segment, [modality.to_json(i) for i in out[segment]])
        _put(records, f"{segment}_text", modality.describe(out[segment]))
        _put(records, f"{segment}_codes", out[f"{segment}_codes"].cpu().tolist())  # as predicted
        if "reference" in checks:
            truth = modality.encode([_field(s, modality, segment, task) for s in samples])
            prefix = f"{segment}_" if len(reads) > 1 else ""
            for record, scores in zip(records, modality.scores(out[f"{segment}_codes"], truth)):
                record.update({prefix + k: v for k, v in scores.items()})
    pictures = _pictures(task, pipe, out, inputs, reads, samples, "compositional" in checks)
    if "compositional" in checks:
        targets = _check_targets(task, pipe, inputs)
        for record, picture, target in zip(records, pictures, targets):
            try:
                result = check(picture.float().cpu(), target)
            except (ValueError, TypeError) as err:
                raise ValueError(f"compositional_accuracy on tasks.{task} needs shapes-world "
                                 f"prompts or scenes; sample {record['index']}: {err}") from None
            record.update(verdict_fields(result))
    return BatchOutput(records, pictures)


def _put(records: list[dict[str, Any]], key: str, values: Sequence[Any]) -> None:
    for record, value in zip(records, values):
        record[key] = value


def _pictures(task: str, pipe: Any, out: Mapping[str, Any], inputs: Mapping[str, Any],
              reads: list[str], samples: Sequence[EvalSample], checking: bool) -> torch.Tensor:
    """One image per sample: the one drawn; else the picture of the predicted item when the
    checker reads it (required then); else, for the grid, the input image, the item's picture or
    the sample's own image (with the prediction in words under it)."""
    if "image" in out:
        return out["image"].float().clamp(0, 1)
    picture = pipe.modalities[reads[0]].render(out[reads[0]], pipe.image_size) if reads else None
    if checking and picture is None:
        raise ValueError(f"compositional_accuracy on tasks.{task} checks a picture of each "
                         f"predicted {reads[0] if reads else 'item'}, and "
                         f"{type(pipe.modalities[reads[0]]).__name__ if reads else 'the task'} "
                         "draws none (Modality.render)")
    if checking or ("image" not in inputs and picture is not None):
        return picture.float()
    if "image" in inputs:
        return inputs["image"].float()
    return torch.stack([s.image for s in samples])


def _check_targets(task: str, pipe: Any, inputs: Mapping[str, Any]) -> list[Any]:
    """What each picture is checked against: the prompt, else the given item (canonical: decoded
    from its own codes, e.g. a shapes Scene for an exhaustive check)."""
    if "text" in inputs:
        return list(inputs["text"])
    given = [s for s in inputs if s != "image"]
    if not given:
        raise ValueError(f"compositional_accuracy on tasks.{task}: the task is given neither text "
                         "nor an item of a modality to check its output against")
    modality = pipe.modalities[given[0]]
    return modality.decode(modality.encode(list(inputs[given[0]])))


def _grid_text(record: Mapping[str, Any]) -> str:
    """The verdict (when checked), then what the image does not show: the prediction in words
    under an input image, else the prompt (or the given item in words) under the drawn image or
    the picture of the predicted item."""
    verdict = "" if "correct" not in record else ("OK " if record["correct"] else "NO ")
    task = TASKS.get(record["task"])
    if "image" in task.given:
        words = [record[k] for k in (*(f"{s}_text" for s in task.predicted), "text") if k in record]
    else:
        words = [record[k] for k in ("prompt", *(f"{s}_text" for s in task.given)) if k in record]
    return verdict + (words[0] if words else "")
