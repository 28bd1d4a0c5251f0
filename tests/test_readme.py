"""The README's runnable example runs as printed."""

from __future__ import annotations

import math
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_ten_line_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    example = blocks[0]
    assert len(example.strip().splitlines()) <= 14
    namespace: dict = {}
    exec(compile(example, str(README), "exec"), namespace)
    assert math.isfinite(float(namespace["loss"]))
    opt = namespace["opt"]
    projected = [s for s in opt.state.values() if "proj_side" in s]
    assert len(projected) == 2 * 7  # q, k, v, o, gate, up, down in each of the 2 layers
    assert all(s["step"] == 3 for s in projected)
    assert isinstance(next(iter(opt.state.values()))["step"], int)
