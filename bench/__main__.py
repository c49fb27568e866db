"""``python -m bench [scenario ...] [--quick] [--no-doc] [--profile] [--doc-only] [--postgres]``

Scenarios: fanout ttft capacity writes memory slowreader search uvicorn connections presence (default: all).

``--profile``: py-spy samples daphne a in the 500-viewer fan-out and the one-process capacity steps (see notes).
``--nice N``: the niceness of the bench and all it starts (default -10: ahead of other work on a shared machine).
``--doc-only``: rewrite docs/benchmarks.md and its charts from the saved results, running nothing.
``--postgres``: the deployment on PostgreSQL (``search`` measures SQLite and PostgreSQL whatever it says).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime

from . import (
    capacity,
    connections,
    fanout,
    first_token,
    memory,
    otherserver,
    presence,
    report,
    runs,
    search,
    slowreader,
    writes,
)
from .deployment import Deployment, raise_fd_limit, set_niceness

# In the order of docs/benchmarks.md; RUN_ORDER measures time to first token first, on a quiet deployment.
SCENARIOS = {
    "fanout": fanout,
    "ttft": first_token,
    "capacity": capacity,
    "writes": writes,
    "memory": memory,
    "slowreader": slowreader,
    "search": search,
    "uvicorn": otherserver,
    "connections": connections,
    "presence": presence,
}
RUN_ORDER = (
    "ttft",
    "fanout",
    "capacity",
    "uvicorn",
    "writes",
    "memory",
    "slowreader",
    "search",
    "connections",
    "presence",
)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "scenarios", nargs="*", metavar="scenario", help=f"any of: {' '.join(SCENARIOS)} (default: all)"
    )
    parser.add_argument("--quick", action="store_true", help="small versions: a smoke test, not figures to quote")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy samples daphne a during the 500-viewer fan-out and the capacity steps on one process",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=-10,
        metavar="N",
        help="the bench's processes (servers, Redis, load) run at this niceness, ahead of other work on a shared"
        " machine (default -10; needs root, else unchanged; 0 to leave it)",
    )
    parser.add_argument(
        "--doc-only",
        action="store_true",
        help="run nothing: rewrite docs/benchmarks.md and its charts from the saved results (bench/results/)",
    )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="a throwaway PostgreSQL cluster instead of a SQLite file (figures printed, not saved)",
    )
    args = parser.parse_args(argv)
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {' '.join(sorted(unknown))}; choose from {' '.join(SCENARIOS)}")
    args.scenarios = [name for name in RUN_ORDER if name in (args.scenarios or SCENARIOS)]
    return args


async def main(argv) -> int:
    args = parse_args(argv)
    if args.doc_only:
        report.write_doc(report.load_all(list(SCENARIOS)), SCENARIOS)
        print(f"bench: wrote {report.DOC.relative_to(report.ROOT)} from {report.RESULTS.relative_to(report.ROOT)}")
        return 0
    runs.PROFILING = args.profile
    limit = raise_fd_limit()
    niceness = set_niceness(args.nice)
    print(
        f"bench: {' '.join(args.scenarios)}{' (quick)' if args.quick else ''}"
        f" on {'PostgreSQL' if args.postgres else 'SQLite'}; open-files limit {limit}; niceness {niceness}",
        flush=True,
    )
    models = [m for name in args.scenarios for m in SCENARIOS[name].models(args.quick)]
    command = "python -m bench" + "".join(f" {a}" for a in argv)
    results = {}
    started = time.monotonic()
    deployment = Deployment(models, postgres=args.postgres)
    try:
        deployment.start()
        for name in args.scenarios:
            print(f"{name}:", flush=True)
            result = await SCENARIOS[name].run(deployment, args.quick)
            result["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
            result["command"] = command
            result["niceness"] = niceness
            results[name] = result
            if args.quick:
                report.save(name, result, report.QUICK)
                for path, _ in report.write_plots(name, result, SCENARIOS, report.QUICK):
                    print(f"  chart: {path.relative_to(report.ROOT)}", flush=True)
            elif not args.postgres:
                report.save(name, result)
    finally:
        deployment.stop()
    report.print_table({name: results[name] for name in SCENARIOS if name in results})
    print(f"\nbench: done in {time.monotonic() - started:.0f} s", flush=True)
    if not args.quick and not args.postgres and not args.no_doc:
        report.write_doc(report.load_all(list(SCENARIOS)), SCENARIOS)
        print(f"bench: wrote {report.DOC.relative_to(report.ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
