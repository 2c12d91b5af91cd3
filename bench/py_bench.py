"""eventsource-py's side of `bench`: the same scenarios with RabbitMQEventBus.

Prints one JSON line with the figure. For consume/memory it prints "ready"
once its queue exists and waits for "go" on stdin (the harness fills the queue).
"""

import argparse
import asyncio
import json
import sys
import time
from datetime import UTC, datetime

from eventsource import DomainEvent, InMemoryEventBus
from eventsource.adapters.rabbitmq import RabbitMQEventBus, RabbitMQEventBusConfig

from py_common import OrderPlaced, cpu_seconds, order, peak_rss_mb, registry


def make_bus(args):
    config = RabbitMQEventBusConfig(
        rabbitmq_url=args.url,
        exchange_name=args.exchange,
        consumer_group="default",
        prefetch_count=100,
        enable_tracing=False,
    )
    return RabbitMQEventBus(config=config, event_registry=registry)


def percentiles(ms):
    ms.sort()
    at = lambda q: ms[round((len(ms) - 1) * q)]
    return {"p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": ms[-1]}


async def counting(bus, target, latencies):
    done = asyncio.Event()
    count = 0

    async def handler(event):
        nonlocal count
        latencies.append((datetime.now(UTC) - event.occurred_at).total_seconds() * 1000.0)
        count += 1
        if count >= target:
            done.set()

    bus.subscribe(OrderPlaced, handler)
    return done


async def publish(args):
    bus = make_bus(args)
    await bus.connect()
    events = [order(i) for i in range(args.count)]
    start = time.perf_counter()
    for k in range(0, len(events), 1000):
        await bus.publish(events[k : k + 1000])
    elapsed = time.perf_counter() - start
    await bus.disconnect()
    return {"per_second": args.count / elapsed}


async def consume(args):
    bus = make_bus(args)
    latencies = []
    done = await counting(bus, args.count, latencies)
    await bus.connect()
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    start = time.perf_counter()
    cpu = cpu_seconds()
    task = bus.start_consuming_in_background()
    await done.wait()
    elapsed = time.perf_counter() - start
    cpu_us = (cpu_seconds() - cpu) * 1e6 / args.count
    await bus.stop_consuming()
    task.cancel()
    await bus.disconnect()
    return {"per_second": args.count / elapsed, "peak_rss_mb": peak_rss_mb(), "cpu_us": cpu_us}


async def latency(args):
    bus = make_bus(args)
    latencies = []
    done = await counting(bus, args.count, latencies)
    await bus.connect()
    task = bus.start_consuming_in_background()
    while not bus.is_consuming:
        await asyncio.sleep(0.01)
    interval = 1.0 / args.rate
    start = time.perf_counter()
    pending = set()
    for i in range(args.count):
        target = start + i * interval
        delay = target - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        t = asyncio.create_task(bus.publish([order(i)]))
        pending.add(t)
        t.add_done_callback(pending.discard)
    await done.wait()
    await bus.stop_consuming()
    task.cancel()
    await bus.disconnect()
    return percentiles(latencies)


async def dispatch(args):
    """ns per publish+dispatch with 1 vs 200 event types subscribed (InMemoryEventBus)."""

    async def handler(event):
        return None

    async def measure(types):
        bus = InMemoryEventBus(enable_tracing=False)
        bus.subscribe(OrderPlaced, handler)
        for n in range(types - 1):
            cls = type(f"E{n:03d}", (DomainEvent,), {"__annotations__": {"event_type": str, "aggregate_type": str, "n": int}, "event_type": f"E{n:03d}", "aggregate_type": "Many"})
            bus.subscribe(cls, handler)
        events = [order(i) for i in range(1000)]
        await bus.publish(events)
        rounds = 5
        start = time.perf_counter()
        for _ in range(rounds):
            await bus.publish(events)
        return (time.perf_counter() - start) * 1e9 / (rounds * len(events))

    one = await measure(1)
    many = await measure(200)
    # Carried in the latency fields, in milliseconds.
    return {"p50_ms": one / 1e6, "p99_ms": many / 1e6}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("scenario", choices=["publish", "consume", "latency", "memory", "dispatch"])
    p.add_argument("--url", required=True)
    p.add_argument("--exchange", required=True)
    p.add_argument("--count", type=int, default=20000)
    p.add_argument("--rate", type=int, default=1000)
    args = p.parse_args()
    run = {"publish": publish, "consume": consume, "memory": consume, "latency": latency, "dispatch": dispatch}
    result = asyncio.run(run[args.scenario](args))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
