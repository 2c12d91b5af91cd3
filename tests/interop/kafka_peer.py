"""The Python side of the Kafka interoperability tests: eventsource-py's own KafkaEventBus (aiokafka).

    kafka_peer.py publish --bootstrap B --prefix P --count N   # prints each event published (JSON lines)
    kafka_peer.py consume --bootstrap B --prefix P --group G --count N [--timeout S]
                                                               # prints "ready" once the group has given it
                                                               # its partitions, then each event received
    kafka_peer.py deadletter --bootstrap B --prefix P --group G --count N [--max-retries R]
                                                               # a handler that always fails: eventsource-py
                                                               # retries (fast, on the main topic) and
                                                               # dead-letters; prints "ready", then
                                                               # {"dead_lettered": N} once N are in its DLQ

Every KafkaEventBus joins its consumer group on connect(), publishers too: a
publisher's --group must differ from the consumers' (default "py-publisher").
eventsource-py's get_dlq_messages() waits for one record more than its limit
(aiokafka's consumer_timeout_ms is no iteration timeout), so the DLQ is read
by the Rust side.

The event classes and samples are peer.py's (the RabbitMQ peer).
"""

import argparse
import asyncio
import json
import sys

from eventsource.adapters.kafka import KafkaEventBus, KafkaEventBusConfig

from peer import OrderPlaced, OrderShipped, registry, sample


def bus(args, group, **options):
    config = KafkaEventBusConfig(
        bootstrap_servers=args.bootstrap,
        topic_prefix=args.prefix,
        consumer_group=group,
        enable_tracing=False,
        enable_metrics=False,
        **options,
    )
    return KafkaEventBus(config=config, event_registry=registry)


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


async def run_consumer(args, handler, **options):
    b = bus(args, group=args.group, **options)
    b.subscribe(OrderPlaced, handler)
    b.subscribe(OrderShipped, handler)
    await b.connect()
    task = b.start_consuming_in_background()
    # Ready once the group has given this member its partitions (a group join
    # takes seconds): what is published from then on is consumed promptly.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.timeout
    while not (b.is_consuming and b._connection_manager.consumer.assignment()):
        if task.done() or loop.time() > deadline:
            raise SystemExit("the consumer was given no partitions")
        await asyncio.sleep(0.05)
    print("ready", flush=True)
    return b, task


async def stop(b, task):
    await b.stop_consuming()
    task.cancel()
    await b.disconnect()


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
        await stop(b, task)
    return 0


async def deadletter(args):
    async def handler(event):
        raise RuntimeError(f"python handler rejects {event.event_id}")

    b, task = await run_consumer(
        args,
        handler,
        max_retries=args.max_retries,
        retry_base_delay=0.05,
        retry_max_delay=0.2,
        retry_jitter=0.0,
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.timeout
    try:
        while b.stats.messages_sent_to_dlq < args.count:
            if loop.time() > deadline:
                print(f"timeout: {b.stats.messages_sent_to_dlq} of {args.count} dead-lettered", file=sys.stderr, flush=True)
                return 1
            await asyncio.sleep(0.05)
        print(json.dumps({"dead_lettered": b.stats.messages_sent_to_dlq}), flush=True)
    finally:
        await stop(b, task)
    return 0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["publish", "consume", "deadletter"])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--group", default="py-publisher")
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--max-retries", type=int, default=1)
    p.add_argument("--timeout", type=float, default=90)
    args = p.parse_args()
    handler = {"publish": publish, "consume": consume, "deadletter": deadletter}[args.command]
    sys.exit(asyncio.run(handler(args)) or 0)


if __name__ == "__main__":
    main()
