"""W&B and MLflow through ``configs/logging/*.yaml``, offline: a short contrastive fit logs its
metrics, the resolved config and the token-weight pages to the tracker, and keeps its CSV log.
Each test is skipped when its package is not installed (both are optional extras)."""

import csv

import pytest
import yaml

from cepo.cli import cli_main
from tests.helpers import fit_args


def fit(tiny_dir, tmp_path, overlay: str):
    """A 2-step contrastive fit with ``overlay``, token-weight pages every step; its CLI object."""
    extra = ["--token_weights.every_n_steps", "1", "--data.task", "tests.helpers.TextParity"]
    extra += ["--export_hf", "false", "--report_base", "false"]
    cli = cli_main(
        ["fit", *fit_args(tiny_dir, tmp_path, "t", "credit/contrastive.yaml", overlay, eval_size=4, extra=extra)]
    )
    run = tmp_path / "t" / "v"
    assert (run / "metrics.csv").is_file() and (run / "token_weights" / "step_00001.html").is_file()
    return cli


@pytest.mark.parametrize(
    "name, package, cls", [("wandb", "wandb", "WandbLogger"), ("mlflow", "mlflow", "MLFlowLogger")]
)
def test_a_logging_config_appends_its_logger_to_those_of_the_configs_before_it(
    tiny_dir, tmp_path, monkeypatch, name, package, cls
):
    pytest.importorskip(package)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    overlay = f"logging/{name}.yaml"
    cli = cli_main([*fit_args(tiny_dir, tmp_path, "t", overlay)], run=False)
    kinds = [type(lg).__name__ for lg in cli.trainer.loggers]
    assert kinds == ["CSVLogger", "TensorBoardLogger", cls]
    assert cli.trainer.log_dir == str(tmp_path / "t" / "v")  # the CSV logger still names the run directory


def test_an_mlflow_file_store_gets_metrics_config_and_token_weight_pages(tiny_dir, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    store = tmp_path  # the file store is in the logger's save_dir, which --run_root sets
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this
    fit(tiny_dir, tmp_path, "logging/mlflow.yaml")
    run_dir = tmp_path / "t" / "v"
    client = MlflowClient(tracking_uri=store.as_uri())
    (experiment,) = [e for e in client.search_experiments() if e.name == "cepo"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert {"train/reward_mean", "train/acc", "val/acc"} <= set(run.data.metrics)
    # MLflow allows no "@": Lightning's logger drops it (docs/trackers.md says so)
    logged = {k for row in csv.DictReader(open(run_dir / "metrics.csv")) for k in row if k.startswith("val/")}
    assert {"val/pass@2", "val/avg@2"} <= logged
    assert {k.replace("@", "") for k in logged} <= set(run.data.metrics)
    history = client.get_metric_history(run.info.run_id, "train/reward_mean")
    assert sorted(m.step for m in history) == [0, 1]  # one value per step
    params = run.data.params
    assert params["model/credit/class_path"] == "cepo.credit.Contrastive"
    assert params["trainer/max_steps"] == "2" and params["data/group_size"] == "4"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "token_weights")}
    assert {
        "token_weights/step_00001.html",
        "token_weights/step_00002.html",
        "token_weights/step_00001.png",
    } <= artifacts
    local = client.download_artifacts(run.info.run_id, "config/config.yaml", str(tmp_path / "dl"))
    assert yaml.safe_load(open(local))["model"]["credit"]["class_path"] == "cepo.credit.Contrastive"
    page = client.download_artifacts(run.info.run_id, "token_weights/step_00001.html", str(tmp_path / "dl"))
    assert open(page).read() == (run_dir / "token_weights" / "step_00001.html").read_text()


def test_an_offline_wandb_run_gets_metrics_config_and_token_weight_pages(tiny_dir, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    try:
        cli = fit(tiny_dir, tmp_path, "logging/wandb.yaml")
        (logger,) = [lg for lg in cli.trainer.loggers if isinstance(lg, WandbLogger)]
        run = logger.experiment
        config = run.config.as_dict()
        summary = dict(run.summary)
    finally:
        wandb.finish()  # as at the exit of a `cepo fit` process
    assert run.id == "v" and run.name == "t"  # the W&B run's id is the run version, its name the run name
    assert config["model"]["credit"]["class_path"] == "cepo.credit.Contrastive"
    assert config["trainer"]["max_steps"] == 2 and config["data"]["group_size"] == 4
    assert {"train/reward_mean", "train/acc", "val/acc"} <= set(summary)
    (offline,) = (tmp_path / "wandb").glob("offline-run-*-v")
    for name in ("step_00001.html", "step_00002.html", "step_00001.png", "step_00001.json"):
        assert (offline / "files" / "token_weights" / name).is_file(), name
