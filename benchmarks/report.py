"""A benchmark's result table: printed, then saved (atomically, with its folder created) for the README."""

import os
from typing import List

from mindcv.io.atomic import atomic_write


def write_report(path: str, lines: List[str]) -> None:
    """Print ``lines`` and write them to ``path`` (replacing it only once the whole table is written)."""
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path) as f:
        f.write(text)
    print(f"wrote {path}", flush=True)
