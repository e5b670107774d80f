"""A mixed-policy revision phase in its own process: ``python -m dasd.mixed.worker {rollout|continue} spec.json``.

The process loads one model, generates, writes its outputs into the spec's folder and exits, so all the
memory it used (GPU memory included) is returned before training resumes.
"""

from __future__ import annotations

import sys

from dasd.mixed.revise import run_phase


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m dasd.mixed.worker {rollout|continue} /path/to/round/spec.json", file=sys.stderr)
        return 2
    run_phase(argv[0], argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
