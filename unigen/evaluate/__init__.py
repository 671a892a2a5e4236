"""``unigen eval``: generate with a trained pipeline, score what it made, write a report.

An evaluation recipe (plain YAML, :class:`EvalConfig`) names the data, the tasks (``t2i``,
``caption``, ``vqa``) with their sampler settings, and each task's metrics (names from
:data:`unigen.metrics.METRICS` or :data:`RECORD_METRICS`). :func:`evaluate_pipeline` then streams
the data in batches (sample ``i`` with seed ``seed + i``), writes one record per sample and task
as it goes, keeps only running state for image metrics (a killed run resumes where it stopped),
and writes ``results.json``, ``report.md``, the per-category plot and sample grids.  Text-to-image
prompts of the shapes world are scored GenEval-style by the pixel checker, FID on a local feature
extractor. :func:`sweep_pipeline` runs a grid of settings and plots each metric against each
numeric parameter, generating a task only at the points that change what decides it (the others
take it from an earlier point).

One module per job; each imports only the ones listed before it:

- :mod:`~unigen.evaluate.config`: the recipe schema (dataclasses checked by type hints);
- :mod:`~unigen.evaluate.data`: data sources (:data:`EVAL_DATA`) yielding :class:`EvalSample`;
- :mod:`~unigen.evaluate.record_metrics`: metrics fed from per-sample records
  (:data:`RECORD_METRICS`);
- :mod:`~unigen.evaluate.tasks`: tasks (:data:`EVAL_TASKS`): generate a batch, make its records;
- :mod:`~unigen.evaluate.recipe`: reading a recipe, checking it against the registries, overrides;
- :mod:`~unigen.evaluate.persistence`: a run's records, image-metric state and identity (and each
  task's, which a sweep matches to reuse a task an earlier point computed);
- :mod:`~unigen.evaluate.loop`: the evaluation loop (:func:`evaluate_pipeline`);
- :mod:`~unigen.evaluate.sweep`: sweeps and metric-vs-parameter curves (:func:`sweep_pipeline`);
- :mod:`~unigen.evaluate.command`: the ``unigen eval`` entry point (:func:`evaluate_model`).

Every name is re-exported here (``from unigen.evaluate import ...`` works as before), and importing
the package fills the three registries.
"""

from __future__ import annotations

from unigen.evaluate.config import (_RUN_ONLY_KEYS, EvalConfig, Resources, TaskSettings, _coerce,
                                    _from_mapping, _type_name)
from unigen.evaluate.data import (EVAL_DATA, EvalData, EvalSample, FashionMNISTEvalData,
                                  FolderEvalData, ShapesEvalData, _DatasetEvalData, build_data,
                                  data_options)
from unigen.evaluate.record_metrics import (RECORD, RECORD_METRICS, CaptionAttributeRecall,
                                            CaptionFactPrecision, ModelCalls, RecordMean,
                                            _feed_image_metrics, _feed_images, _feed_records,
                                            _Verdict, result_name)
from unigen.evaluate.tasks import (EVAL_TASKS, BatchOutput, TaskSpec, _base_record,
                                   _generate_caption, _generate_t2i, _generate_vqa,
                                   _t2i_grid_text, sampling_kwargs)
from unigen.evaluate.recipe import (_split_assignment, load_eval_config, metric_entries,
                                    metric_kind, parse_config, setting_paths, shared_arguments,
                                    with_setting)
from unigen.evaluate.persistence import (POINTS_DIR, RECORDS_NAME, RUN_NAME, SAMPLES_DIR,
                                         STATE_NAME, RecordLog, _fingerprint, _first_difference,
                                         _restore_state, _run_identity, _state_tensors,
                                         finished_task, model_fingerprint, pipeline_description,
                                         task_identities)
from unigen.evaluate.loop import (_RECORD_CHUNK, GRID_TILE_PIXELS, _chunks, _compute,
                                  _device_name, _load_png, _plan_tasks, _resume, _reuse_sources,
                                  _reuse_task, _run_task, _save_png, _shared_resources, _TaskRun,
                                  _write_grids, evaluate_pipeline)
from unigen.evaluate.sweep import (_affects, _is_headline, _point_label, _safe, check_sweep,
                                   parse_sweep, sweep_curves, sweep_pipeline)
from unigen.evaluate.command import _resolve_device, evaluate_model, print_summary


__all__ = [
    "EVAL_DATA", "EVAL_TASKS", "RECORD_METRICS", "EvalConfig", "EvalData", "EvalSample",
    "ModelCalls", "RecordMean", "Resources", "TaskSettings", "TaskSpec", "build_data",
    "evaluate_model", "evaluate_pipeline", "load_eval_config", "parse_config", "parse_sweep",
    "print_summary", "result_name",
    "check_sweep", "sweep_curves", "sweep_pipeline", "with_setting",
]
