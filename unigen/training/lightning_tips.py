"""Lightning's output that a user cannot act on, kept out of every unigen run's output: its
litlogger / litmodels advertisements, and one deprecation warning that torch raises inside
Lightning's own code."""

from __future__ import annotations

import logging
import warnings


# Lightning's advertisements, logged at INFO on every run: "💡 Tip: ... try installing
# [litlogger](...) to enable LitLogger ..." (trainer/connectors/logger_connector, whenever no
# LitLogger is configured) and "... try installing [litmodels](...) to enable
# LitModelCheckpoint ..." (trainer/connectors/callback_connector, at fit start).  Only records
# holding one of these are dropped.
LIGHTNING_TIPS = ("try installing [litlogger]", "try installing [litmodels]")
# the loggers rank_zero_info writes to: lightning_utilities' module logger, which each of
# Lightning's rank_zero modules replaces by its own when it is imported
_RANK_ZERO_LOGGERS = ("lightning_utilities.core.rank_zero",
                      "lightning.pytorch.utilities.rank_zero",
                      "lightning.fabric.utilities.rank_zero",
                      "pytorch_lightning.utilities.rank_zero",
                      "lightning_fabric.utilities.rank_zero")


class LightningTipFilter(logging.Filter):
    """Drops the log records of Lightning's litlogger / litmodels tips (:data:`LIGHTNING_TIPS`),
    and nothing else."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is not ours to judge
            return True
        return not any(tip in message for tip in LIGHTNING_TIPS)


def quiet_lightning_tips() -> None:
    """Install :class:`LightningTipFilter` on the loggers Lightning's ``rank_zero_info`` writes to
    (a logger's filters see the records logged to it, before any handler or propagation); once."""
    names = list(_RANK_ZERO_LOGGERS)
    try:
        from lightning_utilities.core import rank_zero

        names.append(rank_zero.log.name)  # the one in use now
    except (ImportError, AttributeError):
        pass
    for name in dict.fromkeys(names):
        logger = logging.getLogger(name)
        if not any(isinstance(f, LightningTipFilter) for f in logger.filters):
            logger.addFilter(LightningTipFilter())


# Lightning 2.6.6 (the newest release) builds ``LeafSpec()`` in ``lightning/pytorch/utilities/
# _pytree.py``, which recent torch (2.14 here) answers with this FutureWarning on every fit
# (Lightning-AI/pytorch-lightning#21326).  Only a warning raised from that module is ignored:
# the same deprecation from anyone else's code still shows.
PYTREE_DEPRECATION = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
PYTREE_MODULE = r"lightning\.pytorch\.utilities\._pytree"


def quiet_lightning_pytree_warning() -> None:
    """Ignore :data:`PYTREE_DEPRECATION` when Lightning's ``_pytree`` module raises it."""
    warnings.filterwarnings("ignore", message=PYTREE_DEPRECATION, category=FutureWarning,
                            module=PYTREE_MODULE)
