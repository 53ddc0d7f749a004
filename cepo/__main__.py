"""The ``cepo`` command: ``fit`` / ``validate`` (LightningCLI), ``warmup``, ``assets`` and ``sweep``.

``python -m cepo ...`` and the ``cepo`` console script both land in :func:`main`, which sets the
process-wide settings once and dispatches on the first argument; the sub-commands import
nothing of each other.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from argparse import ArgumentError

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, KeyError, ArgumentError)
"""Exceptions that report bad input (a setting, a file, a row): shown as one line, exit code 2."""


def main(argv: list[str] | None = None) -> None:
    """Run ``cepo <command> ...``; bad input ends it with one line on stderr and exit code 2 (the
    full traceback with ``CEPO_DEBUG=1``)."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from cepo.step_stats import NonFiniteError

    try:
        run(argv)
        if _close_process_group():
            # A process of a multi-process run that has finished and written everything: leave
            # without the interpreter's teardown, where gloo's threads now and then abort the
            # process ("terminate called without an active exception", exit -6).
            sys.stdout.flush()
            sys.stderr.flush()
            logging.shutdown()
            os._exit(0)
    except NonFiniteError as err:
        print(f"cepo: stopped: {err}", file=sys.stderr)
        sys.exit(1)
    except SIGTERMException:  # the Preemption callback saved last.ckpt first
        print("cepo: stopped on SIGTERM after saving checkpoints/last.ckpt; resume with --ckpt_path", file=sys.stderr)
        sys.exit(0)
    except USER_ERRORS as err:
        if os.environ.get("CEPO_DEBUG"):
            raise
        print(f"cepo: error: {one_line(err)}  (CEPO_DEBUG=1 shows the traceback)", file=sys.stderr)
        sys.exit(2)
    except RuntimeError as err:
        from cepo.distributed import failure

        line = failure(err)
        if line is None or os.environ.get("CEPO_DEBUG"):
            raise
        print(f"cepo: error: {line}  (CEPO_DEBUG=1 shows the traceback)", file=sys.stderr, flush=True)
        os._exit(2)  # no clean-up: the process group is broken, and its teardown could wait again


def _close_process_group() -> bool:
    """Shut a DDP run's process group down before the interpreter exits: a gloo group left open
    aborted at exit now and then ("terminate called without an active exception", exit -6) after
    the run had finished and written everything. True for a group of several processes."""
    import torch.distributed as dist

    several = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    vllm_groups = sys.modules.get("vllm.distributed.parallel_state")
    if vllm_groups is not None:  # the engines' groups first: vLLM's exit clean-up fails on destroyed ones
        vllm_groups.destroy_model_parallel()
        vllm_groups.destroy_distributed_environment()  # and the trainer's group
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    return several


def one_line(err: BaseException) -> str:
    """The error's message on one line: a config error's first reasons joined, and the root cause
    when the error wraps one (jsonargparse wraps what a constructor raised)."""

    def flat(e: BaseException) -> str:
        message = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        lines = [line.strip().lstrip("- ").strip() for line in message.splitlines() if line.strip()]
        return lines[0] + (" " + "; ".join(lines[1:3]) if len(lines) > 1 else "") if lines else type(e).__name__

    root = err
    while root.__cause__ is not None:
        root = root.__cause__
    text = flat(err)
    if root is not err and isinstance(root, USER_ERRORS) and str(root) and str(root) not in text:
        return f"{text.splitlines()[0]}: {flat(root)}"
    return text


def quiet_lightning() -> None:
    """Lightning's rank-zero info lines off (its warnings stay): "Seed set to 0", "GPU available:
    ...", "TPU available: ...", the LitLogger tip (printed whenever litlogger is not in use),
    "`Trainer(limit_val_batches=1.0)` was configured ..." and "`Trainer.fit` stopped: ...". They
    would come before a bad input's one line on stderr, and cepo reports its runs itself (its own
    ``cepo.*`` INFO lines are kept)."""
    import lightning.fabric
    import lightning.pytorch  # noqa: F401  (each sets its logger to INFO when imported)

    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def run(argv: list[str] | None = None) -> None:
    """Dispatch ``cepo <command> ...``."""
    import torch

    args = sys.argv[1:] if argv is None else argv
    # One intra-op thread per process: on 2 cores, two threads ran 10-30x slower under load.
    torch.set_num_threads(int(os.environ.get("CEPO_NUM_THREADS", "1")))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Checkpoints are taken after the step's optimizer updates, which is what cepo wants.
    warnings.filterwarnings("ignore", message=".*ModelCheckpoint with manual optimization.*")
    # Held-out metrics are reduced across processes by torchmetrics' compute() before they are
    # logged (RLModule.on_validation_epoch_end): Lightning's advice to add sync_dist does not apply.
    warnings.filterwarnings("ignore", message=".*when logging on epoch level in distributed setting.*")
    # Lightning's own _pytree helper builds torch's deprecated LeafSpec on every batch transfer;
    # nothing cepo can change (fixed upstream by Lightning), so the FutureWarning says nothing to a user.
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )
    quiet_lightning()
    if args and args[0] == "warmup":
        from cepo.bases.warmup import warmup_main

        warmup_main(args[1:])
    elif args and args[0] == "assets":
        from cepo.bases.assets import assets_main

        assets_main(args[1:])
    elif args and args[0] == "sweep":
        from cepo.sweep import sweep_main

        sweep_main(args[1:])
    else:
        from cepo.cli import cli_main

        cli_main(argv)  # None: LightningCLI reads sys.argv itself


if __name__ == "__main__":
    main()
