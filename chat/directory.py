"""Sign-in against the company directory (LDAP / Active Directory), and ending the accounts it no longer holds.

django-auth-ldap does the protocol; config/settings/base.py configures it
from ``LDAP_*`` and imports this module only when ``LDAP_SERVER_URI`` is set.
"""

from types import SimpleNamespace

import ldap
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django_auth_ldap.backend import LDAPBackend

# The Django group of the accounts that signed in through the directory: the
# ones ldap_sync answers for (local accounts, such as a break-glass admin,
# and accounts of other sign-in methods are never touched).
DIRECTORY_GROUP = "LDAP directory"


class DirectoryBackend(LDAPBackend):
    """django-auth-ldap's backend, which loads only active users and marks whom it signs in.

    ``authenticate`` writes the user (created on the first sign-in; names,
    email, is_staff and is_superuser re-read every time) and adds them to
    ``DIRECTORY_GROUP``. Requires the ``AUTH_LDAP_*`` settings.
    """

    def authenticate_ldap_user(self, ldap_user, password):
        user = super().authenticate_ldap_user(ldap_user, password)
        if user is not None:
            user.groups.add(Group.objects.get_or_create(name=DIRECTORY_GROUP)[0])
        return user

    def get_user(self, user_id):
        # django-auth-ldap loads deactivated users too, which would keep their
        # sessions (and event streams) alive; ModelBackend's rule instead.
        user = super().get_user(user_id)
        return user if user is not None and user.is_active else None


def directory_connection(backend: LDAPBackend | None = None):
    """A connection bound as ``LDAP_BIND_DN`` with the sign-in's options (timeouts, CA, StartTLS).

    Raises ``ldap.LDAPError`` when the directory cannot be reached or refuses the bind.
    """
    config = (backend or DirectoryBackend()).settings
    connection = ldap.initialize(config.SERVER_URI, bytes_mode=False)
    for option, value in config.CONNECTION_OPTIONS.items():
        connection.set_option(option, value)
    if config.START_TLS:
        connection.start_tls_s()
    connection.simple_bind_s(config.BIND_DN, config.BIND_PASSWORD)
    return connection


def directory_allows(*, connection, username: str, backend: LDAPBackend | None = None) -> bool:
    """Whether the directory still lets ``username`` sign in: one entry found by the user search, and in
    ``LDAP_REQUIRE_GROUP`` when that is set. Reads only; raises ``ldap.LDAPError`` when it cannot tell."""
    config = (backend or DirectoryBackend()).settings
    found = config.USER_SEARCH.execute(connection, {"user": username})
    if len(found) != 1:
        return False
    if config.REQUIRE_GROUP is None:
        return True
    dn, attrs = found[0]
    # The group types ask about a user through these attributes of django-auth-ldap's _LDAPUser.
    user = SimpleNamespace(connection=connection, dn=dn, attrs=attrs)
    return bool(config.GROUP_TYPE.is_member(user, config.REQUIRE_GROUP))


def directory_accounts_deactivate(*, dry_run: bool = False) -> list[str]:
    """Deactivate the active accounts of ``DIRECTORY_GROUP`` that the directory no longer allows; their usernames.

    Asks about everyone before changing anyone: when the directory cannot be
    asked, ``ldap.LDAPError`` propagates and nobody is deactivated. Saving
    ``is_active`` ends the person's sessions and, through chat.receivers, their
    open event streams (``access.revoked``). ``dry_run``: only the usernames.
    """
    backend = DirectoryBackend()
    users = list(get_user_model().objects.filter(is_active=True, groups__name=DIRECTORY_GROUP).order_by("username"))
    if not users:
        return []
    connection = directory_connection(backend)
    try:
        gone = [
            user
            for user in users
            if not directory_allows(connection=connection, username=user.get_username(), backend=backend)
        ]
    finally:
        connection.unbind_s()
    if not dry_run:
        for user in gone:
            user.is_active = False
            user.save(update_fields=["is_active"])
    return [user.get_username() for user in gone]
