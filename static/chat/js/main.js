// The chat app: reads the page's initial data, then runs the sidebar, the open conversation and the composer.
//
// Modules, bottom up: api (fetch + CSRF), markdown (markdown-it + DOMPurify),
// stream (the browser's one multiplexed EventSource, with resume), live (this
// tab's share of it: through the shared worker live-worker.js, or its own),
// messages (the transcript's DOM), conversation (message state from REST +
// events, the tree of branches), search (sidebar search and the Ctrl/Cmd+K
// palette), sidebar, presence (who else is here), toasts, dialogs (the share
// dialog's people picker too), menus (close on a click elsewhere), and this
// file, which wires them to the page: the user's own events (the sidebar, a
// toast when someone shares), the composer, the keyboard shortcuts (? lists
// them), the user menu's usage today, the notices.

import { api, ApiError, retryAfterSeconds, urls } from "./api.js";
import { OpenConversation } from "./conversation.js";
import { setUpDialogs } from "./dialogs.js";
import { EVENTS } from "./events.js";
import { live } from "./live.js";
import "./menus.js";
import { Transcript } from "./messages.js";
import { renderPresence } from "./presence.js";
import { SearchPalette } from "./search.js";
import { displayTitle, Sidebar } from "./sidebar.js";
import { Toasts } from "./toasts.js";

const $ = (id) => document.getElementById(id);

const CONNECTION_TEXT = {
  reconnecting: "Connection lost — reconnecting…",
  offline: "You are offline — reconnecting when the network is back…",
  gone: "This conversation was deleted or is no longer shared with you.",
  removed: "You were removed from this conversation: it is no longer shared with you.",
  deleted: "This conversation was deleted by its owner.",
  "signed-out": "You were signed out. Sign in again to go on.",
  waiting: "Too many conversations are open in this browser to follow this one live: close a tab, then reload.",
};
// The states in which this conversation is over for this viewer: the stream will not come back.
const ENDED = new Set(["gone", "removed", "deleted", "signed-out"]);

const PLACEHOLDER_LONG = "Write a message… (Enter sends, Shift+Enter adds a line)";
const PLACEHOLDER_SHORT = "Write a message…";
const BUSY_TEXT = "A reply is already being generated in this conversation. Wait for it or stop it first (Esc).";
const DEMO_DISMISSED = "chat.demoNoteDismissed";

/** A touch keyboard, where Enter should make a new line (the Send button sends): no fine pointer at all. */
function touchTyping() {
  return window.matchMedia("(pointer: coarse)").matches && !window.matchMedia("(any-pointer: fine)").matches;
}

/** The user menu's "my usage today" line (chat/views.py usage_text writes the same). */
function usageText(tokens, quota) {
  const n = (value) => value.toLocaleString("en-US");
  return quota ? `${n(tokens)} of ${n(quota)} tokens` : `${n(tokens)} tokens (no daily quota)`;
}

/** Whether a key press is typing into something (then single-key shortcuts stay out of the way). */
function typingInto(target) {
  return Boolean(target && target.closest && target.closest("input, textarea, select, [contenteditable='true']"));
}

/** What a composer error is about, so it can clear when that is over. */
function causeOf(error) {
  if (!(error instanceof ApiError)) return null;
  if (error.code === "generation_in_progress") return "busy";
  if (error.status === 0) return "network";
  if (error.status === 429) return "wait";
  return null;
}

/**
 * The model picker's options: each model by its name, grouped by provider when there are several;
 * ``current`` (the conversation's model) is kept, marked, when it is not offered to this person.
 */
function modelOptions(models, current) {
  const option = (id, text) => {
    const element = document.createElement("option");
    element.value = id;
    element.textContent = text;
    return element;
  };
  const label = (m) => (m.name && m.name !== m.id ? m.name : m.id);
  const providers = [...new Set(models.map((m) => m.provider))];
  let options;
  if (providers.length > 1) {
    options = providers.map((provider) => {
      const group = document.createElement("optgroup");
      group.label = provider;
      group.append(...models.filter((m) => m.provider === provider).map((m) => option(m.id, label(m))));
      return group;
    });
  } else {
    options = models.map((m) => option(m.id, label(m)));
  }
  if (current && !models.some((m) => m.id === current)) options.push(option(current, `${current} (not available)`));
  return options;
}

class App {
  constructor(initial) {
    this.currentUser = initial.user;
    this.staff = Boolean(initial.staff);
    this.usage = initial.usage || { tokens: 0, quota: null };
    this.models = initial.models;
    this.conversation = null; // the open conversation's data (no messages)
    this.open = null; // OpenConversation
    this.sending = false;
    this.streamingId = null;
    this.ended = false; // the open conversation is over for this viewer (deleted, removed, signed out)
    this.errorCause = null; // what the composer's error is about: "busy", "network", "wait" or null

    this.sidebar = new Sidebar(
      {
        list: $("conversation-list"),
        filter: $("conversation-filter"),
        empty: $("conversation-list-empty"),
        noMatch: $("conversation-list-nomatch"),
        toggle: $("sidebar-toggle"),
      },
      { currentUser: this.currentUser, onSelect: (id, messageId) => this.select(id, { push: true, messageId }) },
    );
    this.sidebar.setConversations(initial.conversations);

    this.transcript = new Transcript($("transcript"), $("messages"), {
      onRegenerate: (id, model) => this.regenerate(id, model),
      onEdit: (id, content) => this.edit(id, content),
      onSwitch: (id, step) => this.open && this.open.switchBranch(id, step),
      canEdit: () => Boolean(this.open && this.open.isTree),
      models: () => this.models,
      onChange: () => this.transcriptChanged(),
      jumpButton: $("jump-latest"),
    });

    this.dialogs = setUpDialogs({
      current: () => this.conversation,
      currentUser: this.currentUser,
      onChanged: (conversation) => this.conversationUpdated(conversation),
      onDeleted: (id) => this.deleted(id),
    });

    this.palette = new SearchPalette({ onOpen: (id, messageId) => this.select(id, { push: true, messageId }) });
    this.wireShell();
    this.wireShortcuts();
    this.wireSettings();
    this.wireComposer();
    this.renderModels();

    if (initial.conversation) this.show(initial.conversation);
    else this.showWelcome();
    history.replaceState({ id: initial.conversation ? initial.conversation.id : null }, "");
    window.addEventListener("popstate", (event) => {
      const id = (event.state && event.state.id) || null;
      if (id) this.select(id, { push: false });
      else this.showWelcome();
    });
    window.addEventListener("chat:unauthenticated", () => {
      window.location.assign(`/accounts/login/?next=${encodeURIComponent(window.location.pathname)}`);
    });
    // Conversations shared with me appear at once: the user's own event stream (contract v2).
    this.toasts = new Toasts($("toasts"));
    this.streamState = null;
    this.userEventsHeard = 0;
    live.user({
      onEvent: (type, data) => this.userEvent(type, data),
      onState: (state) => this.userStreamState(state),
    });
    this.refreshModels();
  }

  // --- the user's own events ------------------------------------------------------

  userEvent(type, data) {
    this.userEventsHeard += 1;
    if (type === EVENTS.CONVERSATION_ADDED) {
      this.sidebar.upsert(data, { markNews: true });
      if (!this.conversation) this.showWelcome();
      if (data.owner !== this.currentUser) {
        this.toasts.show(`${data.owner} shared ‘${displayTitle(data)}’ with you`, {
          label: "Open",
          run: () => this.select(data.id, { push: true }),
        });
      }
    } else if (type === EVENTS.CONVERSATION_REMOVED) {
      // The open one keeps its page: its own part of the stream says why (removed or deleted).
      if (this.conversation && this.conversation.id === data.id) return;
      this.sidebar.remove(data.id);
    } else if (type === EVENTS.CONVERSATION_UPDATED) {
      this.conversationUpdated(data, { markNews: true });
    } else if (type === EVENTS.RESYNC) {
      this.refreshList();
    }
  }

  /** After each (re)connection the list is read once more: what happened while disconnected shows. */
  userStreamState(state) {
    const before = this.streamState;
    this.streamState = state;
    if (state === "open" && before !== "open") this.refreshList();
    if (state === "signed-out" && !this.conversation) this.toasts.show(CONNECTION_TEXT["signed-out"]);
  }

  // --- shell ----------------------------------------------------------------

  wireShell() {
    const toggle = $("sidebar-toggle");
    const backdrop = $("sidebar-backdrop");
    const setOpen = (open) => {
      document.body.classList.toggle("sidebar-open", open);
      toggle.setAttribute("aria-expanded", String(open));
      backdrop.hidden = !open;
      if (open) $("new-chat").focus();
    };
    this.closeSidebar = () => {
      if (document.body.classList.contains("sidebar-open")) setOpen(false);
    };
    toggle.addEventListener("click", () => setOpen(!document.body.classList.contains("sidebar-open")));
    backdrop.addEventListener("click", () => setOpen(false));
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && document.body.classList.contains("sidebar-open")) {
        setOpen(false);
        toggle.focus();
      }
    });
    $("new-chat").addEventListener("click", () => this.newChat());
    $("welcome-new-chat").addEventListener("click", () => this.newChat());
    $("rename-button").addEventListener("click", () => this.dialogs.rename.open());
    $("share-button").addEventListener("click", () => this.dialogs.share.open());
    $("delete-button").addEventListener("click", () => this.dialogs.remove.open());
    $("search-open").addEventListener("click", () => this.palette.open());
    // Menus close on a click elsewhere and on Escape (menus.js); a menu's own link or button closes it too.
    for (const menu of [$("export-menu"), $("conversation-more")]) {
      menu.addEventListener("click", (event) => {
        if (event.target.closest(".menu a, .menu button")) menu.open = false;
      });
    }
    const more = {
      share: () => this.dialogs.share.open(),
      rename: () => this.dialogs.rename.open(),
      delete: () => this.dialogs.remove.open(),
    };
    $("conversation-more").addEventListener("click", (event) => {
      const item = event.target.closest("button[data-action]");
      if (item) more[item.dataset.action]();
    });
    $("demo-note-close").addEventListener("click", () => {
      try {
        localStorage.setItem(DEMO_DISMISSED, "1");
      } catch {
        // No storage: dismissed for this page only.
      }
      this.demoDismissed = true;
      $("demo-note").hidden = true;
    });
    // The skip link's target may be hidden (no conversation open): focus what one would type into next.
    document.querySelector(".skip-link").addEventListener("click", (event) => {
      event.preventDefault();
      this.focusComposer();
    });
    $("branch-notice-show").addEventListener("click", () => {
      if (this.open && this.noticed) this.open.reveal(this.noticed);
    });
  }

  async refreshList() {
    try {
      let conversations;
      // A list read while an event came may be older than the event (a share just shown would vanish): read again.
      for (let tries = 0; tries < 3; tries += 1) {
        const heard = this.userEventsHeard;
        ({ conversations } = await api("GET", urls.conversations()));
        if (heard === this.userEventsHeard) break;
      }
      this.sidebar.setConversations(conversations);
      if (!this.conversation) this.showWelcome();
    } catch {
      // The next refresh tries again; the open conversation has its own stream.
    }
  }

  async refreshModels() {
    try {
      const { models } = await api("GET", urls.models());
      this.models = models;
      this.renderModels();
    } catch {
      // Keep the models the page came with.
    }
  }

  renderModels() {
    const demoOnly = this.models.length === 1 && this.models[0].id === "demo";
    // Only staff can act on it (they configure the server); once dismissed it stays away in this browser.
    if (this.demoDismissed === undefined) {
      try {
        this.demoDismissed = localStorage.getItem(DEMO_DISMISSED) === "1";
      } catch {
        this.demoDismissed = false;
      }
    }
    $("demo-note").hidden = !(demoOnly && this.staff && !this.demoDismissed);
    this.renderSettings();
  }

  /** Focus the message box, or where a conversation starts when none is open. */
  focusComposer() {
    const input = $("composer-input");
    if (!$("conversation").hidden && !input.disabled) input.focus();
    else if (!$("welcome").hidden) $("welcome-new-chat").focus();
    else $("transcript").focus();
  }

  // --- keyboard shortcuts (Ctrl/Cmd+K is search.js's) ---------------------------

  wireShortcuts() {
    const dialog = $("shortcuts-dialog");
    const show = () => {
      if (!dialog.open) dialog.showModal();
    };
    $("shortcuts-open").addEventListener("click", () => {
      $("user-menu").open = false;
      show();
    });
    document.addEventListener("keydown", (event) => {
      if (event.defaultPrevented || event.isComposing) return;
      const inDialog = Boolean(event.target.closest && event.target.closest("dialog"));
      const plain = !event.ctrlKey && !event.metaKey && !event.altKey;
      if ((event.ctrlKey || event.metaKey) && event.shiftKey && !event.altKey && event.key.toLowerCase() === "o") {
        event.preventDefault(); // Chromium's own Ctrl+Shift+O opens the bookmarks
        for (const open of document.querySelectorAll("dialog[open]")) open.close();
        this.newChat();
      } else if (event.key === "?" && plain && !typingInto(event.target) && !inDialog) {
        event.preventDefault();
        show();
      } else if (event.key === "Escape" && plain && !inDialog && this.streamingId) {
        // Not while editing a message (its editor takes Escape to cancel) or with the phone's sidebar open.
        if (event.target.closest && event.target.closest(".editor")) return;
        if (document.body.classList.contains("sidebar-open")) return;
        event.preventDefault();
        this.stop();
      }
    });
  }

  async newChat() {
    try {
      const conversation = await api("POST", urls.conversations(), {});
      this.sidebar.upsert(conversation);
      this.show({ ...conversation, messages: [] }, { push: true });
      this.closeSidebar();
      $("composer-input").focus();
    } catch (error) {
      this.flash(error);
    }
  }

  /** Open conversation ``id``; with ``messageId`` (a search result), show that message's branch and scroll to it. */
  async select(id, { push, messageId = null }) {
    this.closeSidebar();
    if (this.conversation && this.conversation.id === id) {
      if (messageId) this.reveal(messageId);
      return;
    }
    this.selecting = id;
    try {
      const conversation = await api("GET", urls.conversation(id));
      if (this.selecting !== id) return; // another click came after this one
      this.show(conversation, { push });
      if (messageId) this.reveal(messageId);
      else $("composer-input").focus();
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) {
        this.sidebar.remove(id);
        this.showWelcome();
      }
      this.flash(error);
    }
  }

  reveal(messageId) {
    if (this.open && this.open.reveal(messageId)) this.transcript.scrollToMessage(messageId);
  }

  /** Show ``error`` under the composer; it clears by itself when its cause goes away (``clearError``). */
  flash(error) {
    this.showError(error.describe ? error.describe() : String(error), causeOf(error));
    if (error.status === 429) {
      const wait = retryAfterSeconds(error.retryAfter);
      // A short wait: the notice goes when it is over. A long one (a quota) stays: it says when.
      clearTimeout(this.waitTimer);
      if (wait !== null && wait <= 300) this.waitTimer = setTimeout(() => this.clearError("wait"), wait * 1000);
    }
  }

  showError(text, cause = null) {
    $("composer-error").textContent = text;
    this.errorCause = text ? cause : null;
  }

  /** Clear the composer's error if it is about ``cause``. */
  clearError(cause) {
    if (this.errorCause === cause) this.showError("");
  }

  showWelcome() {
    if (this.open) this.open.close();
    this.ended = false;
    this.open = null;
    this.conversation = null;
    this.sidebar.setActive(null);
    $("conversation").hidden = true;
    $("welcome").hidden = false;
    $("welcome-empty").hidden = !this.sidebar.isEmpty;
    $("welcome-pick").hidden = this.sidebar.isEmpty;
    document.title = "Team Chat";
  }

  show(conversation, { push = false } = {}) {
    if (this.open) this.open.close();
    const { messages, ...data } = conversation;
    this.conversation = data;
    if (push) history.pushState({ id: data.id }, "", urls.page(data.id));
    $("welcome").hidden = true;
    $("conversation").hidden = false;
    this.showError("");
    this.ended = false;
    this.justSaved = false;
    $("composer-input").disabled = false;
    this.sidebar.setActive(data.id);
    this.renderHeader();
    this.renderSettings({ force: true });
    this.setStreaming(null);
    this.branchNotice(null);
    renderPresence($("presence"), [], this.currentUser);
    this.open = new OpenConversation({ ...data, messages }, this.transcript, {
      onPresence: (viewers) => renderPresence($("presence"), viewers, this.currentUser),
      onConversationUpdated: (c) => this.conversationUpdated(c),
      onStreamingChange: (id) => this.setStreaming(id),
      onConnection: (state) => this.connectionChanged(state),
      onNewBranch: (message) => this.branchNotice(message),
      onMyReplyEnded: (message) => this.countUsage(message),
      onActivity: (at) => this.conversationActive(data.id, at),
    });
    this.transcript.flush();
    this.transcriptChanged();
  }

  deleted(id) {
    this.sidebar.remove(id);
    if (this.conversation && this.conversation.id === id) {
      history.pushState({ id: null }, "", urls.page(null));
      this.showWelcome();
    }
  }

  /** A reply in the open conversation ended at ``at``, which the server also made its ``updated_at``. */
  conversationActive(id, at) {
    if (!this.conversation || this.conversation.id !== id || !(at > this.conversation.updated_at)) return;
    this.conversationUpdated({ ...this.conversation, updated_at: at });
  }

  conversationUpdated(conversation, { markNews = false } = {}) {
    const { messages, ...data } = conversation;
    this.sidebar.upsert(data, { markNews });
    if (!this.conversation || this.conversation.id !== data.id) return;
    this.conversation = data;
    this.renderHeader();
    this.renderSettings();
    if (this.dialogs.share.dialog.open) this.dialogs.share.render();
    if (data.owner !== this.currentUser && !data.members.includes(this.currentUser)) {
      // I was removed: the server ends my stream too; say so now.
      this.connectionChanged("removed");
    }
  }

  renderHeader() {
    const c = this.conversation;
    const isOwner = c.owner === this.currentUser;
    $("conversation-title").textContent = displayTitle(c);
    document.title = `${displayTitle(c)} · Team Chat`;
    const people = c.members.length ? `${c.owner} (owner), ${c.members.join(", ")}` : `${c.owner} (owner), not shared`;
    $("conversation-people").textContent = `Access: ${people}`;
    $("rename-button").hidden = !isOwner;
    $("delete-button").hidden = !isOwner;
    $("share-button").textContent = isOwner ? "Share" : "People";
    $("export-markdown").href = $("more-export-markdown").href = urls.exportAs(c.id, "markdown");
    $("export-json").href = $("more-export-json").href = urls.exportAs(c.id, "json");
    $("more-share").textContent = isOwner ? "Share" : "People";
    $("more-rename").hidden = !isOwner;
    $("more-delete").hidden = !isOwner;
  }

  /** Say that someone started a branch this viewer is not following (null: say nothing). */
  branchNotice(message) {
    this.noticed = message ? message.id : null;
    $("branch-notice").hidden = !message;
    if (!message) return;
    const who = message.role === "user" ? message.author || "Someone" : null;
    $("branch-notice-text").textContent = who
      ? `${who === this.currentUser ? "You" : who} started a new branch —`
      : "A new reply was written on another branch —";
  }

  connectionChanged(state) {
    this.connectionState = state; // the open conversation's, for the tests and the bench
    const status = $("connection-status");
    // Once over, it stays over: a later "closed" or "reconnecting" must not replace the notice.
    if (this.ended) return;
    const text = CONNECTION_TEXT[state] || "";
    status.textContent = text;
    status.hidden = !text;
    status.dataset.state = state;
    if (state === "open") this.clearError("network");
    if (ENDED.has(state)) {
      this.ended = true;
      // No reply may stay "Writing…": this viewer will hear no more of it.
      if (this.open) this.open.abandon();
      $("composer-input").disabled = true;
      this.showError("");
      this.setStreaming(null);
      renderPresence($("presence"), [], this.currentUser);
      if (state !== "signed-out" && this.conversation) this.sidebar.remove(this.conversation.id);
    }
  }

  transcriptChanged() {
    $("transcript-empty").hidden = !(this.open && this.open.isEmpty);
  }

  // --- settings: model and system prompt --------------------------------------

  wireSettings() {
    $("settings-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const status = $("settings-status");
      status.textContent = "Saving…";
      try {
        const updated = await api("PATCH", urls.conversation(this.conversation.id), {
          model: $("model-select").value,
          system_prompt: $("system-prompt").value,
        });
        this.conversationUpdated(updated);
        this.renderSettings({ force: true });
        // Saved: the panel folds away; its summary shows the new settings and says so for a moment.
        $("settings").open = false;
        this.justSaved = true;
        this.renderSettings();
        clearTimeout(this.savedTimer);
        this.savedTimer = setTimeout(() => {
          this.justSaved = false;
          this.renderSettings();
        }, 4000);
        status.textContent = "Saved.";
      } catch (error) {
        status.textContent = error.describe ? error.describe() : String(error);
      }
    });
    for (const id of ["model-select", "system-prompt"]) {
      $(id).addEventListener("input", () => {
        $(id).dataset.dirty = "true";
        $("settings-status").textContent = "";
      });
    }
  }

  renderSettings({ force = false } = {}) {
    const c = this.conversation;
    const select = $("model-select");
    const prompt = $("system-prompt");
    if (!c) return;
    const isOwner = c.owner === this.currentUser;
    // Never overwrite what the owner is typing; a save or a new conversation resets.
    if (force || select.dataset.dirty !== "true") {
      select.replaceChildren(...modelOptions(this.models, c.model));
      select.value = c.model;
      delete select.dataset.dirty;
    }
    if (force || prompt.dataset.dirty !== "true") {
      prompt.value = c.system_prompt;
      delete prompt.dataset.dirty;
    }
    select.disabled = !isOwner;
    prompt.readOnly = !isOwner;
    $("settings-save").hidden = !isOwner;
    const model = this.models.find((m) => m.id === c.model)?.name || c.model;
    const saved = this.justSaved ? " · saved" : "";
    $("settings-summary").textContent = `· ${model}${c.system_prompt ? " · custom system prompt" : ""}${saved}`;
    if (force) $("settings-status").textContent = isOwner ? "" : "Only the owner can change these.";
  }

  // --- composer -------------------------------------------------------------

  wireComposer() {
    const input = $("composer-input");
    $("composer").addEventListener("submit", (event) => {
      event.preventDefault();
      this.sendFromComposer();
    });
    input.addEventListener("keydown", (event) => {
      if (event.key !== "Enter" || event.shiftKey || event.isComposing || event.altKey || event.ctrlKey || event.metaKey) return;
      // On a touch keyboard Enter is the only way to a new line: there the Send button sends.
      if (touchTyping()) return;
      event.preventDefault();
      this.sendFromComposer();
    });
    input.addEventListener("input", () => {
      input.classList.toggle("is-tall", input.value.split("\n").length > 3 || input.value.length > 240);
    });
    $("stop-button").addEventListener("click", () => this.stop());
    // The long placeholder wraps in a narrow box, and a touch keyboard's Enter makes a new line.
    const fit = () => {
      input.placeholder = touchTyping() || input.clientWidth < 440 ? PLACEHOLDER_SHORT : PLACEHOLDER_LONG;
    };
    new ResizeObserver(fit).observe(input);
    fit();
  }

  async stop() {
    if (!this.open) return;
    try {
      await this.open.stop();
    } catch (error) {
      this.flash(error);
    }
  }

  async sendFromComposer() {
    const input = $("composer-input");
    const content = input.value;
    if (!content.trim() || this.sending) return;
    if (this.streamingId) {
      // Send waits for the reply being written; the text stays in the box.
      this.showError(BUSY_TEXT, "busy");
      return;
    }
    if (await this.send(content)) {
      input.value = "";
      input.classList.remove("is-tall");
    }
  }

  /** Post ``content`` to the open conversation; errors are shown by the composer. Returns success. */
  async send(content) {
    if (!this.open) return false;
    this.showError("");
    this.sending = true;
    this.renderSendButton();
    try {
      await this.open.send(content);
      this.transcript.stick = true;
      this.autoTitle(content);
      return true;
    } catch (failure) {
      this.flash(failure);
      return false;
    } finally {
      this.sending = false;
      this.renderSendButton();
    }
  }

  /** Regenerate a reply (Retry too) as a new sibling, with ``model`` or the conversation's; errors go to the composer. */
  async regenerate(messageId, model) {
    if (!this.open) return;
    this.showError("");
    try {
      await this.open.regenerate(messageId, model);
      this.transcript.stick = true;
    } catch (error) {
      this.flash(error);
    }
  }

  /** Edit and resend: post ``content`` under the edited message's parent, a new branch. Returns success. */
  async edit(messageId, content) {
    const message = this.open && this.open.message(messageId);
    if (!message) return false;
    this.showError("");
    try {
      await this.open.send(content, message.parent || null);
      this.transcript.stick = true;
      return true;
    } catch (error) {
      this.flash(error);
      return false;
    }
  }

  /** An untitled conversation of mine takes its first message's first line as title. */
  async autoTitle(content) {
    const c = this.conversation;
    if (!c || c.title || c.owner !== this.currentUser) return;
    // The first line, without Markdown's leading marks (# heading, > quote, - item), at most 80 characters.
    const line = content.trim().split("\n")[0].replace(/^[\s#>*+|-]+/, "");
    const title = Array.from(line).slice(0, 80).join("").trim();
    if (!title) return;
    try {
      this.conversationUpdated(await api("PATCH", urls.conversation(c.id), { title }));
    } catch {
      // Untitled is fine.
    }
  }

  setStreaming(messageId) {
    this.streamingId = messageId;
    $("stop-button").hidden = !messageId;
    this.transcript.setBusy(Boolean(messageId));
    if (!messageId) this.clearError("busy");
    this.renderSendButton();
  }

  /** Send is off while a post is on its way, a reply is being written, or the conversation is over. */
  renderSendButton() {
    const button = $("send-button");
    button.disabled = this.sending || Boolean(this.streamingId) || this.ended;
    button.title = this.streamingId ? "A reply is being written: wait for it, or stop it (Esc)" : "";
  }

  // --- my usage today (the user menu) -------------------------------------------

  /** A reply this tab asked for ended: count its tokens in "my usage today". */
  countUsage(message) {
    const tokens = message.usage && message.usage.total_tokens;
    if (!tokens) return;
    this.usage.tokens += tokens;
    $("usage-today-text").textContent = usageText(this.usage.tokens, this.usage.quota);
    const meter = $("usage-today-meter");
    if (meter) meter.value = this.usage.tokens;
  }
}

const initial = JSON.parse(document.getElementById("chat-initial").textContent);
// A handle for debugging in the console; the browser tests also wait for it to know the page is wired.
window.chatApp = new App(initial);
