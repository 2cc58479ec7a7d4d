"""tagger: audio tagging toolkit.

The public API (docs/api.md): `tagger.load(path)` gives a `Tagger` that predicts and embeds;
`tagger.import_checkpoint`, `tagger.train`, `tagger.resume` and `tagger.evaluate` do what the CLI commands do,
`tagger.store_event_rule` keeps a tuned event rule in a checkpoint;
`tagger.hear` is the HEAR API. Importing the package stays cheap: the API loads (with torch) on first use.
"""

from tagger.errors import TaggerError
from tagger.version import __version__

_API = ("Event", "EventRule", "Label", "Prediction", "Tagger", "evaluate", "import_checkpoint", "info", "load",
        "resume", "store_event_rule", "teach", "train")
__all__ = ["TaggerError", "__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from tagger import api

        return getattr(api, name)
    raise AttributeError(f"module 'tagger' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
