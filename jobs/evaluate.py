"""Ray job entrypoint: `python -m jobs.evaluate --real SPEC --checkpoint URI --out URI [...]`.

Same flags as `ganaug evaluate`; connects to RAY_ADDRESS when set (the Ray Data feature path).
"""

import sys

from ganaug.cli import main

if __name__ == "__main__":
    main(sys.argv[1:], command="evaluate")
