"""Known third-party noise, silenced where it is emitted (one exact message each, nothing broader).

- Lightning logs a "💡 Tip: ... litlogger" advert at every Trainer construction
  (``lightning.pytorch.utilities.rank_zero``, INFO).
- Lightning's own ``_pytree`` helper instantiates ``torch.utils._pytree.LeafSpec``, which torch
  deprecates with a FutureWarning at every fit; the call is Lightning's, not ours.

(The NumPy "non-writable array" warning and the "pooler.dense.* MISSING" load report are fixed
in our code: flip_ctr.data.preprocess.read_artifact, flip_ctr.models.plm._no_pooler_kwargs.)
"""

from __future__ import annotations

import logging
import warnings

LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _DropLitLoggerTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not (message.startswith("💡 Tip:") and "litlogger" in message)


_TIP_FILTER = _DropLitLoggerTip()


def silence_known_noise() -> None:
    """Idempotent; called by the CLI before anything imports Lightning."""
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if _TIP_FILTER not in logger.filters:
            logger.addFilter(_TIP_FILTER)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)


__all__ = ["silence_known_noise"]
