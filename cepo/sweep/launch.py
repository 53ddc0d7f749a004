"""Launchers: where a sweep's points run.

- ``local`` (default): ``cepo fit`` subprocesses on this machine, ``--parallel`` at a time.
- ``slurm``: one SLURM job array per sweep through submitit, one array task per point, with the
  resources of :class:`Resources`. submitit's batch script runs each task under ``srun``, so
  ``cepo fit`` inherits the step's ``SLURM_*`` variables and Lightning's SLURM environment sets
  the ranks of a multi-GPU point (one task per GPU). A point that gets the preemption/timeout
  notice saves ``last.ckpt`` and is requeued; the requeued task resumes from it.
- ``submitit-local``: the same jobs through submitit's local executor, on this machine (the
  cluster path without a cluster: for debugging a SLURM sweep, and for the tests).

Every launcher leaves the same run directories (``stdout.log``, ``sweep_point.json``, the run
itself), so the tables and plots are written the same way.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from cepo.sweep.grid import Point
from cepo.sweep.run import RunResult, has_checkpoint, log_tail, read_run, run_point

LAUNCHERS = ("local", "slurm", "submitit-local")
JOBS_FILE = "jobs.json"  # slug -> SLURM job id, so a re-run re-attaches instead of resubmitting
STOP_WAIT_S = 60  # how long a preempted point may take to finish its step and save
# SLURM states of a job that will still run (sacct names)
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING", "REQUEUE_HOLD"}


def _submitit():
    try:
        import submitit
    except ImportError:
        raise ValueError(
            "cepo sweep: the slurm and submitit-local launchers need submitit: pip install 'cepo[cluster]'"
        ) from None
    return submitit


@dataclass(frozen=True)
class Resources:
    """What each point asks of the cluster: the grid file's ``resources:`` mapping, then flags.

    Attributes:
        gpus_per_node: GPUs per node (0: CPU only).
        nodes: nodes per point (multi-node DDP).
        tasks_per_node: processes per node; default one per GPU (at least one), which is what
            Lightning's SLURM environment expects (``trainer.devices`` = this number).
        cpus_per_task: CPU cores per process.
        mem_gb: memory per node in GB (None: the partition's default).
        time_min: time limit of a point in minutes; 90 s before it, the point saves
            ``last.ckpt`` and is requeued (at most ``max_requeues`` times) to resume from it.
        partition: SLURM partition (None: the cluster's default).
        account: SLURM account to charge.
        qos: SLURM quality of service.
        constraint: SLURM node constraint (e.g. ``a100``).
        array_parallelism: points running at once (the job array's ``%N``).
        setup: shell lines run before each point (``module load cuda``, ``source .venv/bin/activate``).
        max_requeues: requeues after a timeout before a point counts as failed.
    """

    gpus_per_node: int = 0
    nodes: int = 1
    tasks_per_node: int | None = None
    cpus_per_task: int = 2
    mem_gb: float | None = None
    time_min: int = 60
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    array_parallelism: int = 64
    setup: tuple[str, ...] = ()
    max_requeues: int = 3

    @classmethod
    def parse(cls, mapping: dict[str, Any]) -> Resources:
        """Check the types and bounds of a ``resources`` mapping (grid file and flags merged)."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(mapping) - set(names))
        if unknown:
            raise ValueError(f"resources: unknown key(s) {unknown} (expected {', '.join(names)})")
        values = dict(mapping)
        positive = ("nodes", "cpus_per_task", "time_min", "array_parallelism")
        for key in (*positive, "gpus_per_node", "tasks_per_node", "max_requeues"):
            value = values.get(key)
            if value is None:
                continue
            low = 1 if key in positive or key == "tasks_per_node" else 0
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"resources.{key} must be an integer >= {low}, got {value!r}")
        mem = values.get("mem_gb")
        if mem is not None and (isinstance(mem, bool) or not isinstance(mem, (int, float)) or mem <= 0):
            raise ValueError(f"resources.mem_gb must be a number > 0, got {mem!r}")
        for key in ("partition", "account", "qos", "constraint"):
            if values.get(key) is not None:
                values[key] = str(values[key])
        setup = values.get("setup", ())
        if isinstance(setup, str) or not all(isinstance(line, str) for line in setup):
            raise ValueError("resources.setup must be a list of shell lines")
        values["setup"] = tuple(setup)
        return cls(**values)

    @property
    def tasks(self) -> int:
        return self.tasks_per_node or max(self.gpus_per_node, 1)

    def slurm_parameters(self, name: str) -> dict[str, Any]:
        """``SlurmExecutor.update_parameters`` arguments (sbatch flags) for every point."""
        params: dict[str, Any] = {
            "job_name": f"cepo-{name}",
            "nodes": self.nodes,
            "ntasks_per_node": self.tasks,
            "cpus_per_task": self.cpus_per_task,
            "time": self.time_min,
            "array_parallelism": self.array_parallelism,
            "signal_delay_s": 90,
            "stderr_to_stdout": True,
        }
        if self.gpus_per_node:
            params["gpus_per_node"] = self.gpus_per_node
        if self.mem_gb is not None:
            params["mem"] = f"{int(self.mem_gb * 1024)}MB"
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(self, key) is not None:
                params[key] = getattr(self, key)
        if self.setup:
            params["setup"] = list(self.setup)
        return params

    def local_parameters(self) -> dict[str, Any]:
        """``LocalExecutor.update_parameters`` arguments: one process per point (Lightning starts
        a multi-device point's other processes itself off SLURM), the same time limit."""
        params: dict[str, Any] = {"timeout_min": self.time_min, "tasks_per_node": 1, "stderr_to_stdout": True}
        if self.gpus_per_node:
            params["gpus_per_node"] = self.gpus_per_node
        if self.setup:
            params["setup"] = list(self.setup)
        return params


class PointJob:
    """One point as a submitit job.

    On the node it runs ``cepo fit`` with the point's output in its run directory, adding
    ``--ckpt_path last`` when the point left a checkpoint (a requeued or re-run point resumes).
    On the preemption/timeout notice, submitit calls :meth:`checkpoint`: the run is sent SIGTERM,
    saves ``last.ckpt`` after the step in progress and exits (cepo's ``Preemption``), and the job
    is requeued. ``cepo fit`` ignores the notice signal itself, which SLURM may deliver to every
    process of the job.
    """

    def __init__(self, cmd: list[str], run_dir: Path, meta: dict) -> None:
        self.cmd, self.run_dir, self.meta = list(cmd), Path(run_dir), dict(meta)
        self._proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        resume = has_checkpoint(self.run_dir) and "--ckpt_path" not in self.cmd
        return [*self.cmd, "--ckpt_path", "last"] if resume else list(self.cmd)

    def __call__(self) -> str:
        submitit = _submitit()
        env = submitit.JobEnvironment()
        notice = getattr(env, "_usr_sig", lambda: signal.SIGUSR2)()
        if env.global_rank != 0:  # another process of a multi-process point: same run, own log
            log = self.run_dir / f"stdout.rank{env.global_rank}.log"
            with log.open("a") as out:
                return (
                    "ok"
                    if subprocess.run(self.command(), stdout=out, stderr=subprocess.STDOUT).returncode == 0
                    else "failed"
                )
        meta = {**self.meta, "job_id": env.job_id}
        return run_point(self.command(), self.run_dir, meta, on_start=self._started, ignore_signal=notice).status

    def _started(self, proc: subprocess.Popen) -> None:
        self._proc = proc

    def checkpoint(self):
        """submitit's preemption/timeout hook: stop the run at a checkpoint, then requeue."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                pass
        return _submitit().helpers.DelayedSubmission(PointJob(self.cmd, self.run_dir, self.meta))

    def __getstate__(self) -> dict:
        return {"cmd": self.cmd, "run_dir": self.run_dir, "meta": self.meta, "_proc": None}


def make_executor(launcher: str, folder: Path, resources: Resources, name: str):
    """The submitit executor of a launcher, with the resources set."""
    submitit = _submitit()
    if launcher == "slurm":
        if shutil.which("srun") is None:
            raise ValueError(
                "cepo sweep: --launcher slurm: no srun on PATH, this is not a SLURM node "
                "(--launcher submitit-local runs the same jobs on this machine)"
            )
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=resources.max_requeues)
        executor.update_parameters(**resources.slurm_parameters(name))
    else:
        executor = submitit.LocalExecutor(folder=folder, max_num_timeout=resources.max_requeues)
        executor.update_parameters(**resources.local_parameters())
    return executor


def _job_result(job, run_dir: Path) -> RunResult:
    """A finished job's result, read from its run directory (a job that died before writing its
    ``sweep_point.json`` is failed, with the tail of submitit's log)."""
    result = read_run(run_dir)
    try:
        status = job.result()
    except Exception as err:  # the task died (node failure, out of memory, not requeued)
        status = "failed"
        result.log_tail = result.log_tail or [*log_tail(Path(str(job.paths.stdout))), f"{type(err).__name__}: {err}"]
    if status != "ok" or result.status != "ok":
        result.status = "failed"
        result.log_tail = result.log_tail or log_tail(run_dir / "stdout.log")
    return result


def run_submitit(
    launcher: str,
    jobs: Sequence[tuple[Point, list[str], Path]],
    sweep_dir: Path,
    resources: Resources,
    name: str,
    emit: Callable[[str], None],
    progress: Callable[[Point, str, RunResult, Path], str],
    detach: bool = False,
) -> dict[int, RunResult] | None:
    """Submit ``(point, command, run_dir)`` jobs (re-attaching to SLURM jobs of an earlier
    submission that are still queued or running), then wait for them, printing a line as each
    ends. With ``detach``, return None once they are submitted."""
    submitit = _submitit()
    folder = sweep_dir / ".submitit" / "%j"  # submitit's logs and pickles, one folder per job
    state_file = sweep_dir / JOBS_FILE
    known = json.loads(state_file.read_text()) if state_file.is_file() else {}
    handles: dict[int, Any] = {}
    fresh = []
    for point, cmd, run_dir in jobs:
        previous = known.get(point.slug) if launcher == "slurm" else None
        if previous is not None:
            job = submitit.SlurmJob(folder=folder, job_id=previous)
            if job.state.split(" ")[0] in ACTIVE:
                emit(f"[{point.index}] {point.slug}: job {previous} is {job.state.lower()}, waiting for it")
                handles[point.index] = job
                continue
        fresh.append((point, cmd, run_dir))
    if fresh:
        executor = make_executor(launcher, folder, resources, name)
        submitted = []
        with executor.batch():
            for point, cmd, run_dir in fresh:
                meta = {"index": point.index, "slug": point.slug, "labels": point.labels, "launcher": launcher}
                submitted.append((point, executor.submit(PointJob(cmd, run_dir, meta))))
        for point, job in submitted:
            handles[point.index] = job
            known[point.slug] = job.job_id
        if launcher == "slurm":  # local jobs end with this process: nothing to re-attach to
            state_file.write_text(json.dumps(known, indent=2))
        ids = sorted({str(job.job_id).split("_")[0] for _, job in submitted})
        emit(f"submitted {len(submitted)} point(s) with the {launcher} launcher: job {', '.join(ids)}")
    if detach:
        return None
    by_index = {point.index: (point, run_dir) for point, _, run_dir in jobs}
    results: dict[int, RunResult] = {}
    order = {id(job): index for index, job in handles.items()}
    for job in submitit.helpers.as_completed(list(handles.values()), poll_frequency=2):
        point, run_dir = by_index[order[id(job)]]
        results[point.index] = _job_result(job, run_dir)
        status = "ok" if results[point.index].status == "ok" else "FAILED"
        emit(progress(point, status, results[point.index], run_dir))
    return results
