// One EventSource per open conversation, resuming where it left off.
//
// The browser reconnects an EventSource by itself after a dropped connection
// and sends Last-Event-ID, so the server replays exactly what was missed.
// When the browser gives up (an HTTP error, e.g. while the server restarts)
// or the network goes away, a new EventSource resumes with ?last_event_id=.

import { api, ApiError, urls } from "./api.js";
import { CLIENT_EVENTS, EVENTS, REVOKED } from "./events.js";

// Every client event but access.revoked, which ends the stream (below).
const HANDED_ON = CLIENT_EVENTS.filter((type) => type !== EVENTS.ACCESS_REVOKED);

const MAX_BACKOFF_MS = 30000;

export class ConversationStream {
  /**
   * @param {string} conversationId
   * @param {{onEvent: (type: string, data: object) => void, onState: (state: string) => void}} handlers
   *   states: "connecting", "open", "reconnecting", "offline", "removed" (from the conversation), "deleted",
   *   "gone" (404: either, or never shared), "signed-out" (the session ended: signed out, deactivated,
   *   password changed), "closed"
   */
  constructor(conversationId, { onEvent, onState }) {
    this.id = conversationId;
    this.onEvent = onEvent;
    this.onState = onState;
    this.lastEventId = null;
    this.source = null;
    this.closed = false;
    this.failures = 0;
    this.retryTimer = null;
    this.connects = 0;
    this.handleOffline = () => this.dropForOffline();
    this.handleOnline = () => this.reconnectNow();
    window.addEventListener("offline", this.handleOffline);
    window.addEventListener("online", this.handleOnline);
  }

  start() {
    this.connect();
  }

  /** Start over without Last-Event-ID: the server sends a snapshot of each streaming message. */
  restartFresh() {
    this.lastEventId = null;
    this.reconnectNow();
  }

  close() {
    this.closed = true;
    clearTimeout(this.retryTimer);
    window.removeEventListener("offline", this.handleOffline);
    window.removeEventListener("online", this.handleOnline);
    this.dropSource();
    this.onState("closed");
  }

  connect() {
    if (this.closed) return;
    this.dropSource();
    let url = urls.events(this.id);
    if (this.lastEventId) url += `?last_event_id=${encodeURIComponent(this.lastEventId)}`;
    const source = new EventSource(url);
    this.source = source;
    this.connects += 1;
    this.onState(this.connects === 1 ? "connecting" : "reconnecting");
    source.onopen = () => {
      if (source !== this.source) return;
      this.failures = 0;
      this.onState("open");
    };
    source.onerror = () => {
      if (source !== this.source || this.closed) return;
      if (source.readyState === EventSource.CONNECTING) {
        // The browser retries by itself (after the server's retry: 2000), sending Last-Event-ID.
        this.onState("reconnecting");
        return;
      }
      this.dropSource();
      this.onState("reconnecting");
      this.checkThenRetry();
    };
    // The server ends this stream for good: the viewer lost access. Never reconnect.
    source.addEventListener(EVENTS.ACCESS_REVOKED, (event) => {
      if (source !== this.source) return;
      let reason = "";
      try {
        reason = JSON.parse(event.data).reason;
      } catch {
        // an unreadable reason still ends the stream
      }
      this.closed = true;
      clearTimeout(this.retryTimer);
      this.dropSource();
      const states = { [REVOKED.SIGNED_OUT]: "signed-out", [REVOKED.REMOVED]: "removed", [REVOKED.DELETED]: "deleted" };
      this.onState(states[reason] || "gone");
    });
    for (const type of HANDED_ON) {
      source.addEventListener(type, (event) => {
        if (source !== this.source) return;
        if (event.lastEventId) this.lastEventId = event.lastEventId;
        let data;
        try {
          data = JSON.parse(event.data);
        } catch {
          return;
        }
        this.onEvent(type, data);
      });
    }
  }

  dropSource() {
    if (this.source) {
      this.source.close();
      this.source = null;
    }
  }

  dropForOffline() {
    if (this.closed) return;
    clearTimeout(this.retryTimer);
    this.dropSource();
    this.onState("offline");
  }

  reconnectNow() {
    if (this.closed) return;
    clearTimeout(this.retryTimer);
    this.failures = 0;
    this.connect();
  }

  /** The browser gave up: tell "gone" (404) from a passing failure, then retry with backoff. */
  async checkThenRetry() {
    try {
      await api("GET", urls.conversation(this.id));
    } catch (error) {
      if (error instanceof ApiError && (error.status === 404 || error.status === 401)) {
        this.closed = true;
        this.onState(error.status === 404 ? "gone" : "closed");
        return;
      }
    }
    if (this.closed) return;
    this.failures += 1;
    const delay = Math.min(MAX_BACKOFF_MS, 1000 * 2 ** Math.min(this.failures, 5));
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }
}
