"""Which cepo files one rollout step runs code in, and which functions of each: traced (``sys.setprofile``)
from the DataModule handing over step 2's prompts to the end of its ``on_train_batch_end`` hooks.

    .venv/bin/python scripts/step_files.py [--config X ...]   (default: configs/default.yaml)

It runs a 2-step fit (no validation) into /tmp/step_files_runs and prints one line per file, then the
number of files, with and without the callbacks (which observe the step rather than run it).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import cepo
from cepo.__main__ import main as cepo_main
from cepo.module import RLModule
from cepo.rollout.datamodule import RolloutDataModule

ROOT = Path(cepo.__file__).resolve().parent
seen: dict[str, set[str]] = {}
transfers = []


def profiler(frame, event, arg):
    if event == "call":
        path = Path(frame.f_code.co_filename).resolve()
        if path.is_relative_to(ROOT):
            seen.setdefault(str(path.relative_to(ROOT.parent)), set()).add(frame.f_code.co_name)


def tracing(on: bool) -> None:
    for set_profile in (sys.setprofile, threading.setprofile):  # threads: one-step-off rollouts
        set_profile(profiler if on else None)


transfer = RolloutDataModule.on_after_batch_transfer


def traced_transfer(self, batch, dataloader_idx=0):
    if self.trainer is not None and self.trainer.training:
        transfers.append(1)
        tracing(len(transfers) == 2)  # step 2: from here
    return transfer(self, batch, dataloader_idx)


def traced_end(self, outputs, batch, batch_idx: int) -> None:
    tracing(False)  # Lightning calls the module's hook after every callback's (RLModule has none)


def main() -> None:
    RolloutDataModule.on_after_batch_transfer = traced_transfer
    RLModule.on_train_batch_end = traced_end
    args = sys.argv[1:] or ["--config", "configs/default.yaml"]
    args += ["--trainer.max_steps", "2", "--trainer.val_check_interval", "1000", "--report_base", "false"]
    args += ["--export_hf", "false", "--trainer.enable_progress_bar", "false", "--run_root", "/tmp/step_files_runs"]
    try:
        cepo_main(["fit", *args])
    except SystemExit:
        pass
    for name in sorted(seen):
        print(f"{name}: {', '.join(sorted(seen[name]))[:150]}")
    callbacks = [name for name in seen if name.startswith("cepo/callbacks/")]
    print(f"{len(seen)} files, {len(seen) - len(callbacks)} without the callbacks")


if __name__ == "__main__":
    main()
