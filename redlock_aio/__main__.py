"""The ``redlock-aio`` command (also ``python -m redlock_aio``).

One argparse subcommand per task; each registers its parser and a handler that
turns the parsed arguments into an exit code: ``demo`` and ``init``; more
(``status``, ``check``) plug in the same way through :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from . import __version__

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


# -- demo -------------------------------------------------------------------------


def _add_demo(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="contend for one lock from many clients and check mutual exclusion",
        description=(
            "Run --workers clients, each with its own AsyncRedlock, contending for "
            "one resource for --duration seconds; check that no two ever held it "
            "at once and no counter update was lost; report throughput and "
            "latencies. Without --node, starts 3 local redis-server nodes and "
            "stops them at the end."
        ),
    )
    parser.add_argument(
        "--node",
        action="append",
        default=[],
        metavar="URL",
        help="a redis:// node URL (repeatable); default: start 3 local nodes",
    )
    parser.add_argument("--workers", type=_positive_int, default=8, metavar="N")
    parser.add_argument(
        "--duration", type=_positive_float, default=5.0, metavar="SECONDS"
    )
    parser.add_argument(
        "--ttl",
        type=_positive_float,
        default=2.0,
        metavar="SECONDS",
        help="lock TTL (default: %(default)s)",
    )
    parser.add_argument("--resource", default="demo:counter")
    parser.add_argument(
        "--restart-quarantine",
        type=float,
        default=None,
        metavar="SECONDS",
        help="seconds a node must be up before its votes count (default: 0 for "
        "nodes the demo starts, the library default for --node)",
    )
    parser.add_argument(
        "--no-live",
        dest="live",
        action="store_false",
        help="print a line per second instead of a live table",
    )
    parser.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from ._demo import DemoOptions, run

    return run(
        DemoOptions(
            nodes=tuple(args.node),
            workers=args.workers,
            duration=args.duration,
            ttl=args.ttl,
            resource=args.resource,
            live=args.live,
            restart_quarantine=args.restart_quarantine,
        )
    )


# -- init -------------------------------------------------------------------------


def _add_init(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "init",
        help="mark new nodes as holding every lock (no restart quarantine)",
        description=(
            "Set the restart-quarantine marker key on every node: each then "
            "counts as holding every lock of the key prefix, so its votes count "
            "at once, until it loses its data again. Run it once on a new "
            "deployment, or when no lock of this prefix is held anywhere; never "
            "to cut short the quarantine of a node that lost its data while a "
            "lock may have been held."
        ),
    )
    parser.add_argument("nodes", nargs="+", metavar="URL", help="a node URL")
    parser.add_argument(
        "--key-prefix", default="", help="the AsyncRedlock's key_prefix (default: none)"
    )
    parser.set_defaults(handler=_run_init)


def _run_init(args: argparse.Namespace) -> int:
    import asyncio

    from . import AsyncRedlock, RedlockError

    async def init() -> int:
        async with AsyncRedlock(args.nodes, key_prefix=args.key_prefix) as rl:
            try:
                outcomes = await rl.init_nodes()
            except RedlockError as exc:
                sys.stderr.write(f"redlock-aio init: {exc}\n")
                return 1
        for outcome in outcomes:
            sys.stdout.write(f"{outcome.node}: marked\n")
        return 0

    try:
        return asyncio.run(init())
    except RedlockError as exc:  # a bad URL
        sys.stderr.write(f"redlock-aio init: {exc}\n")
        return 2


# -- entry point ------------------------------------------------------------------

#: Registers each subcommand's parser (which sets its ``handler``).
COMMANDS: tuple[
    Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None], ...
] = (_add_demo, _add_init)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand."""
    via_module = os.path.basename(sys.argv[0]) == "__main__.py"
    parser = argparse.ArgumentParser(
        prog="python -m redlock_aio" if via_module else "redlock-aio",
        description="redlock_aio: an asyncio-native Redlock.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the subcommand, return
    its exit code (130 when interrupted with Ctrl-C)."""
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
