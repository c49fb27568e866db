"""Sign-in throttling on top of django-axes: the 429 page, and what a successful sign-in clears.

axes counts failures per username and per client address in the database
(config/settings/base.py, ``AXES_*``), so every process agrees.
"""

import logging
import math

from axes.backends import AxesBackend
from axes.exceptions import AxesBackendPermissionDenied
from axes.handlers.database import AxesDatabaseHandler
from axes.handlers.proxy import AxesProxyHandler
from axes.helpers import get_client_username, get_cool_off, get_credentials, get_failure_limit
from axes.models import AccessAttempt
from django.conf import settings
from django.db import router, transaction
from django.db.models import F, Max, Sum
from django.shortcuts import render
from django.utils import timezone

log = logging.getLogger(__name__)


def lockout_seconds_left(request, credentials=None) -> int:
    """Seconds until every locked parameter (username, address) of ``request`` may sign in again; at least 1.

    A parameter is locked while its failures within the cool-off reach the
    limit; it is free at the latest when its newest failure leaves the window.
    """
    cool_off = get_cool_off(request)
    limit = get_failure_limit(request, credentials)
    ends = []
    for attempts in AxesProxyHandler.get_implementation().get_user_attempts(request, credentials):
        totals = attempts.aggregate(failures=Sum("failures_since_start"), last=Max("attempt_time"))
        if (totals["failures"] or 0) >= limit:
            ends.append(totals["last"] + cool_off)
    if not ends:
        return max(1, math.ceil(cool_off.total_seconds()))
    return max(1, math.ceil((max(ends) - timezone.now()).total_seconds()))


def lockout_response(request, original_response=None, credentials=None):
    """axes' ``AXES_LOCKOUT_CALLABLE``: the "too many failed sign-in attempts" page, 429 with ``Retry-After``.

    axes' async middleware passes the credentials second, so either slot may hold them.
    """
    if credentials is None and isinstance(original_response, dict):
        credentials = original_response
    seconds = lockout_seconds_left(request, credentials)
    response = render(request, "registration/locked_out.html", {"minutes": math.ceil(seconds / 60)}, status=429)
    response["Retry-After"] = str(seconds)
    return response


class SignInAttempts(AxesDatabaseHandler):
    """axes' database handler (``AXES_HANDLER``), counting each sign-in before its password is checked.

    axes alone checks the limit, then the password, then counts the failure:
    simultaneous attempts all pass the check (40 of 40 guesses got a password
    check with a limit of 5). Counting first and then comparing makes the
    limit exact across threads and processes.
    """

    def count_attempt(self, request, credentials) -> bool:
        """Count this sign-in as a failure of its username and address; False when that passes the limit.

        Writes an ``AccessAttempt`` row (one per username, address and user
        agent, under a row lock). A successful sign-in takes it back below.
        """
        self.clean_expired_user_attempts(request, credentials)
        with transaction.atomic(using=router.db_for_write(AccessAttempt)):
            attempt, created = AccessAttempt.objects.select_for_update().get_or_create(
                username=get_client_username(request, credentials),
                ip_address=request.axes_ip_address,
                user_agent=request.axes_user_agent,
                defaults={
                    "get_data": "",
                    "post_data": "",
                    "http_accept": request.axes_http_accept,
                    "path_info": request.axes_path_info,
                    "failures_since_start": 1,
                    "attempt_time": request.axes_attempt_time,
                },
            )
            if not created:
                AccessAttempt.objects.filter(pk=attempt.pk).update(
                    failures_since_start=F("failures_since_start") + 1,
                    attempt_time=request.axes_attempt_time,
                    path_info=request.axes_path_info,
                )
        request.chat_attempt_counted = True
        return self.get_failures(request, credentials) <= get_failure_limit(request, credentials)

    def user_login_failed(self, sender, credentials: dict, request=None, **kwargs):
        if not getattr(request, "chat_attempt_counted", False):
            return super().user_login_failed(sender, credentials, request, **kwargs)
        # Counted already: only decide whether this failure is the one that locks.
        limit = get_failure_limit(request, credentials)
        if request.axes_locked_out or self.get_failures(request, credentials) >= limit:
            log.warning("Sign-in locked after repeated failures (username or client address).")
            request.axes_locked_out = True
            request.axes_credentials = credentials

    def user_logged_in(self, sender, request, user, **kwargs):
        """Also clear the username's failures, this sign-in's own count included.

        Only the username's: axes' ``AXES_RESET_ON_SUCCESS`` would also clear
        the address's failures against other usernames, so signing in to one's
        own account would reset an attack on someone else's.
        """
        super().user_logged_in(sender, request, user, **kwargs)
        self.reset_attempts(username=user.get_username())


class SignInBackend(AxesBackend):
    """axes' backend (first in ``AUTHENTICATION_BACKENDS``): refuses a locked-out sign-in, then counts it.

    Raises ``PermissionDenied`` (Django's ``authenticate`` answers "no user"
    and the middleware the 429 page) when the username or address is locked,
    or when this attempt's count passes the limit.
    """

    def authenticate(self, request, username=None, password=None, **kwargs):
        super().authenticate(request, username, password, **kwargs)
        if not settings.AXES_ENABLED:
            return None
        credentials = get_credentials(username=username, password=password, **kwargs)
        if not AxesProxyHandler.get_implementation().count_attempt(request, credentials):
            request.axes_locked_out = True
            raise AxesBackendPermissionDenied("Too many sign-in attempts at once")
        return None
