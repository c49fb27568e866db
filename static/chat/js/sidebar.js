// The list of conversations (owned and shared), newest first, filtered by title as one types.

import { urls } from "./api.js";

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
  constructor({ list, filter, empty, noMatch }, { currentUser, onSelect }) {
    this.list = list;
    this.filter = filter;
    this.empty = empty;
    this.noMatch = noMatch;
    this.currentUser = currentUser;
    this.onSelect = onSelect;
    this.conversations = [];
    this.activeId = null;
    this.drawn = false;
    filter.addEventListener("input", () => this.render());
    list.addEventListener("click", (event) => {
      const link = event.target.closest("a[data-id]");
      if (!link || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
      event.preventDefault();
      this.onSelect(link.dataset.id);
    });
  }

  get isEmpty() {
    return this.conversations.length === 0;
  }

  setConversations(conversations) {
    // A periodic refresh that changes nothing must not redraw (and steal keyboard focus from) the list.
    if (this.drawn && JSON.stringify(conversations) === JSON.stringify(this.conversations)) return;
    this.conversations = [...conversations];
    this.render();
  }

  /** Add or replace one conversation; the list stays most recently updated first. */
  upsert(conversation) {
    const others = this.conversations.filter((c) => c.id !== conversation.id);
    this.conversations = [conversation, ...others].sort((a, b) => (a.updated_at < b.updated_at ? 1 : -1));
    this.render();
  }

  remove(conversationId) {
    this.conversations = this.conversations.filter((c) => c.id !== conversationId);
    this.render();
  }

  setActive(conversationId) {
    this.activeId = conversationId;
    this.render();
  }

  render() {
    this.drawn = true;
    const query = this.filter.value.trim().toLowerCase();
    const shown = this.conversations.filter((c) => !query || displayTitle(c).toLowerCase().includes(query));
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
      const meta = document.createElement("span");
      meta.className = "meta conversation-link-meta";
      const parts = [];
      if (conversation.owner !== this.currentUser) parts.push(`shared by ${conversation.owner}`);
      else if (conversation.members.length) parts.push(`shared with ${conversation.members.length}`);
      parts.push(relativeTime(conversation.updated_at));
      meta.textContent = parts.join(" · ");
      link.append(title, meta);
      item.append(link);
      return item;
    });
    this.list.replaceChildren(...items);
    this.empty.hidden = this.conversations.length > 0;
    this.noMatch.hidden = this.conversations.length === 0 || shown.length > 0;
  }
}
