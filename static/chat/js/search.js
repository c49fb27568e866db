// Search over titles and message text: the debounced query, safe highlighting, and the Ctrl/Cmd+K palette.
//
// The server sends plain text and ``highlights`` ([start, end) offsets in
// UTF-16 code units); the match is shown with text nodes and <mark>, so no
// text from the server is ever parsed as HTML.

import { api, urls } from "./api.js";

const DEBOUNCE_MS = 200;

/** ``text`` as a fragment with each highlighted range in a <mark>; without ranges, every match of ``query``. */
export function highlighted(text, highlights, query) {
  let ranges = Array.isArray(highlights) ? highlights : [];
  if (!ranges.length && query) {
    const lower = text.toLowerCase();
    const needle = query.toLowerCase();
    for (let at = lower.indexOf(needle); needle && at !== -1; at = lower.indexOf(needle, at + needle.length)) {
      ranges.push([at, at + needle.length]);
    }
  }
  ranges = ranges.filter(([start, end]) => Number.isInteger(start) && Number.isInteger(end) && start < end);
  const fragment = document.createDocumentFragment();
  let position = 0;
  for (const [start, end] of ranges.sort((a, b) => a[0] - b[0])) {
    if (start < position) continue; // overlapping ranges: keep the first
    fragment.append(document.createTextNode(text.slice(position, start)));
    const mark = document.createElement("mark");
    mark.textContent = text.slice(start, end);
    fragment.append(mark);
    position = end;
  }
  fragment.append(document.createTextNode(text.slice(position)));
  return fragment;
}

/** Calls ``onResults(query, conversations)`` with the server's answer for the latest query only, debounced. */
export class Searcher {
  constructor(onResults, onError) {
    this.onResults = onResults;
    this.onError = onError;
    this.timer = null;
    this.latest = "";
  }

  query(text) {
    const query = text.trim();
    this.latest = query;
    clearTimeout(this.timer);
    if (!query) {
      this.onResults("", null);
      return;
    }
    this.timer = setTimeout(async () => {
      try {
        const { conversations } = await api("GET", urls.search(query));
        // A slower answer to an older query must not replace a newer one.
        if (query === this.latest) this.onResults(query, conversations);
      } catch (error) {
        if (query === this.latest) this.onError(error);
      }
    }, DEBOUNCE_MS);
  }
}

/** The Ctrl/Cmd+K palette: a <dialog> with a search box and results with snippets. */
export class SearchPalette {
  /** @param {{onOpen: (conversationId: string, messageId: string|null) => void}} hooks */
  constructor({ onOpen }) {
    this.onOpen = onOpen;
    this.dialog = document.getElementById("search-dialog");
    this.input = document.getElementById("search-input");
    this.results = document.getElementById("search-results");
    this.status = document.getElementById("search-status");
    this.searcher = new Searcher(
      (query, conversations) => this.render(query, conversations),
      (error) => {
        this.results.replaceChildren();
        this.status.textContent = error.describe ? error.describe() : String(error);
      },
    );
    this.input.addEventListener("input", () => this.searcher.query(this.input.value));
    this.dialog.addEventListener("keydown", (event) => this.keyed(event));
    this.results.addEventListener("click", (event) => {
      const result = event.target.closest("button[data-id]");
      if (result) this.choose(result);
    });
    document.addEventListener("keydown", (event) => {
      if ((event.ctrlKey || event.metaKey) && !event.altKey && !event.shiftKey && event.key.toLowerCase() === "k") {
        event.preventDefault(); // the browser's own Ctrl+K focuses its address bar
        this.open();
      }
    });
  }

  open() {
    if (!this.dialog.open) this.dialog.showModal();
    this.input.select();
    if (!this.input.value) this.status.textContent = "Type to search titles and messages.";
  }

  render(query, conversations) {
    if (!query) {
      this.results.replaceChildren();
      this.status.textContent = "Type to search titles and messages.";
      return;
    }
    this.status.textContent = conversations.length
      ? `${conversations.length} conversation${conversations.length === 1 ? "" : "s"} found.`
      : "Nothing matches.";
    this.results.replaceChildren(
      ...conversations.map((conversation) => {
        const item = document.createElement("li");
        const button = document.createElement("button");
        button.type = "button";
        button.className = "search-result";
        button.dataset.id = conversation.id;
        const match = conversation.match || {};
        if (match.message_id) button.dataset.message = match.message_id;
        const title = document.createElement("span");
        title.className = "search-result-title";
        const snippet = document.createElement("span");
        snippet.className = "search-result-snippet";
        if (match.message_id || !match.snippet) {
          title.textContent = conversation.title || "Untitled";
          snippet.append(highlighted(match.snippet || "", match.highlights, query));
        } else {
          title.append(highlighted(match.snippet, match.highlights, query));
          snippet.textContent = "Title matches";
        }
        button.append(title, snippet);
        item.append(button);
        return item;
      }),
    );
  }

  keyed(event) {
    const buttons = [...this.results.querySelectorAll("button[data-id]")];
    const at = buttons.indexOf(document.activeElement);
    if (event.key === "ArrowDown" || event.key === "ArrowUp") {
      event.preventDefault();
      const step = event.key === "ArrowDown" ? 1 : -1;
      const next = at === -1 ? (step > 0 ? 0 : buttons.length - 1) : at + step;
      if (next < 0) this.input.focus();
      else buttons[Math.min(next, buttons.length - 1)]?.focus();
    } else if (event.key === "Enter" && event.target === this.input && buttons.length) {
      event.preventDefault();
      this.choose(buttons[0]);
    }
  }

  choose(button) {
    this.dialog.close();
    this.onOpen(button.dataset.id, button.dataset.message || null);
  }
}
