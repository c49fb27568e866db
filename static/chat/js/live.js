// This tab's side of the live layer: the user's events and the open conversation's, from one stream per browser.
//
// Where SharedWorker exists, every tab of the app talks to one shared worker
// (live-worker.js) holding the browser's one multiplexed event stream; where
// it does not (Android Chrome), this tab runs the same LiveHub (stream.js)
// itself. Either way the tab says which conversations it watches and gets
// their events, the user's events and the connection's states.

import { LiveHub } from "./stream.js";

const HEARTBEAT_MS = 20000;

class Live {
  constructor() {
    this.conversations = new Map(); // id -> Set of handlers {onEvent, onState}
    this.userHandlers = new Set();
    this.states = new Map(); // "" (the stream) or a conversation id -> its last state
    const workerUrl = document.querySelector('meta[name="chat-live-worker"]')?.content;
    this.shared = Boolean(workerUrl && typeof SharedWorker === "function");
    if (this.shared) this.startShared(workerUrl);
    else this.startLocal();
    window.addEventListener("offline", () => this.post({ op: "offline" }));
    window.addEventListener("online", () => this.post({ op: "online" }));
    // A tab that goes away leaves the union at once (a crash: its lock, or its silence).
    window.addEventListener("pagehide", () => this.post({ op: "bye" }));
    window.addEventListener("pageshow", (event) => {
      if (event.persisted) this.post({ op: "watch", conversations: this.watched() }); // back from the bfcache
    });
  }

  startShared(url) {
    // The worker reads the event names from its name (events.js): one worker per set of names.
    const names = document.getElementById("chat-events").textContent;
    const worker = new SharedWorker(url, { type: "module", name: names });
    // A worker that cannot start (its script failed to load): this tab holds the stream itself.
    worker.addEventListener("error", () => {
      if (this.port !== worker.port) return;
      this.port = null;
      this.startLocal();
    });
    this.port = worker.port;
    this.port.addEventListener("message", ({ data }) => this.dispatch(data));
    this.port.start();
    const hello = () => this.port.postMessage({ op: "hello", conversations: this.watched(), lock: this.lock });
    if (navigator.locks) {
      // Not crypto.randomUUID(): it needs a secure context, and the app may be served over plain HTTP.
      this.lock = `chat-tab-${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
      // Held for this page's life: the worker is granted it when the tab closes or crashes.
      navigator.locks.request(this.lock, () => {
        hello();
        return new Promise(() => {});
      });
    } else {
      hello();
    }
    setInterval(() => this.post({ op: "ping" }), HEARTBEAT_MS);
  }

  startLocal() {
    this.hub = new LiveHub();
    this.client = { conversations: this.watched(), deliver: (message) => this.dispatch(message) };
    // After the page's modules ran: the conversation it opens is in the first connection's URL.
    setTimeout(() => this.hub.add(this.client), 0);
  }

  post(message) {
    if (this.port) {
      this.port.postMessage(message);
      return;
    }
    if (!this.hub) return;
    if (message.op === "watch") this.hub.watch(this.client, message.conversations);
    else if (message.op === "restart") this.hub.restartFresh(message.conversation);
    else if (message.op === "resume") this.hub.resumeFrom(message.conversation, message.eventId);
    else if (message.op === "offline") this.hub.offline();
    else if (message.op === "online") this.hub.online();
  }

  watched() {
    return [...this.conversations.keys()];
  }

  dispatch(message) {
    if (!message || typeof message !== "object") return;
    const key = message.conversation || "";
    if (message.kind === "state") {
      this.states.set(key, message.state);
      const handlers = key ? this.conversations.get(key) : this.userHandlers;
      for (const handler of handlers || []) handler.onState(message.state);
      return;
    }
    if (message.kind !== "event") return;
    const handlers = key ? this.conversations.get(key) : this.userHandlers;
    for (const handler of handlers || []) handler.onEvent(message.type, message.data);
  }

  /**
   * The user's own events (conversation.added/removed/updated, resync) and the stream's states.
   * @param {{onEvent: (type: string, data: object) => void, onState: (state: string) => void}} handler
   */
  user(handler) {
    this.userHandlers.add(handler);
    if (this.states.has("")) handler.onState(this.states.get(""));
  }

  /**
   * Watch conversation ``id``: its events and its states ("connecting", "open", "reconnecting", "offline",
   * "removed", "deleted", "gone", "signed-out", "waiting"). Returns a handle: ``restartFresh()``, ``close()``.
   */
  watch(id, handler) {
    if (!this.conversations.has(id)) this.conversations.set(id, new Set());
    this.conversations.get(id).add(handler);
    this.states.delete(id);
    this.post({ op: "watch", conversations: this.watched() });
    const live = this;
    return {
      /** Start this conversation over without its cursor: the server sends its streaming messages' snapshots. */
      restartFresh() {
        live.post({ op: "restart", conversation: id });
      },
      /** For the tests: resume from ``eventId`` (one the server's log no longer holds gets ``resync``). */
      resumeFrom(eventId) {
        live.post({ op: "resume", conversation: id, eventId });
      },
      close() {
        const handlers = live.conversations.get(id);
        if (!handlers || !handlers.delete(handler)) return;
        if (!handlers.size) {
          live.conversations.delete(id);
          live.states.delete(id);
          live.post({ op: "watch", conversations: live.watched() });
        }
        handler.onState("closed");
      },
    };
  }
}

export const live = new Live();
