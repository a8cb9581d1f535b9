"""The README's two set-up commands: the main job runs (shortened), and CI runs the test command."""

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.conftest import TINY_MODEL, run_aiokd

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def command_after(marker: str) -> str:
    block = re.search(rf"<!-- {marker} -->\s*```bash\n(.*?)\n```", README, re.S)
    assert block, f"README has no {marker} block"
    return block.group(1).strip()


def test_ci_runs_the_readme_test_command():
    script = subprocess.run(
        ["bash", "-c", "sed -n '/<!-- test-command -->/,/```$/p' README.md | "
         "sed -n '/^```bash$/,/^```$/p' | sed '1d;$d'"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    assert script == command_after("test-command")
    assert "pytest" in script and "pip install" in script
    assert "sed -n '/<!-- test-command -->/" in (ROOT / ".ci" / "run").read_text()


FAST = {
    "train": ["--max-updates", "1", *TINY_MODEL, "model.enc_layers=6", "model.dec_layers=6",
              "distill.min_enc=2", "distill.min_dec=2", "train.max_tokens=1024"],
    "evaluate": ["--students", "2-2,6-6", "--beam", "1", "--no-latency"],
}
"""What shortens each step: a tiny model trained one update per stage, two students, greedy."""


@pytest.mark.slow
def test_main_command_runs(tmp_path):
    steps = [shlex.split(part.strip()) for part in command_after("main-command").split("&&")]
    aiokd_steps = [step[1:] for step in steps if step[0] == "aiokd"]
    assert [step[0] for step in aiokd_steps] == ["prepare", "train", "evaluate"]
    for step in aiokd_steps:
        result = run_aiokd(*step, *FAST.get(step[0], []), cwd=tmp_path, timeout=600)
        assert result.returncode == 0, f"aiokd {' '.join(step)}:\n{result.stderr[-3000:]}"
    train = aiokd_steps[1]
    run = tmp_path / train[train.index("--out") + 1]
    assert '"stage": 2' in (run / "log.jsonl").read_text()
    assert (run / "results.json").is_file()
