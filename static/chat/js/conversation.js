// The open conversation's messages: REST data and live events merged into one state.
//
// Messages form a tree (``parent``); the transcript shows one thread, from a
// root to a leaf. At each fork the viewer's pick is kept in ``pins``; where
// there is none, the branch holding the newest leaf is shown. The thread on
// screen is pinned after each layout, so a branch someone else starts never
// moves this viewer's view: it is announced with ``onNewBranch`` instead.
//
// Each message keeps the ``seq`` of the last delta applied. A delta with
// seq <= that is a repeat and is ignored; a snapshot replaces the content and
// sets seq; a final event replaces the whole message. A streaming message
// known only from the REST API (its content is a checkpoint, its seq unknown)
// waits for the stream's snapshot before applying deltas (when the browser's
// stream already carried this conversation for another tab, it asks for one).

import { api, urls } from "./api.js";
import { EVENTS, FINAL_STATUSES, FINAL_TYPES } from "./events.js";
import { live } from "./live.js";

export class OpenConversation {
  /**
   * @param {object} conversation the API's conversation, with ``messages``
   * @param {import("./messages.js").Transcript} transcript
   * @param {{onConversationUpdated: Function, onStreamingChange: Function, onConnection: Function,
   *   onNewBranch: (message: object|null) => void, onMyReplyEnded: (message: object) => void,
   *   onPresence: (viewers: string[]) => void}} hooks
   */
  constructor(conversation, transcript, hooks) {
    this.id = conversation.id;
    this.transcript = transcript;
    this.hooks = hooks;
    this.states = new Map();
    this.closed = false;
    this.streamingId = null;
    this.reloading = null;
    this.pins = new Map(); // parent id ("" for the roots) -> the child this viewer follows
    this.adopt = new Set(); // parents under which my own pending post will start a branch I want to see
    this.thread = [];
    this.forks = new Map();
    this.pinnedCount = new Map();
    this.seen = new Set(); // messages already laid out once: only newcomers are announced
    this.mine = new Set(); // replies this tab asked for, until they end (their usage is "mine today")
    this.laidOut = false;
    this.grown = false;
    transcript.clear();
    this.merge(conversation.messages || []);
    this.layout();
    this.freshConnect = true;
    this.askedForSnapshots = false;
    this.stream = live.watch(this.id, {
      onEvent: (type, data) => this.applyEvent(type, data),
      onState: (state) => this.connectionChanged(state),
    });
  }

  close() {
    // Late answers (a reload in flight, a queued event) must not touch the next conversation's transcript.
    this.closed = true;
    this.stream.close();
  }

  /** This viewer lost the conversation: stop listening, and end every reply still "Writing…" for them. */
  abandon() {
    this.close();
    for (const state of this.states.values()) {
      if (state.message.status !== "streaming") continue;
      state.message = { ...state.message, status: "unfollowed" };
      state.seq = Infinity;
      state.retrying = null;
      this.changed(state);
    }
    this.streamingId = null;
  }

  connectionChanged(state) {
    if (state === "open" && this.freshConnect) {
      // The page's data was read before this stream's cut: fetch once more so a
      // reply that finished in between is not left looking "streaming".
      this.freshConnect = false;
      this.reload();
    }
    this.hooks.onConnection(state);
  }

  // --- state --------------------------------------------------------------

  add(message, seq) {
    const state = { message: { ...message }, seq };
    this.states.set(message.id, state);
    this.grown = true;
    this.changed(state);
    return state;
  }

  changed(state) {
    this.transcript.update(state);
    if (state.seq === Infinity && this.mine.has(state.message.id) && FINAL_STATUSES.has(state.message.status)) {
      this.mine.delete(state.message.id);
      this.hooks.onMyReplyEnded(state.message);
    }
  }

  // --- the tree ---------------------------------------------------------------

  /** Whether the server knows about trees (its messages carry ``parent``). */
  get isTree() {
    for (const { message } of this.states.values()) return "parent" in message;
    return false;
  }

  /**
   * The tree: ``children`` by parent id ("" for roots, oldest first), ``parentOf``, and ``newest``
   * (the newest message of each subtree). Without ``parent`` the messages are one chain.
   */
  tree() {
    // Sort on precomputed keys: a comparator building them would allocate n log n strings.
    const ordered = [...this.states.values()]
      .map((s) => [`${s.message.created_at}|${s.message.id}`, s.message])
      .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
      .map(([, message]) => message);
    const children = new Map();
    const parentOf = new Map();
    let previous = "";
    for (const message of ordered) {
      const parent = "parent" in message ? message.parent || "" : previous;
      if (!children.has(parent)) children.set(parent, []);
      children.get(parent).push(message);
      parentOf.set(message.id, parent);
      previous = message.id;
    }
    // A reply is always newer than what it follows: walking newest first meets children before parents.
    const newest = new Map();
    for (const message of ordered.reverse()) {
      const mine = newest.get(message.id) || message;
      newest.set(message.id, mine);
      const parent = parentOf.get(message.id);
      const theirs = newest.get(parent);
      if (!theirs || byCreated(mine, theirs) > 0) newest.set(parent, mine);
    }
    return { children, parentOf, newest };
  }

  /** Recompute the thread on screen and pin it; announce a branch this viewer is not following. */
  layout() {
    if (this.closed) return;
    const { children, newest } = this.tree();
    const thread = [];
    const forks = new Map();
    let key = "";
    for (;;) {
      const kids = children.get(key) || [];
      if (!kids.length) break;
      // My own post under ``key`` is on its way: show it, even if its events come before the answer.
      const adopted = this.adopt.has(key) && kids.length > (this.pinnedCount.get(key) || 0);
      if (adopted) this.adopt.delete(key);
      let pick = adopted ? kids[kids.length - 1] : kids.find((m) => m.id === this.pins.get(key));
      if (!pick) pick = kids.reduce((best, m) => (byCreated(newest.get(m.id), newest.get(best.id)) > 0 ? m : best));
      thread.push(pick);
      forks.set(pick.id, { index: kids.indexOf(pick), siblings: kids });
      key = pick.id;
    }
    // Pin what is on screen: later arrivals on other branches must not move it.
    const counts = new Map();
    let parentKey = "";
    for (const message of thread) {
      this.pins.set(parentKey, message.id);
      counts.set(parentKey, (children.get(parentKey) || []).length);
      parentKey = message.id;
    }
    const onThread = new Set(thread.map((m) => m.id));
    let announce = null;
    for (const key of ["", ...onThread]) {
      for (const kid of children.get(key) || []) {
        if (!onThread.has(kid.id) && !this.seen.has(kid.id)) announce = kid;
      }
    }
    for (const id of this.states.keys()) this.seen.add(id);
    this.pinnedCount = counts;
    this.thread = thread;
    this.forks = forks;
    this.transcript.showThread(
      thread.map((m) => this.states.get(m.id)),
      forks,
    );
    if (announce && this.laidOut) this.hooks.onNewBranch(announce);
    this.laidOut = true;
  }

  /** Show the sibling ``step`` away (-1, +1) from ``messageId``, down to its newest leaf. */
  switchBranch(messageId, step) {
    const fork = this.forks.get(messageId);
    const next = fork && fork.siblings[fork.index + step];
    if (next) this.reveal(next.id);
  }

  /** Show the thread through ``messageId``, down to the newest leaf under it; false if unknown. */
  reveal(messageId) {
    if (!this.states.has(messageId)) return false;
    const { children, parentOf } = this.tree();
    for (let id = messageId; parentOf.has(id); id = parentOf.get(id)) this.pins.set(parentOf.get(id), id);
    // Below it, forget earlier picks: the newest leaf is shown.
    const below = [messageId];
    while (below.length) {
      const id = below.pop();
      this.pins.delete(id);
      for (const kid of children.get(id) || []) below.push(kid.id);
    }
    this.hooks.onNewBranch(null);
    this.layout();
    return true;
  }

  /** The newest message on the thread on screen (the parent for the next post), or null. */
  get leaf() {
    return this.thread.length ? this.thread[this.thread.length - 1] : null;
  }

  /** Merge messages from the REST API: final beats streaming; live stream state beats a checkpoint. */
  merge(messages) {
    if (this.closed) return;
    for (const message of messages) {
      const state = this.states.get(message.id);
      const final = FINAL_STATUSES.has(message.status);
      if (!state) {
        this.add(message, final ? Infinity : message.role === "assistant" ? null : 0);
      } else if (final && state.seq !== Infinity) {
        state.message = { ...message };
        state.seq = Infinity;
        this.changed(state);
      } else if (!final && state.seq === null) {
        state.message = { ...message };
        this.changed(state);
      }
    }
    this.relayoutIfGrown();
    this.streamingChanged();
  }

  relayoutIfGrown() {
    if (this.grown && this.laidOut) {
      this.grown = false;
      this.layout();
    }
  }

  streamingChanged() {
    let streaming = null;
    for (const state of this.states.values()) {
      if (state.message.status === "streaming") streaming = state.message.id;
    }
    if (streaming !== this.streamingId) {
      this.streamingId = streaming;
      this.hooks.onStreamingChange(streaming);
    }
  }

  get isEmpty() {
    return this.states.size === 0;
  }

  // --- events -------------------------------------------------------------

  applyEvent(type, data) {
    if (this.closed) return;
    if (type === EVENTS.CONVERSATION_UPDATED) {
      this.hooks.onConversationUpdated(data);
      return;
    }
    if (type === EVENTS.RESYNC) {
      this.resync();
      return;
    }
    if (type === EVENTS.PRESENCE) {
      this.hooks.onPresence(Array.isArray(data.viewers) ? data.viewers : []);
      return;
    }
    if (type === EVENTS.MESSAGE_DELTA) {
      this.applyDelta(data);
      return;
    }
    if (type === EVENTS.MESSAGE_RETRYING) {
      this.applyRetrying(data);
      return;
    }
    const message = type === EVENTS.MESSAGE_SNAPSHOT ? data.message : data;
    if (!message || message.conversation !== this.id) return;
    if (type === EVENTS.MESSAGE_SNAPSHOT) this.applySnapshot(message, data.seq);
    else if (type === EVENTS.MESSAGE_CREATED) this.applyCreated(message);
    else if (FINAL_TYPES.has(type)) {
      this.applyFinal(message);
      // Its end moved the conversation's updated_at to its completed_at: this tab saw that.
      if (message.completed_at) this.hooks.onActivity(message.completed_at);
    }
    this.relayoutIfGrown();
    this.streamingChanged();
  }

  applyCreated(message) {
    const state = this.states.get(message.id);
    if (!state) {
      this.add(message, 0);
    } else if (state.seq === null) {
      state.message = { ...message };
      state.seq = 0;
      this.changed(state);
    }
  }

  applySnapshot(message, seq) {
    const state = this.states.get(message.id);
    if (!state) {
      this.add(message, seq);
    } else if (state.seq !== Infinity && (state.seq === null || seq >= state.seq)) {
      this.askedForSnapshots = false;
      state.message = { ...state.message, ...message };
      state.seq = seq;
      this.changed(state);
    }
  }

  applyDelta(delta) {
    const state = this.states.get(delta.message_id);
    if (!state) {
      // A delta for a message this page never saw: the REST API knows it.
      this.reload();
      return;
    }
    if (state.seq === null) {
      // Known from the REST API only, and the stream (shared with another tab) sent no snapshot of it: ask.
      if (!this.askedForSnapshots) {
        this.askedForSnapshots = true;
        this.stream.restartFresh();
      }
      return;
    }
    if (state.seq === Infinity || delta.seq <= state.seq) return;
    if (delta.seq !== state.seq + 1) {
      // A gap would lose text: start over from a snapshot.
      this.restartFromSnapshots();
      return;
    }
    state.retrying = null;
    state.message.content += delta.content || "";
    if (delta.reasoning) state.message.reasoning = (state.message.reasoning || "") + delta.reasoning;
    state.seq = delta.seq;
    this.transcript.update(state);
  }

  /** The provider is busy: the reply shows when it is tried again, until its first text or its end. */
  applyRetrying(notice) {
    const state = this.states.get(notice.message_id);
    if (!state || state.seq === Infinity) return;
    state.retrying = { attempt: notice.attempt, delay: notice.delay };
    this.changed(state);
  }

  applyFinal(message) {
    const state = this.states.get(message.id);
    if (!state) {
      this.add(message, Infinity);
      return;
    }
    state.retrying = null;
    state.message = { ...message };
    state.seq = Infinity;
    this.changed(state);
  }

  restartFromSnapshots() {
    for (const state of this.states.values()) {
      if (state.seq !== Infinity && state.message.status === "streaming") state.seq = null;
    }
    this.stream.restartFresh();
  }

  /** The stream's history ran out (``resync``): reload over REST; streaming replies restart from snapshots. */
  async resync() {
    await this.reload();
    if (this.streamingId) this.restartFromSnapshots();
  }

  reload() {
    if (!this.reloading) {
      this.reloading = api("GET", urls.conversation(this.id))
        .then((conversation) => {
          if (this.closed) return;
          this.merge(conversation.messages || []);
          this.hooks.onConversationUpdated(conversation);
        })
        .catch(() => {})
        .finally(() => {
          this.reloading = null;
        });
    }
    return this.reloading;
  }

  // --- actions --------------------------------------------------------------

  /**
   * Post a message under ``parent`` (default: the end of the thread on screen; null: a new root);
   * the view follows the new branch. Resolves when the server accepted it, rejects with ApiError.
   */
  async send(content, parent = undefined) {
    const body = { content };
    if (parent === undefined && this.isTree && this.leaf && this.leaf.role === "assistant") parent = this.leaf.id;
    if (parent !== undefined) body.parent = parent;
    return this.post(urls.messages(this.id), body, parent === undefined ? null : parent || "", ["user_message", "assistant_message"]);
  }

  /** Regenerate the assistant reply ``messageId`` (with ``model``, else the server's choice) as a new sibling. */
  async regenerate(messageId, model = null) {
    const state = this.states.get(messageId);
    const parent = state ? state.message.parent || "" : null;
    return this.post(urls.regenerate(this.id, messageId), model ? { model } : {}, parent, ["assistant_message"]);
  }

  async post(url, body, branchParent, keys) {
    // The new message's own events may come before this answer: adopt it under that parent either way.
    if (branchParent !== null) this.adopt.add(branchParent);
    let answer;
    try {
      answer = await api("POST", url, body);
    } catch (error) {
      if (branchParent !== null) this.adopt.delete(branchParent);
      throw error;
    }
    if (this.closed) return answer;
    const first = answer[keys[0]];
    if (branchParent !== null && first) {
      this.adopt.delete(branchParent);
      this.pins.set(branchParent, first.id);
      this.seen.add(first.id);
    }
    if (answer.assistant_message) this.mine.add(answer.assistant_message.id);
    for (const key of keys) {
      const message = answer[key];
      if (message && !this.states.has(message.id)) this.add(message, FINAL_STATUSES.has(message.status) ? Infinity : 0);
      if (message) this.seen.add(message.id);
    }
    // Its final event may have come before this answer.
    const reply = answer.assistant_message && this.states.get(answer.assistant_message.id);
    if (reply && reply.seq === Infinity) this.changed(reply);
    this.grown = true;
    this.relayoutIfGrown();
    this.streamingChanged();
    return answer;
  }

  async stop() {
    if (!this.streamingId) return;
    try {
      await api("POST", urls.stop(this.id, this.streamingId));
    } catch (error) {
      if (error.status !== 409) throw error; // 409: it had already ended
    }
  }

  /** The message ``messageId`` as last known, or null. */
  message(messageId) {
    const state = this.states.get(messageId);
    return state ? state.message : null;
  }
}

function byCreated(a, b) {
  const left = `${a.created_at}|${a.id}`;
  const right = `${b.created_at}|${b.id}`;
  return left < right ? -1 : left > right ? 1 : 0;
}
