"""``python cli.py ...`` is the same command as ``spa-nm ...``."""

from spa_nm.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
