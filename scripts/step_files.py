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

import lightning.pytorch.loops.training_epoch_loop as loop

import cepo
from cepo.__main__ import main as cepo_main
from cepo.rollout.datamodule import RolloutDataModule

ROOT = Path(cepo.__file__).resolve().parent
seen: dict[str, set[str]] = {}
state = {"on": False, "step": 0}


def profiler(frame, event, arg):
    if event == "call":
        path = Path(frame.f_code.co_filename).resolve()
        if path.is_relative_to(ROOT):
            seen.setdefault(str(path.relative_to(ROOT.parent)), set()).add(frame.f_code.co_name)


def start():
    state["step"] += 1
    if state["step"] == 2:
        state["on"] = True
        threading.setprofile(profiler)
        sys.setprofile(profiler)


def stop():
    if state["on"]:
        sys.setprofile(None)
        threading.setprofile(None)
        state["on"] = False


transfer = RolloutDataModule.on_after_batch_transfer


def traced_transfer(self, batch, dataloader_idx=0):
    if self.trainer is not None and self.trainer.training:
        start()
    return transfer(self, batch, dataloader_idx)


RolloutDataModule.on_after_batch_transfer = traced_transfer


def main() -> None:
    # stop after every callback's on_train_batch_end: Lightning calls the module's hook last
    call = loop.call._call_lightning_module_hook

    def wrapped(trainer, hook_name, *args, **kwargs):
        out = call(trainer, hook_name, *args, **kwargs)
        if hook_name == "on_train_batch_end":
            stop()
        return out

    loop.call._call_lightning_module_hook = wrapped
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
