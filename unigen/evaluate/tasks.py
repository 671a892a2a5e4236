"""Evaluation tasks (:data:`EVAL_TASKS`: ``t2i``, ``caption``, ``vqa``, ``fill``): generate a
batch, turn it into records (and images for the image metrics).

Text-to-image prompts of the shapes world are scored GenEval-style (Ghosh et al., 2023) by the
pixel checker (:mod:`unigen.data.checker`); FID (Heusel et al., 2017) compares generated images with
the data's real images on a local feature extractor.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

from unigen.data.checker import caption_attribute_recall, caption_fact_precision, check
from unigen.evaluate.config import TaskSettings
from unigen.evaluate.data import EvalSample
from unigen.evaluate.record_metrics import RECORD
from unigen.metrics import CAPTION, COMPOSITIONAL, DISTRIBUTION, TEXT_IMAGE, VQA
from unigen.registry import Registry


@dataclass
class BatchOutput:
    records: list[dict[str, Any]]
    images: Tensor | None = None  # generated images (t2i), [B, 3, H, W] in [0, 1], on the device


@dataclass(frozen=True)
class TaskSpec:
    """How an evaluation task runs: ``generate(pipe, settings, samples, seeds, checks)`` makes a
    batch (``checks``: the costly per-sample checks asked for, e.g. ``"compositional"``); the
    metric kinds it feeds from records and from images; how its sample grid is captioned."""

    generate: Callable[..., BatchOutput]
    record_kinds: tuple[str, ...]
    image_kinds: tuple[str, ...] = ()
    grid_text: Callable[[Mapping[str, Any]], str] = lambda r: ""
    grid_from_generated: bool = False  # grid shows generated images (else the data's images)
    method: str = ""  # the pipeline method that decodes the task (its defaults fill unset settings)
    needs: tuple[str, ...] = ()  # EvalSample texts every sample must have (checked up front)
    # the step count a UnifiedPipeline's ``method`` uses when given none and its signature says
    # None (the default is computed inside the method)
    default_steps: Callable[[Any], int] | None = None
    # tasks whose outputs this task's generation or metrics read: a sweep reuses this task's
    # results from an earlier point only when those tasks are the same computation there too
    inputs_from: tuple[str, ...] = ()
    # the sampler ``method`` uses when given none and its signature says None
    default_sampler: Callable[[Any], str] | None = None
    # fields its records hold beyond every task's (``model_calls``...), which record metrics that
    # any task may list (``task = None``) can read
    record_fields: tuple[str, ...] = ()


EVAL_TASKS: Registry[TaskSpec] = Registry("eval task")


def sampling_kwargs(settings: TaskSettings) -> dict[str, Any]:
    """Pipeline keyword arguments of a task's sampler settings (sampler and num_steps only when
    set: otherwise the pipeline's default for the task)."""
    out = dict(guidance_scale=settings.guidance_scale, sampler_kwargs=dict(settings.sampler_kwargs),
               guidance_kwargs=dict(settings.guidance_kwargs), use_cache=settings.use_cache,
               cuda_graphs=settings.cuda_graphs)
    for key in ("sampler", "num_steps"):
        if getattr(settings, key) is not None:
            out[key] = getattr(settings, key)
    return out


def _base_record(task: str, sample: EvalSample, seed: int, calls: int) -> dict[str, Any]:
    """What every record holds: which sample, its seed and the network calls it cost."""
    return {"task": task, "index": sample.index, "seed": seed, "model_calls": int(calls)}


def verdict_fields(result: Any) -> dict[str, Any]:
    """A record's fields of a shapes-checker verdict (:class:`unigen.data.checker.CheckResult`):
    what ``compositional_accuracy`` and ``empty_images`` read."""
    return {"correct": result.correct, "category": result.category,
            "attributes": result.attributes, "detected": len(result.detections),
            "empty": not result.detections, "named": result.named,
            "unrequested": result.unrequested, "exact": result.exact}


def _generate_t2i(pipe, settings: TaskSettings, samples: Sequence[EvalSample], seeds: list[int],
                  checks: set[str]) -> BatchOutput:
    prompts = [s.prompt for s in samples]
    # only when asked: a pipeline without self-verification (the AR baseline) takes the rest
    best_of = ({"candidates": settings.candidates, "verify_masks": settings.verify_masks}
               if settings.candidates > 1 else {})
    images, calls = pipe.text_to_image(prompts, seed=seeds, output="tensor", return_calls=True,
                                       **sampling_kwargs(settings), **best_of)
    images = images.float().clamp(0, 1)
    records = []
    for sample, seed, image, n in zip(samples, seeds, images, calls):
        record = {**_base_record("t2i", sample, seed, n), "prompt": sample.prompt}
        if "compositional" in checks:
            try:
                result = check(image.cpu(), sample.prompt)
            except ValueError as err:
                raise ValueError(f"compositional_accuracy needs prompts of the shapes grammar; "
                                 f"sample {sample.index}: {err}") from None
            record.update(verdict_fields(result))
        records.append(record)
    return BatchOutput(records, images)


def _generate_caption(pipe, settings: TaskSettings, samples: Sequence[EvalSample], seeds: list[int],
                      checks: set[str]) -> BatchOutput:
    images = torch.stack([s.image for s in samples])
    captions, calls = pipe.caption(images, seed=seeds, return_calls=True,
                                   **sampling_kwargs(settings))
    records = []
    for sample, seed, text, n in zip(samples, seeds, captions, calls):
        record = {**_base_record("caption", sample, seed, n), "caption": text,
                  "references": list(sample.references)}
        if sample.scene is not None:
            record.update(fact_precision=caption_fact_precision(text, sample.scene),
                          attribute_recall=caption_attribute_recall(text, sample.scene))
        records.append(record)
    return BatchOutput(records)


def _generate_vqa(pipe, settings: TaskSettings, samples: Sequence[EvalSample], seeds: list[int],
                  checks: set[str]) -> BatchOutput:
    missing = [s.index for s in samples if not s.question or not s.answer]
    if missing:
        raise ValueError(f"tasks.vqa needs a question and an answer for every sample; sample "
                         f"{missing[0]} has none")
    images = torch.stack([s.image for s in samples])
    answers, calls = pipe.answer(images, [s.question for s in samples], seed=seeds,
                                 return_calls=True, **sampling_kwargs(settings))
    return BatchOutput([{**_base_record("vqa", s, seed, n), "question": s.question,
                         "prediction": a, "answer": s.answer, "kind": s.question_kind}
                        for s, seed, a, n in zip(samples, seeds, answers, calls)])


def blank_words(caption: str, words: set[str], tokenizer: Any) -> tuple[str, list[int]]:
    """``caption`` with each word of ``words`` (case-insensitive) replaced by one ``_`` per token
    it takes, and the indices of the blanked words."""
    out, blanked = [], []
    for i, word in enumerate(caption.split()):
        if word.lower() in words:
            out.append(" ".join(["_"] * max(1, len(tokenizer.encode(word)))))
            blanked.append(i)
        else:
            out.append(word)
    return " ".join(out), blanked


def _generate_fill(pipe, settings: TaskSettings, samples: Sequence[EvalSample], seeds: list[int],
                   checks: set[str]) -> BatchOutput:
    """Each caption with its attribute words blanked (``fill_words``; the shapes world's colours
    by default), filled in with the real image as context (:meth:`UnifiedPipeline.infill`); a
    blank counts as right when its word comes back exactly.  Captions with no such word are
    recorded with no blanks and no decode."""
    from unigen.data.shapes import COLORS

    words = {w.lower() for w in (settings.fill_words or COLORS)}
    tokenizer = pipe.space.text_tokenizer
    templates = [blank_words(s.prompt, words, tokenizer) for s in samples]
    todo = [i for i, (_, blanked) in enumerate(templates) if blanked]
    filled: dict[int, tuple[str, int]] = {}
    if todo:
        out, calls = pipe.infill(torch.stack([samples[i].image for i in todo]),
                                 [templates[i][0] for i in todo], seed=[seeds[i] for i in todo],
                                 output="codes", return_calls=True, **sampling_kwargs(settings))
        filled = {i: (text, n) for i, text, n in zip(todo, out.texts, calls)}
    records = []
    for i, (sample, seed) in enumerate(zip(samples, seeds)):
        template, blanked = templates[i]
        text, calls = filled.get(i, (sample.prompt, 0))
        truth, said = sample.prompt.split(), text.split()
        # a word per word: a fill that changed the word count gets no blank right
        right = (sum(said[j].lower() == truth[j].lower() for j in blanked)
                 if len(said) == len(truth) else 0)
        records.append({**_base_record("fill", sample, seed, calls), "prompt": sample.prompt,
                         "template": template, "filled": text, "blanks": len(blanked),
                         "fill_correct": right})
    return BatchOutput(records)


def _t2i_grid_text(record: Mapping[str, Any]) -> str:
    if "correct" in record:  # the shapes checker's verdict
        return f"{'OK' if record['correct'] else 'NO'} {record['prompt']}"
    if "class_correct" in record:  # class_accuracy's classifier: what it saw when it disagrees
        seen = "" if record["class_correct"] else f" (seen: {record['class_predicted']})"
        return f"{'OK' if record['class_correct'] else 'NO'} {record['prompt']}{seen}"
    return record["prompt"]


def _caption_steps(pipe: Any) -> int:
    return pipe.space.sequence.max_text_len  # at most one call per caption token


def _answer_steps(pipe: Any) -> int:
    from unigen.pipeline import ANSWER_STEPS

    return ANSWER_STEPS


EVAL_TASKS.register("t2i")(TaskSpec(_generate_t2i, (COMPOSITIONAL, RECORD),
                                    (DISTRIBUTION, TEXT_IMAGE), _t2i_grid_text,
                                    grid_from_generated=True, method="text_to_image",
                                    needs=("prompt",)))
EVAL_TASKS.register("caption")(TaskSpec(_generate_caption, (CAPTION, RECORD),
                                        grid_text=lambda r: r["caption"], method="caption",
                                        default_steps=_caption_steps))
EVAL_TASKS.register("fill")(TaskSpec(
    _generate_fill, (RECORD,), grid_text=lambda r: f"{r['filled']} ({r['fill_correct']}/"
                                                     f"{r['blanks']}; {r['template']})",
    method="infill", needs=("prompt",), default_sampler=lambda pipe: "confident",
    default_steps=_caption_steps))  # blanks alone decode as a caption does
EVAL_TASKS.register("vqa")(TaskSpec(
    _generate_vqa, (VQA, RECORD),
    # the verdict first: the grid cuts long texts after three lines
    grid_text=lambda r: f"{r['prediction'] or '-'} (truth: {r['answer']}) {r['question']}",
    method="answer", needs=("question", "answer"), default_steps=_answer_steps))


# the training tasks that teach each eval task (a segment task is taught by its own name)
TAUGHT_BY = {"t2i": ("t2i", "joint"), "caption": ("caption", "joint"), "vqa": ("vqa",),
             "fill": ("caption", "infill", "joint")}


def untrained_tasks(pipe: Any, names: Sequence[str]) -> dict[str, list[str]]:
    """The eval tasks among ``names`` that no task the pipeline recorded training on teaches,
    each with the tasks it did train (``{}`` when the pipeline recorded none: unknown)."""
    trained = getattr(pipe, "trained_tasks", None)
    if trained is None:
        return {}
    return {name: list(trained) for name in names if not set(TAUGHT_BY.get(name, (name,))) & set(trained)}


def settings_used(pipe: Any, task: str, settings: TaskSettings) -> dict[str, Any]:
    """``settings`` as the run used them, for the results: an unset sampler or step count is named
    by the default of the pipeline method that decodes the task (None where that method takes no
    such argument, or where its default is computed inside a pipeline other than unigen's)."""
    from unigen.evaluate.segment_tasks import eval_task
    from unigen.pipeline import UnifiedPipeline

    used = dataclasses.asdict(settings)
    spec = eval_task(task)
    method = getattr(pipe, spec.method, None)
    params = inspect.signature(method).parameters if method else {}
    for key in ("sampler", "num_steps"):
        param = params.get(key)
        if used[key] is None and param is not None and param.default is not inspect.Parameter.empty:
            used[key] = param.default
    if not isinstance(pipe, UnifiedPipeline):
        return used
    if used["num_steps"] is None and spec.default_steps is not None:
        used["num_steps"] = spec.default_steps(pipe)
    if used["sampler"] is None and spec.default_sampler is not None:
        used["sampler"] = spec.default_sampler(pipe)
    return used
