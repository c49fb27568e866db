// The browser's one event stream: the user's events and the open conversations' on one EventSource.
//
// ``LiveHub`` holds ONE multiplexed EventSource, `GET /api/events/?conversations=a,b`,
// for the union of the conversations its clients watch. It runs in the shared
// worker (live-worker.js), whose clients are the browser's tabs, or in a tab
// itself where SharedWorker does not exist (live.js): one code path for the
// protocol either way.
//
// - An event's id is a cursor vector `user,a,b` (one component per log, in
//   the URL's order). The hub keeps a cursor per log, so a new URL (the union
//   changed) resumes every log with ?last_event_id=; a conversation without a
//   cursor gets an empty component and its snapshots.
// - When the union changes, the new EventSource opens before the old one
//   closes (never more than two). Both may deliver the same logged event for
//   a moment: an event at or behind its log's cursor is a repeat and dropped.
// - Events with a ``conversation`` key go to the clients watching it; the
//   others (the user's) go to every client.
// - `access.revoked` with a conversation key: that conversation left the
//   stream (removed, deleted), the others go on; without: signed out, the
//   stream ended for good.

import { urls } from "./api.js";
import { CLIENT_EVENTS, EVENTS, REVOKED } from "./events.js";

// Every client event but access.revoked, which ends a stream or a conversation's part of it (below).
const HANDED_ON = CLIENT_EVENTS.filter((type) => type !== EVENTS.ACCESS_REVOKED);
// Not logged events: a snapshot or a resync repeats a cursor on purpose, presence has none of its own.
const UNLOGGED = new Set([EVENTS.MESSAGE_SNAPSHOT, EVENTS.RESYNC, EVENTS.PRESENCE]);

// The server takes at most this many conversations on one stream; more wait for a tab to close.
export const MAX_CONVERSATIONS = 16;
const MAX_BACKOFF_MS = 30000;

const REVOKED_STATES = { [REVOKED.SIGNED_OUT]: "signed-out", [REVOKED.REMOVED]: "removed", [REVOKED.DELETED]: "deleted" };

/** ``"<ms>-<n>"`` ids compared as numbers; -1, 0, 1. */
function compareIds(a, b) {
  const [am, an] = a.split("-").map(Number);
  const [bm, bn] = b.split("-").map(Number);
  return am - bm || an - bn;
}

/** The status of a GET, or 0 when the server could not be reached (no api.js: it needs a window). */
async function statusOf(url) {
  try {
    const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    return response.status;
  } catch {
    return 0;
  }
}

export class LiveHub {
  /**
   * Clients are ``{conversations: string[], deliver(message)}``; a message is
   * ``{kind: "event", type, data, conversation}`` or ``{kind: "state", state, conversation}``
   * (``conversation`` null: the user's part, for every client). States: "connecting", "open", "reconnecting",
   * "offline", "signed-out" for the stream; a conversation's also "removed", "deleted", "gone" (404) and
   * "waiting" (over MAX_CONVERSATIONS).
   */
  constructor() {
    this.clients = new Set();
    this.cursors = new Map(); // "" for the user's log, else a conversation id -> the last event id seen
    this.current = null; // {source, conversations, routes} that is open or opening
    this.pending = null; // the next one, opening, while ``current`` still delivers
    this.state = "connecting"; // the stream's
    this.ended = new Map(); // conversation -> "removed" | "deleted" | "gone"
    this.presence = new Map(); // conversation -> its last presence event, for a client that comes later
    this.failures = 0;
    this.retryTimer = null;
    this.connects = 0;
    this.closed = false; // signed out: nothing reconnects
    this.sent = new Map(); // client -> Map(conversation|"" -> state last delivered)
  }

  // --- clients ------------------------------------------------------------------

  /** A new client, watching ``client.conversations`` already. */
  add(client) {
    if (this.closed) {
      // A page served after a sign-out belongs to a new session: start over.
      this.closed = false;
      this.state = "connecting";
    }
    this.clients.add(client);
    this.sent.set(client, new Map());
    client.conversations = [...new Set(client.conversations)];
    for (const id of client.conversations) this.welcome(client, id);
    this.update();
  }

  remove(client) {
    this.clients.delete(client);
    this.sent.delete(client);
    this.update();
  }

  /** ``client`` now watches ``conversations``: the union may change, and so the connection. */
  watch(client, conversations) {
    const before = new Set(client.conversations);
    client.conversations = [...new Set(conversations)];
    for (const id of client.conversations) if (!before.has(id)) this.welcome(client, id);
    this.update();
  }

  /** ``client`` starts watching ``id``: it is told its state, and who is there if that is known. */
  welcome(client, id) {
    this.sent.get(client)?.delete(id);
    // Watching again what had ended: try again (the server answers 404 or access.revoked once more).
    this.ended.delete(id);
    const presence = this.presence.get(id);
    if (presence && this.routes(id)) client.deliver(presence);
  }

  /** The union of what the clients watch, in the order first watched (a stable URL resumes by itself). */
  union() {
    const ids = [];
    for (const client of this.clients) {
      for (const id of client.conversations) if (!ids.includes(id) && !this.ended.has(id)) ids.push(id);
    }
    return ids.slice(0, MAX_CONVERSATIONS);
  }

  /** Whether the open (or opening) connection carries conversation ``id``. */
  routes(id) {
    return Boolean(this.current && this.current.routes.has(id));
  }

  // --- the connection -----------------------------------------------------------------

  update() {
    if (this.closed) return this.publishStates();
    const wanted = this.union();
    // A conversation no tab watches any more is forgotten: watched again, it starts from its snapshots.
    for (const id of [...this.cursors.keys(), ...this.presence.keys()]) {
      if (id && !wanted.includes(id)) this.forget(id);
    }
    const target = this.pending || this.current;
    const same = target && target.conversations.length === wanted.length && target.conversations.every((id, i) => id === wanted[i]);
    if (!same && this.clients.size && this.state !== "offline") this.connect(wanted);
    else if (!this.clients.size) this.disconnect();
    this.publishStates();
  }

  /** For the tests: resume ``conversation`` from ``eventId`` (one the log no longer holds gets ``resync``). */
  resumeFrom(conversation, eventId) {
    this.cursors.set(conversation, eventId);
    if (this.clients.size && this.state !== "offline" && !this.closed) this.connect(this.union());
  }

  /** Start over without the cursor of ``conversation``: the server sends its streaming messages' snapshots. */
  restartFresh(conversation) {
    this.cursors.delete(conversation);
    if (this.current) this.current.routes.delete(conversation);
    if (this.pending) this.pending.routes.delete(conversation);
    if (this.clients.size && this.state !== "offline" && !this.closed) this.connect(this.union(), { fresh: conversation });
  }

  connect(conversations, { fresh = null } = {}) {
    clearTimeout(this.retryTimer);
    const list = (values) => values.map(encodeURIComponent).join(","); // commas as they are: readable in logs
    const params = [];
    if (conversations.length) params.push(`conversations=${list(conversations)}`);
    const vector = ["", ...conversations].map((id) => (id === fresh ? "" : this.cursors.get(id) || ""));
    if (vector.some(Boolean)) params.push(`last_event_id=${list(vector)}`);
    const source = new EventSource(urls.userEvents() + (params.length ? `?${params.join("&")}` : ""));
    const connection = { source, conversations, routes: new Set(conversations) };
    this.connects += 1;
    // An open connection delivers until the next one is open; one that is not open yet is simply replaced.
    if (this.current && this.current.source.readyState === EventSource.OPEN) {
      if (this.pending) this.pending.source.close();
      this.pending = connection;
    } else {
      if (this.current) this.current.source.close();
      if (this.pending) this.pending.source.close();
      this.pending = null;
      this.current = connection;
      if (this.state === "open") this.state = "reconnecting";
    }
    source.onopen = () => this.opened(connection);
    source.onerror = () => this.failed(connection);
    source.addEventListener(EVENTS.ACCESS_REVOKED, (event) => this.revoked(connection, event));
    for (const type of HANDED_ON) source.addEventListener(type, (event) => this.received(connection, type, event));
  }

  live(connection) {
    return connection === this.current || connection === this.pending;
  }

  opened(connection) {
    if (!this.live(connection)) return;
    if (connection === this.pending) {
      if (this.current) this.current.source.close();
      this.current = connection;
      this.pending = null;
    }
    this.failures = 0;
    this.state = "open";
    this.publishStates();
  }

  failed(connection) {
    if (!this.live(connection) || this.closed) return;
    if (connection === this.pending) {
      // The new connection failed; the old one still delivers: try the new one again from scratch.
      connection.source.close();
      this.pending = null;
      this.checkThenRetry(connection.conversations);
      return;
    }
    if (connection.source.readyState === EventSource.CONNECTING) {
      // The browser retries by itself (after the server's retry: 2000), sending Last-Event-ID.
      this.state = "reconnecting";
      this.publishStates();
      return;
    }
    // The browser gave up (an HTTP error): tell a conversation gone (404) from a passing failure.
    connection.source.close();
    this.current = this.pending;
    this.pending = null;
    this.state = "reconnecting";
    this.publishStates();
    this.checkThenRetry(connection.conversations);
  }

  async checkThenRetry(conversations) {
    const statuses = await Promise.all(conversations.map((id) => statusOf(urls.conversation(id))));
    if (this.closed) return;
    if (statuses.includes(401) || (!conversations.length && (await statusOf(urls.conversations())) === 401)) {
      this.signedOut();
      return;
    }
    conversations.forEach((id, i) => {
      if (statuses[i] === 404) this.end(id, "gone");
    });
    this.failures += 1;
    // Refused twice though every conversation is there: perhaps a cursor the server will not take. Start over.
    if (this.failures >= 2 && this.cursors.size) this.startOver();
    const delay = Math.min(MAX_BACKOFF_MS, 1000 * 2 ** Math.min(this.failures, 5));
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.update(), delay);
    this.publishStates();
  }

  /** The log ``event`` belongs to and its place in it, from the connection's cursor vector. */
  position(connection, event, conversation) {
    const parts = (event.lastEventId || "").split(",");
    const index = conversation ? connection.conversations.indexOf(conversation) + 1 : 0;
    return { parts, id: (conversation && index === 0) || index >= parts.length ? "" : parts[index] };
  }

  /** Move every log's cursor to ``parts`` where it is ahead (the vector of ``connection``). */
  advance(connection, parts) {
    ["", ...connection.conversations].forEach((log, i) => {
      const id = parts[i];
      if (!id || (log && !connection.routes.has(log))) return;
      const known = this.cursors.get(log);
      if (!known || compareIds(id, known) > 0) this.cursors.set(log, id);
    });
  }

  received(connection, type, event) {
    if (!this.live(connection)) return;
    let data;
    try {
      data = JSON.parse(event.data);
    } catch {
      return;
    }
    const conversation = conversationOf(data);
    if (conversation && !connection.routes.has(conversation)) return;
    const { parts, id } = this.position(connection, event, conversation);
    const known = this.cursors.get(conversation || "");
    if (!UNLOGGED.has(type) && id && known && compareIds(id, known) <= 0) return; // a repeat
    this.advance(connection, parts);
    const message = { kind: "event", type, data, conversation };
    if (type === EVENTS.PRESENCE && conversation) this.presence.set(conversation, message);
    for (const client of this.clients) {
      if (!conversation || client.conversations.includes(conversation)) client.deliver(message);
    }
  }

  revoked(connection, event) {
    if (!this.live(connection)) return;
    let data = {};
    try {
      data = JSON.parse(event.data) || {};
    } catch {
      // an unreadable reason still ends the stream
    }
    if (typeof data.conversation === "string") {
      // That conversation left the stream; the others go on.
      if (!connection.routes.has(data.conversation)) return;
      this.end(data.conversation, REVOKED_STATES[data.reason] || "gone");
      this.publishStates();
      return;
    }
    this.signedOut();
  }

  /** ``conversation`` is over for this browser: its clients say why; the next connection leaves it out. */
  end(conversation, state) {
    this.ended.set(conversation, state);
    this.forget(conversation);
  }

  /** Forget every cursor; the clients reload what they show (a ``resync`` for each part) once reconnected. */
  startOver() {
    this.cursors.clear();
    const resync = (conversation) => ({ kind: "event", type: EVENTS.RESYNC, data: conversation ? { conversation } : {}, conversation });
    for (const client of this.clients) {
      for (const conversation of [null, ...client.conversations]) client.deliver(resync(conversation));
    }
  }

  /** Drop what is known of ``conversation`` (its cursor, its presence); the connections deliver it no more. */
  forget(conversation) {
    this.cursors.delete(conversation);
    this.presence.delete(conversation);
    for (const connection of [this.current, this.pending]) if (connection) connection.routes.delete(conversation);
  }

  signedOut() {
    this.closed = true;
    clearTimeout(this.retryTimer);
    this.disconnect();
    this.state = "signed-out";
    this.publishStates();
  }

  disconnect() {
    for (const connection of [this.current, this.pending]) if (connection) connection.source.close();
    this.current = this.pending = null;
  }

  /** The network went away (a tab or the worker says so): stop, and wait for ``online()``. */
  offline() {
    if (this.closed || this.state === "offline") return;
    clearTimeout(this.retryTimer);
    this.disconnect();
    this.state = "offline";
    this.publishStates();
  }

  online() {
    if (this.closed || this.state !== "offline") return;
    this.state = "reconnecting";
    this.failures = 0;
    this.update();
  }

  // --- states -------------------------------------------------------------------------

  /** What a client should show for ``conversation`` (null: the stream itself). */
  stateOf(conversation) {
    if (this.state === "signed-out") return this.state;
    if (conversation && this.ended.has(conversation)) return this.ended.get(conversation);
    if (this.state !== "open") return this.state;
    if (!conversation) return "open";
    if (this.routes(conversation) && this.current.source.readyState === EventSource.OPEN) return "open";
    return this.union().includes(conversation) ? "connecting" : "waiting";
  }

  /** Tell each client every state that changed for it since it was last told. */
  publishStates() {
    for (const client of this.clients) {
      const sent = this.sent.get(client);
      for (const conversation of [null, ...client.conversations]) {
        const state = this.stateOf(conversation);
        if (sent.get(conversation || "") === state) continue;
        sent.set(conversation || "", state);
        client.deliver({ kind: "state", state, conversation });
      }
    }
  }
}

/** The conversation an event is about (its data's ``conversation`` key: a message's own), or null for the user's. */
function conversationOf(data) {
  if (!data || typeof data !== "object") return null;
  if (typeof data.conversation === "string") return data.conversation;
  return data.message && typeof data.message.conversation === "string" ? data.message.conversation : null;
}
