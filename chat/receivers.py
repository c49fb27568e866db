"""Open event streams end when their viewer's credentials change: the hooks into Django's auth.

Receivers rather than services because these changes happen in Django's own
code (the logout view, the admin's user and password forms,
``manage.py changepassword``, a shell): a receiver sees every path. Each one
only announces the change after it committed; every stream then re-validates
its own session (``selectors.stream_access_lost``).
"""

from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_out
from django.db import transaction
from django.db.models.signals import post_delete, post_save

from . import publish

# A sign-in saves only last_login: nobody's access changed.
_HARMLESS_UPDATES = frozenset({"last_login"})


def _signed_out(sender, request, user, **kwargs):
    # Sent before the session is flushed, so the ended session is named
    # rather than re-checked (a re-check now would still find it valid).
    if user is not None and request is not None:
        publish.access_changed(user_id=user.pk, ended_session=request.session.session_key)


def _user_saved(sender, instance, created, update_fields=None, **kwargs):
    if created or (update_fields is not None and set(update_fields) <= _HARMLESS_UPDATES):
        return
    user_id = instance.pk
    transaction.on_commit(lambda: publish.access_changed(user_id=user_id))


def _user_deleted(sender, instance, **kwargs):
    user_id = instance.pk
    transaction.on_commit(lambda: publish.access_changed(user_id=user_id))


def connect() -> None:
    """Connect the receivers (``ChatConfig.ready``)."""
    user_model = get_user_model()
    user_logged_out.connect(_signed_out, dispatch_uid="chat.signed_out")
    post_save.connect(_user_saved, sender=user_model, dispatch_uid="chat.user_saved")
    post_delete.connect(_user_deleted, sender=user_model, dispatch_uid="chat.user_deleted")
