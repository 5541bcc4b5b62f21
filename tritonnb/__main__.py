"""``python -m tritonnb install``: install the Triton engine (see ``tritonnb.triton.engine``)."""

from __future__ import annotations

import argparse
import sys

from tritonnb.triton.engine import install

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the command."""
    parser = argparse.ArgumentParser(prog="python -m tritonnb", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "install",
        help="install nvidia-pytriton 0.7.0 without its numpy<2 pin, and a numpy 1.26 for Triton's python-backend "
        "stub alone (your environment's numpy stays as it is)",
    )
    parser.parse_args(argv)
    return install()


if __name__ == "__main__":
    sys.exit(main())
