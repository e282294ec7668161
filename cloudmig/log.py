"""Logging set-up for the CLI and the agent; library modules only call getLogger(__name__).

    from cloudmig import log
    log.setup(verbose=True)
"""

from __future__ import annotations

import logging
import os

LOGGER_NAME = "cloudmig"


def setup(verbose: bool = False, *, stream=None) -> None:
    level = logging.DEBUG if verbose else getattr(
        logging, os.environ.get("CLOUDMIG_LOG_LEVEL", "WARNING").upper(), logging.WARNING)
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level)
    if not logger.handlers:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    logger.propagate = False
