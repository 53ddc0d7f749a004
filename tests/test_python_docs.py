"""docs/python.md's example, run exactly as written: a short fit from Python without the CLI."""

import re

from tests.helpers import ROOT

DOC = ROOT / "docs" / "python.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", text, flags=re.S | re.M)


def test_the_python_example_fits_and_validates(tmp_path, monkeypatch, capsys):
    (code,) = python_blocks(DOC.read_text())
    monkeypatch.chdir(tmp_path)  # its CSV logger writes ./runs
    scope: dict = {}
    exec(compile(code, str(DOC), "exec"), scope)
    trainer, metrics = scope["trainer"], scope["metrics"]
    assert trainer.global_step == 3 and scope["module"].rl_step == 3
    assert 0.0 <= metrics["val/acc"] <= 1.0
    assert f"greedy accuracy after 3 steps: {metrics['val/acc']:.2f}" in capsys.readouterr().out
    (run,) = (tmp_path / "runs" / "notebook").iterdir()
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "train/reward_mean" in header and "val/acc" in header
    assert (run / "token_weights" / "step_00001.html").is_file()
