"""The message bus: nats-py JetStream with our acknowledgement policy made explicit.

Every service talks to the others through this module. It declares the streams of `libs.common.subjects` and each
service's durable pull consumers in code (ack wait, max deliver, back-off, max ack pending), publishes commands
with a deterministic `Nats-Msg-Id` so that a re-publish is stored once, and runs handlers with one rule set:

- the payload is parsed into the subject's pydantic model first; invalid JSON or a schema violation is
  *terminated* (never redelivered) and the reason logged — a poison message must not loop;
- success → ack (or a double ack where a redelivery would repeat an expensive OpenNebula call);
- `TransientError` or any unexpected exception → nak with an increasing delay, bounded by `max_deliver`;
- `PermanentError` → term, reason logged and handed to the consumer's `on_permanent` hook.

Messages are nudges: handlers reload documents from MongoDB and are idempotent, so a duplicate or a lost message
costs latency, never correctness (DESIGN.md §2). The connection reconnects on its own; `close()` drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from pydantic import ValidationError

from libs.common.errors import PermanentError, StartupError, TransientError
from libs.common.logging import log_context
from libs.common.messages import Message
from libs.common.metrics import HANDLER_SECONDS, MESSAGES_TOTAL, PUBLISH_TOTAL
from libs.common.subjects import LEASE_BUCKET, STREAMS, StreamSpec, stream_for

log = logging.getLogger("carina.bus")

M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class Delivery:
    """What a handler may want to know about the message it is handling."""

    subject: str
    num_delivered: int
    stream_seq: int
    msg: Msg = field(repr=False)

    async def in_progress(self) -> None:
        """Tell JetStream the handler is still working (resets the ack timer)."""
        await self.msg.in_progress()


Handler = Callable[[M, Delivery], Awaitable[None]]
PermanentHook = Callable[[Message | None, bytes, str], Awaitable[None]]


@dataclass(frozen=True)
class ConsumerSpec(Generic[M]):
    """A durable pull consumer and the model of the messages it receives.

    Args:
        durable: durable name, unique per (service, subject): replicas of a service share it.
        subject: the filter subject (wildcards allowed, e.g. `pool.grant.>`).
        model: the pydantic model every message must parse into.
        ack_wait: seconds before an unacknowledged message is redelivered.
        max_deliver: deliveries before JetStream gives up (the message stays in the stream, visible to operators).
        backoff: redelivery delays after an ack timeout; its first entry replaces `ack_wait`.
        max_ack_pending: messages in flight across all replicas.
        concurrency: handlers run at once in this process.
        double_ack: acknowledge synchronously (for handlers whose redelivery repeats expensive calls).
    """

    durable: str
    subject: str
    model: type[M]
    ack_wait: float = 30.0
    max_deliver: int = 20
    backoff: tuple[float, ...] = ()
    max_ack_pending: int = 1000
    concurrency: int = 8
    double_ack: bool = False

    @property
    def stream(self) -> StreamSpec:
        return stream_for(self.subject)


def nak_delay(num_delivered: int, base: float = 0.25, cap: float = 30.0) -> float:
    """Exponential back-off for a failed delivery: 0.25 s, 0.5 s, 1 s … capped."""
    return float(min(cap, base * (2 ** max(0, num_delivered - 1))))


class Bus:
    """A JetStream connection with declared streams, idempotent publishing and managed consumers.

    Args:
        servers: NATS URL(s).
        name: client name shown by the server's monitoring (the service name).
        user: NATS user (per-service permissions), or None.
        password: its password.
        replicas: stream replicas (1 locally, 3 in production).
    """

    def __init__(
        self,
        servers: str | Sequence[str],
        name: str,
        user: str | None = None,
        password: str | None = None,
        replicas: int = 1,
    ) -> None:
        self.servers = [servers] if isinstance(servers, str) else list(servers)
        self.servers = [u.strip() for s in self.servers for u in s.split(",") if u.strip()]
        self.name = name
        self.user = user
        self.password = password
        self.replicas = replicas
        self.nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._subscriptions: list[JetStreamContext.PullSubscription] = []
        self._inflight: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()

    # --- connection ---------------------------------------------------------------------------------------------

    async def connect(self, timeout: float = 30.0) -> None:
        """Connect, retrying until `timeout`; then raise `StartupError` with a clear message."""
        deadline = time.monotonic() + timeout
        attempt = 0
        last_error = ""
        while True:
            attempt += 1
            try:
                # nats-py retries an initial connection forever when reconnects are unlimited: bound it ourselves.
                self.nc = await asyncio.wait_for(nats.connect(
                    servers=self.servers,
                    name=self.name,
                    user=self.user,
                    password=self.password,
                    connect_timeout=2,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,  # after the first connection, never give up: the broker comes back
                    reconnect_time_wait=0.5,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                ), timeout=max(1.0, deadline - time.monotonic()))
                self._js = self.nc.jetstream(timeout=5)
                log.info("connected to NATS", extra={"servers": self._safe_servers(), "attempts": attempt})
                return
            except Exception as exc:  # noqa: BLE001 - any failure to connect is retried until the deadline
                last_error = f"{type(exc).__name__}: {exc}".strip(": ") if not isinstance(exc, TimeoutError) else ""
                last_error = last_error or "connection refused or timed out"
                if time.monotonic() >= deadline:
                    raise StartupError(
                        f"cannot reach NATS at {', '.join(self._safe_servers())} after {attempt} attempts "
                        f"in {timeout:.0f} s ({last_error or 'no answer'})"
                    ) from None
                await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))

    def _safe_servers(self) -> list[str]:
        # URLs may embed credentials (nats://user:pass@host); never log them.
        return [s.split("@")[-1] for s in self.servers]

    async def _on_error(self, exc: Exception) -> None:
        # Before the first connection every refused attempt lands here; `connect` reports the outcome once.
        level = logging.WARNING if self._js is not None else logging.DEBUG
        log.log(level, "NATS connection error", extra={"error": f"{type(exc).__name__}: {exc}"})

    async def _on_disconnected(self) -> None:
        if not self._stopping.is_set():
            log.warning("disconnected from NATS; reconnecting")

    async def _on_reconnected(self) -> None:
        log.info("reconnected to NATS")

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise RuntimeError("bus is not connected")
        return self._js

    # --- declarations -------------------------------------------------------------------------------------------

    async def declare_streams(self, streams: Sequence[StreamSpec] = STREAMS) -> None:
        """Create or update the streams (idempotent; every service may call it at start-up)."""
        for spec in streams:
            config = js_api.StreamConfig(
                name=spec.name,
                subjects=list(spec.subjects),
                retention=js_api.RetentionPolicy.LIMITS,
                storage=js_api.StorageType.FILE,
                max_age=spec.max_age_s,
                duplicate_window=spec.duplicate_window_s,
                num_replicas=self.replicas,
            )
            try:
                await self.js.add_stream(config)
            except nats.js.errors.BadRequestError:
                # Exists with another configuration (an upgrade changed it): update in place.
                await self.js.update_stream(config)

    async def declare_consumer(self, spec: ConsumerSpec[Any]) -> None:
        """Create (or update) a durable pull consumer."""
        config = js_api.ConsumerConfig(
            name=spec.durable,
            durable_name=spec.durable,
            filter_subject=spec.subject,
            ack_policy=js_api.AckPolicy.EXPLICIT,
            deliver_policy=js_api.DeliverPolicy.ALL,
            ack_wait=spec.ack_wait,
            max_deliver=spec.max_deliver,
            backoff=list(spec.backoff) or None,
            max_ack_pending=spec.max_ack_pending,
            num_replicas=self.replicas,
        )
        await self.js.add_consumer(spec.stream.name, config)

    # --- publishing ---------------------------------------------------------------------------------------------

    async def publish(self, message: Message, *, attempts: int = 5, msg_id: str | None = None) -> bool:
        """Publish a message on its subject with its deterministic `Nats-Msg-Id`.

        Returns:
            False when JetStream recognised it as a duplicate (already stored), True otherwise.

        Raises:
            TransientError: the broker did not acknowledge after `attempts` tries.
        """
        subject = message.subject()
        headers = {"Nats-Msg-Id": msg_id or message.msg_id()}
        data = message.to_bytes()
        last: Exception | None = None
        for attempt in range(1, attempts + 1):
            try:
                ack = await self.js.publish(subject, data, headers=headers, timeout=3)
                outcome = "duplicate" if ack.duplicate else "ok"
                PUBLISH_TOTAL.labels(subject=_metric_subject(subject), result=outcome).inc()
                return not ack.duplicate
            except (nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError, nats.errors.ConnectionClosedError,
                    nats.errors.OutboundBufferLimitError, nats.errors.NoRespondersError) as exc:
                last = exc
                await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
        PUBLISH_TOTAL.labels(subject=_metric_subject(subject), result="error").inc()
        raise TransientError(f"publish to {subject} not acknowledged after {attempts} attempts: {last!r}")

    async def publish_all(self, messages: Sequence[Message]) -> None:
        """Publish several messages concurrently (each still idempotent)."""
        if messages:
            await asyncio.gather(*(self.publish(m) for m in messages))

    # --- consuming ----------------------------------------------------------------------------------------------

    async def consume(
        self,
        spec: ConsumerSpec[M],
        handler: Handler[M],
        on_permanent: PermanentHook | None = None,
    ) -> None:
        """Declare the consumer and start `spec.concurrency` workers that feed `handler`."""
        await self.declare_consumer(spec)
        psub = await self.js.pull_subscribe_bind(durable=spec.durable, stream=spec.stream.name)
        self._subscriptions.append(psub)
        for index in range(spec.concurrency):
            task = asyncio.create_task(self._worker(spec, handler, on_permanent, psub), name=f"{spec.durable}#{index}")
            self._workers.append(task)

    async def _worker(
        self,
        spec: ConsumerSpec[M],
        handler: Handler[M],
        on_permanent: PermanentHook | None,
        psub: JetStreamContext.PullSubscription,
    ) -> None:
        while not self._stopping.is_set():
            try:
                msgs = await psub.fetch(batch=1, timeout=1.0)
            except nats.errors.TimeoutError:
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - disconnected, server restarting: wait and fetch again
                log.debug("fetch failed", extra={"consumer": spec.durable, "error": repr(exc)})
                await asyncio.sleep(0.5)
                continue
            for raw in msgs:
                # Shield the handler from cancellation at shutdown: an in-flight handler finishes and acks.
                task = asyncio.create_task(self._handle(spec, handler, on_permanent, raw))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)
                await asyncio.shield(task)

    async def _handle(
        self,
        spec: ConsumerSpec[M],
        handler: Handler[M],
        on_permanent: PermanentHook | None,
        raw: Msg,
    ) -> None:
        meta = raw.metadata
        delivery = Delivery(raw.subject, meta.num_delivered, meta.sequence.stream, raw)
        metric_subject = _metric_subject(raw.subject)
        started = time.perf_counter()
        with log_context(subject=raw.subject, delivered=meta.num_delivered, consumer=spec.durable):
            try:
                message = spec.model.model_validate_json(raw.data)
            except (ValidationError, ValueError) as exc:
                reason = _validation_reason(exc)
                log.warning("message terminated: invalid payload", extra={"reason": reason})
                MESSAGES_TOTAL.labels(subject=metric_subject, result="invalid").inc()
                await self._settle(raw.term)
                if on_permanent is not None:
                    await _safe_hook(on_permanent, None, raw.data, f"invalid payload: {reason}")
                return
            ids = {k: getattr(message, k) for k in ("envid", "reqid", "slot") if getattr(message, k, None) is not None}
            with log_context(**ids):
                result = "ok"
                try:
                    await handler(message, delivery)
                    if spec.double_ack:
                        await self._settle(lambda: raw.ack_sync(timeout=2))
                    else:
                        await self._settle(raw.ack)
                except PermanentError as exc:
                    result = "permanent"
                    log.warning("message terminated: permanent error", extra={"reason": str(exc)})
                    await self._settle(raw.term)
                    if on_permanent is not None:
                        await _safe_hook(on_permanent, message, raw.data, str(exc))
                except TransientError as exc:
                    result = "retry"
                    delay = exc.delay if exc.delay is not None else nak_delay(meta.num_delivered)
                    level = logging.WARNING if meta.num_delivered >= 3 else logging.INFO
                    log.log(level, "transient error; will retry", extra={"reason": str(exc), "retry_in_s": delay})
                    await self._settle(lambda: raw.nak(delay=delay))
                except Exception:  # noqa: BLE001 - unexpected: retry with back-off, bounded by max_deliver
                    result = "error"
                    delay = nak_delay(meta.num_delivered)
                    log.exception("handler failed; will retry", extra={"retry_in_s": delay})
                    await self._settle(lambda: raw.nak(delay=delay))
                finally:
                    MESSAGES_TOTAL.labels(subject=metric_subject, result=result).inc()
                    HANDLER_SECONDS.labels(subject=metric_subject).observe(time.perf_counter() - started)
                if result != "ok" and meta.num_delivered >= spec.max_deliver:
                    log.error("giving up on message after max deliveries", extra={"max_deliver": spec.max_deliver})

    @staticmethod
    async def _settle(action: Callable[[], Awaitable[Any]]) -> None:
        # An ack that cannot be sent (connection lost) is not fatal: the message is redelivered and handlers are
        # idempotent.
        try:
            await action()
        except Exception as exc:  # noqa: BLE001
            log.warning("could not settle message", extra={"error": repr(exc)})

    # --- leases -------------------------------------------------------------------------------------------------

    async def lease_bucket(self, ttl: float) -> Any:
        """The KV bucket holding singleton leases; a value older than `ttl` disappears (the holder died)."""
        try:
            return await self.js.key_value(LEASE_BUCKET)
        except nats.js.errors.BucketNotFoundError:
            return await self.js.create_key_value(
                bucket=LEASE_BUCKET, ttl=ttl, history=1, replicas=self.replicas
            )

    # --- shutdown -----------------------------------------------------------------------------------------------

    async def stop_consuming(self, grace: float = 10.0) -> None:
        """Stop fetching; let in-flight handlers finish (up to `grace` seconds)."""
        self._stopping.set()
        if self._inflight:
            await asyncio.wait(list(self._inflight), timeout=grace)
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()
        for psub in self._subscriptions:
            with contextlib.suppress(Exception):
                await psub.unsubscribe()
        self._subscriptions.clear()

    async def close(self) -> None:
        """Stop consumers, then drain: pending publishes are flushed before the connection closes."""
        await self.stop_consuming()
        if self.nc is not None and not self.nc.is_closed:
            try:
                await asyncio.wait_for(self.nc.drain(), timeout=5)
            except Exception:  # noqa: BLE001 - already disconnected: nothing left to flush
                await self.nc.close()


class Lease:
    """A singleton lease in the NATS KV bucket (the scheduler's allocator, the policy ticker).

    The holder writes its id under `key` and renews it every `ttl/3`; the bucket's max age removes a value that was
    not renewed, so if the holder dies a standby's `create` succeeds within `ttl`. Renewal is a compare-and-set on
    the revision: a holder that was paused past its TTL learns it lost the lease instead of overwriting the new one.
    """

    def __init__(self, bus: Bus, key: str, holder: str, ttl: float = 6.0) -> None:
        self.bus = bus
        self.key = key
        self.holder = holder
        self.ttl = ttl
        self._revision: int | None = None
        self._held_until = 0.0
        self._renewed_at = 0.0

    @property
    def held(self) -> bool:
        return self._revision is not None and time.monotonic() < self._held_until

    async def try_acquire_or_renew(self) -> bool:
        """One step: acquire if free, renew if ours. Returns whether we hold the lease now.

        Cheap to call in a tight loop: a held lease is only written again once a third of its TTL has passed.
        """
        now = time.monotonic()
        if self._revision is not None and now < self._renewed_at + self.ttl / 3 and self.held:
            return True
        kv = await self.bus.lease_bucket(self.ttl)
        try:
            if self._revision is None:
                self._revision = await kv.create(self.key, self.holder.encode())
            else:
                self._revision = await kv.update(self.key, self.holder.encode(), last=self._revision)
            self._held_until = now + self.ttl * 0.8
            self._renewed_at = now
            return True
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyValueError, nats.js.errors.APIError):
            if self._revision is not None:
                log.warning("lease lost", extra={"lease": self.key})
            self._revision = None
            return False
        except Exception as exc:  # noqa: BLE001 - broker unavailable: we cannot prove we hold it
            log.debug("lease step failed", extra={"lease": self.key, "error": repr(exc)})
            if now >= self._held_until:
                self._revision = None
            return self.held

    async def release(self) -> None:
        """Give the lease up at shutdown so the standby takes over at once."""
        if self._revision is None:
            return
        try:
            kv = await self.bus.lease_bucket(self.ttl)
            await kv.delete(self.key, last=self._revision)
        except Exception:  # noqa: BLE001 - best effort: the TTL frees it anyway
            pass
        self._revision = None


def _metric_subject(subject: str) -> str:
    # Per-service and per-environment suffixes would explode label cardinality.
    parts = subject.split(".")
    return ".".join(parts[:2])


def _validation_reason(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        problems = []
        for err in exc.errors()[:5]:
            where = ".".join(str(p) for p in err["loc"]) or "payload"
            problems.append(f"{where}: {err['msg']}")
        return "; ".join(problems)
    return str(exc)


async def _safe_hook(hook: PermanentHook, message: Message | None, data: bytes, reason: str) -> None:
    try:
        await hook(message, data, reason)
    except Exception:  # noqa: BLE001 - recording the reason must not break message handling
        log.exception("on_permanent hook failed")


def decode_json(data: bytes) -> Any:
    """Parse a raw payload for logging or hooks, tolerating garbage."""
    try:
        return json.loads(data)
    except ValueError:
        return None
