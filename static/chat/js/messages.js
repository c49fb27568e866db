// The transcript: one <li> per message, updated at most once per animation frame.
//
// Deltas only change the message's state; the DOM (Markdown included) is
// rebuilt in the next frame, and a large reply is re-rendered less often when
// rendering it takes longer, so a 10,000-token reply never freezes the page.

import { copyText, renderMarkdown } from "./markdown.js";

const STATUS_LABELS = {
  complete: "",
  streaming: "Writing…",
  failed: "Failed",
  cancelled: "Stopped",
  interrupted: "Interrupted",
};

function formatTime(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  const today = new Date();
  const sameDay = date.toDateString() === today.toDateString();
  const options = sameDay
    ? { hour: "2-digit", minute: "2-digit" }
    : { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" };
  return date.toLocaleString(undefined, options);
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

/**
 * Where the streaming text can be cut so that what comes before is final: just
 * after the last blank line (after ``from``) that is outside a code fence and
 * followed by an unindented line. Returns ``from`` when there is none.
 */
export function stableBoundary(text, from) {
  let cut = from;
  let fence = null;
  let blank = false;
  let position = from;
  while (position < text.length) {
    const end = text.indexOf("\n", position);
    if (end === -1) break; // the last line may still grow
    const line = text.slice(position, end);
    const marker = /^ {0,3}(`{3,}|~{3,})/.exec(line);
    if (fence === null) {
      if (blank && line && !/^\s/.test(line)) cut = position;
      if (marker) fence = marker[1];
    } else if (marker && marker[1][0] === fence[0] && marker[1].length >= fence.length && !line.trim().slice(marker[1].length)) {
      fence = null;
    }
    blank = fence === null && line.trim() === "";
    position = end + 1;
  }
  return cut;
}

export class Transcript {
  /**
   * @param {HTMLElement} scroller the scrolling container
   * @param {HTMLOListElement} list the <ol> of messages
   * @param {{onRetry: (messageId: string) => void, onChange: () => void, jumpButton: HTMLElement}} options
   */
  constructor(scroller, list, { onRetry, onChange, jumpButton }) {
    this.scroller = scroller;
    this.list = list;
    this.onRetry = onRetry;
    this.onChange = onChange;
    this.jumpButton = jumpButton;
    this.views = new Map();
    this.dirty = new Set();
    this.frame = null;
    this.notBefore = 0; // adaptive throttle for big renders (ms, performance.now clock)
    this.stick = true;
    scroller.addEventListener("scroll", () => {
      this.stick = this.atBottom();
      if (this.stick) this.jumpButton.hidden = true;
    });
    jumpButton.addEventListener("click", () => {
      this.stick = true;
      this.scrollToEnd();
      jumpButton.hidden = true;
    });
    list.addEventListener("click", (event) => {
      const retry = event.target.closest("button.retry");
      if (retry) this.onRetry(retry.closest("li.message").dataset.id);
      const copy = event.target.closest("button.copy-code");
      if (copy) {
        const code = copy.closest(".codeblock").querySelector("pre");
        copyText(code.textContent, code).then(
          () => (copy.textContent = "Copied"),
          () => (copy.textContent = "Copy failed"),
        );
        setTimeout(() => (copy.textContent = "Copy"), 2000);
      }
    });
  }

  atBottom() {
    const { scrollTop, scrollHeight, clientHeight } = this.scroller;
    return scrollHeight - scrollTop - clientHeight < 48;
  }

  scrollToEnd() {
    this.scroller.scrollTop = this.scroller.scrollHeight;
  }

  clear() {
    this.views.clear();
    this.dirty.clear();
    this.list.replaceChildren();
    this.stick = true;
    this.jumpButton.hidden = true;
  }

  /** Mark a message (its state object) for the next frame. */
  update(state) {
    this.dirty.add(state);
    this.schedule();
  }

  remove(messageId) {
    const view = this.views.get(messageId);
    if (view) view.root.remove();
    this.views.delete(messageId);
  }

  schedule() {
    if (this.frame !== null) return;
    this.frame = requestAnimationFrame((now) => {
      this.frame = null;
      if (now < this.notBefore) {
        this.schedule();
        return;
      }
      this.flush();
    });
  }

  /** Render every dirty message now (also used before reading the DOM in one go). */
  flush() {
    if (!this.dirty.size) return;
    const started = performance.now();
    const states = [...this.dirty];
    this.dirty.clear();
    for (const state of states) this.render(state);
    const spent = performance.now() - started;
    // Rendering took long (a very large reply): leave the page time to breathe between renders.
    this.notBefore = spent > 12 ? performance.now() + spent * 2 : 0;
    if (this.stick) this.scrollToEnd();
    else this.jumpButton.hidden = false;
    this.onChange();
  }

  viewFor(state) {
    let view = this.views.get(state.message.id);
    if (view) return view;
    view = this.build(state.message);
    this.views.set(state.message.id, view);
    this.insertInOrder(view.root, state.message);
    return view;
  }

  insertInOrder(root, message) {
    root.dataset.created = message.created_at || "";
    const key = `${message.created_at}|${message.id}`;
    let before = null;
    for (const other of this.list.children) {
      if (`${other.dataset.created}|${other.dataset.id}` > key) {
        before = other;
        break;
      }
    }
    this.list.insertBefore(root, before);
  }

  build(message) {
    const root = element("li", `message ${message.role}`);
    root.dataset.id = message.id;
    const article = element("article", "message-body");
    const meta = element("header", "message-meta");
    const author = element("span", "message-author");
    const time = element("time", "message-time");
    const model = element("span", "message-model");
    meta.append(author, time, model);
    const reasoning = element("details", "reasoning");
    reasoning.append(element("summary", "", "Reasoning"), element("div", "reasoning-text"));
    reasoning.hidden = true;
    const content = element("div", message.role === "assistant" ? "message-content markdown" : "message-content plain");
    const error = element("div", "message-error");
    error.setAttribute("role", "alert");
    error.hidden = true;
    const footer = element("footer", "message-footer");
    const status = element("span", "message-status");
    const usage = element("span", "message-usage");
    const ttft = element("span", "message-ttft");
    footer.append(status, usage, ttft);
    article.append(meta, reasoning, content, error, footer);
    root.append(article);
    return { root, author, time, model, reasoning, content, error, footer, status, usage, ttft, rendered: null };
  }

  render(state) {
    const message = state.message;
    const view = this.viewFor(state);
    const { root } = view;
    root.className = `message ${message.role} status-${message.status}`;
    root.dataset.status = message.status;
    root.setAttribute("aria-busy", message.status === "streaming" ? "true" : "false");

    view.author.textContent = message.role === "assistant" ? "Assistant" : message.author || "(deleted user)";
    if (view.time.dateTime !== (message.created_at || "")) {
      view.time.dateTime = message.created_at || "";
      view.time.textContent = formatTime(message.created_at);
    }
    view.model.textContent = message.role === "assistant" && message.model ? message.model : "";

    if (message.reasoning) {
      view.reasoning.hidden = false;
      view.reasoning.querySelector(".reasoning-text").textContent = message.reasoning;
    } else {
      view.reasoning.hidden = true;
    }

    this.renderContent(view, message);
    this.renderError(view, message, state);
    this.renderFooter(view, message);
  }

  renderContent(view, message) {
    const content = message.content || "";
    view.content.classList.toggle("is-empty", !content);
    if (message.role !== "assistant") {
      if (view.rendered !== content) view.content.textContent = content;
      view.rendered = content;
      return;
    }
    if (message.status !== "streaming") {
      // Final: one render of the whole text, exactly as Markdown means it.
      const key = `${message.status}\u0000${content}`;
      if (view.rendered !== key) view.content.replaceChildren(renderMarkdown(content));
      view.rendered = key;
      view.stream = null;
      return;
    }
    // Streaming: blocks that can no longer change are rendered once; only the tail is redone each frame.
    let stream = view.stream;
    if (!stream || !content.startsWith(stream.stable)) {
      const tail = element("div", "md-chunk md-tail");
      view.content.replaceChildren(tail);
      stream = view.stream = { stable: "", tail, tailSource: null };
      view.rendered = null;
    }
    const cut = stableBoundary(content, stream.stable.length);
    if (cut > stream.stable.length) {
      const chunk = element("div", "md-chunk");
      chunk.append(renderMarkdown(content.slice(stream.stable.length, cut)));
      stream.tail.before(chunk);
      stream.stable = content.slice(0, cut);
    }
    const tailSource = content.slice(stream.stable.length);
    if (tailSource !== stream.tailSource) {
      stream.tail.replaceChildren(renderMarkdown(tailSource));
      stream.tailSource = tailSource;
    }
  }

  renderError(view, message, state) {
    view.error.replaceChildren();
    if (message.status === "failed") {
      const text = (message.error && message.error.message) || "The reply failed.";
      view.error.append(element("span", "message-error-text", text));
      if (state.retryContent !== null) {
        const retry = element("button", "button retry", "Retry");
        retry.type = "button";
        view.error.append(retry);
      }
      view.error.hidden = false;
    } else if (message.status === "interrupted") {
      const text =
        (message.error && message.error.message) ||
        "The server stopped while writing this reply; it ends where it was cut off.";
      view.error.append(element("span", "message-error-text", text));
      if (state.retryContent !== null) {
        const retry = element("button", "button retry", "Retry");
        retry.type = "button";
        view.error.append(retry);
      }
      view.error.hidden = false;
    } else {
      view.error.hidden = true;
    }
  }

  renderFooter(view, message) {
    const label = STATUS_LABELS[message.status] ?? message.status;
    view.status.textContent = message.status === "cancelled" ? "Stopped by a participant" : label;
    view.status.hidden = !view.status.textContent;
    if (message.role === "assistant" && message.usage) {
      const { prompt_tokens: prompt, completion_tokens: completion } = message.usage;
      view.usage.textContent = `${prompt ?? "?"} prompt · ${completion ?? "?"} completion tokens`;
      view.usage.hidden = false;
    } else {
      view.usage.hidden = true;
    }
    if (message.role === "assistant" && Number.isFinite(message.time_to_first_token_ms)) {
      view.ttft.textContent = `first token after ${message.time_to_first_token_ms} ms`;
      view.ttft.hidden = false;
    } else {
      view.ttft.hidden = true;
    }
    view.footer.hidden = view.status.hidden && view.usage.hidden && view.ttft.hidden;
  }
}
