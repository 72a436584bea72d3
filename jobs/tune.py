"""Ray job entrypoint: `python -m jobs.tune SWEEP.yaml [--set k=v ...] [--storage URI] [--name NAME]`,
e.g. through `ray job submit -- python -m jobs.tune jobs/configs/sweep-mnist-k20.yaml`.

Thin on purpose: the same code path as `ganaug tune`.
"""

import sys

from ganaug.cli import main

if __name__ == "__main__":
    main(sys.argv[1:], command="tune")
