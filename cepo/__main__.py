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


def main(argv: list[str] | None = None) -> None:
    """Run ``cepo <command> ...``."""
    import torch

    args = sys.argv[1:] if argv is None else argv
    # One intra-op thread per process: on 2 cores, two threads ran 10-30x slower under load.
    torch.set_num_threads(int(os.environ.get("CEPO_NUM_THREADS", "1")))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Checkpoints are taken after the step's optimizer updates, which is what cepo wants.
    warnings.filterwarnings("ignore", message=".*ModelCheckpoint with manual optimization.*")
    if args and args[0] == "warmup":
        from cepo.warmup import warmup_main

        warmup_main(args[1:])
    elif args and args[0] == "assets":
        from cepo.assets import assets_main

        assets_main(args[1:])
    elif args and args[0] == "sweep":
        from cepo.sweep import sweep_main

        sweep_main(args[1:])
    else:
        from cepo.cli import cli_main

        cli_main(argv)  # None: LightningCLI reads sys.argv itself


if __name__ == "__main__":
    main()
