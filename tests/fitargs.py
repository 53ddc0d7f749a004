"""``cepo fit`` arguments for short runs of the default config on a tiny model (end-to-end tests)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fit_args(
    model_path,
    run_root,
    run_name: str,
    *overlays: str,
    steps: int = 2,
    prompts: int = 2,
    group: int = 4,
    eval_size: int = 8,
    eval_k: int = 2,
    extra: tuple | list = (),
) -> list[str]:
    """Arguments after ``fit``: ``configs/default.yaml``, then ``overlays`` (paths under
    ``configs/``), the run sizes, ``run_root/run_name/v`` as the run directory, then ``extra``."""
    args = ["--config", str(ROOT / "configs" / "default.yaml")]
    for overlay in overlays:
        args += ["--config", str(ROOT / "configs" / overlay)]
    return [
        *args,
        "--model.model_path",
        str(model_path),
        "--trainer.max_steps",
        str(steps),
        "--data.prompts_per_step",
        str(prompts),
        "--data.group_size",
        str(group),
        "--data.eval_size",
        str(eval_size),
        "--data.eval_k",
        str(eval_k),
        "--run_root",
        str(run_root),
        "--run_name",
        run_name,
        "--run_version",
        "v",
        *extra,
    ]
