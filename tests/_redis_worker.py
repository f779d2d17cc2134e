"""
A worker process for the Redis tests: one guard, one job, a JSON answer.

Run as ``python tests/_redis_worker.py '<json>'``; the job's outcome is the
last line of its stdout. Jobs:

- ``topups``: *n* concurrent guarded ``POST /v3/mobile/send`` of random
  amounts between 1 and 300 DZD.
- ``hold``: hold *amount*, say ``held``, then wait to be killed.
- ``balance``: say ``ready``, wait for a line on stdin, read the balance.
- ``load``: *loops* concurrent loops of guarded top-ups of 1 to *max* DZD
  for *seconds*, each call's outcome noted with its wall-clock time.

``redis`` in the job says where Redis is: ``{"cluster": [[host, port]]}``,
``{"sentinel": [[host, port]], "service": name}`` or ``{"url": url}``;
without it, a ``RedisCache`` on *host* and *port*.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from decimal import Decimal
from typing import Any

if os.environ.get("COVERAGE_PROCESS_START"):  # pragma: no cover
    import coverage

    coverage.process_startup()

import aiohttp
import redis.asyncio as aioredis
from aiocache import RedisCache
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.sentinel import Sentinel

from guard import BalanceGuard, BalanceUnavailable, GuardEvent, InsufficientBalance
from guard.providers import OneClickDZ

_CLOSE: list[Any] = []  # clients of the job's own, closed at the end


def _where(job: dict[str, Any]) -> dict[str, Any]:
    where = job.get("redis")
    if where is None:
        host, port, db = job["host"], job["port"], job.get("db", 0)
        return {"cache": RedisCache(endpoint=host, port=port, db=db)}
    if "url" in where:
        return {"redis": where["url"]}
    if "cluster" in where:
        nodes = [ClusterNode(host, port) for host, port in where["cluster"]]
        client: Any = aioredis.RedisCluster(startup_nodes=nodes)
    else:
        sentinel = Sentinel([tuple(a) for a in where["sentinel"]])
        client = sentinel.master_for(where["service"])
        _CLOSE.extend(sentinel.sentinels)
    _CLOSE.append(client)
    return {"redis": client}


def _guard(job: dict[str, Any]) -> BalanceGuard:
    return BalanceGuard(
        **_where(job),
        namespace=job["namespace"],
        settle=job.get("settle", "invalidate"),
        lease=job.get("lease", 60.0),
        fetch_timeout=job.get("fetch_timeout", 10.0),
        on_unavailable=job.get("policy", "closed"),
        hooks=[_EVENTS.append],
    )


_EVENTS: list[GuardEvent] = []


async def _load(job: dict[str, Any], guard: BalanceGuard) -> dict[str, Any]:
    """Sustained guarded top-ups; each outcome with its wall-clock time."""
    provider = OneClickDZ(job["key"], base_url=job["url"])
    rng = random.Random(job["seed"])
    end = time.monotonic() + job["seconds"]
    times: dict[str, list[float]] = {"ok": [], "refused": [], "unavailable": []}
    outcome: dict[str, Any] = {"times": times, "emulator": [], "slowest": 0.0}
    reasons: set[str] = set()
    async with aiohttp.ClientSession() as session:

        async def post(amount: int) -> None:
            async with session.post(
                f"{job['url']}/v3/mobile/send",
                headers={"X-Access-Token": job["key"]},
                json={"plan_code": "TEST", "MSSIDN": "0550000000", "amount": amount},
            ) as response:
                body = await response.json()
            if not body.get("success"):
                outcome["emulator"].append(body["error"]["code"])
                outcome.setdefault("refused_at", []).append(round(time.time(), 2))

        async def loop() -> None:
            while time.monotonic() < end:
                amount = rng.randint(1, job.get("max", 100))
                began = time.monotonic()
                try:
                    async with guard.reserve(provider, amount):
                        await post(amount)
                    kind = "ok"
                except InsufficientBalance:
                    kind = "refused"
                except BalanceUnavailable as exc:
                    kind = "unavailable"
                    reasons.add(f"{time.time():.1f} {exc.reason}"[:160])
                took = time.monotonic() - began
                outcome["slowest"] = max(outcome["slowest"], took)
                times[kind].append(time.time())
                await asyncio.sleep(job.get("pause", 0.0))

        await asyncio.gather(*(loop() for _ in range(job.get("loops", 4))))
    outcome["events"] = sorted({e.kind for e in _EVENTS})
    outcome["reasons"] = sorted(reasons)[-20:]
    outcome["failed_open"] = sum(e.kind == "failed_open" for e in _EVENTS)
    return outcome


async def _topups(job: dict[str, Any], guard: BalanceGuard) -> dict[str, Any]:
    provider = OneClickDZ(job["key"], base_url=job["url"])
    rng = random.Random(job["seed"])
    outcome: dict[str, Any] = {"sent": "0", "ok": 0, "refused": 0, "emulator": []}
    sent = Decimal(0)

    async with aiohttp.ClientSession() as session:

        async def topup(amount: int) -> None:
            async with guard.reserve(provider, amount):
                await post(amount)

        async def post(amount: int) -> None:
            nonlocal sent
            async with session.post(
                f"{job['url']}/v3/mobile/send",
                headers={"X-Access-Token": job["key"]},
                json={"plan_code": "TEST", "MSSIDN": "0550000000", "amount": amount},
            ) as response:
                body = await response.json()
            if not body.get("success"):
                outcome["emulator"].append(body["error"]["code"])
                raise RuntimeError(body["error"]["code"])
            sent += amount
            outcome["ok"] += 1

        async def one(amount: int) -> None:
            try:
                await topup(amount)
            except InsufficientBalance:
                outcome["refused"] += 1

        await asyncio.gather(*(one(rng.randint(1, 300)) for _ in range(job["n"])))
    outcome["sent"] = str(sent)
    return outcome


async def _main(job: dict[str, Any]) -> dict[str, Any]:
    try:
        return await _run(job)
    finally:
        for client in _CLOSE:
            await client.aclose()


async def _run(job: dict[str, Any]) -> dict[str, Any]:
    async with _guard(job) as guard:
        if job["job"] == "topups":
            return await _topups(job, guard)
        if job["job"] == "load":
            return await _load(job, guard)
        provider = OneClickDZ(job["key"], base_url=job["url"])
        if job["job"] == "hold":
            await guard.reserve(provider, Decimal(job["amount"])).__aenter__()
            print("held", flush=True)
            await asyncio.sleep(3600)
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        balance = await guard.balance(provider)
        return {"balance": str(balance.amount)}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(_main(json.loads(sys.argv[1])))), flush=True)
