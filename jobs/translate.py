"""Ray job entrypoint: `python -m jobs.translate --checkpoint URI --input DATASET --out URI [...]`.

Same flags as `ganaug translate` (the CLI's own command, so every option, --resources included,
is wired once); connects to RAY_ADDRESS when set (e.g. under `ray job submit`). On an
autoscaling cluster, `--resources '{"gen_node": 1}'` puts the sampling actors on the node type
that offers that custom resource, and the autoscaler starts it.
"""

import sys

from ganaug.cli import main

if __name__ == "__main__":
    main(sys.argv[1:], command="translate")
