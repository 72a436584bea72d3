"""Ray job entrypoint: `python -m jobs.generate --checkpoint URI --num N --out URI [...]`.

Same flags as `ganaug generate`; connects to RAY_ADDRESS when set (e.g. under `ray job submit`).
"""

import sys

from ganaug.cli import main

if __name__ == "__main__":
    main(sys.argv[1:], command="generate")
