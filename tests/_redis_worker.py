"""
A worker process for the Redis tests: one guard, one job, a JSON answer.

Run as ``python tests/_redis_worker.py '<json>'``; the job's outcome is the
last line of its stdout. Jobs:

- ``topups``: *n* concurrent guarded ``POST /v3/mobile/send`` of random
  amounts between 1 and 300 DZD.
- ``hold``: hold *amount*, say ``held``, then wait to be killed.
- ``balance``: say ``ready``, wait for a line on stdin, read the balance.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
from decimal import Decimal
from typing import Any

if os.environ.get("COVERAGE_PROCESS_START"):  # pragma: no cover
    import coverage

    coverage.process_startup()

import aiohttp
from aiocache import RedisCache

from guard import BalanceGuard, InsufficientBalance
from guard.providers import OneClickDZ


def _guard(job: dict[str, Any]) -> BalanceGuard:
    return BalanceGuard(
        cache=RedisCache(endpoint=job["host"], port=job["port"], db=job.get("db", 0)),
        namespace=job["namespace"],
        settle=job.get("settle", "invalidate"),
        lease=job.get("lease", 60.0),
        fetch_timeout=job.get("fetch_timeout", 10.0),
    )


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
    async with _guard(job) as guard:
        if job["job"] == "topups":
            return await _topups(job, guard)
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
