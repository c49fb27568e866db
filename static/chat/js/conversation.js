// The open conversation's messages: REST data and live events merged into one state.
//
// Each message keeps the ``seq`` of the last delta applied. A delta with
// seq <= that is a repeat and is ignored; a snapshot replaces the content and
// sets seq; a final event replaces the whole message. A streaming message
// known only from the REST API (its content is a checkpoint, its seq unknown)
// waits for the stream's snapshot before applying deltas.

import { api, urls } from "./api.js";
import { ConversationStream } from "./stream.js";

const FINAL_TYPES = new Set(["message.completed", "message.failed", "message.cancelled", "message.interrupted"]);
const FINAL_STATUSES = new Set(["complete", "failed", "cancelled", "interrupted"]);

export class OpenConversation {
  /**
   * @param {object} conversation the API's conversation, with ``messages``
   * @param {import("./messages.js").Transcript} transcript
   * @param {{onConversationUpdated: Function, onStreamingChange: Function, onConnection: Function}} hooks
   */
  constructor(conversation, transcript, hooks) {
    this.id = conversation.id;
    this.transcript = transcript;
    this.hooks = hooks;
    this.states = new Map();
    this.closed = false;
    this.streamingId = null;
    this.reloading = null;
    transcript.clear();
    this.merge(conversation.messages || []);
    this.stream = new ConversationStream(this.id, {
      onEvent: (type, data) => this.applyEvent(type, data),
      onState: (state) => this.connectionChanged(state),
    });
    this.freshConnect = true;
    this.stream.start();
  }

  close() {
    // Late answers (a reload in flight, a queued event) must not touch the next conversation's transcript.
    this.closed = true;
    this.stream.close();
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
    const state = { message: { ...message }, seq, retryContent: null };
    this.states.set(message.id, state);
    this.changed(state);
    return state;
  }

  changed(state) {
    if (state.message.status === "failed" || state.message.status === "interrupted") {
      state.retryContent = this.previousUserContent(state.message);
    }
    this.transcript.update(state);
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
    this.streamingChanged();
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

  previousUserContent(assistant) {
    let best = null;
    for (const { message } of this.states.values()) {
      if (message.role !== "user" || message.created_at > assistant.created_at) continue;
      if (!best || message.created_at >= best.created_at) best = message;
    }
    return best ? best.content : null;
  }

  get isEmpty() {
    return this.states.size === 0;
  }

  // --- events -------------------------------------------------------------

  applyEvent(type, data) {
    if (this.closed) return;
    if (type === "conversation.updated") {
      this.hooks.onConversationUpdated(data);
      return;
    }
    if (type === "resync") {
      this.resync();
      return;
    }
    if (type === "message.delta") {
      this.applyDelta(data);
      return;
    }
    const message = type === "message.snapshot" ? data.message : data;
    if (!message || message.conversation !== this.id) return;
    if (type === "message.snapshot") this.applySnapshot(message, data.seq);
    else if (type === "message.created") this.applyCreated(message);
    else if (FINAL_TYPES.has(type)) this.applyFinal(message);
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
    if (state.seq === null || state.seq === Infinity || delta.seq <= state.seq) return;
    if (delta.seq !== state.seq + 1) {
      // A gap would lose text: start over from a snapshot.
      this.restartFromSnapshots();
      return;
    }
    state.message.content += delta.content || "";
    if (delta.reasoning) state.message.reasoning = (state.message.reasoning || "") + delta.reasoning;
    state.seq = delta.seq;
    this.transcript.update(state);
  }

  applyFinal(message) {
    const state = this.states.get(message.id);
    if (!state) {
      this.add(message, Infinity);
      return;
    }
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

  /** Post a message; resolves when the server accepted it, rejects with ApiError. */
  async send(content) {
    const body = await api("POST", urls.messages(this.id), { content });
    if (this.closed) return body;
    for (const message of [body.user_message, body.assistant_message]) {
      if (!this.states.has(message.id)) this.add(message, FINAL_STATUSES.has(message.status) ? Infinity : 0);
    }
    this.streamingChanged();
    return body;
  }

  async stop() {
    if (!this.streamingId) return;
    try {
      await api("POST", urls.stop(this.id, this.streamingId));
    } catch (error) {
      if (error.status !== 409) throw error; // 409: it had already ended
    }
  }

  retryContentFor(messageId) {
    const state = this.states.get(messageId);
    return state ? state.retryContent : null;
  }
}
