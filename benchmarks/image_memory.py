"""Peak resident memory of a VL run whose rows carry large images, and the decoding cost per step:
rows keeping their images encoded (this tree) against rows decoded at load (``--before``, a git
revision: that tree's ``cepo`` is extracted with ``git archive`` and run the same way).

The image: a 4000x4000 geometry-style diagram (white, a triangle, a circle, labels, a grid of
thin lines), saved as PNG. The data: Geo3k-layout Parquet files (``images`` as ``{bytes, path}``
structs, the bytes inline) of ``--rows`` rows of that PNG, and of the same rows with a 56x56 PNG
(the baseline). Each run is a fresh ``cepo fit`` subprocess on ``configs/vl/default.yaml`` with
``cepo.tasks.DatasetTask`` and a tiny random Qwen2-VL (pixel bounds 56x56 .. 112x112), ``--steps``
steps of 2 prompts x 2 rollouts; its peak resident memory is ``ru_maxrss``. "Added" is a run's
peak less the peak of the same code on the 56x56 rows. The old code decodes every row at load
(64 MB each), so it runs on ``--before_rows`` rows only; the new code runs on both row counts.

In-process, the script also times, per image: the checks at load (new) against the full decode
(old), and what a step pays per prompt image: decoding it at the processor's size plus the
processor (new) against the processor on the decoded full-size image (old).

Writes ``benchmarks/results/image_memory.{json,md}``.

    CEPO_NUM_THREADS=1 .venv/bin/python benchmarks/image_memory.py [--rows 1000] [--before 6fae6ee]
"""

from __future__ import annotations

import argparse
import io
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import offline_env, write_results

ROOT = Path(__file__).resolve().parents[1]
RUN = (
    "import re, resource, sys; from cepo.cli import cli_main; cli = cli_main(sys.argv[1:]); "
    "print('PEAK_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); "
    "print('END_KB', re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read())[1])"
)


def diagram(side: int = 4000):
    """A large geometry-style figure: mostly white, thick outlines, labels and a light grid."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (side, side), "white")
    draw = ImageDraw.Draw(image)
    for x in range(0, side, side // 40):
        draw.line((x, 0, x, side), fill=(225, 225, 235), width=2)
        draw.line((0, x, side, x), fill=(225, 225, 235), width=2)
    a, b, c = (side // 8, side * 7 // 8), (side * 7 // 8, side * 7 // 8), (side // 3, side // 6)
    draw.polygon((a, b, c), outline="black", width=side // 200)
    draw.ellipse((side // 3, side // 3, side * 2 // 3, side * 2 // 3), outline=(30, 60, 200), width=side // 250)
    for k, (x, y) in enumerate((a, b, c)):
        draw.text((x + 20, y - 60), "ABC"[k], fill="black", font_size=side // 25)
    draw.text((side // 2, side * 7 // 8 + 40), "x + 12", fill=(180, 0, 0), font_size=side // 30)
    return image


def png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def write_rows(path: Path, data: bytes, n: int) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("images", pa.list_(image)), ("problem", pa.string()), ("answer", pa.string())])
    rows = [
        {"images": [{"bytes": data, "path": f"{i}.png"}], "problem": f"<image>Find x {i}.", "answer": "7"}
        for i in range(n)
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, row_group_size=64)
    return path


def fit(code: Path, model: Path, train: Path, val: Path, run_root: Path, name: str, steps: int) -> dict:
    """One ``cepo fit`` subprocess of the tree at ``code``: its peak RSS and its RSS at the end
    (the task's rows still held) in MB, its wall-clock
    seconds (start-up and loading included) and the mean ``time/total`` of its steps (the
    module's stages: the rollout images are processed outside them, in data loading)."""
    args = ["fit", "--config", str(ROOT / "configs" / "vl" / "default.yaml")]
    args += ["--data.task", "cepo.tasks.DatasetTask", "--data.task.train", str(train), "--data.task.val", str(val)]
    args += ["--model.model_path", str(model), "--trainer.max_steps", str(steps), "--data.prompts_per_step", "2"]
    args += ["--data.group_size", "2", "--data.eval_size", "2", "--data.eval_k", "1"]
    args += ["--data.sampling.max_new_tokens", "4", "--trainer.enable_progress_bar", "false"]
    args += ["--token_weights.every_n_steps", "0", "--export_hf", "false", "--report_base", "false"]
    args += ["--run_root", str(run_root), "--run_name", name, "--run_version", "v"]
    env = offline_env(PYTHONPATH=str(code))
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", RUN, *args], capture_output=True, text=True, env=env, cwd=code)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"{name} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    kb = dict(line.split() for line in out.stdout.splitlines() if line.startswith(("PEAK_KB ", "END_KB ")))
    kb = {k: int(v) for k, v in kb.items()}
    import csv

    rows = [r for r in csv.DictReader(open(run_root / name / "v" / "metrics.csv")) if r.get("time/total")]
    totals = [float(r["time/total"]) for r in rows][1:]  # the first step pays one-off costs
    return {
        "peak_mb": kb["PEAK_KB"] / 1024,
        "end_mb": kb["END_KB"] / 1024,
        "step_s": statistics.mean(totals) if totals else None,
        "wall_s": wall,
    }


def per_image_costs(model: Path, data: bytes, repeats: int) -> dict:
    """Seconds per image: the load checks (new) vs a full decode (old); a step's decode+process
    (new) vs the processor on the decoded full-size image (old)."""
    from transformers import AutoConfig, AutoTokenizer

    from cepo.tasks.images import load_image, open_image
    from cepo.vision import Vision

    vision = Vision.from_folder(str(model), AutoTokenizer.from_pretrained(model), AutoConfig.from_pretrained(model))

    def timed(fn) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    spec = {"bytes": data, "path": None}
    encoded = open_image(spec, ROOT, "bench:1")
    full = load_image(spec, ROOT, "bench:1")
    return {
        "load_new_s": timed(lambda: open_image(spec, ROOT, "bench:1")),
        "load_old_s": timed(lambda: load_image(spec, ROOT, "bench:1")),
        "step_new_s": timed(lambda: vision.encode([encoded])),
        "step_old_s": timed(lambda: vision.encode([full])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1000, help="rows of the large runs of this tree")
    parser.add_argument("--before_rows", type=int, default=20, help="rows of the runs of both trees")
    parser.add_argument("--before", default="6fae6ee", help="git revision whose cepo decodes images at load")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5, help="timings per in-process cost (median)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    from cepo.bases.tiny import build_tiny_vl

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        old = tmp / "before"
        old.mkdir()
        archive = subprocess.run(["git", "archive", args.before, "cepo"], cwd=ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
        model = build_tiny_vl(tmp / "model", seed=0)
        big, small = png(diagram()), png(diagram(56))
        val = write_rows(tmp / "val.parquet", small, 2)
        data = {
            (kind, n): write_rows(tmp / f"{kind}{n}.parquet", blob, n)
            for kind, blob in (("big", big), ("small", small))
            for n in sorted({args.rows, args.before_rows})
        }
        plan = [("before", old, args.before_rows), ("after", ROOT, args.before_rows), ("after", ROOT, args.rows)]
        runs = {}
        for label, code, n in plan:
            for kind in ("small", "big"):
                name = f"{label}-{kind}-{n}"
                runs[name] = fit(code, model, data[kind, n], val, tmp / "runs", name, args.steps)
                print(name, runs[name], flush=True)
        costs = per_image_costs(model, big, args.repeats)
    lines = [
        f"PNG of the 4000x4000 image: {len(big) / 1e6:.2f} MB; decoded RGB in PIL: 64 MB.",
        "",
        "| code | rows | peak RSS, 56x56 rows (MB) | peak RSS, 4000x4000 rows (MB) | added to the peak (MB) "
        "| RSS at the end, 56x56 / 4000x4000 (MB) | run wall (s), 56x56 / 4000x4000 |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, _, n in plan:
        s, b = runs[f"{label}-small-{n}"], runs[f"{label}-big-{n}"]
        added = b["peak_mb"] - s["peak_mb"]
        wall = f"{s['wall_s']:.0f} / {b['wall_s']:.0f}"
        end = f"{s['end_mb']:.0f} / {b['end_mb']:.0f}"
        lines.append(f"| {label} | {n} | {s['peak_mb']:.0f} | {b['peak_mb']:.0f} | {added:.0f} | {end} | {wall} |")
    lines += [
        "",
        "| per 4000x4000 image | old (decoded at load) | new (kept encoded) |",
        "|---|---|---|",
        f"| at load (s) | {costs['load_old_s']:.3f} | {costs['load_new_s']:.4f} |",
        f"| each step it is in (s) | {costs['step_old_s']:.3f} | {costs['step_new_s']:.3f} |",
    ]
    payload = {"png_bytes": len(big), "runs": runs, "per_image": costs, "args": vars(args)}
    write_results(args.out, "image_memory", payload, "\n".join(lines))


if __name__ == "__main__":
    main()
