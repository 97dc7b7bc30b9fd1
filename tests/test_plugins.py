"""Your own base model, from any folder, through the installed `metaselector` command."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
TINY = ('embedding_dim = 4\ndeepfm_hidden = [8]\n[pretrain]\nepochs = 1\nbatch_size = 256\n'
        '[meta]\nepochs = 1\nselector_hidden = [8]\n')


def _command() -> str:
    script = Path(sys.executable).parent / "metaselector"
    return str(script) if script.exists() else shutil.which("metaselector")


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["mymodels:WideDeep", "lib/mymodels.py:WideDeep"])
def test_plugin_model_trains_and_scores_from_a_temporary_folder(tmp_path, spec):
    folder = tmp_path / ("lib" if spec.startswith("lib/") else "")
    folder.mkdir(exist_ok=True)
    shutil.copy(ROOT / "examples" / "wide_deep.py", folder / "mymodels.py")
    (tmp_path / "run.toml").write_text(f'models = ["LR", "{spec}"]\n' + TINY)
    train = subprocess.run([_command(), "train", "--dataset", "movielens-1m", "--data-dir", str(FIXTURES / "ml-1m"),
                            "--config", "run.toml", "--out", "model", "--quiet", "--threads", "1"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr
    (tmp_path / "h.csv").write_text("user,item,rating,timestamp\n1,1193,5,978300760\n1,661,3,978302109\n")
    (tmp_path / "c.csv").write_text("user,item,timestamp\n1,914,978301968\n")
    command = [_command(), "score", "--model", "model", "--history", "h.csv", "--candidates", "c.csv"]
    refused = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "not a registered model" in refused.stderr
    scored = subprocess.run([*command, "--model-class", spec], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600)
    assert scored.returncode == 0, scored.stderr
    header, row = scored.stdout.strip().splitlines()
    assert header.split(",")[-4:] == ["probability", "weight_LR", f"weight_{spec}", "adapted"]
    assert 0 < float(row.split(",")[3]) < 1


def test_unknown_plugin_file_is_a_one_line_error(tmp_path):
    (tmp_path / "run.toml").write_text('models = ["LR", "nowhere.py:Model"]\n')
    result = subprocess.run([_command(), "train", "--config", "run.toml", "--out", "m"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "nowhere.py" in result.stderr and "Traceback" not in result.stderr
