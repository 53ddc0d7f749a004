"""The README is a front door: short, every repository path it names exists, and its YAML and
Python examples run as written."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from cepo.cli import cli_main

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MAX_LINES = 150


def tracked_top_level() -> set[str]:
    """The repository's top-level files and folders as git tracks them (``configs``, ``README.md``)."""
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return {line.split("/")[0] for line in out.splitlines()}


def named_paths(text: str, top: set[str]) -> set[str]:
    """Every word of ``text`` that names a repository path: it starts with a tracked top-level
    folder followed by ``/`` (``configs/default.yaml``, ``docs/``) or is a tracked top-level file.
    Link targets and words in code spans and blocks count alike; anchors (``#...``) are dropped."""
    names = set()
    for word in re.findall(r"[A-Za-z0-9_.\-/*]+", text):
        word = word.split("#")[0].rstrip(".")
        head = word.split("/")[0]
        if head in top and ("/" in word or (ROOT / word).is_file()):
            names.add(word)
    return names


def fenced(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def test_readme_is_at_most_150_lines():
    n = len(README.read_text().splitlines())
    assert n <= MAX_LINES, f"README.md has {n} lines; the front door keeps to {MAX_LINES} (move details to docs/)"


def test_every_path_the_readme_names_exists():
    names = named_paths(README.read_text(), tracked_top_level())
    assert {"configs/default.yaml", "docs/results.md", "scripts/run.sh", "CONTRIBUTING.md"} <= names  # the parser
    missing = sorted(n for n in names if not (any(ROOT.glob(n)) if "*" in n else (ROOT / n).exists()))
    assert not missing, f"README.md names paths that do not exist: {missing}"


def test_path_finder_sees_a_missing_path():
    """The check above can fail: a made-up path in a code span and in a link is reported."""
    text = "run `configs/credit/nope.yaml`, see [x](docs/nope.md#part) and `runs/<name>/` (not tracked)"
    names = named_paths(text, tracked_top_level())
    assert names == {"configs/credit/nope.yaml", "docs/nope.md"}


def test_readme_yaml_example_parses(tmp_path):
    """The README's YAML example composes on the default as written."""
    (block,) = fenced(README.read_text(), "yaml")
    config = tmp_path / "my_cepo.yaml"
    config.write_text(block)
    default = str(ROOT / "configs" / "default.yaml")
    cli = cli_main(["fit", "--config", default, "--config", str(config), "--run_root", str(tmp_path)], run=False)
    assert type(cli.model.credit).__name__ == "Contrastive" and cli.model.credit.beta == 0.5
    assert type(cli.model.teacher_weights).__name__ == "EMA" and cli.model.teacher_weights.tau == 0.05
    assert cli.trainer.max_steps == 200 and cli.datamodule.prompts_per_step == 16


def test_readme_python_example_runs(tiny_dir, tmp_path, monkeypatch):
    """The README's Python example, run as written, on the tiny test model instead of the built-in
    base (whose first use is a minutes-long warm-up)."""
    (block,) = fenced(README.read_text(), "python")
    assert 'model_path="builtin"' in block
    code = block.replace('model_path="builtin"', f"model_path={str(tiny_dir)!r}")
    monkeypatch.chdir(tmp_path)  # anything Lightning writes lands here
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["trainer"].global_step == 2
    assert type(namespace["module"].credit).__name__ == "Contrastive"
    reward = namespace["trainer"].callback_metrics["train/reward_mean"]
    assert 0.0 <= float(reward) <= 1.0


def test_relative_links_of_every_page_resolve():
    """Every relative link of the README, CONTRIBUTING and docs/*.md points at a file or folder
    that exists (moving a page breaks no link silently)."""
    pages = [README, ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            path = target.split("#")[0]
            if not path or "://" in path or path.startswith("mailto:"):
                continue
            resolved = (page.parent / path).resolve()
            if not resolved.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken
