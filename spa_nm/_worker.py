"""Worker process of ``spa-nm prune --jobs N``: one model, report entry as JSON on stdout."""

from __future__ import annotations

import json
import sys

from spa_nm.cli import prune_one


def main() -> int:
    job = json.loads(sys.stdin.read())
    entry = prune_one(job["src"], job["dst"], job["opts"], job["inputs"])
    sys.stdout.write("\n" + json.dumps(entry, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
