import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from chat.models import Conversation, Message

pytestmark = pytest.mark.django_db


@pytest.fixture
def conversation(owner):
    return Conversation.objects.create(owner=owner, title="t", model="demo")


def make_message(conversation, **fields):
    defaults = {"role": "assistant", "status": "complete", "completed_at": timezone.now()}
    return Message.objects.create(conversation=conversation, **{**defaults, **fields})


@pytest.mark.parametrize("field", ["prompt_tokens", "completion_tokens", "total_tokens"])
def test_tokens_cannot_be_negative(conversation, field):
    with pytest.raises(IntegrityError), transaction.atomic():
        make_message(conversation, **{field: -1})


def test_tokens_may_be_unreported(conversation):
    message = make_message(conversation, prompt_tokens=None, completion_tokens=3, total_tokens=None)
    assert message.usage == {"prompt_tokens": None, "completion_tokens": 3, "total_tokens": None, "estimated": False}
    assert make_message(conversation).usage is None


def test_one_streaming_message_per_conversation(conversation, owner):
    make_message(conversation, status="streaming", completed_at=None)
    with pytest.raises(IntegrityError), transaction.atomic():
        make_message(conversation, status="streaming", completed_at=None)
    other = Conversation.objects.create(owner=owner, model="demo")
    make_message(other, status="streaming", completed_at=None)  # another conversation is fine


def test_assistant_has_no_author(conversation, owner):
    with pytest.raises(IntegrityError), transaction.atomic():
        make_message(conversation, author=owner)


def test_user_message_is_complete(conversation, owner):
    with pytest.raises(IntegrityError), transaction.atomic():
        make_message(conversation, role="user", author=owner, status="failed")


def test_completed_at_only_on_final_messages(conversation):
    with pytest.raises(IntegrityError), transaction.atomic():
        make_message(conversation, status="streaming", completed_at=timezone.now())
    with pytest.raises(IntegrityError), transaction.atomic():
        make_message(conversation, status="complete", completed_at=None)


def test_status_and_role_are_checked(conversation):
    with pytest.raises(IntegrityError), transaction.atomic():
        make_message(conversation, status="done")
    with pytest.raises(IntegrityError), transaction.atomic():
        make_message(conversation, role="system")


def test_str(conversation):
    assert str(conversation) == "t"
    assert "assistant" in str(make_message(conversation))
