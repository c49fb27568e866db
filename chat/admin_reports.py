"""What the admin hands out: conversation exports and the per-user usage summary.

Admins see every conversation: nothing here goes through the product's
visibility rule. Who may call these is decided by the admin (staff with the
view permission).
"""

import csv
import json
from datetime import datetime, time, timedelta
from decimal import Decimal

from django import forms
from django.conf import settings
from django.core.exceptions import PermissionDenied
from django.db.models import Count, F, Prefetch, Q, Sum
from django.db.models.functions import Coalesce, TruncDate, TruncDay, TruncMonth, TruncWeek
from django.http import HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone

from . import charts
from .audit import audit_record
from .models import AuditEntry, Conversation, Message, UsageEntry
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
CSV_USAGE_COLUMNS = [
    "user",
    "provider",
    "model",
    "replies",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "estimated_tokens",
    "cost",
    "currency",
]
USAGE_COUNTS = ["replies", "prompt_tokens", "completion_tokens", "total_tokens", "estimated_tokens"]
USAGE_TOP_USERS = 10
COST_PLACES = Decimal("0.00000001")  # UsageEntry.cost's decimal places
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


def _ledger(*, start=None, end=None):
    """Ledger rows written from ``start`` to ``end`` (dates, inclusive, in the current time zone; None: open)."""
    queryset = UsageEntry.objects.all()
    if start is not None:
        queryset = queryset.filter(created_at__gte=timezone.make_aware(datetime.combine(start, time.min)))
    if end is not None:
        queryset = queryset.filter(
            created_at__lt=timezone.make_aware(datetime.combine(end + timedelta(days=1), time.min))
        )
    # The account's name now; the name kept on the row once the account is gone.
    return queryset.annotate(user=Coalesce(F("requested_by__username"), F("requested_by_name")))


def usage_by_user(*, start=None, end=None, period: str = "") -> list[dict]:
    """The usage ledger per (user, provider, model, currency) for replies ended from ``start`` to ``end`` (1 query).

    Each row: replies, prompt / completion / total tokens, ``estimated_tokens``
    (the total tokens of rows marked estimated), ``cost`` (None when no reply
    had a price) and its ``currency`` ("" for replies without a price, so
    those are a row of their own). A reply counts for the user who asked for
    it, by their kept name once the account is gone. With ``period`` ("day",
    "week" or "month") the rows are also split by that period.
    """
    queryset = _ledger(start=start, end=end)
    group = ["user", "provider", "model", "currency"]
    order = ["user", "provider", "model", "currency"]
    if period:
        queryset = queryset.annotate(period=USAGE_PERIODS[period]("created_at"))
        group.insert(0, "period")
        order.insert(0, "period")
    rows = list(
        queryset.values(*group)
        .annotate(
            # First: the aliases below shadow the columns they sum.
            estimated_tokens=Coalesce(Sum("total_tokens", filter=Q(estimated=True)), 0),
            replies=Count("pk"),
            prompt_tokens=Coalesce(Sum("prompt_tokens"), 0),
            completion_tokens=Coalesce(Sum("completion_tokens"), 0),
            total_tokens=Coalesce(Sum("total_tokens"), 0),
            cost=Sum("cost"),
        )
        .order_by(*order)
    )
    return _costs_to_ledger_places(rows)


def usage_charts(*, start, end) -> dict:
    """Chart data for the range (2 queries), costs in CHAT_CURRENCY only (None: no priced reply).

    ``chart_daily``: [{"day": date, "model", "tokens", "cost"}] per day and
    model, days without replies absent; ``chart_top_users``: [{"user",
    "tokens", "cost"}], the ten users with the most tokens.
    """
    queryset = _ledger(start=start, end=end)
    sums = dict(tokens=Coalesce(Sum("total_tokens"), 0), cost=Sum("cost", filter=Q(currency=settings.CHAT_CURRENCY)))
    daily = queryset.annotate(day=TruncDate("created_at")).values("day", "model").annotate(**sums)
    top = queryset.values("user").annotate(**sums).order_by("-tokens", "user")[:USAGE_TOP_USERS]
    return {
        "chart_daily": _costs_to_ledger_places(list(daily.order_by("day", "model"))),
        "chart_top_users": _costs_to_ledger_places(list(top)),
    }


def _costs_to_ledger_places(rows: list[dict]) -> list[dict]:
    # SQLite sums decimals as floats: back to the ledger's 8 places, the same on every database.
    for row in rows:
        if row["cost"] is not None:
            row["cost"] = Decimal(row["cost"]).quantize(COST_PLACES)
    return rows


def usage_totals(rows) -> dict:
    """The rows' counts added up, and ``costs``: {currency: total} over the rows that had a price."""
    totals = {key: sum(row[key] for row in rows) for key in USAGE_COUNTS}
    costs = {}
    for row in rows:
        if row["cost"] is not None:
            costs[row["currency"]] = costs.get(row["currency"], 0) + row["cost"]
    return {**totals, "costs": costs}


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
    measure = forms.ChoiceField(
        required=False, label="Charts show", choices=[("tokens", "Tokens"), ("cost", "Cost")], initial="tokens"
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
    """The per-user usage page for ``model_admin``'s site, read from the ledger; ``?format=csv`` downloads the rows.

    The page's context also has ``chart_daily`` and ``chart_top_users`` (``usage_charts``).

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
    measure = form.cleaned_data.get("measure") or "tokens"
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
        form=UsageRangeForm(initial={"start": start, "end": end, "period": period, "measure": measure}),
        period=period,
        rows=rows,
        totals=usage_totals(rows),
        start=start,
        end=end,
        csv_query=f"?start={start}&end={end}&period={period}&format=csv",
        currency=settings.CHAT_CURRENCY,
        # For the charts block of the template.
        **usage_charts(start=start, end=end),
    )
    # Drawn here, not in the template: chat.charts escapes every name it puts in the SVG.
    context.update(
        measure=measure,
        daily_chart=charts.daily_chart(
            context["chart_daily"], start=start, end=end, measure=measure, currency=settings.CHAT_CURRENCY
        ),
        top_users_chart=charts.top_users_chart(
            context["chart_top_users"], measure=measure, currency=settings.CHAT_CURRENCY
        ),
    )
    return TemplateResponse(request, "admin/chat/usage.html", context)
