"""Progress bars for a person at a terminal (model conversion, training, `route`): drawn on stderr, and only when
stderr is a terminal, so logs, pipes, files and CI output never see them and stdout is never touched."""
from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


def progress_bar(total: int | None, desc: str, unit: str = "it") -> Any:
    """A tqdm bar on stderr; a disabled one (every call a no-op) when stderr is not a terminal."""
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not sys.stderr.isatty(), leave=False,
                dynamic_ncols=True)
