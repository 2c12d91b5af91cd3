"""eventsource-py's side of `bench-kafka`: the same scenarios with KafkaEventBus.

    kafka_py_bench.py publish --bootstrap HOST:PORT --prefix P --count N
    kafka_py_bench.py consume --bootstrap HOST:PORT --prefix P --count N   # the topic is pre-filled

Prints one JSON line: {"per_second": ..., "peak_rss_mb": ...}.
"""

import argparse
import asyncio
import json
import resource
import time
from uuid import uuid4

from eventsource import DomainEvent, EventRegistry
from eventsource.adapters.kafka import KafkaEventBus, KafkaEventBusConfig


class OrderPlaced(DomainEvent):
    event_type: str = "OrderPlaced"
    aggregate_type: str = "Order"
    customer_id: str
    total_amount: float
    currency: str
    note: str


registry = EventRegistry()
registry.register(OrderPlaced)


def order(i):
    return OrderPlaced(
        aggregate_id=uuid4(),
        customer_id=f"CUST-{i:08d}",
        total_amount=99.99 + i,
        currency="EUR",
        note="leave the parcel with the neighbour",
    )


def make_bus(args):
    config = KafkaEventBusConfig(
        bootstrap_servers=args.bootstrap,
        topic_prefix=args.prefix,
        consumer_group="default",
        enable_tracing=False,
        enable_metrics=False,
    )
    return KafkaEventBus(config=config, event_registry=registry)


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


async def publish(args):
    bus = make_bus(args)
    await bus.connect()
    events = [order(i) for i in range(args.count)]
    start = time.perf_counter()
    for k in range(0, len(events), 1000):
        await bus.publish(events[k : k + 1000])
    elapsed = time.perf_counter() - start
    await bus.disconnect()
    return {"per_second": args.count / elapsed, "peak_rss_mb": peak_rss_mb()}


async def consume(args):
    bus = make_bus(args)
    done = asyncio.Event()
    count = 0
    first = None

    async def handler(event):
        nonlocal count, first
        if first is None:
            first = time.perf_counter()
        count += 1
        if count >= args.count:
            done.set()

    bus.subscribe(OrderPlaced, handler)
    await bus.connect()
    task = bus.start_consuming_in_background()
    await done.wait()
    # From the first event on, as the Rust side: the group join is not measured.
    elapsed = time.perf_counter() - first
    await bus.stop_consuming()
    task.cancel()
    await bus.disconnect()
    return {"per_second": (args.count - 1) / elapsed, "peak_rss_mb": peak_rss_mb()}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("scenario", choices=["publish", "consume"])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--count", type=int, default=5000)
    args = p.parse_args()
    result = asyncio.run({"publish": publish, "consume": consume}[args.scenario](args))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
