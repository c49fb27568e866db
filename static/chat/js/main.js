// The chat app: reads the page's initial data, then runs the sidebar, the open conversation and the composer.
//
// Modules, bottom up: api (fetch + CSRF), markdown (markdown-it + DOMPurify),
// stream (EventSource with resume), messages (the transcript's DOM),
// conversation (message state from REST + events, the tree of branches),
// search (sidebar search and the Ctrl/Cmd+K palette), sidebar, dialogs, and
// this file, which wires them to the page.

import { api, ApiError, urls } from "./api.js";
import { OpenConversation } from "./conversation.js";
import { setUpDialogs } from "./dialogs.js";
import { Transcript } from "./messages.js";
import { SearchPalette } from "./search.js";
import { displayTitle, Sidebar } from "./sidebar.js";

const $ = (id) => document.getElementById(id);

const CONNECTION_TEXT = {
  reconnecting: "Connection lost — reconnecting…",
  offline: "You are offline — reconnecting when the network is back…",
  gone: "This conversation was deleted or is no longer shared with you.",
  "signed-out": "You were signed out. Sign in again to go on.",
};

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
    this.models = initial.models;
    this.conversation = null; // the open conversation's data (no messages)
    this.open = null; // OpenConversation
    this.sending = false;

    this.sidebar = new Sidebar(
      {
        list: $("conversation-list"),
        filter: $("conversation-filter"),
        empty: $("conversation-list-empty"),
        noMatch: $("conversation-list-nomatch"),
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
    // Conversations shared with me appear without a reload.
    window.addEventListener("focus", () => this.refreshList());
    setInterval(() => this.refreshList(), 30000);
    this.refreshModels();
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
    // A menu (<details>) closes when one clicks anywhere else, as menus do.
    document.addEventListener("click", (event) => {
      for (const menu of document.querySelectorAll("details.menu-button[open], details.regen-more[open]")) {
        if (!menu.contains(event.target)) menu.open = false;
      }
    });
    const exportMenu = $("export-menu");
    exportMenu.addEventListener("click", (event) => {
      if (event.target.closest("a")) exportMenu.open = false;
    });
    exportMenu.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && exportMenu.open) {
        exportMenu.open = false;
        exportMenu.querySelector("summary").focus();
      }
    });
    $("branch-notice-show").addEventListener("click", () => {
      if (this.open && this.noticed) this.open.reveal(this.noticed);
    });
  }

  async refreshList() {
    try {
      const { conversations } = await api("GET", urls.conversations());
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
    $("demo-note").hidden = !demoOnly;
    this.renderSettings();
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

  flash(error) {
    $("composer-error").textContent = error.describe ? error.describe() : String(error);
  }

  showWelcome() {
    if (this.open) this.open.close();
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
    $("composer-error").textContent = "";
    $("composer-input").disabled = false;
    $("send-button").disabled = false;
    this.sidebar.setActive(data.id);
    this.renderHeader();
    this.renderSettings({ force: true });
    this.setStreaming(null);
    this.branchNotice(null);
    this.open = new OpenConversation({ ...data, messages }, this.transcript, {
      onConversationUpdated: (c) => this.conversationUpdated(c),
      onStreamingChange: (id) => this.setStreaming(id),
      onConnection: (state) => this.connectionChanged(state),
      onNewBranch: (message) => this.branchNotice(message),
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

  conversationUpdated(conversation) {
    const { messages, ...data } = conversation;
    this.sidebar.upsert(data);
    if (!this.conversation || this.conversation.id !== data.id) return;
    this.conversation = data;
    this.renderHeader();
    this.renderSettings();
    if (this.dialogs.share.dialog.open) this.dialogs.share.render();
    if (data.owner !== this.currentUser && !data.members.includes(this.currentUser)) {
      // I was removed: the server ends my stream too; say so now.
      this.open.close();
      this.connectionChanged("gone");
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
    $("export-markdown").href = urls.exportAs(c.id, "markdown");
    $("export-json").href = urls.exportAs(c.id, "json");
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
    const status = $("connection-status");
    const text = CONNECTION_TEXT[state] || "";
    status.textContent = text;
    status.hidden = !text;
    status.dataset.state = state;
    if (state === "gone" || state === "signed-out") {
      $("composer-input").disabled = true;
      $("send-button").disabled = true;
      this.setStreaming(null);
      if (state === "gone" && this.conversation) this.sidebar.remove(this.conversation.id);
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
    $("settings-summary").textContent = `· ${model}${c.system_prompt ? " · custom system prompt" : ""}`;
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
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing && !event.altKey && !event.ctrlKey && !event.metaKey) {
        event.preventDefault();
        this.sendFromComposer();
      }
    });
    input.addEventListener("input", () => {
      input.classList.toggle("is-tall", input.value.split("\n").length > 3 || input.value.length > 240);
    });
    $("stop-button").addEventListener("click", async () => {
      if (!this.open) return;
      try {
        await this.open.stop();
      } catch (error) {
        this.flash(error);
      }
    });
  }

  async sendFromComposer() {
    const input = $("composer-input");
    const content = input.value;
    if (!content.trim() || this.sending) return;
    if (await this.send(content)) {
      input.value = "";
      input.classList.remove("is-tall");
    }
  }

  /** Post ``content`` to the open conversation; errors are shown by the composer. Returns success. */
  async send(content) {
    if (!this.open) return false;
    const error = $("composer-error");
    error.textContent = "";
    this.sending = true;
    $("send-button").disabled = true;
    try {
      await this.open.send(content);
      this.transcript.stick = true;
      this.autoTitle(content);
      return true;
    } catch (failure) {
      error.textContent = failure.describe ? failure.describe() : String(failure);
      return false;
    } finally {
      this.sending = false;
      $("send-button").disabled = false;
    }
  }

  /** Regenerate a reply (Retry too) as a new sibling, with ``model`` or the conversation's; errors go to the composer. */
  async regenerate(messageId, model) {
    if (!this.open) return;
    $("composer-error").textContent = "";
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
    $("composer-error").textContent = "";
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
    const line = content.trim().split("\n")[0].replace(/^[\s#>*+-]+/, "");
    const title = Array.from(line).slice(0, 80).join("").trim();
    if (!title) return;
    try {
      this.conversationUpdated(await api("PATCH", urls.conversation(c.id), { title }));
    } catch {
      // Untitled is fine.
    }
  }

  setStreaming(messageId) {
    $("stop-button").hidden = !messageId;
    this.transcript.setBusy(Boolean(messageId));
  }
}

const initial = JSON.parse(document.getElementById("chat-initial").textContent);
// A handle for debugging in the console; the browser tests also wait for it to know the page is wired.
window.chatApp = new App(initial);
