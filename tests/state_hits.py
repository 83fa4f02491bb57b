"""Hit one rate limit concurrently from this process, for the cross-process exactness test.

Usage: python tests/state_hits.py REDIS_URL PREFIX STRATEGY LIMIT HITS
Connects, prints "ready", waits for a line on stdin (so that several processes fire together),
then sends HITS concurrent hits (spread over 50 ms) of LIMIT (e.g. 60/minute) and prints how many
were admitted.
"""

from __future__ import annotations

import asyncio
import random
import sys

from ragline.access.ratelimit import Limiter
from ragline.config import LimitsSettings
from ragline.state.redis import RedisState


async def main(url: str, prefix: str, strategy: str, limit: str, hits: int) -> None:
    state = RedisState(url, prefix)
    await state.open()
    limiter = Limiter(state, LimitsSettings(strategy=strategy, overall={"requests": limit}))  # type: ignore[arg-type]
    await limiter.hit_once("warm-up", "x", "1000/second")  # connected and the scripts loaded
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)

    async def hit() -> bool:
        await asyncio.sleep(random.uniform(0, 0.05))  # spread over 50 ms: the processes interleave
        return (await limiter.admit(None, None)).allowed

    decisions = await asyncio.gather(*(hit() for _ in range(hits)))
    print(sum(decisions), flush=True)
    await state.close()


if __name__ == "__main__":
    url, prefix, strategy, limit, hits = sys.argv[1:6]
    asyncio.run(main(url, prefix, strategy, limit, int(hits)))
