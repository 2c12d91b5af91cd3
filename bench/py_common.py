"""What the eventsource-py sides of the benches share: the seed's OrderPlaced,
its registry, the events, peak memory, and the publish and consume loops of
the stream buses (`redis_py_bench.py`, `kafka_py_bench.py`)."""

import asyncio
import os
import resource
import time
from uuid import uuid4

from eventsource import DomainEvent, EventRegistry


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


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


async def publish(bus, count):
    """Publishes `count` events in batches of 1,000; the figure as a dict."""
    await bus.connect()
    events = [order(i) for i in range(count)]
    start = time.perf_counter()
    for k in range(0, len(events), 1000):
        await bus.publish(events[k : k + 1000])
    elapsed = time.perf_counter() - start
    await bus.disconnect()
    return {"per_second": count / elapsed, "peak_rss_mb": peak_rss_mb()}


def cpu_seconds():
    """User + system CPU time of this process so far."""
    t = os.times()
    return t.user + t.system


async def consume(bus, count, from_first_event=False):
    """Handles `count` events of a pre-filled stream; timed from the start of
    consuming, or from the first event (so that a group join is not measured)."""
    done = asyncio.Event()
    seen = 0
    first = None
    first_cpu = None

    async def handler(event):
        nonlocal seen, first, first_cpu
        if first is None:
            first = time.perf_counter()
            first_cpu = cpu_seconds()
        seen += 1
        if seen >= count:
            done.set()

    bus.subscribe(OrderPlaced, handler)
    await bus.connect()
    start = time.perf_counter()
    start_cpu = cpu_seconds()
    task = bus.start_consuming_in_background()
    await done.wait()
    if from_first_event:
        rate = (count - 1) / (time.perf_counter() - first)
        cpu_us = (cpu_seconds() - first_cpu) * 1e6 / (count - 1)
    else:
        rate = count / (time.perf_counter() - start)
        cpu_us = (cpu_seconds() - start_cpu) * 1e6 / count
    await bus.stop_consuming()
    task.cancel()
    await bus.disconnect()
    return {"per_second": rate, "peak_rss_mb": peak_rss_mb(), "cpu_us": cpu_us}
