"""The README's Python example ("In Python") runs as written."""

import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
def test_readme_library_example_runs(tmp_path, capsys):
    text = README.read_text()
    section = text[text.index("### In Python"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(code, "README.md", "exec"), {})
    finally:
        os.chdir(cwd)
    printed = capsys.readouterr().out
    assert (tmp_path / "my-model" / "manifest.json").is_file()
    assert printed.strip().splitlines()[-1] == "False"
