"""Ray job entrypoint: `python -m jobs.train CONFIG.yaml [--set k=v ...] [--workers N] [--use-gpu]
[--storage URI] [--name NAME]`, e.g. through `ray job submit -- python -m jobs.train ...`.

Thin on purpose: the same code path as `ganaug train`.
"""

import sys

from ganaug.cli import main

if __name__ == "__main__":
    main(sys.argv[1:], command="train")
