"""CLI: python -m asgi_fleet.fleet {build [--rebuild] [--dist D] | up [--fresh] [NAMES] | down | status}."""

import argparse
import sys

from .util import FleetError, log


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m asgi_fleet.fleet", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("build", help="build the host images asgi-fleet-host:<dist>")
    p.add_argument("--rebuild", action="store_true", help="rebuild images that already exist")
    p.add_argument("--dist", action="append", help="only this dist (repeatable)")
    p = sub.add_parser("up", help="start missing/stopped test hosts and wait until usable")
    p.add_argument("names", nargs="*", help="host names (default: all)")
    p.add_argument("--fresh", action="store_true",
                   help="recreate the hosts from their image, dropping whatever is on them")
    sub.add_parser("down", help="remove every container labelled as a test host")
    sub.add_parser("status", help="one line per test host")
    args = parser.parse_args(argv)

    try:
        if args.cmd == "build":
            from .build import build
            build(args.dist, rebuild=args.rebuild)
        else:
            from . import hostctl
            if args.cmd == "up":
                hostctl.up(args.names, fresh=args.fresh)
            else:
                getattr(hostctl, args.cmd)()
    except (FleetError, KeyError) as exc:
        log(f"ERROR: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
