"""
Measure what guard costs an aiohttp server: requests/second under a real
load generator, and the per-request work of the middleware in process.

Run from the repository root, in the dev environment, with ``wrk`` installed
(Debian package ``wrk``)::

    python benchmarks/bench_aiohttp.py            # 7 rounds of 2 s per app
    python benchmarks/bench_aiohttp.py --quick    # 2 rounds of 1 s, for CI
    python benchmarks/bench_aiohttp.py --check    # exit 1 if a target is missed

The same app (one ``GET /`` handler answering a small JSON body) is served
six ways, each by its own process on a free loopback port:

- ``plain``: no guard, the baseline;
- ``middleware``: no guard, one middleware passing every request on: what
  aiohttp itself charges an app for having any middleware (left out of the
  wrk runs with ``--quick``), for scale;
- ``route/debit`` and ``route/refresh``: ``setup_guard(app, ...,
  routes={"hello": guard_route(provider, 1)})`` with ``settle="debit"`` and
  the default ``"refresh"``;
- ``decorator/debit`` and ``decorator/refresh``: ``@require_balance(provider,
  1)`` on the handler, with ``setup_guard`` for the error answers.

The provider is a `guard.testing.InMemoryProvider` whose balance never runs
out, so the figures are guard's own work and not a provider's: it runs in
the app's process but answers from memory, and only when asked (on the
first request, and with ``"refresh"`` at most once per ``refresh_interval``
after a settle); the run prints how many balances each app fetched.

(a) ``wrk -t1 -c50 --latency`` loads each app for a fixed duration, wrk
    and the servers each on a CPU of their own (``taskset``, where there
    are two), so that they do not take turns on one. The runs alternate:
    two guarded apps, then the plain app, and so on, each round loading
    every guarded app once in a rotated order; a guarded
    app's ratio in a run is its requests/second over the mean of the plain
    app's runs right before and after it, so that load from other
    processes, which drifts over seconds, cancels out. Printed: each app's
    median requests/second, median ratio and median p99 latency, and the
    server process's CPU time per request (from ``/proc``, on Linux) as a
    ratio to the plain app's, the figure least moved by other processes.
    Target: at least 0.9x the plain app's requests/second for every guarded
    app.
(b) In process: one request dispatched through ``Application._handle``
    (routing, middlewares, handler; no HTTP parsing) in a tight loop, the
    median CPU time per request of each app as a ratio to the plain app's,
    and what guard adds per request.

Times are wall-clock on a shared machine: compare the ratios, not the
absolute figures, and on a busy machine run it a few times.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import itertools
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from decimal import Decimal
from typing import TYPE_CHECKING, NamedTuple

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from guard import BalanceGuard, require_balance
from guard.aiohttp import guard_route, setup_guard
from guard.testing import InMemoryProvider

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from aiohttp.typedefs import Handler

MODES = (
    "plain",
    "middleware",
    "route/debit",
    "route/refresh",
    "decorator/debit",
    "decorator/refresh",
)
BASELINE = "plain"
# Not guarded: aiohttp's own cost of an app with any middleware, for scale.
REFERENCE = "middleware"
TARGET_RATIO = 0.9
PLENTY = Decimal(10) ** 15
CONNECTIONS = 50
PROVIDER = web.AppKey("provider", InMemoryProvider)
# Guarded apps loaded between two loads of the plain app.
PER_GAP = 2


# -- the app ----------------------------------------------------------------


async def hello(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


@web.middleware
async def passing(request: web.Request, handler: Handler) -> web.StreamResponse:
    return await handler(request)


def make_app(mode: str) -> web.Application:
    """
    The app served in *mode* (one of `MODES`).
    """
    app = web.Application()
    if mode in (BASELINE, REFERENCE):
        app.router.add_get("/", hello, name="hello")
        if mode == REFERENCE:
            app.middlewares.append(passing)
        return app
    kind, settle = mode.split("/")
    provider = app[PROVIDER] = InMemoryProvider(PLENTY)
    guard = BalanceGuard(settle="debit" if settle == "debit" else "refresh")
    if kind == "route":
        app.router.add_get("/", hello, name="hello")
        setup_guard(app, guard, routes={"hello": guard_route(provider, 1)})
    else:
        app.router.add_get("/", require_balance(provider, 1, guard=guard)(hello))
        setup_guard(app, guard)
    return app


def serve(mode: str) -> None:
    """
    Serve *mode*'s app on a free loopback port, printed first, until
    SIGTERM; then print how many balances its provider was asked for.
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    app = make_app(mode)
    web.run_app(app, sock=sock, print=None, access_log=None)
    print(app[PROVIDER].fetches if PROVIDER in app else 0, flush=True)


# -- (a) wrk -----------------------------------------------------------------

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _seconds(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"unreadable wrk latency {text!r}")
    return float(match[1]) * _UNITS[match[2]]


class Run(NamedTuple):
    """
    One wrk run against one app.
    """

    requests: int
    rps: float
    p99: float  # seconds
    cpu: float | None  # the server's CPU seconds per request; None: unknown


def parse_wrk(output: str) -> tuple[int, float, float]:
    """
    Return (requests, requests/second, p99 latency in seconds) from wrk's
    output.

    Raises:
        RuntimeError: wrk saw non-2xx answers or socket errors: the figure
            would not measure the app's normal path.
    """
    for problem in ("Non-2xx or 3xx responses", "Socket errors"):
        if problem in output:
            raise RuntimeError(f"wrk reported {problem.lower()}:\n{output}")
    count = re.search(r"(\d+) requests in", output)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    p99 = re.search(r"^\s+99%\s+(\S+)", output, re.MULTILINE)
    if count is None or rps is None or p99 is None:
        raise RuntimeError(f"unreadable wrk output:\n{output}")
    return int(count[1]), float(rps[1]), _seconds(p99[1])


def cpu_seconds(pid: int) -> float | None:
    """
    CPU seconds process *pid* has used (user + system), from Linux's
    ``/proc``; None elsewhere.
    """
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cores() -> tuple[list[str], list[str]]:
    """
    The command prefixes that run the servers and wrk each on its own CPU,
    the first two this process may use, so that the load generator and the
    server it loads do not take turns on one core; empty where that cannot
    be done (fewer than two CPUs, no ``taskset``).
    """
    taskset = shutil.which("taskset")
    if taskset is None or not hasattr(os, "sched_getaffinity"):
        return [], []
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return [], []
    return [taskset, "-c", str(allowed[0])], [taskset, "-c", str(allowed[1])]


class Server:
    """
    One app served by a child process, its command prefixed by *pin*.
    """

    def __init__(self, mode: str, pin: Sequence[str] = ()) -> None:
        self.mode = mode
        self.proc = subprocess.Popen(  # noqa: S603
            [*pin, sys.executable, __file__, "--serve", mode],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.isdigit():
            self.stop()
            raise RuntimeError(f"{mode}: the server did not start")
        self.url = f"http://127.0.0.1:{int(line)}/"

    def ready(self, deadline: float) -> None:
        """
        Wait until the app answers 200 (its guard then has a balance).
        """
        while True:
            try:
                with urllib.request.urlopen(self.url, timeout=1) as reply:  # noqa: S310
                    if reply.status == 200:
                        return
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{self.mode}: no answer from {self.url}"
                    ) from exc
                time.sleep(0.05)

    def load(self, wrk: str, duration: int, pin: Sequence[str] = ()) -> Run:
        """
        Load the app with wrk for *duration* seconds, its command prefixed
        by *pin*.
        """
        cpu_before = cpu_seconds(self.proc.pid)
        out = subprocess.run(  # noqa: S603
            [
                *pin,
                wrk,
                "-t1",
                f"-c{CONNECTIONS}",
                f"-d{duration}s",
                "--latency",
                self.url,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        cpu_after = cpu_seconds(self.proc.pid)
        requests, rps, p99 = parse_wrk(out)
        cpu = None
        if cpu_before is not None and cpu_after is not None and requests:
            cpu = (cpu_after - cpu_before) / requests
        return Run(requests, rps, p99, cpu)

    def stop(self) -> int | None:
        """
        Stop the server; return how many balances its provider was asked
        for (None: unknown).
        """
        self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None
        last = out.strip().rpartition("\n")[2]
        return int(last) if last.isdigit() else None


class Figures(NamedTuple):
    """
    One app's medians over the rounds.
    """

    rps: float
    ratio: float  # requests/second over the plain app's
    p99: float
    cpu_ratio: float | None  # server CPU per request over the plain app's
    requests: int  # served under wrk, all runs
    fetches: int | None  # balances the app's provider was asked for; None: unknown


def find_wrk() -> str:
    """
    Return wrk's path, or exit saying how to install it.
    """
    wrk = shutil.which("wrk")
    if wrk is None:
        sys.exit(
            "bench_aiohttp.py needs wrk, the HTTP load generator: "
            "apt-get install -y wrk"
        )
    return wrk


def plan(rounds: int, modes: Sequence[str]) -> list[str]:
    """
    The order of the wrk runs: every round loads each of *modes* but the
    plain app once, two at a time between loads of the plain app, and
    rotates the order so that no app always runs right after the plain one.
    """
    guarded = [mode for mode in modes if mode != BASELINE]
    order = [BASELINE]
    for i in range(rounds):
        turn = guarded[i % len(guarded) :] + guarded[: i % len(guarded)]
        for at in range(0, len(turn), PER_GAP):
            order += [*turn[at : at + PER_GAP], BASELINE]
    return order


def load(rounds: int, duration: int, modes: Sequence[str]) -> dict[str, Figures]:
    """
    The medians under wrk of each of *modes*.

    A guarded app's ratios in a run are to the mean of the plain app's runs
    right before and right after it (see `plan`), so that load from other
    processes, which drifts over seconds, cancels out.
    """
    wrk = find_wrk()
    server_pin, wrk_pin = cores()
    servers = {mode: Server(mode, server_pin) for mode in modes}
    runs: dict[str, list[Run]] = {mode: [] for mode in modes}
    ratios: dict[str, list[float]] = {mode: [] for mode in modes}
    cpu_ratios: dict[str, list[float]] = {mode: [] for mode in modes}
    fetches: dict[str, int | None] = {}
    try:
        deadline = time.monotonic() + 30
        for server in servers.values():
            server.ready(deadline)
        order = plan(rounds, modes)
        done = [(mode, servers[mode].load(wrk, duration, wrk_pin)) for mode in order]
    finally:
        for mode, server in servers.items():
            fetches[mode] = server.stop()
    plain = [i for i, (mode, _) in enumerate(done) if mode == BASELINE]
    for before, after in itertools.pairwise(plain):
        base, last = done[before][1], done[after][1]
        runs[BASELINE].append(base)
        for mode, run in done[before + 1 : after]:
            runs[mode].append(run)
            ratios[mode].append(run.rps / ((base.rps + last.rps) / 2))
            if run.cpu and base.cpu and last.cpu:
                cpu_ratios[mode].append(run.cpu / ((base.cpu + last.cpu) / 2))
    runs[BASELINE].append(done[plain[-1]][1])
    ratios[BASELINE] = [1.0]
    if any(cpu_ratios.values()):
        cpu_ratios[BASELINE] = [1.0]
    return {
        mode: Figures(
            rps=statistics.median(run.rps for run in runs[mode]),
            ratio=statistics.median(ratios[mode]),
            p99=statistics.median(run.p99 for run in runs[mode]),
            cpu_ratio=statistics.median(cpu_ratios[mode]) if cpu_ratios[mode] else None,
            requests=sum(run.requests for run in runs[mode]),
            fetches=fetches[mode],
        )
        for mode in modes
    }


# -- (b) in process ---------------------------------------------------------------


async def dispatch_loops(calls: int, repeats: int) -> tuple[dict[str, float], float]:
    """
    Median seconds per request of each mode's ``Application._handle``, and
    of the handler alone.
    """
    runners: list[web.AppRunner] = []
    loops: dict[str, Callable[[], Awaitable[object]]] = {}
    try:
        for mode in MODES:
            app = make_app(mode)
            runner = web.AppRunner(app)
            await runner.setup()  # runs setup_guard's startup
            runners.append(runner)
            request = make_mocked_request("GET", "/", app=app)
            loops[mode] = functools.partial(app._handle, request)
        request = make_mocked_request("GET", "/")
        loops["handler"] = lambda: hello(request)
        for run in loops.values():
            for _ in range(100):
                response = await run()
                assert getattr(response, "status", 0) == 200, response
        times: dict[str, list[float]] = {name: [] for name in loops}
        for _ in range(repeats):
            for name, run in loops.items():
                # The collector stays on: requests and responses make cyclic
                # garbage, which a server collects too.
                gc.collect()
                # CPU time: a loop that never waits, so what it costs, not
                # the time other processes had the CPU meanwhile.
                start = time.process_time()
                for _ in range(calls):
                    await run()
                times[name].append((time.process_time() - start) / calls)
    finally:
        for runner in runners:
            await runner.cleanup()
    handler = statistics.median(times.pop("handler"))
    return {name: statistics.median(t) for name, t in times.items()}, handler


# -- report ------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="aiohttp server throughput and middleware cost, with and "
        "without guard, as ratios in one run"
    )
    parser.add_argument("--quick", action="store_true", help="a few seconds, for CI")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if a target is missed"
    )
    parser.add_argument("--rounds", type=int, help="wrk runs per app")
    parser.add_argument("--duration", type=int, help="seconds per wrk run")
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    rounds = args.rounds or (2 if args.quick else 7)
    duration = args.duration or (1 if args.quick else 2)
    calls, repeats = (2_000, 5) if args.quick else (10_000, 9)

    find_wrk()
    server_pin, wrk_pin = cores()
    print(
        f"Python {platform.python_version()}, {platform.machine()}; "
        f"wrk -t1 -c{CONNECTIONS} -d{duration}s --latency, {rounds} rounds "
        "interleaved; "
        + (
            f"servers on CPU {server_pin[-1]}, wrk on CPU {wrk_pin[-1]}"
            if server_pin
            else "servers and wrk not pinned to CPUs"
        )
    )
    # --quick leaves the reference app out of the wrk runs: CI's time.
    modes = [mode for mode in MODES if not (args.quick and mode == REFERENCE)]
    figures = load(rounds, duration, modes)
    missed = []
    print(
        "\n(a) under wrk, medians over the rounds: requests/second and its "
        "ratio to the plain app's, p99 latency, and the server's CPU time per "
        "request as a ratio to the plain app's"
    )
    for mode, fig in figures.items():
        mark = ""
        if mode not in (BASELINE, REFERENCE) and fig.ratio < TARGET_RATIO:
            mark = f"  MISSED (target >= {TARGET_RATIO}x)"
            missed.append(mode)
        cpu = "" if fig.cpu_ratio is None else f"  CPU/request {fig.cpu_ratio:5.2f}x"
        print(
            f"  {mode:<18} {fig.rps:>7.0f} req/s {fig.ratio:5.2f}x  "
            f"p99 {fig.p99 * 1e3:6.2f} ms{cpu}{mark}"
        )
    asked = {
        mode: fig.fetches
        for mode, fig in figures.items()
        if mode not in (BASELINE, REFERENCE) and fig.fetches is not None
    }
    if asked:
        # The provider answers from memory in the app's process: what it
        # costs the app is this many fetches, next to the requests served.
        print(
            "  balances fetched from the provider, in all: "
            + ", ".join(
                f"{mode} {count} for {figures[mode].requests:,} requests"
                for mode, count in asked.items()
            )
        )

    per_request, handler = asyncio.run(dispatch_loops(calls, repeats))
    base = per_request[BASELINE]
    print(
        f"\n(b) in process, CPU time of one request through Application._handle "
        f"(median of {repeats} x {calls:,}); the handler alone "
        f"{handler * 1e6:.2f} us"
    )
    for mode, seconds in per_request.items():
        added = seconds - base
        print(
            f"  {mode:<18} {seconds * 1e6:6.2f} us  {seconds / base:5.2f}x"
            + (
                ""
                if mode == BASELINE
                else f"  adds {added * 1e6:5.2f} us "
                f"({added / handler:.1f}x the handler)"
            )
        )
    if missed:
        print(f"\nmissed: {', '.join(missed)}")
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
