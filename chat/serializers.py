"""Model instances to the contract's JSON objects (plain dicts)."""


def _iso(value):
    return value.isoformat().replace("+00:00", "Z") if value else None


def conversation_to_dict(conversation) -> dict:
    """The contract's Conversation. Needs ``owner`` and ``members`` loaded (see selectors)."""
    return {
        "id": str(conversation.id),
        "title": conversation.title,
        "model": conversation.model,
        "system_prompt": conversation.system_prompt,
        "owner": conversation.owner.username,
        "members": sorted(user.username for user in conversation.members.all()),
        "created_at": _iso(conversation.created_at),
        "updated_at": _iso(conversation.updated_at),
    }


def message_to_dict(message) -> dict:
    """The contract's Message. Needs ``author`` (and for a stopped reply ``stopped_by``) loaded (see selectors)."""
    return {
        "id": str(message.id),
        "conversation": str(message.conversation_id),
        "parent": str(message.parent_id) if message.parent_id else None,
        "role": message.role,
        "author": message.author.username if message.author_id else None,
        "content": message.content,
        "reasoning": message.reasoning,
        "status": message.status,
        "model": message.model or None,
        "usage": message.usage,
        "finish_reason": message.finish_reason,
        "error": message.error,
        "stopped_by": _stopped_by(message),
        "created_at": _iso(message.created_at),
        "completed_at": _iso(message.completed_at),
        "time_to_first_token_ms": message.time_to_first_token_ms,
        "duration_ms": message.duration_ms,
    }


def _stopped_by(message) -> str | None:
    # Recorded when the stop was asked; it counts only if the stop won (the reply ended cancelled).
    if message.status != "cancelled" or not message.stopped_by_id:
        return None
    return message.stopped_by.username


def api_token_to_dict(token) -> dict:
    """The contract's personal API token (never its secret, which only the create answer carries)."""
    return {
        "id": token.pk,
        "name": token.name,
        "created_at": _iso(token.created_at),
        "expires_at": _iso(token.expires_at),
        "last_used_at": _iso(token.last_used_at),
    }


def model_list_to_dicts(models) -> list[dict]:
    """``GET /api/models/``'s items: ``{"id", "name", "provider", "default"}``, the first model the default."""
    return [
        {"id": m.id, "name": m.name, "provider": m.provider, "default": index == 0} for index, m in enumerate(models)
    ]
