"""``python -m clipcap.serve BUNDLE [NAME=BUNDLE ...]``: the same as ``clipcap serve``."""

from __future__ import annotations

import argparse
import sys

from clipcap.serve.command import DESCRIPTION, EPILOG, add_arguments, run

from clipcap.errors import ClipCapError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m clipcap.serve",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ClipCapError as e:  # as the clipcap command line does: one line, exit 2
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
