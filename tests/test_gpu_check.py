"""benchmarks/gpu_check.py: its CPU smoke run (every section at tiny sizes), the full run's estimate,
and that it needs nothing the lent GPU machine lacks beyond the wheels scripts/gpu_wheels.sh carries."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _wheel_names() -> set[str]:
    lines = (ROOT / "scripts" / "gpu_wheels.sh").read_text().split("WHEELS=(\n", 1)[1].splitlines()
    block = lines[: lines.index(")")]
    return {_normal(line.split("==")[0].strip()) for line in block}


@pytest.mark.e2e
@pytest.mark.slow  # a benchmark smoke (about 30 s: 3 processes); the imports and the estimate stay in the default tier
def test_cpu_smoke_runs_every_section(tmp_path):
    """The whole script at tiny sizes on CPU: every section ran, every result is there, nothing failed."""
    env = dict(os.environ, CEPO_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu-smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert results["failed"] == []
    sections = results["sections"]
    steps = sections["exactness"]["steps"]
    assert set(steps) == {f"{c} {p}" for c in ("grpo", "cepo") for p in ("bfloat16", "bf16-mixed")}
    for step in steps.values():  # bf16 and float32 are different computations, and agree within the tolerance
        assert step["pass"] and 0 < step["logprob_abs_diff_mean"] and 0 < step["grad_norm_rel_diff"]
    assert set(sections["exactness"]["engine_gap"]) == {"float32", "bfloat16"}
    for name in ("tiny-text", "tiny-vl"):
        rows = sections[f"throughput {name}"]["rows"]
        real = [r for r in rows if r["kind"] == "real"]
        assert [r["length"] for r in real] == [8, 12] and all(r["gen_tokens_per_s"] > 0 for r in real)
        assert {r["checkpointing"] for r in rows if r["kind"] == "replay"} == {False, True}
        assert all(r["train"] > 0 and r["train_tokens_per_s"] > 0 for r in rows)
    scale = sections["scale"]
    for path in ("fsdp2_one_process", "ddp_two_processes"):
        assert scale[path]["grad_norm_rel_diff"] <= scale["tolerance"], scale[path]
    assert scale["ddp_two_processes"]["ranks_agree_on_grad_norm"]
    assert "| tiny-vl | replay |" in (tmp_path / "gpu_check.md").read_text()


def test_full_run_fits_ten_minutes_by_its_estimate():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    est = gpu_check.estimate(gpu_check.FULL)
    assert est["total"] == pytest.approx(sum(v for k, v in est.items() if k != "total"))
    assert 60 < est["total"] < gpu_check.BUDGET_S
    assert gpu_check.tolerance(gpu_check.shapes.SHAPES["qwen2.5-0.5b"]) == pytest.approx(2 * 48**0.5 / 256)


# imported here only because they are installed here: their importers go on without them
OPTIONAL = {
    "dill": "torch.utils imports it when it is installed",
    "sniffio": "anyio and httpcore import it (anyio is on that machine, with its own requirements)",
}


@pytest.mark.e2e
def test_imports_only_what_the_gpu_machine_has():
    """Every distribution gpu_check's modules import is on the GPU machine's list, among the carried
    wheels, or a requirement of a distribution on that list (which its own install brings); no vLLM."""
    from importlib import metadata

    code = (
        "import sys; sys.path[:0] = ['benchmarks', '.']\n"
        "import gpu_check, gpu_runs, gpu_scale, gpu_shapes\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    modules = set(done.stdout.split())
    assert "vllm" not in modules and "math_verify" not in modules
    lines = (ROOT / "benchmarks" / "gpu_machine_packages.txt").read_text().splitlines()
    there = {_normal(x) for x in lines if x and not x.startswith("#")}
    allowed = there | _wheel_names()
    todo = [d for d in there]
    while todo:  # what the machine's own distributions require comes with them
        try:
            requires = metadata.requires(todo.pop()) or []
        except metadata.PackageNotFoundError:
            continue
        for req in requires:
            if "extra ==" in req:
                continue
            name = _normal(re.match(r"[A-Za-z0-9_.-]+", req).group(0))
            if name not in allowed:
                allowed.add(name)
                todo.append(name)
    owners = metadata.packages_distributions()
    missing = {}
    ours = {"cepo", "gpu_check", "gpu_runs", "gpu_scale", "gpu_shapes"}
    for mod in modules - set(sys.stdlib_module_names) - ours - set(OPTIONAL):
        dists = {_normal(d) for d in owners.get(mod, [])}
        if dists and not dists & allowed:
            missing[mod] = sorted(dists)
    assert not missing, f"imported but neither on the GPU machine nor carried: {missing}"


@pytest.mark.slow
def test_wheels_download_and_fit_the_carry_budget(tmp_path):
    """scripts/gpu_wheels.sh resolves its list from the registry and stays under 64 MiB (needs PyPI)."""
    dest = tmp_path / "wheels"
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_wheels.sh"), str(dest)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    wheels = list(dest.glob("*.whl"))
    assert {_normal(w.name.split("-")[0]) for w in wheels} == _wheel_names()
    assert all(w.name.endswith("-py3-none-any.whl") for w in wheels)
    assert sum(w.stat().st_size for w in wheels) < 64 * 2**20
    assert "benchmarks/gpu_check.py" in done.stdout
