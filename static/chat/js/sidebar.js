// The list of conversations (owned and shared), newest first; typing searches titles and message text.
//
// The user's event stream keeps it current (main.js): a conversation updated
// while this tab is not showing it carries an unread mark until it is opened.
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
    this.unread = new Set(); // conversations with news this tab has not shown
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

  /** The list as the server has it now; with ``markNews``, what moved since this tab last knew gets a mark. */
  setConversations(conversations, { markNews = false } = {}) {
    if (markNews) for (const conversation of conversations) this.markIfNews(conversation);
    // A refresh that changes nothing must not redraw (and steal keyboard focus from) the list.
    if (this.drawn && JSON.stringify(conversations) === JSON.stringify(this.conversations)) return;
    this.conversations = [...conversations];
    this.render();
  }

  /** Add or replace one conversation; the list stays most recently updated first. With ``markNews``, as above. */
  upsert(conversation, { markNews = false } = {}) {
    if (markNews) this.markIfNews(conversation);
    const others = this.conversations.filter((c) => c.id !== conversation.id);
    this.conversations = [conversation, ...others].sort((a, b) => (a.updated_at < b.updated_at ? 1 : -1));
    this.render();
  }

  /** Mark ``conversation`` unread if it is new to this list or updated since, and not the one shown. */
  markIfNews(conversation) {
    if (conversation.id === this.activeId) return;
    const known = this.conversations.find((c) => c.id === conversation.id);
    if (!known || conversation.updated_at > known.updated_at) this.unread.add(conversation.id);
  }

  remove(conversationId) {
    this.conversations = this.conversations.filter((c) => c.id !== conversationId);
    this.unread.delete(conversationId);
    this.render();
  }

  setActive(conversationId) {
    this.activeId = conversationId;
    this.unread.delete(conversationId);
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
