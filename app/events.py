"""The realtime fan-out: one LISTEN connection (or a poller) per process feeding the open
event streams through bounded per-stream queues.

Writes record themselves in `event_log` and `pg_notify` in their own transaction (the
triggers of the 0013 revision). Here, one task per process:
1. wakes on a notification, on a tick, or after the LISTEN connection comes back;
2. runs the sequencer (app.repositories.events), which numbers committed rows in an
   order no later commit can overtake;
3. reads the numbered rows after the last position it handed out, loads what they
   point to by id (so nothing RLS or redaction stopped rides on a notification), and
   offers each to the streams that want it.
Because the task follows positions in the database, a lost notification or a dropped
LISTEN connection delays events and never loses them: the next run catches up.

A stream whose queue is full (a client that stopped reading) is cut; it resumes from
its last id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import asyncpg
from prometheus_client import Counter, Gauge
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from app.db import connect_args, create_sessionmaker
from app.event_schemas import (
    ConversationStatusData,
    ConversationUpdatedData,
    EscalationEventData,
    MessageCreatedData,
)
from app.repositories import Record
from app.repositories import events as event_log
from app.schemas import ApiModel, EscalationSummary, Message
from app.settings import DatabaseTarget, Settings

log = logging.getLogger("app.events")

CHANNEL = "member_support_events"
EVENT_TYPES = (
    "message.created",
    "conversation.updated",
    "escalation.created",
    "escalation.updated",
)
StreamKind = Literal["member", "service"]

READ_BATCH = 500
# While rows wait for an older transaction to end, the sequencer is retried this soon,
# doubling up to the regular tick.
RETRY_FIRST_S = 0.01
# With LISTEN up, a tick is only a safety net.
LISTEN_TICK_S = 5.0
LISTEN_CHECK_S = 2.0
RECONNECT_FIRST_S = 0.25
RECONNECT_CAP_S = 30.0
PURGE_EVERY_S = 600.0
PURGE_BATCH = 5000
# A stream ended at shutdown gets this long to finish its last send.
END_GRACE_S = 1.0
SHUTDOWN_CHECK_S = 0.25

STREAMS_OPEN = Gauge(
    "sse_streams_open",
    "Event streams open right now, by kind (member or service).",
    ["kind"],
    multiprocess_mode="livesum",
)
EVENTS_SENT = Counter(
    "sse_events_sent_total", "Events written to event streams, by kind of stream.", ["kind"]
)
STREAMS_CUT = Counter(
    "sse_streams_cut_total",
    "Streams disconnected because their client fell SSE_BUFFER_EVENTS events behind.",
    ["kind"],
)
LISTEN_RECONNECTS = Counter(
    "events_listen_reconnects_total", "Times the LISTEN connection was re-established."
)


class TooManyStreams(Exception):
    """SSE_MAX_STREAMS streams are already open in this process."""


@dataclass(eq=False)
class Event:
    """A numbered event with what the streams send for it, built once for all of them."""

    log_id: int
    position: int | None
    type: str
    conversation_id: uuid.UUID
    # The service stream's `data`; None when the row it points to is gone (erased).
    service_data: str | None
    # (event name, data) for the member stream's conversation and escalation events.
    member_event: tuple[str, str] | None
    # (seq, data) of a message.created event's Message, serialised once for every stream.
    message: tuple[int, str] | None = None


def build_events(
    rows: Sequence[Record],
    messages: dict[uuid.UUID, Record],
    escalations: dict[uuid.UUID, Record],
) -> list[Event]:
    """Turn event log rows and the rows they point to into stream events."""
    built: list[Event] = []
    for row in rows:
        common: dict[str, Any] = {"at": row.created_at, "conversation_id": row.conversation_id}
        service: ApiModel | None = None
        member: tuple[str, str] | None = None
        message_data: tuple[int, str] | None = None
        if row.type == "message.created":
            message = messages.get(row.subject_id)
            if message is not None:
                model = Message.model_validate(message)
                service = MessageCreatedData(message=model, **common)
                message_data = (model.seq, model.model_dump_json())
        elif row.type == "conversation.updated":
            service = ConversationUpdatedData(status=row.status, **common)
            member = ("conversation", ConversationStatusData(status=row.status).model_dump_json())
        else:
            escalation = escalations.get(row.subject_id)
            if escalation is not None:
                # As of the event, even if it has moved again since: its status, and its
                # updated_at, which the same transaction set to the event's now().
                summary = EscalationSummary.model_validate(escalation).model_copy(
                    update={"status": row.status, "updated_at": row.created_at}
                )
                # The assignee as it is now (the log keeps the status, not the assignee).
                service = EscalationEventData(
                    type=row.type,
                    escalation=summary,
                    assignee_id=escalation.assignee_id,
                    **common,
                )
                member = ("escalation", summary.model_dump_json())
        built.append(
            Event(
                log_id=row.id,
                position=row.position,
                type=row.type,
                conversation_id=row.conversation_id,
                service_data=None if service is None else service.model_dump_json(),
                member_event=member,
                message=message_data,
            )
        )
    return built


async def load_events(session: AsyncSession, rows: Sequence[Record]) -> list[Event]:
    """Load what event log rows point to (by id, two queries) and build their events."""
    message_ids = [row.subject_id for row in rows if row.type == "message.created"]
    escalation_ids = [
        row.subject_id for row in rows if row.type.startswith("escalation.") and row.subject_id
    ]
    messages = await event_log.messages_by_id(session, ids=message_ids)
    escalations = await event_log.escalations_by_id(session, ids=escalation_ids)
    return build_events(rows, messages, escalations)


class Ping:
    """What Stream.next returns when nothing happened for SSE_PING_S seconds."""


PING = Ping()


class Stream:
    """One open stream's subscription: a bounded buffer the hub fills.

    A list and one future while it waits, rather than an asyncio.Queue and Event: an
    idle stream holds only what it needs (a Queue alone is four deques, about 3 KB).
    """

    __slots__ = (
        "_limit",
        "_pending",
        "_waiter",
        "cancel",
        "conversation_id",
        "cut",
        "early",
        "ended",
        "kind",
        "opened_at_position",
        "types",
    )

    def __init__(
        self,
        kind: StreamKind,
        conversation_id: uuid.UUID | None,
        types: frozenset[str] | None,
        limit: int,
        opened_at_position: int,
        early: bool = False,
    ) -> None:
        self.kind = kind
        # A service stream that also takes committed events before the sequencer
        # numbers them (position None; the numbered copy follows): the staff console,
        # for which an event only says "refetch", wants it now, not once older
        # transactions end.
        self.early = early
        self.conversation_id = conversation_id
        self.types = types
        # The hub's last dispatched position when the stream opened.
        self.opened_at_position = opened_at_position
        self.ended = False
        self.cut = False
        # Tears the HTTP response down (set by the response that serves the stream).
        self.cancel: Callable[[], Any] | None = None
        self._limit = limit
        self._pending: list[Event] = []
        self._waiter: asyncio.Future[None] | None = None

    def offer(self, event: Event) -> bool:
        """Buffer an event; False when SSE_BUFFER_EVENTS already wait."""
        if len(self._pending) >= self._limit:
            return False
        self._pending.append(event)
        self._wake()
        return True

    def end(self) -> None:
        """Make next() return None from now on."""
        self.ended = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next(self, ping_s: float) -> Event | Ping | None:
        """The next event; PING after `ping_s` seconds without one; None once the stream
        has been ended (cut or shutdown)."""
        if not self._pending and not self.ended:
            loop = asyncio.get_running_loop()
            self._waiter = loop.create_future()
            timer = loop.call_later(ping_s, self._wake)
            try:
                await self._waiter
            finally:
                timer.cancel()
                self._waiter = None
        if self.ended:
            return None
        if not self._pending:
            return PING
        return self._pending.pop(0)


class EventHub:
    """The process's event fan-out (see the module docstring)."""

    def __init__(self, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self.settings = settings
        # The streams' own reads use the request pool; the dispatcher (sequencer, log
        # reads, purge) has one connection of its own, so a burst of writes, each
        # waking it, never takes a connection a request is waiting for.
        self.sessionmaker = sessionmaker
        self._engine: AsyncEngine | None = None
        self._dispatch_sessions = sessionmaker
        self.position: int | None = None
        self.listening = False
        self.closing = False
        self.listen_target: DatabaseTarget | None = settings.listen_database
        self._member: dict[uuid.UUID, set[Stream]] = defaultdict(set)
        self._service: set[Stream] = set()
        self._early_service: set[Stream] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._listen_connection: asyncpg.Connection | None = None
        self._last_purge = 0.0
        # Log ids already handed to member streams before they were numbered.
        self._early: set[int] = set()

    @property
    def open_streams(self) -> int:
        """Streams open in this process."""
        return len(self._service) + sum(len(streams) for streams in self._member.values())

    async def start(self) -> None:
        """Start the dispatch task and, with a direct URL, the LISTEN task."""
        if self.settings.database_url is not None:
            target = self.settings.database
            self._engine = create_async_engine(
                target.url,
                connect_args=connect_args(self.settings, target, pooled=True),
                pool_size=1,
                max_overflow=0,
                pool_timeout=self.settings.db_pool_timeout_s,
                pool_recycle=self.settings.db_pool_recycle_s,
                pool_pre_ping=True,
            )
            self._dispatch_sessions = create_sessionmaker(self._engine, self.settings)
        self._tasks.append(asyncio.create_task(self._run(), name="events-dispatch"))
        self._tasks.append(asyncio.create_task(self._watch_shutdown(), name="events-shutdown"))
        if self.listen_target is not None:
            self._tasks.append(asyncio.create_task(self._listen(), name="events-listen"))
        else:
            log.warning(
                "events_polling: no direct database URL for LISTEN (behind a transaction "
                "pooler); event streams poll every SSE_POLL_MS. Set DATABASE_LISTEN_URL "
                "to a direct or session-mode URL for push.",
                extra={"poll_ms": self.settings.sse_poll_ms},
            )

    def end_all(self) -> None:
        """End every open stream and refuse new ones (the server is shutting down)."""
        self.closing = True
        for stream in [*self._service, *(s for group in self._member.values() for s in group)]:
            self._end(stream)

    async def _watch_shutdown(self) -> None:
        # uvicorn lets open responses finish before the lifespan shutdown (and stop())
        # runs, and a stream never finishes on its own: one watcher per process ends
        # them as soon as the server starts to exit, so clients reconnect elsewhere.
        while not server_exiting():  # noqa: ASYNC110 - uvicorn sets a flag, not an event
            await asyncio.sleep(SHUTDOWN_CHECK_S)
        log.info("events_shutdown", extra={"streams": self.open_streams})
        self.end_all()

    async def stop(self) -> None:
        """End every stream, then the tasks and the LISTEN connection."""
        self.end_all()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._engine is not None:
            await self._engine.dispose()

    def wake(self) -> None:
        """Run the dispatcher now (a notification arrived, or a test wants it)."""
        self._wake.set()

    def open(
        self,
        kind: StreamKind,
        *,
        conversation_id: uuid.UUID | None = None,
        types: frozenset[str] | None = None,
        early: bool = False,
    ) -> Stream:
        """Register a stream; TooManyStreams at SSE_MAX_STREAMS or while shutting down."""
        if self.closing or self.open_streams >= self.settings.sse_max_streams:
            raise TooManyStreams()
        stream = Stream(
            kind,
            conversation_id,
            types,
            limit=self.settings.sse_buffer_events,
            opened_at_position=self.position or 0,
            early=early,
        )
        if conversation_id is not None:
            self._member[conversation_id].add(stream)
        else:
            self._service.add(stream)
            if early:
                self._early_service.add(stream)
        STREAMS_OPEN.labels(kind).inc()
        return stream

    def close(self, stream: Stream) -> None:
        """Forget a stream (idempotent)."""
        if stream.conversation_id is not None:
            group = self._member.get(stream.conversation_id)
            if group is None or stream not in group:
                return
            group.discard(stream)
            if not group:
                del self._member[stream.conversation_id]
        else:
            if stream not in self._service:
                return
            self._service.discard(stream)
            self._early_service.discard(stream)
        STREAMS_OPEN.labels(stream.kind).dec()

    def _end(self, stream: Stream) -> None:
        stream.end()
        self.close(stream)
        if stream.cancel is not None:
            if stream.cut:
                stream.cancel()  # its last send may never return
            else:
                asyncio.get_running_loop().call_later(END_GRACE_S, stream.cancel)

    def _offer(self, stream: Stream, event: Event) -> None:
        if not stream.offer(event):
            stream.cut = True
            STREAMS_CUT.labels(stream.kind).inc()
            log.info("event_stream_cut", extra={"kind": stream.kind})
            self._end(stream)

    def _fan_out(self, event: Event) -> None:
        if event.service_data is not None:
            for stream in list(self._service):
                if stream.types is None or event.type in stream.types:
                    self._offer(stream, event)
        if event.log_id in self._early:
            self._early.discard(event.log_id)
            return
        self._fan_out_to_members(event)

    def _fan_out_to_members(self, event: Event) -> None:
        for stream in list(self._member.get(event.conversation_id, ())):
            if event.type == "message.created" or event.member_event is not None:
                self._offer(stream, event)

    async def _early_members(self, session: AsyncSession) -> None:
        # Member streams follow messages.seq, which is gap-free on its own, so they need
        # not wait for the sequencer (which waits for every older write transaction on
        # the server): committed rows not yet numbered go to them now, once.
        async with session.begin():
            fresh = await event_log.read_unsequenced(
                session,
                # Early service streams (the console) take every conversation's rows.
                conversation_ids=None if self._early_service else list(self._member),
                seen=list(self._early),
                limit=READ_BATCH,
            )
            built = await load_events(session, fresh) if fresh else []
        for event in built:
            if event.service_data is not None:
                # Offered again on every run until numbered: early streams dedupe by log id.
                for stream in list(self._early_service):
                    if stream.types is None or event.type in stream.types:
                        self._offer(stream, event)
            if event.conversation_id in self._member:
                self._early.add(event.log_id)
                self._fan_out_to_members(event)

    async def dispatch(self) -> bool:
        """Sequence, then hand every newly numbered event to the streams; True when rows
        still wait for an older transaction."""
        async with self._dispatch_sessions() as session:
            async with session.begin():
                waiting = await event_log.sequence(session)
            if waiting and (self._member or self._early_service):
                await self._early_members(session)
            if self.position is None:
                # First run: streams see what happens from now on.
                async with session.begin():
                    self.position = await event_log.last_position(session)
                return waiting
            while True:
                async with session.begin():
                    rows = await event_log.read_after(
                        session, after=self.position, limit=READ_BATCH
                    )
                    if not rows:
                        break
                    built = await load_events(session, rows) if self.open_streams else []
                for event in built:
                    self._fan_out(event)
                self.position = int(rows[-1].position)
                if len(rows) < READ_BATCH:
                    break
        return waiting

    def _tick_s(self) -> float:
        poll = self.settings.sse_poll_ms / 1000
        return max(poll, LISTEN_TICK_S) if self.listening else poll

    async def _run(self) -> None:
        retry_s: float | None = None
        self._wake.set()  # the first run at once: it fixes where this process starts
        while True:
            poll_s = self.settings.sse_poll_ms / 1000
            timeout = self._tick_s() if retry_s is None else min(retry_s, poll_s)
            # asyncio.timeout, not wait_for: on Python 3.11 a cancel that meets wait_for's
            # inner task just starting can be lost, and stop() would wait forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            self._wake.clear()
            try:
                waiting = await self.dispatch()
                await self._purge_when_due()
            except Exception as error:  # the database is away: try again on the next tick
                log.warning("events_dispatch_failed", extra={"error_type": type(error).__name__})
                retry_s = None
                continue
            retry_s = None if not waiting else (RETRY_FIRST_S if retry_s is None else retry_s * 2)

    async def _purge_when_due(self) -> None:
        now = time.monotonic()
        if now - self._last_purge < PURGE_EVERY_S:
            return
        self._last_purge = now
        await purge_expired(self._dispatch_sessions, self.settings)

    async def _listen(self) -> None:
        assert self.listen_target is not None
        target = self.listen_target
        delay = RECONNECT_FIRST_S
        connected_before = False
        while True:
            lost = asyncio.Event()
            on_lost = _setter(lost)
            connection: asyncpg.Connection | None = None
            try:
                connection = await connect_listener(target, self.settings)
                await connection.add_listener(CHANNEL, lambda *_: self._wake.set())
                connection.add_termination_listener(on_lost)
                if connected_before:
                    LISTEN_RECONNECTS.inc()
                    log.info("events_listen_reconnected")
                self.listening = True
                self._listen_connection = connection
                delay = RECONNECT_FIRST_S
                if connected_before:
                    # Whatever committed while we were not listening is read now (the
                    # dispatcher's own first run covers the first connection).
                    self._wake.set()
                connected_before = True
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(LISTEN_CHECK_S):
                            await lost.wait()
                    if not lost.is_set():
                        await connection.execute("SELECT 1", timeout=LISTEN_CHECK_S)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("events_listen_lost", extra={"error_type": type(error).__name__})
            finally:
                self.listening = False
                self._listen_connection = None
                if connection is not None:
                    connection.terminate()
            # Poll meanwhile: the tick falls back to SSE_POLL_MS while not listening.
            self._wake.set()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_CAP_S)


def server_exiting() -> bool:
    """Whether the uvicorn server of this process has been told to exit (SIGTERM/SIGINT).

    uvicorn installs its bound `handle_exit` as the signal handler while it serves; its
    server's `should_exit` turns true on the signal, before open responses are waited for.
    """
    handler = signal.getsignal(signal.SIGTERM)
    server = getattr(handler, "__self__", None)
    return bool(getattr(server, "should_exit", False))


def _setter(flag: asyncio.Event) -> Any:
    return lambda *_: flag.set()


async def connect_listener(target: DatabaseTarget, settings: Settings) -> asyncpg.Connection:
    """A plain asyncpg connection for LISTEN on a direct (session) URL."""
    url = target.url
    host = url.query.get("host") or url.host
    return await asyncpg.connect(
        host=host if isinstance(host, str) else None,
        port=url.port,
        user=url.username,
        password=url.password,
        database=url.database,
        ssl=target.ssl,
        timeout=settings.db_pool_timeout_s,
        server_settings={"application_name": "member-support-listen"},
    )


async def purge_expired(
    sessionmaker: async_sessionmaker[AsyncSession], settings: Settings, *, batch: int = PURGE_BATCH
) -> int:
    """Delete event log rows older than EVENTS_RETENTION_HOURS, in batches; the count."""
    cutoff = datetime.now(UTC) - timedelta(hours=settings.events_retention_hours)
    total = 0
    while True:
        async with sessionmaker() as session, session.begin():
            deleted = await event_log.purge(session, older_than=cutoff, batch=batch)
        total += deleted
        if deleted < batch:
            return total
