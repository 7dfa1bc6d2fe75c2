"""Worker process of ``spa-nm prune|sparsify --jobs N`` (and ``--timeout``): one model, its job
as JSON on stdin, its report entry as JSON on the last line of stdout.

SIGTERM unwinds like Ctrl-C, as in the parent, so `spa_nm.io.save` removes its temporary; the
exit code is then 128 + the signal.
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    from spa_nm.cli._common import install_signal_handlers, interrupted_by

    install_signal_handlers()
    try:
        from spa_nm.cli import prune_one, setup_logging, sparsify_one

        job = json.loads(sys.stdin.read())
        setup_logging(int(job.get("log_level", 30)))
        run = sparsify_one if job.get("command") == "sparsify" else prune_one
        entry = run(job["src"], job["dst"], job["opts"], job["inputs"])
    except KeyboardInterrupt:
        return 128 + interrupted_by()
    sys.stdout.write("\n" + json.dumps(entry, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
