import pytest
from django.contrib.auth.models import AnonymousUser

from chat import selectors, services
from chat.errors import NotFound
from chat.models import Conversation

pytestmark = pytest.mark.django_db


@pytest.fixture
def shared(owner, member):
    conversation = services.conversation_create(owner=owner, title="shared", model="demo")
    conversation.members.add(member)
    return conversation


def test_owner_and_member_see_it_outsider_does_not(shared, owner, member, outsider):
    assert selectors.conversation_get_for_user(user=owner, conversation_id=shared.id) == shared
    assert selectors.conversation_get_for_user(user=member, conversation_id=shared.id) == shared
    with pytest.raises(NotFound):
        selectors.conversation_get_for_user(user=outsider, conversation_id=shared.id)
    with pytest.raises(NotFound):
        selectors.conversation_get_for_user(user=AnonymousUser(), conversation_id=shared.id)


def test_inactive_users_see_nothing(shared, member):
    member.is_active = False
    member.save()
    assert not selectors.conversation_queryset_for_user(user=member).exists()


def test_malformed_id_is_not_found(owner):
    with pytest.raises(NotFound):
        selectors.conversation_get_for_user(user=owner, conversation_id="not-a-uuid")


def test_list_has_owned_and_shared_once_newest_first(owner, member, make_user):
    third = make_user("tara")
    mine = services.conversation_create(owner=member, title="mine", model="demo")
    theirs = services.conversation_create(owner=owner, title="theirs", model="demo")
    theirs.members.add(member, third)  # two members must not duplicate the row
    titles = [c.title for c in selectors.conversation_list_for_user(user=member)]
    assert titles == ["theirs", "mine"]
    assert [c.title for c in selectors.conversation_list_for_user(user=member, title_contains="MIN")] == ["mine"]
    assert mine in selectors.conversation_queryset_for_user(user=member)


@pytest.mark.parametrize("count", [2, 20])
def test_list_query_count_is_constant(owner, make_user, django_assert_num_queries, count):
    people = [make_user(f"u{i}") for i in range(3)]
    for i in range(count):
        conversation = services.conversation_create(owner=owner, title=f"c{i}", model="demo")
        conversation.members.add(*people)
    with django_assert_num_queries(2):
        rows = selectors.conversation_list_for_user(user=owner)
        assert all(len(c.members.all()) == 3 and c.owner.username for c in rows)
    assert len(rows) == count


def test_detail_query_count(shared, member, django_assert_num_queries):
    with django_assert_num_queries(2):
        conversation = selectors.conversation_get_for_user(user=member, conversation_id=shared.id)
        assert [u.username for u in conversation.members.all()] == ["max"]


def test_history_is_trimmed_from_the_oldest(owner, settings):
    settings.CHAT_HISTORY_MAX_CHARS = 25
    conversation = Conversation.objects.create(owner=owner, model="demo")
    user_message, placeholder = None, None
    for text in ["a" * 10, "b" * 10, "c" * 10]:
        user_message, placeholder = services.message_submit(
            conversation=conversation, author=owner, content=text, model="demo"
        )
        if text != "c" * 10:
            services.message_finish(message_id=placeholder.id, status="complete", content="", reasoning="", seq=0)
    history = selectors.message_history_for_generation(conversation=conversation, before_message=placeholder)
    # Empty assistant replies are left out; the oldest message no longer fits.
    assert history == [("user", "b" * 10), ("user", "c" * 10)]


def test_history_keeps_the_newest_message_even_if_too_long(owner, settings):
    settings.CHAT_HISTORY_MAX_CHARS = 5
    conversation = Conversation.objects.create(owner=owner, model="demo")
    _, placeholder = services.message_submit(conversation=conversation, author=owner, content="x" * 50, model="demo")
    history = selectors.message_history_for_generation(conversation=conversation, before_message=placeholder)
    assert history == [("user", "x" * 50)]


@pytest.mark.parametrize("budget", [25, 5, 1000])
def test_the_history_read_before_a_post_is_stored_is_the_one_read_after(owner, settings, budget):
    settings.CHAT_HISTORY_MAX_CHARS = budget
    conversation = Conversation.objects.create(owner=owner, model="demo")
    for text in ["a" * 10, "b" * 10]:
        _, placeholder = services.message_submit(conversation=conversation, author=owner, content=text, model="demo")
        services.message_finish(message_id=placeholder.id, status="complete", content="ok " + text, reasoning="", seq=0)
    for parent in (selectors.message_latest(conversation=conversation), None):
        before = selectors.message_history_for_post(conversation=conversation, parent=parent, content="c" * 10)
        _, placeholder = services.message_submit(
            conversation=conversation, author=owner, content="c" * 10, model="demo", parent=parent
        )
        after = selectors.message_history_for_generation(conversation=conversation, before_message=placeholder)
        services.message_finish(message_id=placeholder.id, status="complete", content="", reasoning="", seq=0)
        assert before == after
        assert after[-1] == ("user", "c" * 10)
