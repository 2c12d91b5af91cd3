"""The Python side of the Redis interoperability tests: eventsource-py's own RedisEventBus.

    redis_peer.py publish --url U --prefix P --count N         # prints each event published (JSON lines)
    redis_peer.py consume --url U --prefix P --group G --count N [--timeout S]
                                                               # prints "ready", then each event received
    redis_peer.py deadletter --url U --prefix P --group G --count N
                                                               # a failing handler, then eventsource-py's
                                                               # recovery dead-letters them; prints the DLQ

The event classes and samples are peer.py's (the RabbitMQ peer).
"""

import argparse
import asyncio
import json
import sys

from eventsource.adapters.redis import RedisEventBus, RedisEventBusConfig

from peer import OrderPlaced, OrderShipped, registry, sample


def bus(args, group):
    config = RedisEventBusConfig(
        redis_url=args.url,
        stream_prefix=args.prefix,
        consumer_group=group,
        block_ms=200,
        enable_tracing=False,
    )
    return RedisEventBus(config=config, event_registry=registry)


async def publish(args):
    b = bus(args, group=args.group)
    await b.connect()
    try:
        events = [sample(i) for i in range(args.count)]
        await b.publish(events)
        for e in events:
            print(e.model_dump_json(), flush=True)
    finally:
        await b.disconnect()


async def run_consumer(args, handler):
    b = bus(args, group=args.group)
    b.subscribe(OrderPlaced, handler)
    b.subscribe(OrderShipped, handler)
    await b.connect()
    task = b.start_consuming_in_background()
    while not b.is_consuming:
        await asyncio.sleep(0.02)
    print("ready", flush=True)
    return b, task


async def consume(args):
    received = []
    done = asyncio.Event()

    async def handler(event):
        received.append(event)
        print(event.model_dump_json(), flush=True)
        if len(received) >= args.count:
            done.set()

    b, task = await run_consumer(args, handler)
    try:
        await asyncio.wait_for(done.wait(), timeout=args.timeout)
    except TimeoutError:
        print(f"timeout: received {len(received)} of {args.count}", file=sys.stderr, flush=True)
        return 1
    finally:
        await b.stop_consuming()
        task.cancel()
        await b.disconnect()
    return 0


async def deadletter(args):
    failed = []
    done = asyncio.Event()

    async def handler(event):
        failed.append(event)
        if len(failed) >= args.count:
            done.set()
        raise RuntimeError(f"python handler rejects {event.event_id}")

    b, task = await run_consumer(args, handler)
    try:
        await asyncio.wait_for(done.wait(), timeout=args.timeout)
        await b.stop_consuming()
        task.cancel()
        # eventsource-py's own recovery: at retry_count >= max_retries, to the DLQ.
        stats = await b.recover_pending_messages(min_idle_time_ms=0, max_retries=0)
        print(json.dumps({"recovery": stats}), flush=True)
        for m in await b.get_dlq_messages():
            print(json.dumps(m), flush=True)
    finally:
        await b.disconnect()
    return 0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["publish", "consume", "deadletter"])
    p.add_argument("--url", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--group", default="python")
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--timeout", type=float, default=60)
    args = p.parse_args()
    handler = {"publish": publish, "consume": consume, "deadletter": deadletter}[args.command]
    sys.exit(asyncio.run(handler(args)) or 0)


if __name__ == "__main__":
    main()
