"""eventsource-py's side of `bench-kafka`: the same scenarios with KafkaEventBus.

    kafka_py_bench.py publish --bootstrap HOST:PORT --prefix P --count N
    kafka_py_bench.py consume --bootstrap HOST:PORT --prefix P --count N   # the topic is pre-filled

Prints one JSON line: {"per_second": ..., "peak_rss_mb": ...}. Consume is
timed from the first event, as on the Rust side: the group join is not measured.
"""

import argparse
import asyncio
import json

from eventsource.adapters.kafka import KafkaEventBus, KafkaEventBusConfig

from py_common import consume, publish, registry


def make_bus(args):
    config = KafkaEventBusConfig(
        bootstrap_servers=args.bootstrap,
        topic_prefix=args.prefix,
        consumer_group="default",
        enable_tracing=False,
        enable_metrics=False,
    )
    return KafkaEventBus(config=config, event_registry=registry)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("scenario", choices=["publish", "consume"])
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--prefix", required=True)
    p.add_argument("--count", type=int, default=5000)
    args = p.parse_args()
    bus = make_bus(args)
    if args.scenario == "publish":
        run = publish(bus, args.count)
    else:
        run = consume(bus, args.count, from_first_event=True)
    print(json.dumps(asyncio.run(run)), flush=True)


if __name__ == "__main__":
    main()
