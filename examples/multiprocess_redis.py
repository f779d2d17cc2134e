"""
Several worker processes spend one OneClickDZ account through one Redis,
and together never spend more than it holds.

Run it with a Redis on 127.0.0.1:6379 (or at ``REDIS_URL``), or on a Redis
Cluster whose node ``REDIS_CLUSTER`` names (``host:port``)::

    python examples/multiprocess_redis.py
    REDIS_CLUSTER=127.0.0.1:7000 python examples/multiprocess_redis.py

It starts the provider emulator in this process with 2,000 DZD, then four
worker processes that each send 20 concurrent top-ups of 100 DZD: 8,000 DZD
asked for, 2,000 DZD there. Exactly 20 go through; the others are refused
by the guard before they reach the provider.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sys
import uuid
from decimal import Decimal

import aiohttp
from redis.asyncio import RedisCluster

from guard import BalanceGuard, InsufficientBalance, require_balance
from guard.providers import OneClickDZ
from guard.testing import Emulator

KEY = "example-oneclickdz-key"
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379")
REDIS_CLUSTER = os.environ.get("REDIS_CLUSTER", "")


async def worker(url: str, namespace: str) -> tuple[int, int]:
    oneclick = OneClickDZ(KEY, base_url=url)
    sent = refused = 0
    # Every process passes the same Redis and namespace: the balance and the
    # holds of the account are shared through it.
    redis: str | RedisCluster = REDIS_URL
    if REDIS_CLUSTER:
        host, _, port = REDIS_CLUSTER.rpartition(":")
        redis = RedisCluster(host=host, port=int(port))
    async with (
        BalanceGuard(redis=redis, namespace=namespace) as guard,
        aiohttp.ClientSession() as session,
    ):

        @require_balance(oneclick, amount=lambda phone, amount: amount, guard=guard)
        async def send_topup(phone: str, amount: Decimal) -> None:
            async with session.post(
                f"{url}/v3/mobile/send",
                headers={"X-Access-Token": KEY},
                json={
                    "plan_code": "PREPAID_MOBILIS",
                    "MSSIDN": phone,
                    "amount": int(amount),
                },
            ) as response:
                body = await response.json()
            assert body["success"], body["error"]

        async def one() -> None:
            nonlocal sent, refused
            try:
                await send_topup("0550123456", Decimal(100))
                sent += 1
            except InsufficientBalance:
                refused += 1

        await asyncio.gather(*(one() for _ in range(20)))
    if isinstance(redis, RedisCluster):
        await redis.aclose()  # the guard leaves a client it was given open
    return sent, refused


def run_worker(
    url: str, namespace: str, results: multiprocessing.Queue[object]
) -> None:
    results.put(asyncio.run(worker(url, namespace)))


async def main() -> int:
    namespace = f"example-{uuid.uuid4().hex[:8]}"
    async with Emulator() as emu:
        emu.add_oneclickdz(KEY, 2000)
        context = multiprocessing.get_context("spawn")
        results: multiprocessing.Queue[object] = context.Queue()
        workers = [
            context.Process(target=run_worker, args=(emu.url, namespace, results))
            for _ in range(4)
        ]
        for process in workers:
            process.start()
        loop = asyncio.get_running_loop()
        # The emulator serves from this loop while the workers run.
        # A worker that fails puts nothing: don't wait for it forever.
        outcomes = [
            await loop.run_in_executor(None, results.get, True, 60) for _ in workers
        ]
        for process in workers:
            await loop.run_in_executor(None, process.join)
        sent = sum(int(s) for s, _ in outcomes)  # type: ignore[misc]
        refused = sum(int(r) for _, r in outcomes)  # type: ignore[misc]
        left = emu.balance(KEY)
    print(f"sent {sent} top-ups, refused {refused}, {left} DZD left")
    return 0 if sent == 20 and left == 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
