"""A conversation as a file to download: JSON (the whole tree) or Markdown (the thread a reader sees)."""

import re
import unicodedata
from urllib.parse import quote

from .serializers import conversation_to_dict, message_to_dict

EXPORT_FORMATS = {"json": ("json", "application/json"), "markdown": ("md", "text/markdown; charset=utf-8")}
# Long enough to recognise the conversation, short enough for every file system.
FILENAME_MAX_CHARS = 100
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})", re.MULTILINE)


def export_json(conversation, messages) -> dict:
    """The contract's Conversation with ``"messages"``: every message of the tree, oldest first."""
    return {**conversation_to_dict(conversation), "messages": [message_to_dict(m) for m in messages]}


def newest_thread(messages) -> list:
    """The thread ending at the newest leaf of ``messages`` (the tree, oldest first): root first.

    The leaf is the newest message nobody follows; the thread is it and its
    parents, what a client shows unless the reader picks another branch.
    """
    if not messages:
        return []
    by_id = {m.id: m for m in messages}
    followed = {m.parent_id for m in messages}
    node = next(m for m in reversed(messages) if m.id not in followed)
    thread = []
    while node is not None:
        thread.append(node)
        node = by_id.get(node.parent_id)
    return thread[::-1]


def export_markdown(conversation, messages) -> str:
    """The title, then each message of the newest thread as ``**author** (role, time):`` and its Markdown source.

    Code fences are kept as written; a fence a message leaves open is closed
    so it does not swallow the messages after it.
    """
    title = " ".join(conversation.title.split()) or "Untitled conversation"
    people = ", ".join([conversation.owner.username, *sorted(u.username for u in conversation.members.all())])
    lines = [f"# {title}", "", f"Model: {conversation.model} · People: {people}", ""]
    for message in newest_thread(messages):
        author = message.author.username if message.author_id else (message.model or message.role)
        status = "" if message.status == "complete" else f", {message.status}"
        when = f"{message.created_at:%Y-%m-%d %H:%M} UTC"
        lines += [f"**{author}** ({message.role}, {when}{status}):", "", message.content]
        if len(_FENCE.findall(message.content)) % 2:
            lines.append("```")
        lines.append("")
    return "\n".join(lines)


def attachment_header(title: str, extension: str) -> str:
    """A ``Content-Disposition: attachment`` value naming ``<title>.<extension>`` safely (RFC 6266).

    ``filename`` is an ASCII stand-in without quotes, backslashes or control
    characters; ``filename*`` carries the real title, percent-encoded UTF-8.
    """
    name = re.sub(r'[\x00-\x1f\x7f"\\/:*?<>|]+', " ", title)
    name = " ".join(name.split())[:FILENAME_MAX_CHARS].strip(" .") or "conversation"
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    ascii_name = " ".join(ascii_name.split()).strip(" .") or "conversation"
    encoded = quote(f"{name}.{extension}", safe="")
    return f"attachment; filename=\"{ascii_name}.{extension}\"; filename*=UTF-8''{encoded}"
