"""The `data` of every event-stream event: one model per shape, used to serialise the
events and to describe them in the OpenAPI document."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from app.schemas import (
    ApiModel,
    ConversationStatus,
    EscalationSummary,
    Message,
    Timestamp,
)


class ConversationStatusData(ApiModel):
    """Member stream, `event: conversation`: the conversation's status changed."""

    status: ConversationStatus


class _ServiceEvent(ApiModel):
    at: Timestamp
    conversation_id: uuid.UUID


class MessageCreatedData(_ServiceEvent):
    """Service stream, `event: message.created`."""

    type: Literal["message.created"] = "message.created"
    message: Message


class ConversationUpdatedData(_ServiceEvent):
    """Service stream, `event: conversation.updated`."""

    type: Literal["conversation.updated"] = "conversation.updated"
    status: ConversationStatus


class EscalationEventData(_ServiceEvent):
    """Service stream, `event: escalation.created` or `escalation.updated`."""

    type: Literal["escalation.created", "escalation.updated"]
    escalation: EscalationSummary
    assignee_id: uuid.UUID | None = None


class ResetData(ApiModel):
    """Service stream, `event: reset`: the resume point is past retention; refetch state."""

    type: Literal["reset"] = "reset"


MEMBER_EVENTS: dict[str, type[ApiModel]] = {
    "message": Message,
    "conversation": ConversationStatusData,
    "escalation": EscalationSummary,
}
SERVICE_EVENTS: dict[str, type[ApiModel]] = {
    "message.created": MessageCreatedData,
    "conversation.updated": ConversationUpdatedData,
    "escalation.created": EscalationEventData,
    "escalation.updated": EscalationEventData,
    "reset": ResetData,
}


def openapi_stream(events: dict[str, type[ApiModel]], description: str) -> dict[str, Any]:
    """An OpenAPI 200 response for an event stream: its media type and each event's data."""
    return {
        "description": description,
        "content": {
            "text/event-stream": {
                # One parsed event of the WHATWG EventSource format; `data` is the JSON
                # of the model `x-events` gives for that event name.
                "schema": {
                    "type": "object",
                    "description": "An event of the stream (WHATWG EventSource format)",
                    "properties": {
                        "event": {"type": "string", "enum": sorted(events)},
                        "id": {"type": "string"},
                        "data": {"type": "string", "contentMediaType": "application/json"},
                        "retry": {"type": "integer"},
                    },
                },
                "x-events": {
                    name: model.model_json_schema(mode="serialization")
                    for name, model in events.items()
                },
            }
        },
    }
