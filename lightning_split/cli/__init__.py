"""``lightning-split``: the command line (``serve``, ``plan``, ``profile``).

See ``docs/profile-format.md`` for the profile file and the ``plan --json`` object, and
``README.md`` for examples. One module per subcommand (:mod:`~lightning_split.cli.serve`,
:mod:`~lightning_split.cli.plan`, :mod:`~lightning_split.cli.profile`), each with its
``add_parser`` and ``run``; what they share is in :mod:`~lightning_split.cli.common`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from lightning_split.cli import plan, profile, serve
from lightning_split.cli.common import CommandError

__all__ = ["CommandError", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lightning-split`` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except CommandError as exc:
        print(f"lightning-split {args.command}: error: {exc}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lightning-split", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    commands = parser.add_subparsers(dest="command", required=True)

    serve.add_parser(commands)
    plan.add_parser(commands)
    profile.add_parser(commands)
    return parser
