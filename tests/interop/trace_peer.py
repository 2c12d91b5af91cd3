"""One trace across Python and Rust: eventsource-py 0.15.1's RabbitMQ bus with
OpenTelemetry's SDK installed, spans kept in memory and printed as JSON.

    trace_peer.py publish --url U --exchange X
        publishes one OrderPlaced inside a span; prints {"trace_id", "span_id"}
        of that span (hex), the context eventsource-py injects
    trace_peer.py consume --url U --exchange X --group G [--timeout S]
        prints "ready", then {"trace_id", "parent_span_id"} of eventsource-py's
        consume span for the first event received
"""

import argparse
import asyncio
import json
import sys
from uuid import uuid4

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

# Before eventsource-py makes its tracer.
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)

from eventsource.adapters.rabbitmq import RabbitMQEventBus, RabbitMQEventBusConfig  # noqa: E402
from peer import OrderPlaced, OrderShipped, registry  # noqa: E402


def bus(args):
    config = RabbitMQEventBusConfig(
        rabbitmq_url=args.url,
        exchange_name=args.exchange,
        consumer_group=args.group,
        enable_tracing=True,
    )
    return RabbitMQEventBus(config=config, event_registry=registry)


def finished(name):
    return [s for s in exporter.get_finished_spans() if s.name == name]


async def publish(args):
    # eventsource-py injects the context current when publish is called (its
    # own publish span is never made current): the span around the call is
    # the one a consumer's span continues.
    async with bus(args) as b:
        with trace.get_tracer("trace_peer").start_as_current_span("python request") as span:
            await b.publish([OrderPlaced(aggregate_id=uuid4(), customer_id="traced", total_amount=1.5)])
    assert finished("eventsource.event_bus.publish"), "eventsource-py traced its publish"
    ctx = span.get_span_context()
    print(json.dumps({"trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}"}), flush=True)


async def consume(args):
    done = asyncio.Event()

    async def handler(event):
        done.set()

    b = bus(args)
    b.subscribe(OrderPlaced, handler)
    b.subscribe(OrderShipped, handler)
    await b.connect()
    task = b.start_consuming_in_background()
    while not b.is_consuming:
        await asyncio.sleep(0.02)
    print("ready", flush=True)
    try:
        await asyncio.wait_for(done.wait(), timeout=args.timeout)
        # The consume span ends after its handlers.
        while not finished("eventsource.event_bus.consume"):
            await asyncio.sleep(0.02)
    except TimeoutError:
        print("timeout: no event", file=sys.stderr, flush=True)
        return 1
    finally:
        await b.stop_consuming()
        task.cancel()
        await b.disconnect()
    span = finished("eventsource.event_bus.consume")[0]
    parent = span.parent.span_id if span.parent else 0
    print(
        json.dumps(
            {"trace_id": f"{span.get_span_context().trace_id:032x}", "parent_span_id": f"{parent:016x}"}
        ),
        flush=True,
    )
    return 0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("command", choices=["publish", "consume"])
    p.add_argument("--url", required=True)
    p.add_argument("--exchange", required=True)
    p.add_argument("--group", default="python")
    p.add_argument("--timeout", type=float, default=60)
    args = p.parse_args()
    handler = {"publish": publish, "consume": consume}[args.command]
    sys.exit(asyncio.run(handler(args)) or 0)


if __name__ == "__main__":
    main()
