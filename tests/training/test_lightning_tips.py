"""`unigen fit` drops Lightning's litlogger / litmodels tips, and no other message."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from unigen import cli
from unigen.training import lightning_tips as tips

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "debug" / "tokenizer_fsq_debug.yaml"
# the tips as lightning/pytorch/trainer/connectors/{logger,callback}_connector.py log them
LITLOGGER_TIP = ("💡 Tip: For seamless cloud logging and experiment tracking, try installing "
                 "[litlogger](https://pypi.org/project/litlogger/) to enable LitLogger, which logs "
                 "metrics and artifacts automatically to the Lightning Experiments platform.")
LITMODELS_TIP = ("💡 Tip: For seamless cloud uploads and versioning, try installing "
                 "[litmodels](https://pypi.org/project/litmodels/) to enable LitModelCheckpoint, "
                 "which syncs automatically with the Lightning model registry.")


def _emitting_logger() -> logging.Logger:
    from lightning_utilities.core import rank_zero

    return rank_zero.log  # the logger rank_zero_info writes to


@pytest.fixture
def messages():
    """The messages rank_zero_info logs during the test, with no tip filter installed at its
    start (an earlier CLI test may have installed one; it is put back afterwards)."""
    loggers = [logging.getLogger(n) for n in {*tips._RANK_ZERO_LOGGERS, _emitting_logger().name}]
    removed = {lg: [f for f in lg.filters if isinstance(f, tips.LightningTipFilter)]
               for lg in loggers}
    for lg, filters in removed.items():
        for f in filters:
            lg.removeFilter(f)
    seen: list[str] = []

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    log = _emitting_logger()
    handler, level = Recorder(level=logging.INFO), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield seen
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        for lg in loggers:
            for f in [f for f in lg.filters if isinstance(f, tips.LightningTipFilter)]:
                lg.removeFilter(f)
        for lg, filters in removed.items():
            for f in filters:
                lg.addFilter(f)


def _tiny_fit(tmp_path) -> None:
    L.Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
              enable_model_summary=False, max_steps=1, limit_train_batches=1,
              limit_val_batches=0).fit(BoringModel())


def _tips(seen: list[str]) -> list[str]:
    return [m for m in seen if "litlogger" in m or "litmodels" in m]


def test_the_filter_drops_exactly_the_two_tips():
    def kept(message: str, name: str = "lightning.pytorch.utilities.rank_zero") -> bool:
        record = logging.LogRecord(name, logging.INFO, __file__, 1, message, None, None)
        return tips.LightningTipFilter().filter(record)

    assert not kept(LITLOGGER_TIP) and not kept(LITMODELS_TIP)
    assert kept("GPU available: False, used: False")
    assert kept("💡 Tip: some other advice")
    assert kept("Restoring states from the checkpoint path at last.ckpt")


def test_lightnings_tips_are_dropped_and_its_other_messages_kept(tmp_path, messages):
    _tiny_fit(tmp_path / "a")
    # the premise: this Lightning logs both tips on a plain fit (else the filter has gone stale)
    assert sorted(_tips(messages)) == sorted([LITLOGGER_TIP, LITMODELS_TIP]), messages
    assert any(m.startswith("GPU available") for m in messages)
    messages.clear()
    tips.quiet_lightning_tips()
    tips.quiet_lightning_tips()  # installed once however often asked
    assert sum(isinstance(f, tips.LightningTipFilter) for f in _emitting_logger().filters) == 1
    _tiny_fit(tmp_path / "b")
    rank_zero_info("an unrelated message")
    assert _tips(messages) == []
    assert any(m.startswith("GPU available") for m in messages)  # Lightning's other info
    assert "an unrelated message" in messages


def _pytree_filters() -> list:
    import warnings

    return [f for f in warnings.filters if f[1] is not None and "LeafSpec" in f[1].pattern]


def test_the_lightning_verbs_install_the_filter(tmp_path, monkeypatch, messages):
    import warnings

    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():  # restores the filters afterwards
        for f in _pytree_filters():  # an earlier CLI test's
            warnings.filters.remove(f)
        cli.instantiate_recipe(RECIPE, ["--data.init_args.num_train", "16",
                                        "--data.init_args.batch_size", "4"])
        assert [f[0] for f in _pytree_filters()] == ["ignore"]
    # the trainer is made: its logger set-up logged the litlogger tip, which was dropped
    assert any(m.startswith("GPU available") for m in messages), messages
    assert _tips(messages) == []


def test_the_pytree_deprecation_is_quiet_from_lightning_only():
    import warnings

    from lightning.pytorch.utilities._pytree import _tree_flatten

    message = "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)`"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        _tree_flatten({"a": 1})  # Lightning's own call, as every fit makes it
        loud = [str(w.message) for w in seen]
        tips.quiet_lightning_pytree_warning()
        _tree_flatten({"a": 1})
        warnings.warn_explicit(message, FutureWarning, "mine.py", 1, module="mine")
        warnings.warn_explicit("another future", FutureWarning, "_pytree.py", 1,
                               module="lightning.pytorch.utilities._pytree")
    quiet = [str(w.message) for w in seen][len(loud):]
    if not any("LeafSpec" in m for m in loud):
        pytest.skip("this torch / Lightning pair raises no pytree deprecation")
    assert quiet == [message, "another future"]
