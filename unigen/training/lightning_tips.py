"""Lightning's litlogger / litmodels advertisements, kept out of every unigen run's output."""

from __future__ import annotations

import logging


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
