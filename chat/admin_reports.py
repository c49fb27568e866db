"""What the admin hands out: conversation exports and the per-user usage summary.

Admins see every conversation: nothing here goes through the product's
visibility rule. Who may call these is decided by the admin (staff with the
view permission).
"""

import csv
import json
from datetime import datetime, time, timedelta

from django import forms
from django.core.exceptions import PermissionDenied
from django.db.models import Count, F, OuterRef, Prefetch, Subquery, Sum
from django.db.models.functions import Coalesce, TruncDay, TruncMonth, TruncWeek
from django.http import HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone

from .audit import audit_record
from .models import AuditEntry, Conversation, Message
from .serializers import conversation_to_dict, message_to_dict

CSV_MESSAGE_COLUMNS = [
    "conversation_id",
    "conversation_title",
    "owner",
    "message_id",
    "created_at",
    "role",
    "author",
    "status",
    "model",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "finish_reason",
    "error_code",
    "content",
]
CSV_USAGE_COLUMNS = ["user", "model", "replies", "prompt_tokens", "completion_tokens", "total_tokens"]
USAGE_DEFAULT_DAYS = 30
USAGE_PERIODS = {"day": TruncDay, "week": TruncWeek, "month": TruncMonth}


def _csv_safe(value):
    """Neutralise spreadsheet formulas (CSV injection): message text is user and model controlled."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return "" if value is None else value


def _attachment(content, *, content_type: str, filename: str) -> HttpResponse:
    response = HttpResponse(content, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def _stamp() -> str:
    return timezone.localtime().strftime("%Y%m%d-%H%M%S")


def _transcripts(queryset):
    """The conversations with owner, members and messages (authors loaded) in 3 queries."""
    return list(
        queryset.select_related("owner").prefetch_related(
            Prefetch("members", queryset=Conversation.members.rel.model.objects.only("id", "username")),
            Prefetch("messages", queryset=Message.objects.select_related("author").order_by("created_at", "id")),
        )
    )


def conversations_export_json(queryset) -> HttpResponse:
    """Download the contract's Conversation objects, each with its ``messages`` oldest first (3 queries)."""
    data = [
        {**conversation_to_dict(c), "messages": [message_to_dict(m) for m in c.messages.all()]}
        for c in _transcripts(queryset)
    ]
    return _attachment(
        json.dumps(data, ensure_ascii=False, indent=2),
        content_type="application/json; charset=utf-8",
        filename=f"conversations-{_stamp()}.json",
    )


def conversations_export_csv(queryset) -> HttpResponse:
    """Download one CSV row per message of the conversations, oldest message first (3 queries).

    Values as in the JSON export; a conversation without messages has no row.
    """
    response = _attachment("", content_type="text/csv; charset=utf-8", filename=f"conversations-{_stamp()}.csv")
    writer = csv.writer(response)
    writer.writerow(CSV_MESSAGE_COLUMNS)
    for c in _transcripts(queryset):
        for m in map(message_to_dict, c.messages.all()):
            usage, error = m["usage"] or {}, m["error"] or {}
            row = [c.id, c.title, c.owner.username, m["id"], m["created_at"], m["role"], m["author"], m["status"]]
            row += [m["model"], usage.get("prompt_tokens"), usage.get("completion_tokens"), usage.get("total_tokens")]
            row += [m["finish_reason"], error.get("code"), m["content"]]
            writer.writerow([_csv_safe(value) for value in row])
    return response


def usage_by_user(*, start, end, period: str = "") -> list[dict]:
    """Assistant replies and their tokens per (user, model) for replies created from ``start`` to ``end`` (dates,
    inclusive, in the current time zone), aggregated in the database (1 query).

    A reply counts for the user who asked for it (``requested_by``; for replies
    stored before that field existed, the author of the user message just
    before it); ``user`` is None when that user was deleted. With ``period``
    ("day", "week" or "month") the rows are also split by that period.
    """
    since = timezone.make_aware(datetime.combine(start, time.min))
    until = timezone.make_aware(datetime.combine(end + timedelta(days=1), time.min))
    asked_by = (
        Message.objects.filter(
            conversation=OuterRef("conversation"), role=Message.Role.USER, created_at__lt=OuterRef("created_at")
        )
        .order_by("-created_at", "-id")
        .values("author__username")[:1]
    )
    queryset = Message.objects.filter(
        role=Message.Role.ASSISTANT, created_at__gte=since, created_at__lt=until
    ).annotate(user=Coalesce(F("requested_by__username"), Subquery(asked_by)))
    group = ["user", "model"]
    order = [F("user").asc(nulls_last=True), "model"]
    if period:
        queryset = queryset.annotate(period=USAGE_PERIODS[period]("created_at"))
        group.insert(0, "period")
        order.insert(0, "period")
    return list(
        queryset.values(*group)
        .annotate(
            replies=Count("pk"),
            prompt_tokens=Coalesce(Sum("prompt_tokens"), 0),
            completion_tokens=Coalesce(Sum("completion_tokens"), 0),
            total_tokens=Coalesce(Sum("total_tokens"), 0),
        )
        .order_by(*order)
    )


def _date_field():
    return forms.DateField(
        required=False,
        input_formats=["%Y-%m-%d"],
        widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
        error_messages={"invalid": "Enter the date as YYYY-MM-DD, for example 2025-01-31."},
    )


class UsageRangeForm(forms.Form):
    """The summary's date range; both ends optional (default: the last 30 days up to today)."""

    start = _date_field()
    end = _date_field()
    period = forms.ChoiceField(
        required=False,
        choices=[("", "Whole range"), ("day", "Per day"), ("week", "Per week"), ("month", "Per month")],
    )

    def clean(self):
        data = super().clean()
        if self.errors:
            return data
        data["end"] = data.get("end") or timezone.localdate()
        data["start"] = data.get("start") or data["end"] - timedelta(days=USAGE_DEFAULT_DAYS - 1)
        if data["start"] > data["end"]:
            raise forms.ValidationError("The start date must not be after the end date.")
        return data


def _usage_csv(rows, *, start, end, period) -> HttpResponse:
    response = _attachment("", content_type="text/csv; charset=utf-8", filename=f"usage-{start}-{end}.csv")
    writer = csv.writer(response)
    columns = (["period"] if period else []) + CSV_USAGE_COLUMNS
    writer.writerow(columns)
    for row in rows:
        if period:
            row = {**row, "period": timezone.localtime(row["period"]).date().isoformat()}
        writer.writerow([_csv_safe(row[column]) for column in columns])
    return response


def _usage_format(request) -> str:
    return "csv" if request.GET.get("format") == "csv" else "html"


def usage_view(request, model_admin):
    """The per-user usage page for ``model_admin``'s site; ``?format=csv`` downloads the same rows.

    Bad dates render the page with the form's errors (status 400); valid ones write one ``usage_viewed`` audit row.
    """
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    form = UsageRangeForm(request.GET)
    context = {
        **model_admin.admin_site.each_context(request),
        "opts": model_admin.opts,
        "title": "Usage by user",
        "time_zone": timezone.get_current_timezone_name(),
    }
    if not form.is_valid():
        context.update(form=form, rows=[])
        return TemplateResponse(request, "admin/chat/usage.html", context, status=400)
    start, end = form.cleaned_data["start"], form.cleaned_data["end"]
    period = form.cleaned_data.get("period") or ""
    audit_record(
        actor=request.user,
        action=AuditEntry.Action.USAGE_VIEWED,
        target_type="usage",
        request=request,
        detail={"start": str(start), "end": str(end), "period": period, "format": _usage_format(request)},
    )
    rows = usage_by_user(start=start, end=end, period=period)
    if _usage_format(request) == "csv":
        return _usage_csv(rows, start=start, end=end, period=period)
    context.update(
        # A fresh form shows the defaults it applied in place of empty inputs.
        form=UsageRangeForm(initial={"start": start, "end": end, "period": period}),
        period=period,
        rows=rows,
        totals={key: sum(row[key] for row in rows) for key in CSV_USAGE_COLUMNS[2:]},
        start=start,
        end=end,
        csv_query=f"?start={start}&end={end}&period={period}&format=csv",
    )
    return TemplateResponse(request, "admin/chat/usage.html", context)
