"""chat/events.py is the one home of event names and final types; the browser's code takes them from the page.

The page carries ``events.browser_names()`` as JSON (``chat-events``) and
static/chat/js/events.js exports it: no other module spells an event name,
each one it uses exists in events.py, and each client event is handled.
"""

import json
import re

from chat import events
from tests.servers import ROOT

JS = sorted((ROOT / "static" / "chat" / "js").glob("*.js"))
LITERAL = re.compile(r""""([^"\\\n]*)"|'([^'\\\n]*)'|`([^`\\]*)`""")
# What an event name looks like, so a new one spelt in the browser is caught before events.py knows it.
EVENT_SHAPED = re.compile(r"(message|conversation|access)\.[a-z_]+|resync")


def code(path) -> str:
    """A module's text without its comment lines (documentation may quote an event name)."""
    return "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith(("//", "/*", "*")))


def literals(path) -> set[str]:
    return {next(group for group in match.groups() if group is not None) for match in LITERAL.finditer(code(path))}


def constants() -> dict[str, str]:
    """Every event constant of chat/events.py (the access.revoked reasons aside): NAME -> value."""
    return {
        name: value
        for name, value in vars(events).items()
        if name.isupper() and isinstance(value, str) and not name.startswith("REVOKED_")
    }


def test_every_event_of_events_py_is_either_sent_to_clients_or_internal():
    assert set(constants().values()) == set(events.CLIENT_EVENTS) | set(events.INTERNAL_EVENTS)
    assert not set(events.CLIENT_EVENTS) & set(events.INTERNAL_EVENTS)
    assert set(events.FINAL_EVENTS.values()) <= set(events.CLIENT_EVENTS)


def test_browser_names_are_every_client_event_once_by_its_constant():
    names = events.browser_names()

    assert sorted(names["events"].values()) == sorted(events.CLIENT_EVENTS)
    assert all(constants()[name] == value for name, value in names["events"].items())
    assert names["final"] == events.FINAL_EVENTS
    assert set(names["revoked"].values()) == {events.REVOKED_REMOVED, events.REVOKED_DELETED, events.REVOKED_SIGNED_OUT}
    json.dumps(names)


def test_no_browser_module_spells_an_event_name():
    for path in JS:
        spelt = sorted(text for text in literals(path) if EVENT_SHAPED.fullmatch(text))
        assert not spelt, f"static/chat/js/{path.name} spells {spelt}: import EVENTS from ./events.js instead"


def test_browser_modules_name_only_what_events_py_defines():
    names = events.browser_names()
    used = set()
    for path in JS:
        for kind, name in re.findall(r"\b(EVENTS|REVOKED)\.([A-Za-z_]\w*)", code(path)):
            table = names["events"] if kind == "EVENTS" else names["revoked"]
            assert name in table, f"static/chat/js/{path.name} uses {kind}.{name}, which chat/events.py does not define"
            used.add(name)
    # Every client event is handled by name, or as one of the final types.
    handled = {name for name, value in names["events"].items() if name in used or value in events.FINAL_EVENTS.values()}
    assert handled == set(names["events"]), f"no browser code handles {sorted(set(names['events']) - handled)}"


def test_the_stream_subscribes_to_every_client_event():
    stream = code(ROOT / "static" / "chat" / "js" / "stream.js")

    assert 'import { CLIENT_EVENTS, EVENTS, REVOKED } from "./events.js";' in stream
    assert "CLIENT_EVENTS.filter((type) => type !== EVENTS.ACCESS_REVOKED)" in stream
    assert "source.addEventListener(EVENTS.ACCESS_REVOKED," in stream


def test_the_page_carries_the_names_as_json(client, django_user_model):
    client.force_login(django_user_model.objects.create_user("olivia", password="pw-olivia-123"))

    page = client.get("/").content.decode()

    data = re.search(r'<script id="chat-events" type="application/json">(.*?)</script>', page, re.DOTALL)
    assert data and json.loads(data[1]) == events.browser_names()
