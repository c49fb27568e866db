"""GET /api/conversations/?q=: what it finds, for whom, in which order, with which snippet, and through which index.

Runs on the suite's database: SQLite (FTS5 trigram table) by default,
PostgreSQL (pg_trgm GIN index) under ``make test-postgres``.
"""

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from chat import selectors, services
from chat.models import Conversation, Message

pytestmark = pytest.mark.django_db

SEARCH = "/api/conversations/?q="


def conversation_with(owner, title, *texts, age_minutes=0):
    """A conversation whose messages (a chain, alternating user and assistant) are ``texts``, oldest first."""
    conversation = services.conversation_create(owner=owner, title=title, model="demo")
    when = timezone.now() - timedelta(minutes=age_minutes)
    parent = None
    for i, text in enumerate(texts):
        parent = Message.objects.create(
            conversation=conversation,
            parent=parent,
            role="user" if i % 2 == 0 else "assistant",
            author=owner if i % 2 == 0 else None,
            content=text,
            created_at=when + timedelta(seconds=i),
            completed_at=when + timedelta(seconds=i),
        )
    Conversation.objects.filter(pk=conversation.pk).update(updated_at=when)
    return conversation


def search(api, user, query):
    response = api(user).get(SEARCH + query.replace("%", "%25").replace("&", "%26").replace("#", "%23"))
    assert response.status_code == 200, response.content
    return response.json()["conversations"]


def ids(results):
    return [r["id"] for r in results]


def test_finds_by_title_and_by_message_text_including_chinese(api, owner):
    trip = conversation_with(owner, "Trip to Kyoto", "Which temples first?")
    weather = conversation_with(owner, "天气", "今天天气很好，我们去公园散步吧。", "好的，下午三点见。")
    deploy = conversation_with(owner, "Deploys", "How do I roll back a release?", "Run `make rollback` from the host.")
    assert ids(search(api, owner, "kyoto")) == [str(trip.id)]
    assert ids(search(api, owner, "ROLL BACK")) == [str(deploy.id)]
    # A word inside a sentence without spaces: 3 characters (one trigram) and 2 (under the index's reach).
    [found] = search(api, owner, "去公园")
    assert found["id"] == str(weather.id) and found["match"]["message_id"] is not None
    assert found["match"]["snippet"] == "今天天气很好，我们去公园散步吧。"
    [found] = search(api, owner, "公园")
    assert found["id"] == str(weather.id)
    assert search(api, owner, "nowhere to be found") == []


def test_each_result_is_the_contract_conversation_plus_match(api, owner, member):
    conversation = conversation_with(owner, "Budget", "numbers for Q3 please")
    conversation.members.add(member)
    [result] = search(api, member, "q3")
    message = conversation.messages.get()
    assert result["match"] == {
        "message_id": str(message.id),
        "snippet": "numbers for Q3 please",
        "highlights": [[12, 14]],
    }
    detail = api(member).get(f"/api/conversations/{conversation.id}/").json()
    del detail["messages"]
    assert {k: v for k, v in result.items() if k != "match"} == detail


def test_never_finds_a_conversation_the_user_cannot_see(api, owner, member, outsider):
    mine = conversation_with(owner, "secret plan", "the secret is 42")
    shared = conversation_with(owner, "shared", "not so secret")
    shared.members.add(member)
    conversation_with(outsider, "otto's secret", "otto's secret text")
    assert set(ids(search(api, owner, "secret"))) == {str(mine.id), str(shared.id)}
    assert ids(search(api, member, "secret")) == [str(shared.id)]
    assert search(api, outsider, "the secret is") == []
    shared.members.remove(member)
    assert search(api, member, "secret") == []


def test_deleted_conversations_are_not_found(api, owner):
    gone = conversation_with(owner, "old notes", "remember the milk")
    services.conversation_delete(conversation=gone, user=owner)
    assert search(api, owner, "milk") == []
    assert search(api, owner, "old notes") == []


def test_title_matches_come_first_then_the_newest_matching_message(api, owner):
    older_message = conversation_with(owner, "a", "kubernetes at last", age_minutes=30)
    newer_message = conversation_with(owner, "b", "intro", "more kubernetes", age_minutes=10)
    titled = conversation_with(owner, "Kubernetes notes", "nothing here", age_minutes=60)
    results = search(api, owner, "kubernetes")
    assert ids(results) == [str(titled.id), str(newer_message.id), str(older_message.id)]
    assert results[0]["match"] == {"message_id": None, "snippet": "Kubernetes notes", "highlights": [[0, 10]]}
    # The newest matching message of the conversation is the match.
    assert results[1]["match"]["message_id"] == str(newer_message.messages.get(content="more kubernetes").id)


def test_snippet_is_about_120_characters_around_the_first_match_with_utf16_offsets(api, owner):
    text = "😀 " + "lorem ipsum " * 20 + "the NEEDLE is here " + "dolor sit amet " * 20
    conversation_with(owner, "haystack", text)
    [result] = search(api, owner, "needle")
    snippet, [[start, end]] = result["match"]["snippet"], result["match"]["highlights"]
    assert snippet.startswith("…") and snippet.endswith("…")
    assert 120 <= len(snippet) <= 122
    assert snippet.encode("utf-16-le")[start * 2 : end * 2].decode("utf-16-le") == "NEEDLE"
    # Near the start the snippet starts at the start; an astral character counts twice, as in JavaScript.
    conversation_with(owner, "near", "😀 needle then text")
    [result] = search(api, owner, "needle then")
    assert result["match"]["snippet"] == "😀 needle then text" and result["match"]["highlights"] == [[3, 14]]
    # Newlines and tabs become spaces one for one; markup is text, never HTML.
    conversation_with(owner, "markup", "<b>bold</b>\nand\tmore")
    [result] = search(api, owner, "<b>bold")
    assert result["match"]["snippet"] == "<b>bold</b> and more" and result["match"]["highlights"] == [[0, 7]]


def test_the_index_follows_edits_and_deletes(api, owner):
    conversation = conversation_with(owner, "x", "first draft")
    message = conversation.messages.get()
    Message.objects.filter(pk=message.pk).update(content="second version")
    assert search(api, owner, "first draft") == []
    assert ids(search(api, owner, "second version")) == [str(conversation.id)]
    message.delete()
    assert search(api, owner, "second version") == []


def test_special_characters_are_text(api, owner):
    conversation = conversation_with(owner, "sql", 'say "100%" of it_all; OR NOT * NEAR(a b)')
    for query in ['"100%"', "100%", "it_all", "OR NOT", "NEAR(a b)", "*"]:
        assert ids(search(api, owner, query)) == [str(conversation.id)], query
    assert search(api, owner, "it%all") == []


def test_at_most_50_results(api, owner):
    for i in range(53):
        conversation_with(owner, f"c{i}", f"common text {i}")
    assert len(search(api, owner, "common")) == 50


@pytest.mark.parametrize(
    "query,code",
    [("a%00b", "invalid_input"), ("%00", "invalid_input"), ("x" * 201, "too_long")],
)
def test_bad_search_text_is_400(api, owner, query, code):
    response = api(owner).get(SEARCH + query)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code and response.json()["error"]["message"]


def test_an_empty_query_is_the_plain_list(api, owner):
    conversation_with(owner, "one", "text")
    [result] = api(owner).get(SEARCH + "%20").json()["conversations"]
    assert "match" not in result


def test_search_takes_five_queries(owner, django_assert_num_queries):
    for i in range(6):
        conversation_with(owner, f"topic {i}" if i < 2 else f"c{i}", f"a topic message {i}")
    with django_assert_num_queries(5):
        assert len(selectors.conversation_search_for_user(user=owner, query="topic")) == 6


def _message_search_sql(owner, query):
    with CaptureQueriesContext(connection) as queries:
        selectors.conversation_search_for_user(user=owner, query=query)
    # The first query on messages finds them; the next one reads the matches' text by id.
    return next(q["sql"] for q in queries.captured_queries if "chat_message" in q["sql"])


def test_the_query_plan_uses_the_search_index(owner):
    """PostgreSQL: the GIN trigram index, on a table where a scan would cost more. SQLite: the FTS5 table."""
    if connection.vendor == "postgresql":
        words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliett"]
        conversations = [services.conversation_create(owner=owner, title=f"c{i}", model="demo") for i in range(200)]
        Message.objects.bulk_create(
            Message(
                conversation=conversations[i % 200],
                role="user",
                completed_at=timezone.now(),
                content=f"{words[i % 10]} {words[i * 7 % 10]} message number {i} about {words[i * 3 % 10]}",
            )
            for i in range(20_000)
        )
        Message.objects.create(
            conversation=conversations[0], role="user", completed_at=timezone.now(), content="the rare zebra appears"
        )
        with connection.cursor() as cursor:
            # What autovacuum does to a busy table: merge the GIN index's pending list, gather statistics.
            cursor.execute("SELECT gin_clean_pending_list('message_content_trgm'::regclass)")
            cursor.execute("ANALYZE chat_message, chat_conversation")
            cursor.execute("EXPLAIN " + _message_search_sql(owner, "rare zebra"))
            plan = "\n".join(row[0] for row in cursor.fetchall())
        assert "message_content_trgm" in plan, plan
    else:
        conversation_with(owner, "c", "the rare zebra appears")
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN QUERY PLAN " + _message_search_sql(owner, "rare zebra"))
            plan = "\n".join(str(row[-1]) for row in cursor.fetchall())
        assert "VIRTUAL TABLE" in plan and "chat_message_fts" in plan, plan
