"""Extensions from outside the package: modules named in ``SEG_EXT_PLUGINS`` (comma-separated, importable),
imported once, before a registry is first looked up. Such a module registers what it brings with
``seg_ext.methods.register_method`` and ``seg_ext.data.formats.register_format``, so the unchanged tools (and
checkpoints made with it) know its methods and formats. Like pytest's ``PYTEST_PLUGINS``.
"""

from __future__ import annotations

import importlib
import os

from seg_ext.errors import SegExtError

ENV = "SEG_EXT_PLUGINS"
_loaded: set[str] = set()


def load_plugins() -> None:
    """Import the modules ``SEG_EXT_PLUGINS`` names (each once).

    Raises:
        SegExtError: a module that cannot be imported, named in one sentence.
    """
    for name in (n.strip() for n in os.environ.get(ENV, "").split(",")):
        if not name or name in _loaded:
            continue
        _loaded.add(name)
        try:
            importlib.import_module(name)
        except ImportError as exc:
            _loaded.discard(name)
            raise SegExtError(f"{ENV} names module {name!r}, which cannot be imported ({exc}); expected an importable "
                              "module (on PYTHONPATH) that registers methods or formats") from None
