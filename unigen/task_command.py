"""``unigen task``: run a further modality's task (a registered
:class:`~unigen.diffusion.tasks.SegmentTask`: the layout's ``t2layout``, ``layout2i``,
``i2layout``, or a plugin's) from the command line, through ``UnifiedPipeline.run_task``.

Each given segment has its flag (``--text``, ``--image``, ``--<segment>``, or ``--input
SEGMENT=VALUE``); a task that predicts an image writes a captioned grid, the others JSON rows
(outputs through ``Modality.to_json`` and ``describe``), and the settings go beside them.  Every
check that needs no weights runs before the model loads.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

from unigen import commands, io
from unigen.commands import (GRID_FORMATS, _check_model_args, _check_out_file, _check_positive,
                             _common_model_args, _input_files, _load_images, _parse_sampler_args,
                             _refuse_autoregressive, _sampler_kwargs, _settings_path)

# the tasks that are not segment tasks, and the verb that runs each
TASK_VERBS = {"t2i": "generate", "caption": "caption", "vqa": "answer"}


def segment_tasks() -> dict[str, Any]:
    """The registered segment tasks by name (importing :mod:`unigen.modalities` registers the
    built-in modalities' tasks)."""
    from unigen.modalities import segment_tasks as registered

    return registered()


def _task_line(name: str, cls: Any) -> str:
    return (f"{name} ({' + '.join(cls.given) or 'nothing'} -> {' + '.join(cls.predicted)}; "
            f"sampler {cls.sampler or 'maskgit'})")


class _InputAction(argparse.Action):
    """Every input flag appends ``(segment, flag, value)`` to one list, so the inputs keep the
    command line's order across ``--layout`` and ``--input layout=...``; ``segment`` None is
    ``--input SEGMENT=VALUE``, split when the verb runs."""

    def __init__(self, option_strings, dest, segment: str | None = None, **kwargs) -> None:
        self.segment = segment
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        items = list(getattr(namespace, self.dest, None) or [])
        items.append((self.segment, option_string, values))
        setattr(namespace, self.dest, items)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The verb's options: one input flag per segment a registered segment task is given."""
    tasks = segment_tasks()
    _common_model_args(p, "the task's own (e.g. confident for i2layout), else maskgit")
    p.add_argument("--task", required=True,
                   help="a segment task: " + ", ".join(tasks) + " (listed below)")
    p.add_argument("--out", required=True,
                   help="a task that predicts an image: the captioned grid (.png, .jpg/.jpeg or "
                        ".webp), rows in NAME.json; any other task: the JSON rows; the settings "
                        "go to NAME.settings.json beside it")
    p.add_argument("--text", action=_InputAction, segment="text", dest="inputs", metavar="TEXT",
                   help="text input (repeatable)")
    p.add_argument("--image", action=_InputAction, segment="image", dest="inputs", metavar="PATH",
                   help="image input (repeatable)")
    named = []
    for segment in sorted({s for cls in tasks.values() for s in cls.given} - {"text", "image"}):
        users = ", ".join(n for n, cls in tasks.items() if segment in cls.given)
        try:
            p.add_argument(f"--{segment}", action=_InputAction, segment=segment, dest="inputs",
                           metavar="VALUE", help=f"{segment} input of {users}: a file or the item "
                           "itself (below; repeatable)")
            named.append(segment)
        except argparse.ArgumentError:  # a name the verb uses itself (--model...): --input only
            pass
    p.add_argument("--input", action=_InputAction, dest="inputs", metavar="SEGMENT=VALUE",
                   help="an input of any segment, as --SEGMENT VALUE (repeatable)")
    p.add_argument("--num-per-input", type=int, default=1,
                   help="samples per input, at least 1 (default 1; sample i uses seed + i)")
    p.add_argument("--guidance", type=float, default=1.0,
                   help="classifier-free guidance scale, >= 0 (default 1.0: no guidance)")
    p.add_argument("--resize", default="none",
                   help="--image: none | resize | center_crop | pad (default none: the image must "
                        "have the model's size)")
    p.add_argument("--convert", action="store_true",
                   help="--image: convert grayscale/RGBA inputs to RGB")
    example = f"--{named[0]}" if named else "--SEGMENT"
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = "\n".join([
        "segment tasks (given -> predicted; default sampler):",
        *(f"  {_task_line(n, cls)}" for n, cls in tasks.items()),
        "",
        "Inputs: one flag per segment the task is given (--text, --image, or a further modality's",
        f"segment, e.g. {example}; --input SEGMENT=VALUE is the same for any segment). Repeat a",
        "flag for more inputs; each segment needs the same number. A modality's VALUE is a file",
        "holding one item (as JSON, else its text), a .jsonl file of items (one JSON value a",
        "line), or the item itself (as JSON, else as text). A JSON list of rows holding the",
        "segment's key, as this verb writes them, gives each row's item: t2layout's --out feeds",
        "layout2i's --layout.",
        "",
        "Outputs: each row holds a sample's inputs, its outputs (a modality's as JSON, and its",
        "describe() text as SEGMENT_text) and its seed; one line per sample is printed (a task",
        "that predicts only an image: one line naming the files). The settings (task, seed,",
        "steps, sampler, model) go to NAME.settings.json.",
    ])


def _task_check(name: str) -> Any:
    """``--task``'s class: a registered segment task, else one line naming what to do."""
    tasks = segment_tasks()
    if name in tasks:
        return tasks[name]
    listed = "; ".join(_task_line(n, cls) for n, cls in tasks.items()) or "none"
    from unigen.diffusion.tasks import TASKS

    if name in TASKS:
        verb = TASK_VERBS.get(name)
        how = (f"run it with `unigen {verb}`" if verb else
               "it has no verb of its own (UnifiedPipeline's methods run it)")
        raise ValueError(f"--task {name} is not a segment task: {how}; `unigen task` runs the "
                         f"segment tasks: {listed}")
    raise ValueError(f"--task {name}: unknown task; the segment tasks are: {listed} (a plugin's "
                     "task needs its module: --plugin MODULE)")


def _task_paths(out: str, task: str, predicted: tuple[str, ...], reads: Sequence[Path] = ()
                ) -> tuple[Path, Path, Path | None, str | None]:
    """(rows JSON, settings JSON, grid image or None, its PIL format), refused up front."""
    path = _check_out_file(out, example="out.png" if "image" in predicted else "out.json", reads=reads)
    fmt = GRID_FORMATS.get(path.suffix.lower())
    if "image" in predicted:
        if fmt is None:
            raise ValueError(f"--out {path}: task {task!r} predicts an image, written as a "
                             f"captioned grid; use one of {', '.join(GRID_FORMATS)}")
        rows, grid = path.with_suffix(".json"), path
    else:
        if fmt is not None:
            raise ValueError(f"--out {path}: task {task!r} predicts {' + '.join(predicted)}, "
                             "written as JSON rows; give a .json path")
        rows, grid = path, None
    settings = _settings_path(path)
    for other, what in ((rows, "the rows file"), (settings, "the settings file")):
        _check_out_file(other, what, reads=reads)
    return rows, settings, grid, fmt


def _task_inputs(args: argparse.Namespace, given: tuple[str, ...], task: str
                 ) -> dict[str, list[tuple[str, str]]]:
    """``{segment: [(flag, value), ...]}`` from the input flags; a missing or unexpected one is one
    line naming the flags the task takes."""
    inputs: dict[str, list[tuple[str, str]]] = {}
    for segment, flag, value in args.inputs or []:
        if segment is None:  # --input SEGMENT=VALUE
            name, sep, rest = value.partition("=")
            if not sep or not name.strip():
                raise ValueError(f"--input expects SEGMENT=VALUE, got {value!r}")
            segment, value = name.strip(), rest
            flag = f"--input {segment}="
        inputs.setdefault(segment, []).append((flag, value))
    takes = " and ".join(_segment_flag(s) for s in given)
    for segment, values in inputs.items():
        if segment not in given:
            raise ValueError(f"{values[0][0].rstrip('=')}: task {task!r} is not given {segment!r}; "
                             f"it takes {takes}")
    missing = [s for s in given if s not in inputs]
    if missing:
        raise ValueError(f"task {task!r} is given {' and '.join(given)}: pass "
                         f"{_segment_flag(missing[0])}{' too' if inputs else ''} (repeatable)")
    return inputs


def _segment_flag(segment: str) -> str:
    return "--text TEXT" if segment == "text" else "--image PATH" if segment == "image" else \
        f"--{segment} VALUE"


def _input_label(flag: str, value: str, limit: int = 60) -> str:
    """How an error names one input: the flag and the value (a long literal item shortened, a
    file name never)."""
    shown = value
    if any(c.isspace() for c in value) or value[:1] in "{[\"":
        shown = " ".join(value.split())
        shown = shown if len(shown) <= limit else shown[:limit - 3] + "..."
    return f"{flag}{'' if flag.endswith('=') else ' '}{shown}"


def _parse_modality_value(flag: str, value: str, segment: str) -> tuple[list[Any], bool]:
    """The raw items of one modality input (file, .jsonl file or the item itself) and whether
    they came from a single JSON list (for a hint when the modality refuses it)."""
    import json

    label = _input_label(flag, value)
    path = Path(value)
    try:
        is_file, exists = path.is_file(), path.exists()
    except (OSError, ValueError):  # a long JSON text is no file name
        is_file = exists = False
    if exists and not is_file:
        raise ValueError(f"{label}: not a file (a directory?)")
    if is_file:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"{label}: cannot read the file ({err})") from None
        if path.suffix.lower() == ".jsonl":
            values = []
            for number, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        values.append(json.loads(line))
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{label}: line {number} is not JSON ({err.msg})") from None
            if not values:
                raise ValueError(f"{label}: the file holds no items (one JSON value a line)")
            return [_row_item(v, segment) for v in values], False
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            return [text.strip()], False  # one item as text: the modality reads (or refuses) it
    else:
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            looks_like_path = (not any(c.isspace() for c in value) and value[:1] not in "{[\""
                               and ("/" in value or "\\" in value or path.suffix[1:].isalnum()))
            if looks_like_path:
                raise ValueError(f"{label}: no such file (a {segment} input is a file or the "
                                 "item itself)") from None
            return [value], False
    rows = _row_items(parsed, segment)
    if rows is not None:
        return rows, False
    return [parsed], isinstance(parsed, list)


def _row_item(value: Any, segment: str) -> Any:
    """A row this verb wrote (a dict holding the segment's key) -> its item; else the value."""
    return value[segment] if isinstance(value, dict) and segment in value else value


def _row_items(value: Any, segment: str) -> list[Any] | None:
    if isinstance(value, dict) and segment in value:
        return [value[segment]]
    if isinstance(value, list) and value and all(isinstance(v, dict) and segment in v for v in value):
        return [v[segment] for v in value]
    return None


def _read_modality_inputs(modality: Any, segment: str, values: list[tuple[str, str]]
                          ) -> tuple[list[Any], list[Any], list[str]]:
    """Every input of one modality segment: (raw items, their decoded JSON form, descriptions),
    each checked by the modality's own ``encode``, its error naming the flag and value."""
    from unigen.errors import _first_line

    raw, as_json, described = [], [], []
    for flag, value in values:
        items, one_list = _parse_modality_value(flag, value, segment)
        try:
            decoded = modality.decode(modality.encode(items))
            as_json += [modality.to_json(item) for item in decoded]
            described += _describe(modality, decoded)
        except (ValueError, TypeError, KeyError, IndexError) as err:
            hint = (f" (several {segment} items: a .jsonl file, one a line, or repeat "
                    f"--{segment})" if one_list else "")
            raise ValueError(f"{_input_label(flag, value)}: {_first_line(err)}{hint}") from None
        raw += items
    return raw, as_json, described


def _describe(modality: Any, items: list[Any]) -> list[str]:
    """``Modality.describe`` of each item; an item it cannot describe (the shapes layout refuses
    an empty scene) is shown as its compact JSON."""
    import json

    try:
        return list(modality.describe(items))
    except (ValueError, TypeError, KeyError, IndexError):
        pass
    out = []
    for item in items:
        try:
            out.append(modality.describe([item])[0])
        except (ValueError, TypeError, KeyError, IndexError):
            out.append(json.dumps(modality.to_json(item), sort_keys=True, separators=(",", ":")))
    return out


def _check_modality_output(modality: Any, segment: str, task: str) -> None:
    """A predicted segment must decode to JSON data (``Modality.to_json``): checked on blank codes
    before any weight is read, so a modality that cannot be written fails first."""
    import torch

    try:
        for item in modality.decode(torch.zeros(1, *modality.shape, dtype=torch.long)):
            modality.to_json(item)
    except TypeError as err:
        raise ValueError(f"task {task!r} predicts {segment!r}, written as JSON: {err}") from None


def _model_segments(args: argparse.Namespace, task: str, given: tuple[str, ...],
                    predicted: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(pipeline.json's meta, the task's modalities)``, read without loading weights: a model
    lacking a segment, or a modality that cannot write its outputs, is one line."""
    from unigen.modalities import build_modalities
    from unigen.pipeline import read_pipeline_meta

    path, meta = read_pipeline_meta(args.model)
    spec = meta.get("modalities") or {}
    lacking = [s for s in (*given, *predicted) if s not in ("text", "image", *spec)]
    if lacking:
        raise ValueError(f"--model {args.model} has no {lacking[0]!r} segment, which task {task!r} "
                         f"needs (its modalities: {', '.join(spec) or 'none'})")
    try:
        modalities = build_modalities({k: v for k, v in spec.items() if k in (*given, *predicted)})
    except (KeyError, ValueError, TypeError) as err:
        raise type(err)(f"{err.args[0] if err.args else err} (named in {path / 'pipeline.json'})"
                        ) from None
    for segment in predicted:
        if segment in modalities:
            _check_modality_output(modalities[segment], segment, task)
    return meta, modalities


def _read_inputs(args: argparse.Namespace, task: str, given: tuple[str, ...],
                 inputs: dict[str, list[tuple[str, str]]], modalities: dict[str, Any],
                 image_size: Any) -> tuple[dict[str, Any], dict[str, list[Any]], dict[str, list[str]]]:
    """``(what run_task takes, what each row records of its input, how lines name it)``, one
    entry per input of each given segment; unequal counts are one line."""
    raw: dict[str, Any] = {}
    record: dict[str, list[Any]] = {}
    labels: dict[str, list[str]] = {}
    for segment in given:
        values = [v for _, v in inputs[segment]]
        if segment in ("text", "image"):
            raw[segment] = record[segment] = labels[segment] = values
        else:
            raw[segment], record[segment], labels[segment] = _read_modality_inputs(
                modalities[segment], segment, inputs[segment])
            record[f"{segment}_text"] = labels[segment]
    counts = {s: len(raw[s]) for s in given}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{_segment_flag(s).split()[0]}: {n}" for s, n in counts.items())
        raise ValueError(f"task {task!r}: the inputs hold different numbers of items ({listed}); "
                         "give one of each per sample")
    if "image" in given and isinstance(image_size, int):  # else read once the model is loaded
        raw["image"] = _load_images(raw["image"], image_size, args.resize, args.convert)
    return raw, record, labels


def _rows(args: argparse.Namespace, pipe: Any, out: dict[str, Any], given: tuple[str, ...],
          predicted: tuple[str, ...], record: dict[str, list[Any]], labels: dict[str, list[str]],
          grid_path: Path | None) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """One row per sample (its input's record, its outputs, its seed), the printed line and the
    grid caption of each."""
    k = args.num_per_input
    n = len(labels[given[0]]) * k
    described = {s: _describe(pipe.modalities[s], out[s]) for s in predicted if s in pipe.modalities}
    rows, printed, captions = [], [], []
    for i in range(n):
        j = i // k
        row: dict[str, Any] = {key: values[j] for key, values in record.items()}
        label = " + ".join(labels[s][j] for s in given)
        said = []
        for segment in predicted:
            if segment == "image":
                row["image"] = {"grid": str(grid_path), "cell": i}
            elif segment == "text":
                row["text"] = out["text"][i]
                said.append(out["text"][i])
            else:
                row[segment] = pipe.modalities[segment].to_json(out[segment][i])
                row[f"{segment}_text"] = described[segment][i]
                said.append(described[segment][i])
        row["seed"] = args.seed + i
        rows.append(row)
        printed.append(f"{label}: {' | '.join(said)}")
        captions.append(f"{label} -> {' | '.join(said)}" if said else label)
    return rows, printed, captions


def run(args: argparse.Namespace) -> None:
    """``unigen task``: check everything that needs no weights, load the model, run the task and
    write the rows (and the grid of a predicted image) with the settings beside them."""
    from unigen.sampling.guidance import check_scale
    from unigen.visual import captioned_grid

    _check_model_args(args)
    _check_positive(args.num_per_input, "--num-per-input")
    check_scale(args.guidance, "--guidance", negative=False)
    cls = _task_check(args.task)
    task, given, predicted = args.task, tuple(cls.given), tuple(cls.predicted)
    if not given:  # run_task takes the batch size from the inputs
        raise ValueError(f"task {task!r} is given no segment; `unigen task` runs tasks with inputs")
    rows_path, settings_path, grid_path, fmt = _task_paths(args.out, task, predicted, _input_files(args))
    _parse_sampler_args(args)
    inputs = _task_inputs(args, given, task)
    _refuse_autoregressive(args, "task")
    meta, modalities = _model_segments(args, task, given, predicted)
    raw, record, labels = _read_inputs(args, task, given, inputs, modalities,
                                       meta.get("image_size"))
    pipe = commands._pipeline(args)  # (looked up at call time: tests stub the loading)
    if "image" in given and not hasattr(raw["image"], "shape"):
        raw["image"] = _load_images(raw["image"], pipe.image_size, args.resize, args.convert)
    sampler = args.sampler or cls.sampler or "maskgit"
    kwargs = _sampler_kwargs(args, pipe, sampler)
    steps = 16 if args.steps is None else args.steps
    k = args.num_per_input
    batch = {s: v.repeat_interleave(k, 0) if hasattr(v, "repeat_interleave")
             else [x for x in v for _ in range(k)] for s, v in raw.items()}
    out = pipe.run_task(task, batch, num_steps=steps, sampler=sampler, guidance_scale=args.guidance,
                        seed=args.seed, output="tensor", progress=True, sampler_kwargs=kwargs)
    rows, printed, captions = _rows(args, pipe, out, given, predicted, record, labels, grid_path)
    if grid_path is not None:
        grid = captioned_grid(out["image"].cpu(), captions)
        with io.atomic_path(grid_path) as tmp:
            grid.save(tmp, format=fmt)
    io.write_json(rows_path, rows)
    settings = {"task": task, "given": list(given), "predicted": list(predicted),
                "inputs": {s: [v for _, v in inputs[s]] for s in given},
                "num_per_input": k, "seed": args.seed, "steps": steps, "sampler": sampler,
                "sampler_kwargs": kwargs, "guidance": args.guidance, "model": str(args.model),
                "rows": str(rows_path)}
    if grid_path is not None:
        settings["grid"] = str(grid_path)
    if "image" in given:
        settings.update(resize=args.resize, convert=args.convert)
    io.write_json(settings_path, settings)
    if grid_path is None or any(s != "image" for s in predicted):
        for line in printed:
            print(line)
    if grid_path is not None:
        n = len(rows)
        print(f"wrote {grid_path} ({n} image{'s' if n != 1 else ''}; rows in {rows_path}, "
              f"settings in {settings_path})")
