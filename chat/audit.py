"""The audit trail's one writer: every audited action goes through ``audit_record``.

Append-only: nothing in the app updates or deletes an ``AuditEntry`` (the
admin offers no add, change or delete, superusers included).
"""

from __future__ import annotations

from .logs import request_id as current_request_id
from .models import AuditEntry

SYSTEM_ACTOR = "system"


def audit_record(
    *, actor, action: str, target_type: str = "", target_id="", request=None, detail: dict | None = None
) -> AuditEntry:
    """Write one audit row: ``actor`` (a user, or None for the system) did ``action`` to the target.

    ``request`` gives the client address and the request id (else the
    current request id, if any); ``detail`` is a small JSON object (counts,
    a reason, the ids of a list page). Call it inside the transaction of the
    action it records, so an action and its record stand or fall together.
    """
    if action not in AuditEntry.Action.values:
        raise ValueError(f"unknown audit action {action!r}")
    name = actor.get_username() if actor is not None else SYSTEM_ACTOR
    ip = request.META.get("REMOTE_ADDR") or None if request is not None else None
    rid = getattr(request, "request_id", None) or current_request_id.get()
    return AuditEntry.objects.create(
        actor=actor if actor is not None and actor.pk else None,
        actor_name=name,
        action=action,
        target_type=target_type,
        target_id=str(target_id) if target_id else "",
        ip=ip,
        request_id="" if rid == "-" else rid[:64],
        detail=detail or {},
    )
