"""The report's figures kept between writes: a figure is drawn again only when what it shows changed.

Drawing is most of the time a report takes once its libraries are imported (six figures through matplotlib's
SVG backend). ``index.html`` is written at the end of every study, again on ``--resume`` and by
``raylora report``; a figure whose inputs are the same (same trials, states, values, params) and whose
drawing code is the same (``drawn_by``: the page module's source and the plotting libraries' versions, so
an upgrade draws again) is read back instead. The cache is ``$RAYLORA_HOME/cache/figures/<digest>.html``,
one figure's HTML (its inline SVG, or the note shown instead) per file, named by a digest of the figure's
name, inputs and drawer; files unused for :data:`KEEP_DAYS` days are removed.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

from .. import environment
from ..files import write_atomic

KEEP_DAYS = 30


class FigureCache:
    """Figures by what they show: :meth:`get` draws one only when no figure with the same inputs is kept."""

    def __init__(self, folder: Path | None = None, drawn_by: str = ""):
        self.folder = folder or environment.home() / "cache" / "figures"
        self.drawn_by = drawn_by  # what draws the figures: another drawer's figures are not read back
        self.drawn = 0

    def get(self, name: str, inputs, draw: Callable[[], str]) -> str:
        """The HTML of figure ``name`` for ``inputs`` (anything JSON can show: trials, their values),
        from the cache or from ``draw()``."""
        key = json.dumps([name, inputs, self.drawn_by], default=str, sort_keys=True)
        path = self.folder / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.html"
        try:
            text = path.read_text()
            path.touch()  # used: kept another KEEP_DAYS
            return text
        except OSError:
            pass
        text = draw()
        self.drawn += 1
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_atomic(path, text)
        except OSError:
            pass  # a read-only home: drawn every time, as before
        return text

    def prune(self) -> None:
        """Remove figures nobody used for :data:`KEEP_DAYS` days."""
        cutoff = time.time() - KEEP_DAYS * 86400
        for path in self.folder.glob("*.html"):
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
            except OSError:
                pass
