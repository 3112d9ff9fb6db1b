"""The notification delivery worker: outbox events to the staff webhook (escalation
events) and the agent webhook (`message.created`), signed per Standard Webhooks, at
least once. One worker serves both; each event type goes to its own URL with its own
secret, and only the types whose webhook is configured are claimed.

The worker keeps up to NOTIFY_BATCH_SIZE deliveries in flight. Free slots are filled
by claiming due events under a lease in one short transaction; each event is POSTed
outside any transaction, under a deadline for the whole request (NOTIFY_TIMEOUT_S:
connecting, sending and the answer's headers together, however slowly the receiver
dribbles bytes), and its outcome is recorded in a short transaction of its own as
soon as it is known. So a slow or hung receiver holds one slot for at most the
deadline and never delays the other deliveries. The lease is longer than twice the
deadline (a start-up check), so a POST cut by the deadline is recorded before any
other worker may take the event over: no second delivery while the first is in flight.

A 2xx delivers the event (and for `escalation.created` moves the escalation
pending → notified in that same transaction); anything else is retried with
exponential backoff and jitter until NOTIFY_MAX_ATTEMPTS, then parked as failed. The
backlog gauge is refreshed by its own periodic task, whatever the deliveries do.
Polling only (no LISTEN), so it is safe behind a transaction pooler.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import httpx
from prometheus_client import Counter, Gauge
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from standardwebhooks import Webhook

from app.errors import Conflict, NotFound, is_unavailable
from app.models import MESSAGE_CREATED
from app.repositories import agent_events, escalations, notifications
from app.repositories.notifications import ClaimedEvent
from app.settings import Settings

log = logging.getLogger("app.notify")

DELIVERED = Counter(
    "member_support_notifications_delivered_total",
    "Escalation webhook events delivered (answered 2xx)",
)
RETRIED = Counter(
    "member_support_notifications_retried_total",
    "Failed webhook attempts scheduled for another try",
)
FAILED = Counter(
    "member_support_notifications_failed_total",
    "Webhook events parked as failed after the last allowed attempt",
)
OLDEST_PENDING_AGE = Gauge(
    "member_support_notifications_oldest_pending_age_seconds",
    "Age of the oldest undelivered event still queued (0 when none; parked ones excluded)",
)

USER_AGENT = "member-support-notify/1.0"
DEADLINE_ERROR = "deadline exceeded"


def backoff_seconds(attempt: int, *, base_s: float, cap_s: float) -> float:
    """The wait after failed attempt `attempt` (1-based): exponential, capped, with jitter.

    "Equal jitter": half the step is fixed and half random, so retries of events that
    failed together spread out but never come back almost at once.
    """
    step = min(cap_s, base_s * 2.0 ** min(attempt - 1, 62))
    return step / 2 + random.random() * step / 2  # noqa: S311 (spreading load, not a secret)


def build_payload(event: ClaimedEvent, agent_data: dict[str, Any] | None = None) -> dict[str, Any]:
    """The webhook body: what staff (or the agent) need to act on, never the member's
    session id. `agent_data`: the `data` of a message.created event (agent_events)."""
    if event.type == MESSAGE_CREATED:
        return {"type": event.type, "timestamp": event.created_at.isoformat(), "data": agent_data}
    data: dict[str, Any] = {
        "escalation_id": str(event.escalation_id),
        "conversation_id": None if event.conversation_id is None else str(event.conversation_id),
        "issue_type": event.issue_type,
        "original_request": event.original_request,
        "contact_info": event.contact_info or {},
        "escalation_created_at": (
            None if event.escalation_created_at is None else event.escalation_created_at.isoformat()
        ),
    }
    if event.type == notifications.STATUS_CHANGED:
        data["previous_status"] = event.data.get("previous_status")
        data["status"] = event.data.get("status")
    else:
        data["status"] = event.data.get("status", "pending")
    return {"type": event.type, "timestamp": event.created_at.isoformat(), "data": data}


class NotificationWorker:
    """Delivers due outbox events; several may run at once over one backlog."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._settings = settings
        # Per event type: where it goes and the signer of its webhook.
        self._targets: dict[str, tuple[str, Webhook]] = {}
        for types, url, secret in (
            (
                notifications.STAFF_TYPES,
                settings.notify_webhook_url,
                settings.notify_webhook_secret,
            ),
            ((MESSAGE_CREATED,), settings.agent_webhook_url, settings.agent_webhook_secret),
        ):
            if url is not None and secret is not None:
                target = (url.get_secret_value(), Webhook(secret.get_secret_value()))
                self._targets.update(dict.fromkeys(types, target))
        self._wake_on_completion = MESSAGE_CREATED in self._targets
        # The body data of claimed member-message events, until they are POSTed.
        self._agent_data: dict[uuid.UUID, dict[str, Any] | None] = {}
        self._client = httpx.AsyncClient(
            # httpx's timeouts are per phase and per read; the whole-request deadline is
            # the asyncio timeout in _post. These only fail faster on a dead peer.
            timeout=settings.notify_timeout_s,
            # One connection per slot: a delivery never waits for a pooled connection.
            limits=httpx.Limits(
                max_connections=settings.notify_batch_size,
                max_keepalive_connections=settings.notify_batch_size,
            ),
            follow_redirects=False,
            headers={"user-agent": USER_AGENT},
            transport=transport,
        )

    @property
    def shutdown_grace_s(self) -> float:
        """How long a stop may wait for the batch in flight."""
        return self._settings.notify_timeout_s + 1

    @property
    def enabled(self) -> bool:
        """Whether a webhook is configured."""
        return bool(self._targets)

    async def __aenter__(self) -> NotificationWorker:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until `stop` is set; without a webhook, say so once and idle."""
        if not self.enabled:
            log.warning(
                "notify_disabled: neither NOTIFY_WEBHOOK_URL nor AGENT_WEBHOOK_URL is set; "
                "events stay queued until one is (each with its _SECRET)"
            )
            await stop.wait()
            return
        settings = self._settings
        log.info(
            "notify_started",
            extra={
                "batch_size": settings.notify_batch_size,
                "poll_interval_s": settings.notify_poll_interval_s,
                "max_attempts": settings.notify_max_attempts,
            },
        )
        gauge = asyncio.create_task(self._refresh_gauge(stop), name="notify-gauge")
        in_flight: set[asyncio.Task[None]] = set()
        try:
            while not stop.is_set():
                free = settings.notify_batch_size - len(in_flight)
                claimed: list[ClaimedEvent] = []
                if free > 0:
                    try:
                        claimed = await self._claim(free)
                    except Exception as error:
                        _log_cycle_error(error)
                    for event in claimed:
                        task = asyncio.create_task(self._deliver(event), name="notify-delivery")
                        in_flight.add(task)
                        task.add_done_callback(in_flight.discard)
                if free > 0 and len(claimed) == free:
                    continue  # maybe more due: fill the next free slot at once
                # Wait for the stop signal, the next poll, or (when every slot is busy)
                # the first delivery to finish.
                # With the agent webhook, any delivery's end: a conversation's next
                # message falls due as soon as the one before it is recorded.
                waiters: set[asyncio.Future[Any]] = {asyncio.ensure_future(stop.wait())}
                if len(in_flight) >= settings.notify_batch_size or self._wake_on_completion:
                    waiters |= set(in_flight)
                _, pending = await asyncio.wait(
                    waiters,
                    timeout=settings.notify_poll_interval_s,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for waiter in pending - in_flight:
                    waiter.cancel()
            if in_flight:
                # Each is bounded by the deadline plus one short transaction.
                await asyncio.wait(in_flight, timeout=self.shutdown_grace_s)
        finally:
            gauge.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gauge
            for task in in_flight:
                task.cancel()
        log.info("notify_stopped")

    async def run_once(self) -> int:
        """Claim one batch, deliver it concurrently, record each outcome as it completes."""
        if not self.enabled:
            return 0
        events = await self._claim(self._settings.notify_batch_size)
        # No transaction (and so no row lock) is open while the receivers are answering.
        await asyncio.gather(*(self._deliver(event) for event in events))
        return len(events)

    async def update_gauge(self) -> None:
        """Refresh the oldest-pending-event gauge from the database."""
        async with self._sessionmaker() as session, session.begin():
            age = await notifications.oldest_pending_age_s(session)
        OLDEST_PENDING_AGE.set(age or 0.0)

    async def _refresh_gauge(self, stop: asyncio.Event) -> None:
        """The gauge's own loop, every poll interval: deliveries in flight never freeze it."""
        while not stop.is_set():
            try:
                await self.update_gauge()
            except Exception as error:
                _log_cycle_error(error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._settings.notify_poll_interval_s)

    async def _claim(self, limit: int) -> list[ClaimedEvent]:
        """Take due events of the configured webhooks; a member message's event comes
        with its body's `data`, read in the same transaction."""
        async with self._sessionmaker() as session, session.begin():
            events = await notifications.claim(
                session,
                batch_size=limit,
                lease_s=self._settings.notify_lease_s,
                types=sorted(self._targets),
            )
            agent_data = await agent_events.payload_data(
                session, message_ids=[event.message_id for event in events if event.message_id]
            )
        for event in events:
            if event.message_id is not None:
                self._agent_data[event.id] = agent_data.get(event.message_id)
        return events

    async def _deliver(self, event: ClaimedEvent) -> None:
        """POST one event and record its outcome; errors are logged, never raised."""
        try:
            error = await self._post(event, self._agent_data.pop(event.id, None))
            await self._record(event, error)
        except Exception as error:
            # The event stays leased; when the lease runs out it is due again.
            _log_cycle_error(error)

    def sign(
        self, message_id: str, body: str, event_type: str = notifications.CREATED
    ) -> dict[str, str]:
        """Standard Webhooks headers for a body sent now, signed with the secret of the
        webhook `event_type` goes to."""
        _, webhook = self._targets[event_type]
        # Whole seconds: the signed timestamp and the header must be the same number.
        now = datetime.fromtimestamp(int(time.time()), UTC)
        return {
            "webhook-id": message_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": webhook.sign(message_id, now, body),
            "content-type": "application/json",
        }

    async def _post(
        self, event: ClaimedEvent, agent_data: dict[str, Any] | None = None
    ) -> str | None:
        """POST one event; None on a 2xx, else a short error with no URL and no body."""
        url, _ = self._targets[event.type]
        if event.type == MESSAGE_CREATED and agent_data is None:
            return "message gone"  # deleted since it was claimed; its event goes with it
        body = json.dumps(
            build_payload(event, agent_data), separators=(",", ":"), ensure_ascii=False
        )
        # The event id is the webhook-id on every attempt, so receivers can drop repeats.
        headers = self.sign(str(event.id), body, event.type)
        try:
            # One deadline for the whole exchange, up to the answer's status and headers
            # (the body is never read): a receiver dribbling a byte at a time cannot
            # stretch it the way it stretches a per-read timeout.
            async with (
                asyncio.timeout(self._settings.notify_timeout_s),
                self._client.stream(
                    "POST", url, content=body.encode(), headers=headers
                ) as response,
            ):
                if 200 <= response.status_code < 300:
                    return None
                return f"HTTP {response.status_code}"
        except TimeoutError:
            return DEADLINE_ERROR
        except (httpx.HTTPError, httpx.InvalidURL) as error:
            return type(error).__name__

    async def _record(self, event: ClaimedEvent, error: str | None) -> None:
        settings = self._settings
        retry_in: float | None = None
        async with self._sessionmaker() as session, session.begin():
            if error is None:
                held = await notifications.mark_delivered(
                    session, event_id=event.id, attempt=event.attempt
                )
                if held and event.type == notifications.CREATED:
                    await _mark_notified(session, event)
            else:
                last = event.attempt >= settings.notify_max_attempts
                retry_in = (
                    None
                    if last
                    else backoff_seconds(
                        event.attempt,
                        base_s=settings.notify_backoff_base_s,
                        cap_s=settings.notify_backoff_cap_s,
                    )
                )
                held = await notifications.mark_failed_attempt(
                    session,
                    event_id=event.id,
                    attempt=event.attempt,
                    error=error,
                    retry_in_s=retry_in,
                )
        self._report(event, error, held=held, retry_in=retry_in)

    def _report(
        self, event: ClaimedEvent, error: str | None, *, held: bool, retry_in: float | None
    ) -> None:
        """Count and log a recorded outcome (ids only, never the body or the URL)."""
        ids = {
            "event_id": str(event.id),
            "escalation_id": None if event.escalation_id is None else str(event.escalation_id),
            "message_id": None if event.message_id is None else str(event.message_id),
            "type": event.type,
            "attempt": event.attempt,
        }
        if not held:
            log.warning("notification_lease_lost", extra=ids)
        elif error is None:
            DELIVERED.inc()
            log.info("notification_delivered", extra=ids)
        elif retry_in is None:
            FAILED.inc()
            log.error("notification_failed", extra={**ids, "error": error})
        else:
            RETRIED.inc()
            log.warning(
                "notification_retry_scheduled",
                extra={**ids, "error": error, "retry_in_s": round(retry_in, 1)},
            )


def _log_cycle_error(error: BaseException) -> None:
    if is_unavailable(error):
        log.warning("notify_database_unavailable")
    else:
        log.exception("notify_cycle_failed")


async def _mark_notified(session: AsyncSession, event: ClaimedEvent) -> None:
    """pending → notified through the API's compare-and-set; a later status is left alone."""
    # Conflict: staff moved it on (in_progress, resolved) before the webhook was answered.
    assert event.escalation_id is not None
    with contextlib.suppress(Conflict, NotFound):
        await escalations.transition(
            session, escalation_id=event.escalation_id, status="notified", record_event=False
        )


@dataclass
class BackgroundNotifier:
    """The worker as a task of the API process (`serve --notify`, NOTIFY_WORKER=true)."""

    worker: NotificationWorker
    stop_event: asyncio.Event
    task: asyncio.Task[None]

    @classmethod
    def start(
        cls, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings
    ) -> BackgroundNotifier:
        """Start delivering on the running loop."""
        worker = NotificationWorker(sessionmaker, settings)
        stop_event = asyncio.Event()
        return cls(worker, stop_event, asyncio.create_task(worker.run(stop_event), name="notify"))

    async def stop(self) -> None:
        """Let the batch in flight finish briefly; past that its leases bring it back later."""
        self.stop_event.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.task, timeout=self.worker.shutdown_grace_s)
        await self.worker.aclose()


async def run_worker(settings: Settings, stop: asyncio.Event) -> None:
    """The `member-support notify` process: its own small engine, until `stop` is set."""
    from app.db import create_engine, create_sessionmaker

    engine = create_engine(settings)
    try:
        async with NotificationWorker(create_sessionmaker(engine, settings), settings) as worker:
            await worker.run(stop)
    finally:
        await engine.dispose()
