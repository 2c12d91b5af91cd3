"""eventsource-py's side of `bench-redis`: the same scenarios with RedisEventBus.

    redis_py_bench.py publish --url U --prefix P --count N
    redis_py_bench.py consume --url U --prefix P --count N   # the stream is pre-filled

Prints one JSON line: {"per_second": ..., "peak_rss_mb": ...}.
"""

import argparse
import asyncio
import json

from eventsource.adapters.redis import RedisEventBus, RedisEventBusConfig

from py_common import consume, publish, registry


def make_bus(args):
    config = RedisEventBusConfig(
        redis_url=args.url,
        stream_prefix=args.prefix,
        consumer_group="default",
        block_ms=100,
        enable_tracing=False,
    )
    return RedisEventBus(config=config, event_registry=registry)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("scenario", choices=["publish", "consume"])
    p.add_argument("--url", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--count", type=int, default=10000)
    args = p.parse_args()
    bus = make_bus(args)
    run = publish(bus, args.count) if args.scenario == "publish" else consume(bus, args.count)
    print(json.dumps(asyncio.run(run)), flush=True)


if __name__ == "__main__":
    main()
