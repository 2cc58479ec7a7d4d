"""The third-party exporters and runtimes: imported on use (one install hint when missing), and kept quiet."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

from tagger.errors import TaggerError

_INSTALL_HINT = "pip install 'tagger[export]'"


def _require(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise TaggerError(f"this export needs the {package} package: {_INSTALL_HINT}") from None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence exporter chatter (progress prints, tracer and deprecation warnings); errors still raise."""
    import io
    import logging

    names = ("torch.onnx", "torch.export", "torch._export", "torch._dynamo", "torch._guards", "torch.fx",
             "torch._subclasses", "torch.utils._sympy", "onnxscript")
    loggers = [logging.getLogger(n) for n in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
