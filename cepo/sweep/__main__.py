"""``python -m cepo.sweep``: the sweep command, or (``--check SPEC``) the validation worker."""

import sys
from pathlib import Path

from cepo.sweep import sweep_main
from cepo.sweep.run import _check_worker

if sys.argv[1:2] == ["--check"]:
    _check_worker(Path(sys.argv[2]))
else:
    sweep_main(sys.argv[1:])
