// Event names and final types, from their one home: chat/events.py.
//
// The page carries them as JSON (`chat-events`, data the strict CSP allows,
// written by the server from chat/events.py); every other module imports them
// from here and never spells an event name itself, so a new event cannot be
// forgotten in one hand-copied list.

function read() {
  // The shared worker (live-worker.js) has no page: live.js gives it the same JSON as its name.
  if (typeof document === "undefined") return JSON.parse(self.name);
  const element = document.getElementById("chat-events");
  if (!element) throw new Error("The page has no #chat-events data (templates/chat/app.html).");
  return JSON.parse(element.textContent);
}

const names = read();

/** An event's name by its constant in chat/events.py: `EVENTS.MESSAGE_DELTA` is "message.delta".
 * An unknown constant throws rather than comparing equal to nothing. */
export const EVENTS = new Proxy(Object.freeze({ ...names.events }), {
  get(target, key) {
    if (typeof key === "string" && !(key in target)) throw new Error(`chat/events.py defines no event ${key}`);
    return target[key];
  },
});

/** Every event a client may receive: the stream subscribes to each. */
export const CLIENT_EVENTS = Object.freeze(Object.values(names.events));

/** The events that end a message, and the statuses a final message has. */
export const FINAL_TYPES = new Set(Object.values(names.final));
export const FINAL_STATUSES = new Set(Object.keys(names.final));

/** Why `access.revoked` ended a stream, by constant (`REVOKED.SIGNED_OUT` is "signed_out"). */
export const REVOKED = Object.freeze({ ...names.revoked });
