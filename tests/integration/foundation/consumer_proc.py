"""A consumer in its own process for the bus tests: records each handled message as a JSON line.

Behaviour is steered by the message: `reason` "transient-once" fails the first delivery with a TransientError;
"permanent" raises a PermanentError. Run: python -m tests.integration.foundation.consumer_proc NATS_URL OUT DURABLE
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys

from libs.common.bus import Bus, ConsumerSpec, Delivery
from libs.common.errors import PermanentError, TransientError
from libs.common.logging import setup_logging
from libs.common.messages import EnvScale


async def main(url: str, out: str, durable: str) -> None:
    setup_logging("consumer", "INFO", "json")
    bus = Bus(url, name="consumer-proc")
    await bus.connect(timeout=10)
    await bus.declare_streams()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)

    async def handle(msg: EnvScale, delivery: Delivery) -> None:
        if msg.reason == "transient-once" and delivery.num_delivered == 1:
            raise TransientError("simulated transient failure", delay=0.2)
        if msg.reason == "permanent":
            raise PermanentError("simulated permanent failure")
        with open(out, "a") as fh:
            fh.write(json.dumps({"envid": msg.envid, "request_id": msg.request_id,
                                 "delivered": delivery.num_delivered}) + "\n")

    await bus.consume(ConsumerSpec(durable, "env.scale", EnvScale, ack_wait=5), handle)
    sys.stdout.write("consumer ready\n")
    sys.stdout.flush()
    await stop.wait()
    await bus.close()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
