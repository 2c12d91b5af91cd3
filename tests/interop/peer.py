"""The Python side of the interoperability tests: eventsource-py's own RabbitMQ bus.

    peer.py publish --url U --exchange X --count N        # prints each event published (JSON lines)
    peer.py consume --url U --exchange X --group G --count N [--timeout S]
                                                          # prints "ready", then each event received
    peer.py capture --url U --exchange X --out FILE [--variant V]
                                                          # one message as it travels (golden file)
    peer.py fail --url U --exchange X --group G --count N [--max-retries R]
                                                          # a member whose handlers always fail: prints
                                                          # "ready", each attempt, exits after N dead letters
    peer.py replay --url U --exchange X --group G         # replay_dlq_message for every DLQ message;
                                                          # prints {"message_id", "replayed"} per message
    Declaration options for every command: --exchange-type, --durable, --auto-delete,
    --enable-dlq, --dlq-ttl, --dlq-max-length, --bind (routing_key_pattern).

The event classes mirror the Rust ones in tests/interop.rs.
"""

import argparse
import asyncio
import json
import logging
import os
import sys
from datetime import UTC, datetime
from uuid import UUID, uuid4

from eventsource import DomainEvent, EventRegistry
from eventsource.adapters.rabbitmq import RabbitMQEventBus, RabbitMQEventBusConfig


class OrderPlaced(DomainEvent):
    event_type: str = "OrderPlaced"
    aggregate_type: str = "Order"
    customer_id: str
    total_amount: float


class OrderShipped(DomainEvent):
    event_type: str = "OrderShipped"
    aggregate_type: str = "Order"
    tracking_number: str


registry = EventRegistry()
registry.register(OrderPlaced)
registry.register(OrderShipped)


def flag(text):
    return {"true": True, "false": False}[text]


def bus(args, group="python", **options):
    """eventsource-py's bus with the declaration options given on the command line."""
    settings = dict(
        exchange_type=args.exchange_type,
        durable=args.durable,
        auto_delete=args.auto_delete,
        enable_dlq=args.enable_dlq,
        dlq_message_ttl=args.dlq_ttl,
        dlq_max_length=args.dlq_max_length,
        routing_key_pattern=args.bind,
    )
    settings.update(options)
    config = RabbitMQEventBusConfig(
        rabbitmq_url=args.url,
        exchange_name=args.exchange,
        consumer_group=group,
        enable_tracing=False,
        **settings,
    )
    return RabbitMQEventBus(config=config, event_registry=registry)


def sample(i: int) -> DomainEvent:
    """An event with every envelope field set: tenant, actor, causation, metadata,
    a non-default event_version, floats and non-ASCII text."""
    common = dict(
        aggregate_id=uuid4(),
        aggregate_version=i + 1,
        event_version=2,
        tenant_id=UUID("11111111-2222-4333-8444-555555555555"),
        actor_id=f"user:Zoë-{i}",
        correlation_id=uuid4(),
        causation_id=uuid4(),
        metadata={"source": "python", "attempt": i, "ratio": 0.25, "tags": ["ä", "ß"], "nested": {"ok": True}},
        occurred_at=datetime.now(UTC),
    )
    if i % 2 == 0:
        return OrderPlaced(customer_id=f"Ünïcødé ✓ {i}", total_amount=i + 0.125, **common)
    return OrderShipped(tracking_number=f"TRACK-{i:04d}-日本", **common)


def variant(name: str) -> DomainEvent:
    """The envelope variants of the golden files: one field left out or changed each."""
    common = dict(
        aggregate_id=uuid4(),
        aggregate_version=3,
        tenant_id=UUID("11111111-2222-4333-8444-555555555555"),
        actor_id="user:42",
        correlation_id=uuid4(),
        causation_id=uuid4(),
        metadata={"source": "python"},
        occurred_at=datetime.now(UTC),
    )
    if name == "no_tenant":
        common["tenant_id"] = None
    elif name == "no_causation":
        common["causation_id"] = None
    elif name == "event_version":
        common["event_version"] = 7
    elif name == "nested_metadata":
        common["metadata"] = {
            "trace": {"spans": [{"id": 1, "tags": {"db": "pg", "ok": True}}, {"id": 2, "tags": {}}]},
            "empty": {"list": [], "map": {}, "none": None},
            "numbers": [0, -1, 2**53, 1.5, -0.001, 1e-7],
            "text": "Zoë \u2028 \"quoted\" \\ tab\t 日本",
        }
    elif name == "minimal":
        for key in ("tenant_id", "causation_id", "actor_id"):
            common[key] = None
        common["metadata"] = {}
        return OrderShipped(tracking_number="T-1", **common)
    else:
        raise SystemExit(f"unknown variant {name}")
    return OrderPlaced(customer_id="c-1", total_amount=10.0, **common)


async def publish(args):
    async with bus(args, group=args.group) as b:
        events = [sample(i) for i in range(args.count)]
        await b.publish(events)
        for e in events:
            print(e.model_dump_json(), flush=True)


async def consume(args):
    received = []
    done = asyncio.Event()

    async def handler(event):
        received.append(event)
        print(event.model_dump_json(), flush=True)
        if len(received) >= args.count:
            done.set()

    b = bus(args, group=args.group)
    b.subscribe(OrderPlaced, handler)
    b.subscribe(OrderShipped, handler)
    await b.connect()
    task = b.start_consuming_in_background()
    # Give the consumer its queue before announcing readiness.
    while not b.is_consuming:
        await asyncio.sleep(0.02)
    print("ready", flush=True)
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


async def fail(args):
    """A group member whose handlers always fail: eventsource-py retries and
    dead-letters as it does (fast retries), until `count` dead letters."""
    b = bus(
        args,
        group=args.group,
        max_retries=args.max_retries,
        retry_base_delay=0.05,
        retry_max_delay=0.2,
    )

    async def handler(event):
        print(json.dumps({"attempt": str(event.event_id)}), flush=True)
        raise RuntimeError("the Python handler fails")

    b.subscribe(OrderPlaced, handler)
    b.subscribe(OrderShipped, handler)
    await b.connect()
    task = b.start_consuming_in_background()
    while not b.is_consuming:
        await asyncio.sleep(0.02)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.timeout
    try:
        while b.get_stats().messages_sent_to_dlq < args.count:
            if loop.time() > deadline:
                print(f"timeout: {b.get_stats().messages_sent_to_dlq} of {args.count} dead-lettered", file=sys.stderr, flush=True)
                return 1
            await asyncio.sleep(0.02)
    finally:
        await b.stop_consuming()
        task.cancel()
        await b.disconnect()
    return 0


async def replay(args):
    """eventsource-py's own replay of each message in the group's DLQ."""
    b = bus(args, group=args.group)
    await b.connect()
    try:
        # get_dlq_messages returns a requeued message again at the head, and
        # replay_dlq_message finds only the head: replay the head, as many
        # times as there were messages (replays dead-lettered again queue behind).
        for _ in range(await b.get_dlq_message_count()):
            [m] = await b.get_dlq_messages(limit=1)
            ok = await b.replay_dlq_message(m.message_id)
            print(json.dumps({"message_id": m.message_id, "replayed": ok}), flush=True)
    finally:
        await b.disconnect()
    return 0


async def capture(args):
    import aio_pika

    connection = await aio_pika.connect(args.url)
    channel = await connection.channel()
    exchange = await channel.declare_exchange(args.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue("", exclusive=True)
    await queue.bind(exchange, "#")
    event = sample(0) if args.variant is None else variant(args.variant)
    async with bus(args, group=args.group) as b:
        await b.publish([event])
    message = await queue.get(timeout=10)
    await message.ack()
    golden = {
        "captured_from": "eventsource-py 0.15.1 RabbitMQEventBus.publish",
        **({"variant": args.variant} if args.variant else {}),
        "routing_key": message.routing_key,
        "properties": {
            "content_type": message.content_type,
            "content_encoding": message.content_encoding,
            "delivery_mode": int(message.delivery_mode),
            "message_id": message.message_id,
            "timestamp": int(message.timestamp.timestamp()) if message.timestamp else None,
        },
        "headers": {k: (v.decode() if isinstance(v, bytes) else v) for k, v in (message.headers or {}).items()},
        "body": message.body.decode("utf-8"),
    }
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(golden, f, ensure_ascii=False, indent=2)
        f.write("\n")
    # Leave nothing behind on the broker.
    for name in (f"{args.exchange}.{args.group}", f"{args.exchange}.{args.group}.dlq"):
        await channel.queue_delete(name)
    for name in (args.exchange, f"{args.exchange}_dlq"):
        await channel.exchange_delete(name)
    await connection.close()


def main():
    # eventsource-py's warnings (retries, dead letters) on stderr, for the test log.
    logging.basicConfig(level=os.environ.get("PEER_LOG_LEVEL", "WARNING"), stream=sys.stderr)
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["publish", "consume", "capture", "fail", "replay"])
    p.add_argument("--url", required=True)
    p.add_argument("--exchange", required=True)
    p.add_argument("--group", default="python")
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--out")
    # capture: an envelope variant (no_tenant, no_causation, event_version,
    # nested_metadata, minimal) instead of the everything-set sample.
    p.add_argument("--variant", default=None)
    p.add_argument("--max-retries", type=int, default=3)
    # The binding eventsource-py adds for the group (routing_key_pattern;
    # default: its own, `#` on topic).
    p.add_argument("--bind", default=None)
    # Declaration options (RabbitMQEventBusConfig), eventsource-py's defaults.
    p.add_argument("--exchange-type", default="topic")
    p.add_argument("--durable", type=flag, default=True)
    p.add_argument("--auto-delete", type=flag, default=False)
    p.add_argument("--enable-dlq", type=flag, default=True)
    p.add_argument("--dlq-ttl", type=int, default=None)
    p.add_argument("--dlq-max-length", type=int, default=None)
    args = p.parse_args()
    handler = {"publish": publish, "consume": consume, "capture": capture, "fail": fail, "replay": replay}[args.command]
    sys.exit(asyncio.run(handler(args)) or 0)


if __name__ == "__main__":
    main()
