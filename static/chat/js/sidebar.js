// The list of conversations (owned and shared), newest first; typing searches titles and message text.
//
// The user's event stream keeps it current (main.js). A conversation shared
// or updated since this browser last showed it carries an unread mark until
// it is opened: what was last shown of each (its ``updated_at``) is kept in
// localStorage per person (``SeenStore``), so the marks outlive a reload and
// opening a conversation in one tab clears its mark in the others.
//
// Titles are filtered at once, here; the server's answer (titles and message
// text, with a snippet) follows, debounced, and comes first in the list.

import { urls } from "./api.js";
import { highlighted, Searcher } from "./search.js";

export function displayTitle(conversation) {
  return conversation.title || "Untitled";
}

function relativeTime(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  const today = new Date();
  if (date.toDateString() === today.toDateString()) {
    return date.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
  }
  return date.toLocaleDateString(undefined, { month: "short", day: "numeric" });
}

/** The ``updated_at`` of each conversation when this browser last showed it, in localStorage (memory if refused). */
class SeenStore {
  constructor(username) {
    this.key = `chat.seen.${username}`;
    this.map = this.read(); // null: this browser never kept anything for this person
  }

  read() {
    try {
      const value = JSON.parse(localStorage.getItem(this.key));
      return value && typeof value === "object" && !Array.isArray(value) ? value : null;
    } catch {
      return null;
    }
  }

  write() {
    try {
      localStorage.setItem(this.key, JSON.stringify(this.map));
    } catch {
      // Storage refused (full, private mode): the marks last as long as this page.
    }
  }

  /** Whether ``conversation`` changed (or arrived) since it was last shown here. */
  isNews(conversation) {
    if (this.map === null) return false;
    const seen = this.map[conversation.id];
    return seen === undefined || conversation.updated_at > seen;
  }

  /** ``conversation`` is on screen: what it is now has been seen. */
  saw(conversation) {
    this.map = this.map || {};
    if (this.map[conversation.id] !== undefined && this.map[conversation.id] >= conversation.updated_at) return;
    this.map[conversation.id] = conversation.updated_at;
    this.write();
  }

  /** The list as it is now: the first time, all of it counts as seen; entries for what left it go. */
  listed(conversations) {
    const first = this.map === null;
    const kept = {};
    for (const conversation of conversations) {
      const seen = first ? conversation.updated_at : this.map[conversation.id];
      if (seen !== undefined) kept[conversation.id] = seen;
    }
    if (first || Object.keys(kept).length !== Object.keys(this.map).length) {
      this.map = kept;
      this.write();
    }
  }

  forget(conversationId) {
    if (!this.map || this.map[conversationId] === undefined) return;
    delete this.map[conversationId];
    this.write();
  }
}

export class Sidebar {
  constructor({ list, filter, empty, noMatch, toggle }, { currentUser, onSelect }) {
    this.list = list;
    this.toggle = toggle; // the phone's button for the list: it carries a mark while something is unread
    this.filter = filter;
    this.empty = empty;
    this.noMatch = noMatch;
    this.currentUser = currentUser;
    this.onSelect = onSelect;
    this.conversations = [];
    this.activeId = null;
    this.unread = new Set(); // conversations with news this browser has not shown
    this.seen = new SeenStore(currentUser);
    // Another tab showed a conversation (or this person's list changed there): its mark goes here too.
    window.addEventListener("storage", (event) => {
      if (event.key !== this.seen.key) return;
      this.seen.map = this.seen.read();
      for (const id of [...this.unread]) {
        const conversation = this.conversations.find((c) => c.id === id);
        if (!conversation || !this.seen.isNews(conversation)) this.unread.delete(id);
      }
      this.render();
    });
    this.drawn = false;
    this.found = null; // the server's results for ``foundQuery``
    this.foundQuery = "";
    this.searcher = new Searcher(
      (query, conversations) => {
        this.found = conversations;
        this.foundQuery = query;
        this.render();
      },
      () => {}, // the title filter still stands
    );
    filter.addEventListener("input", () => {
      this.render();
      this.searcher.query(filter.value);
    });
    list.addEventListener("click", (event) => {
      const link = event.target.closest("a[data-id]");
      if (!link || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
      event.preventDefault();
      this.onSelect(link.dataset.id, link.dataset.message || null);
    });
  }

  get isEmpty() {
    return this.conversations.length === 0;
  }

  /** The list as the server has it now: what changed since this browser last showed it is marked. */
  setConversations(conversations) {
    this.seen.listed(conversations);
    const listed = new Set(conversations.map((c) => c.id));
    for (const id of [...this.unread]) if (!listed.has(id)) this.unread.delete(id);
    for (const conversation of conversations) this.markIfNews(conversation);
    // A refresh that changes nothing must not redraw (and steal keyboard focus from) the list.
    if (this.drawn && JSON.stringify(conversations) === JSON.stringify(this.conversations)) return;
    this.conversations = [...conversations];
    this.render();
  }

  /** Add or replace one conversation; the list stays most recently updated first. With ``markNews``, as above. */
  upsert(conversation, { markNews = false } = {}) {
    if (markNews) this.markIfNews(conversation);
    else if (conversation.id === this.activeId) this.seen.saw(conversation);
    const others = this.conversations.filter((c) => c.id !== conversation.id);
    this.conversations = [conversation, ...others].sort((a, b) => (a.updated_at < b.updated_at ? 1 : -1));
    this.render();
  }

  /** The one shown is seen as it is now; another is marked if it changed since this browser showed it. */
  markIfNews(conversation) {
    if (conversation.id === this.activeId) this.seen.saw(conversation);
    else if (this.seen.isNews(conversation)) this.unread.add(conversation.id);
  }

  remove(conversationId) {
    this.conversations = this.conversations.filter((c) => c.id !== conversationId);
    this.unread.delete(conversationId);
    this.seen.forget(conversationId);
    this.render();
  }

  setActive(conversationId) {
    this.activeId = conversationId;
    this.unread.delete(conversationId);
    const conversation = this.conversations.find((c) => c.id === conversationId);
    if (conversation) this.seen.saw(conversation);
    this.render();
  }

  render() {
    this.drawn = true;
    const typed = this.filter.value.trim();
    const query = typed.toLowerCase();
    const byTitle = this.conversations.filter((c) => !query || displayTitle(c).toLowerCase().includes(query));
    const found = query && this.found && this.foundQuery === typed ? this.found : [];
    const foundIds = new Set(found.map((c) => c.id));
    const shown = [...found, ...byTitle.filter((c) => !foundIds.has(c.id))];
    const items = shown.map((conversation) => {
      const item = document.createElement("li");
      const link = document.createElement("a");
      link.href = urls.page(conversation.id);
      link.dataset.id = conversation.id;
      link.className = "conversation-link";
      if (conversation.id === this.activeId) link.setAttribute("aria-current", "page");
      const title = document.createElement("span");
      title.className = "conversation-link-title";
      title.textContent = displayTitle(conversation);
      if (this.unread.has(conversation.id)) {
        link.classList.add("is-unread");
        const mark = document.createElement("span");
        mark.className = "unread-mark";
        mark.title = "New activity";
        const label = document.createElement("span");
        label.className = "visually-hidden";
        label.textContent = " (new activity)";
        title.append(label);
        title.prepend(mark);
      }
      const meta = document.createElement("span");
      meta.className = "meta conversation-link-meta";
      const parts = [];
      if (conversation.owner !== this.currentUser) parts.push(`shared by ${conversation.owner}`);
      else if (conversation.members.length) parts.push(`shared with ${conversation.members.length}`);
      parts.push(relativeTime(conversation.updated_at));
      meta.textContent = parts.join(" · ");
      link.append(title, meta);
      const match = conversation.match;
      if (match && match.message_id) {
        // Found in a message: show where, and open the conversation there.
        link.dataset.message = match.message_id;
        const snippet = document.createElement("span");
        snippet.className = "conversation-link-snippet";
        snippet.append(highlighted(match.snippet || "", match.highlights, typed));
        link.append(snippet);
      }
      item.append(link);
      return item;
    });
    this.list.replaceChildren(...items);
    if (this.toggle) {
      this.toggle.classList.toggle("has-unread", this.unread.size > 0);
      this.toggle.querySelector("#sidebar-toggle-news").hidden = this.unread.size === 0;
    }
    this.empty.hidden = this.conversations.length > 0;
    this.noMatch.hidden = this.conversations.length === 0 || shown.length > 0;
  }
}
