// The transcript: one <li> per message of the thread on screen, updated at most once per animation frame.
//
// Every message has a view, on screen or not; ``showThread`` puts the thread's
// views in the list, in order, each with its branch switcher and actions
// (copy, edit, regenerate).
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
  // Not a server status: this viewer lost access while the reply was being written (conversation.js abandon).
  unfollowed: "You no longer have access: the rest of this reply is not shown",
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

// Retry is a regenerate: a new reply beside this one, never a second copy of the question.
function retryButton() {
  const retry = element("button", "button retry", "Retry");
  retry.type = "button";
  return retry;
}

/** Put ``text`` on the clipboard; without the Clipboard API (plain http) through a hidden textarea. */
export async function writeClipboard(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  const buffer = element("textarea", "copy-buffer");
  buffer.value = text;
  document.body.append(buffer);
  buffer.select();
  const ok = document.execCommand("copy");
  buffer.remove();
  if (!ok) throw new Error("copy refused");
}

export class Transcript {
  /**
   * @param {HTMLElement} scroller the scrolling container
   * @param {HTMLOListElement} list the <ol> of messages
   * @param {{onRegenerate: (messageId: string, model: string|null) => void,
   *   onEdit: (messageId: string, content: string) => Promise<boolean>, onSwitch: (messageId: string, step: number) => void,
   *   canEdit: () => boolean, models: () => object[], onChange: () => void, jumpButton: HTMLElement}} options
   */
  constructor(scroller, list, { onRegenerate, onEdit, onSwitch, canEdit, models, onChange, jumpButton }) {
    this.scroller = scroller;
    this.list = list;
    this.onRegenerate = onRegenerate;
    this.onEdit = onEdit;
    this.onSwitch = onSwitch;
    this.canEdit = canEdit;
    this.models = models;
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
    list.addEventListener("click", (event) => this.clicked(event));
    list.addEventListener("keydown", (event) => this.keyed(event));
  }

  clicked(event) {
    const button = event.target.closest("button");
    const item = event.target.closest("li.message");
    if (!button || !item) return;
    const id = item.dataset.id;
    const view = this.views.get(id);
    if (button.matches(".retry, .regenerate")) this.onRegenerate(id, null);
    else if (button.dataset.model) {
      button.closest("details").open = false;
      this.onRegenerate(id, button.dataset.model);
    } else if (button.matches(".branch-prev, .branch-next")) {
      const step = button.matches(".branch-prev") ? -1 : 1;
      this.onSwitch(id, step);
      this.focusSwitcher(step);
    } else if (button.matches(".copy-message")) this.copyMessage(view, button);
    else if (button.matches(".edit")) this.openEditor(view);
    else if (button.matches(".edit-cancel")) this.closeEditor(view, true);
    else if (button.matches(".edit-send")) this.sendEdit(view);
    else if (button.matches(".copy-code")) this.copyCode(button);
  }

  keyed(event) {
    const item = event.target.closest("li.message");
    if (!item) return;
    const view = this.views.get(item.dataset.id);
    if (event.target.matches(".editor textarea")) {
      if (event.key === "Escape") {
        event.preventDefault();
        this.closeEditor(view, true);
      } else if (event.key === "Enter" && !event.shiftKey && !event.isComposing && !event.altKey && !event.ctrlKey && !event.metaKey) {
        event.preventDefault();
        this.sendEdit(view);
      }
    } else if (event.key === "Escape" && event.target.closest("details.regen-more[open]")) {
      const menu = event.target.closest("details.regen-more");
      menu.open = false;
      menu.querySelector("summary").focus();
    }
  }

  copyCode(copy) {
    const code = copy.closest(".codeblock").querySelector("pre");
    copyText(code.textContent, code).then(
      () => (copy.textContent = "Copied"),
      () => (copy.textContent = "Copy failed"),
    );
    setTimeout(() => (copy.textContent = "Copy"), 2000);
  }

  /** Copy a message's Markdown source (what was written, not what is shown); the button says "Copied". */
  copyMessage(view, button) {
    const source = this.messageOf(view).content || "";
    writeClipboard(source).then(
      () => (button.textContent = "Copied"),
      () => (button.textContent = "Copy failed"),
    );
    clearTimeout(button.resetTimer);
    button.resetTimer = setTimeout(() => (button.textContent = "Copy"), 2000);
  }

  messageOf(view) {
    return view.state.message;
  }

  openEditor(view) {
    if (view.editor) {
      view.editor.querySelector("textarea").focus();
      return;
    }
    const form = element("form", "editor");
    const label = element("label", "visually-hidden", "Edit message");
    const input = element("textarea");
    input.id = `edit-${view.state.message.id}`;
    label.htmlFor = input.id;
    input.rows = 3;
    input.value = view.state.message.content || "";
    const hint = element("span", "meta", "Enter sends as a new branch · Esc cancels");
    const send = element("button", "button primary edit-send", "Send");
    send.type = "button";
    const cancel = element("button", "button subtle edit-cancel", "Cancel");
    cancel.type = "button";
    const row = element("div", "form-row editor-buttons");
    row.append(send, cancel, hint);
    form.append(label, input, row);
    form.addEventListener("submit", (event) => event.preventDefault());
    view.content.hidden = true;
    view.content.after(form);
    view.editor = form;
    input.focus();
    input.setSelectionRange(input.value.length, input.value.length);
  }

  closeEditor(view, refocus) {
    if (!view.editor) return;
    view.editor.remove();
    view.editor = null;
    view.content.hidden = false;
    if (refocus) view.actions.querySelector(".edit")?.focus();
  }

  async sendEdit(view) {
    const content = view.editor.querySelector("textarea").value;
    if (!content.trim()) return;
    if (await this.onEdit(view.state.message.id, content)) this.closeEditor(view, false);
  }

  /** After a branch switch the fork shows another message: keep focus on its switcher. */
  focusSwitcher(step) {
    const target = this.switchedTo && this.views.get(this.switchedTo);
    if (!target) return;
    const wanted = target.actions.querySelector(step < 0 ? ".branch-prev" : ".branch-next");
    const other = target.actions.querySelector(step < 0 ? ".branch-next" : ".branch-prev");
    (wanted && !wanted.disabled ? wanted : other)?.focus();
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

  /**
   * Put ``states`` (the thread, root first) in the list, in order; ``forks`` maps a message id to
   * ``{index, siblings}`` for its branch switcher. Views off the thread leave the list, kept for later.
   */
  showThread(states, forks) {
    const previous = new Set(this.list.children);
    // The thread keeps its start: the first view to come on screen sits at the fork that changed.
    this.switchedTo = null;
    const roots = states.map((state) => {
      const view = this.viewFor(state);
      if (!view.root.isConnected && !this.switchedTo) this.switchedTo = state.message.id;
      this.renderSwitcher(view, forks.get(state.message.id));
      return view.root;
    });
    roots.forEach((root, index) => {
      if (this.list.children[index] !== root) this.list.insertBefore(root, this.list.children[index] || null);
      previous.delete(root);
    });
    for (const root of previous) root.remove();
    if (this.stick) this.scrollToEnd();
    this.onChange();
  }

  renderSwitcher(view, fork) {
    const count = fork ? fork.siblings.length : 1;
    view.switcher.hidden = count < 2;
    if (count < 2) return;
    const noun = view.state.message.role === "assistant" ? "reply" : "message";
    view.position.textContent = `${fork.index + 1} / ${count}`;
    view.prev.disabled = fork.index === 0;
    view.next.disabled = fork.index === count - 1;
    view.prev.setAttribute("aria-label", `Previous version of this ${noun}`);
    view.next.setAttribute("aria-label", `Next version of this ${noun}`);
    view.switcher.setAttribute("aria-label", `Version ${fork.index + 1} of ${count}`);
  }

  /** Scroll ``messageId`` (on screen) to the middle and mark it for a moment; false if it is not shown. */
  scrollToMessage(messageId) {
    this.flush();
    const view = this.views.get(messageId);
    if (!view || !view.root.isConnected) return false;
    this.stick = false;
    view.root.scrollIntoView({ block: "center" });
    for (const found of this.list.querySelectorAll(".is-found")) found.classList.remove("is-found");
    view.root.classList.add("is-found");
    return true;
  }

  /** Whether a message's actions that start a generation are offered (none while one runs). */
  setBusy(busy) {
    this.list.classList.toggle("is-busy", busy);
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
    view.state = state;
    this.views.set(state.message.id, view);
    this.dirty.add(state);
    this.schedule();
    return view;
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
    const content = element("div", "message-content markdown");
    const error = element("div", "message-error");
    error.setAttribute("role", "alert");
    error.hidden = true;
    const footer = element("footer", "message-footer");
    const status = element("span", "message-status");
    const usage = element("span", "message-usage");
    const ttft = element("span", "message-ttft");
    footer.append(status, usage, ttft);
    const { actions, switcher, position, prev, next } = this.buildActions(message);
    article.append(meta, reasoning, content, error, footer, actions);
    root.append(article);
    return {
      root, author, time, model, reasoning, content, error, footer, status, usage, ttft,
      actions, switcher, position, prev, next, editor: null, rendered: null,
    };
  }

  buildActions(message) {
    const actions = element("div", "message-actions");
    const switcher = element("span", "switcher");
    switcher.setAttribute("role", "group");
    const prev = element("button", "icon-button branch-prev", "‹");
    const position = element("span", "switcher-position");
    const next = element("button", "icon-button branch-next", "›");
    prev.type = next.type = "button";
    switcher.append(prev, position, next);
    switcher.hidden = true;
    const copy = element("button", "action copy-message", "Copy");
    copy.type = "button";
    copy.setAttribute("aria-label", `Copy this ${message.role === "assistant" ? "reply" : "message"} as Markdown`);
    actions.append(switcher, copy);
    if (message.role === "user") {
      const edit = element("button", "action edit", "Edit");
      edit.type = "button";
      actions.append(edit);
    } else {
      const regenerate = element("button", "action regenerate", "Regenerate");
      regenerate.type = "button";
      const more = element("details", "regen-more");
      const summary = element("summary", "action", "▾");
      summary.setAttribute("aria-label", "Regenerate with another model");
      const menu = element("div", "menu");
      more.append(summary, menu);
      // The models can change while the page is open: list them when the menu opens.
      more.addEventListener("toggle", () => {
        if (!more.open) return;
        menu.replaceChildren(
          element("p", "menu-heading", "Regenerate with"),
          ...this.models().map((model) => {
            const item = element("button", "menu-item", model.name || model.id);
            item.type = "button";
            item.dataset.model = model.id;
            return item;
          }),
        );
        menu.querySelector("button")?.focus();
      });
      actions.append(regenerate, more);
    }
    return { actions, switcher, position, prev, next };
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
    this.renderError(view, message);
    this.renderFooter(view, message, state.retrying);
    this.renderActions(view, message);
  }

  renderActions(view, message) {
    const streaming = message.status === "streaming" || message.status === "unfollowed";
    for (const control of view.actions.querySelectorAll(".regenerate, .regen-more")) control.hidden = streaming;
    const edit = view.actions.querySelector(".edit");
    if (edit) edit.hidden = !this.canEdit();
    view.actions.querySelector(".copy-message").hidden = streaming || !message.content;
  }

  renderContent(view, message) {
    const content = message.content || "";
    view.content.classList.toggle("is-empty", !content);
    if (message.role !== "assistant") {
      if (view.rendered !== content) view.content.replaceChildren(renderMarkdown(content, { breaks: true }));
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

  renderError(view, message) {
    view.error.replaceChildren();
    if (message.status === "failed") {
      const text = (message.error && message.error.message) || "The reply failed.";
      view.error.append(element("span", "message-error-text", text), retryButton());
      view.error.hidden = false;
    } else if (message.status === "interrupted") {
      const text =
        (message.error && message.error.message) ||
        "The server stopped while writing this reply; it ends where it was cut off.";
      view.error.append(element("span", "message-error-text", text), retryButton());
      view.error.hidden = false;
    } else {
      view.error.hidden = true;
    }
  }

  /** Status, usage and timing under a message; ``retrying`` is the provider-busy notice of a streaming reply. */
  renderFooter(view, message, retrying = null) {
    let label = STATUS_LABELS[message.status] ?? message.status;
    if (message.status === "streaming" && retrying) {
      label = `The provider is busy; retrying in ${Math.max(1, Math.ceil(retrying.delay))} s`;
    }
    const stopper = message.stopped_by ? `Stopped by ${message.stopped_by}` : "Stopped by a participant";
    view.status.textContent = message.status === "cancelled" ? stopper : label;
    view.status.classList.toggle("retrying", message.status === "streaming" && Boolean(retrying));
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
