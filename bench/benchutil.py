"""What the benchmark scripts share (they run as ``python bench/NAME.py``,
so this folder is on ``sys.path``)."""

from __future__ import annotations

import json
from pathlib import Path


def write_json(result: dict, dest: str) -> None:
    """``--json``: the results as JSON on stdout (``-``) or in the file ``dest``."""
    text = json.dumps(result, indent=2)
    if dest == "-":
        print(text)
    else:
        Path(dest).write_text(text + "\n")
