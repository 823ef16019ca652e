"""The README's library example runs and gives the numbers it prints in its comment."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_library_example_runs(capsys):
    text = README.read_text()
    section = text[text.index("## Library API") :]
    code = section[
        section.index("```python") + len("```python") : section.index("```", section.index("```python") + 9)
    ]
    exec(compile(code, "README.md", "exec"), {})
    printed = [float(v) for v in capsys.readouterr().out.split()]
    claimed = [float(v) for v in re.search(r"# ([\d.]+) ([\d.]+):", code).groups()]
    assert len(printed) == 2
    assert all(abs(p - c) < 0.01 for p, c in zip(printed, claimed, strict=True)), (printed, claimed)
