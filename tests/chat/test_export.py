"""GET /api/conversations/{id}/export/?format=json|markdown: bodies, headers, hostile titles, who may."""

import json
from datetime import timedelta
from urllib.parse import unquote

import pytest
from django.utils import timezone

from chat import services
from chat.models import Conversation, Message

pytestmark = pytest.mark.django_db

START = timezone.now().replace(microsecond=0) - timedelta(hours=1)


def add(conversation, parent, role, content, *, minute, author=None, status="complete"):
    return Message.objects.create(
        conversation=conversation,
        parent=parent,
        role=role,
        author=author,
        content=content,
        status=status,
        model="demo" if role == "assistant" else None,
        created_at=START + timedelta(minutes=minute),
        completed_at=START + timedelta(minutes=minute) if status != "streaming" else None,
    )


@pytest.fixture
def tree(owner, member):
    """u1 -> a1 -> u2 -> a2, and the edit u2b (under a1) -> a2b, the newest leaf."""
    conversation = services.conversation_create(owner=owner, title="Sorting", model="demo")
    conversation.members.add(member)
    u1 = add(conversation, None, "user", "How do I sort a list?", minute=1, author=owner)
    a1 = add(conversation, u1, "assistant", "Use sorted:\n\n```python\nsorted([3, 1, 2])\n```", minute=2)
    u2 = add(conversation, a1, "user", "And in reverse? (first try)", minute=3, author=member)
    add(conversation, u2, "assistant", "reverse=True, first answer", minute=4)
    u2b = add(conversation, a1, "user", "And descending?", minute=5, author=member)
    add(conversation, u2b, "assistant", "Open fence:\n```\nsorted(x, reverse=True)", minute=6, status="cancelled")
    return conversation


def export(api, user, conversation, fmt):
    return api(user).get(f"/api/conversations/{conversation.id}/export/?format={fmt}")


def test_json_is_the_conversation_with_the_whole_tree(api, owner, tree):
    response = export(api, owner, tree, "json")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response["Content-Disposition"] == "attachment; filename=\"Sorting.json\"; filename*=UTF-8''Sorting.json"
    body = json.loads(response.content)
    detail = api(owner).get(f"/api/conversations/{tree.id}/").json()
    assert body == detail
    stored = Message.objects.filter(conversation=tree).order_by("created_at")
    assert [m["id"] for m in body["messages"]] == [str(m.id) for m in stored]
    assert [m["parent"] for m in body["messages"]] == [str(m.parent_id) if m.parent_id else None for m in stored]


def test_markdown_is_the_thread_ending_at_the_newest_leaf(api, owner, member, tree):
    response = export(api, member, tree, "markdown")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/markdown; charset=utf-8"
    assert response["Content-Disposition"] == "attachment; filename=\"Sorting.md\"; filename*=UTF-8''Sorting.md"
    text = response.content.decode()
    at = lambda minute: f"{START + timedelta(minutes=minute):%Y-%m-%d %H:%M} UTC"  # noqa: E731
    assert text == (
        "# Sorting\n\nModel: demo · People: olivia, max\n\n"
        f"**olivia** (user, {at(1)}):\n\nHow do I sort a list?\n\n"
        f"**demo** (assistant, {at(2)}):\n\nUse sorted:\n\n```python\nsorted([3, 1, 2])\n```\n\n"
        f"**max** (user, {at(5)}):\n\nAnd descending?\n\n"
        f"**demo** (assistant, {at(6)}, cancelled):\n\nOpen fence:\n```\nsorted(x, reverse=True)\n```\n"
    )
    assert "first try" not in text and "first answer" not in text


@pytest.mark.parametrize(
    "title,ascii_name,real_name",
    [
        ('Say "hi"\r\nSet-Cookie: x=1', "Say hi Set-Cookie x=1", "Say hi Set-Cookie x=1"),
        ("Café ../../etc/passwd", "Cafe .. .. etc passwd", "Café .. .. etc passwd"),
        ("今天天气", "conversation", "今天天气"),
        ("", "conversation", "conversation"),
        ("back\\slash;semi", "back slash;semi", "back slash;semi"),
    ],
)
def test_a_hostile_title_gives_a_safe_file_name(api, owner, title, ascii_name, real_name):
    conversation = services.conversation_create(owner=owner, title="x", model="demo")
    Conversation.objects.filter(pk=conversation.pk).update(title=title)
    response = export(api, owner, conversation, "markdown")
    assert response.status_code == 200
    header = response["Content-Disposition"]
    assert header.isascii() and "\r" not in header and "\n" not in header
    plain, encoded = header.removeprefix("attachment; ").split("; ")
    assert plain == f'filename="{ascii_name}.md"'
    assert unquote(encoded.removeprefix("filename*=UTF-8''")) == f"{real_name}.md"


def test_unknown_format_is_400(api, owner, tree):
    response = export(api, owner, tree, "pdf")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "unknown_format"
    assert "json, markdown" in response.json()["error"]["message"]


def test_json_is_the_default_format(api, owner, tree):
    response = api(owner).get(f"/api/conversations/{tree.id}/export/")
    assert response.status_code == 200 and response["Content-Type"] == "application/json"


def test_outsiders_and_the_deleted_get_404_anonymous_401(api, owner, outsider, tree):
    for fmt in ("json", "markdown"):
        response = export(api, outsider, tree, fmt)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "conversation_not_found"
    assert export(api, None, tree, "json").status_code == 401
    services.conversation_delete(conversation=tree, user=owner)
    assert export(api, owner, tree, "json").status_code == 404


def test_an_empty_conversation_exports(api, owner):
    conversation = services.conversation_create(owner=owner, title="Empty", model="demo")
    assert json.loads(export(api, owner, conversation, "json").content)["messages"] == []
    assert export(api, owner, conversation, "markdown").content.decode() == (
        "# Empty\n\nModel: demo · People: olivia\n"
    )
