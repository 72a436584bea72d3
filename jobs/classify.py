"""Ray job entrypoint: `python -m jobs.classify CONFIG.yaml [--set k=v ...] [--storage URI] [--name NAME]`,
e.g. through `ray job submit -- python -m jobs.classify jobs/configs/classify-mnist-k20.yaml`.

Thin on purpose: the same code path as `ganaug classify`.
"""

import sys

from ganaug.cli import main

if __name__ == "__main__":
    main(sys.argv[1:], command="classify")
