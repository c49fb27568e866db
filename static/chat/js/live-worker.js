// The shared worker: one event stream for all the browser's tabs of this app (live.js starts it).
//
// Each tab is a client of one LiveHub (stream.js) over its MessagePort. A tab
// leaves the union of watched conversations when it says goodbye (pagehide),
// when the Web Lock it holds for its life is released (closed or crashed,
// noticed at once), or when its heartbeat stops for HEARTBEAT_TIMEOUT_MS
// (where Web Locks do not exist; background tabs tick once a minute).
// The event names come in the worker's name (live.js), as events.js reads them.

import { LiveHub } from "./stream.js";

const HEARTBEAT_TIMEOUT_MS = 150000;

const hub = new LiveHub();

function leave(tab) {
  if (!hub.clients.has(tab)) return;
  clearTimeout(tab.silence);
  hub.remove(tab);
}

function heard(tab) {
  clearTimeout(tab.silence);
  tab.silence = setTimeout(() => leave(tab), HEARTBEAT_TIMEOUT_MS);
}

self.addEventListener("connect", (connectEvent) => {
  const port = connectEvent.ports[0];
  const tab = {
    conversations: [],
    silence: null,
    deliver: (message) => port.postMessage(message),
  };
  port.addEventListener("message", ({ data }) => {
    if (!data || typeof data !== "object") return;
    heard(tab);
    if (data.op === "hello" || data.op === "watch") {
      if (hub.clients.has(tab)) {
        hub.watch(tab, data.conversations || []);
      } else {
        tab.conversations = data.conversations || [];
        hub.add(tab);
      }
      // Held by the tab until it closes or crashes: when it is granted here, the tab is gone.
      if (data.lock && self.navigator.locks) self.navigator.locks.request(data.lock, () => leave(tab));
    } else if (data.op === "restart") {
      hub.restartFresh(data.conversation);
    } else if (data.op === "resume") {
      hub.resumeFrom(data.conversation, data.eventId);
    } else if (data.op === "offline") {
      hub.offline();
    } else if (data.op === "online") {
      hub.online();
    } else if (data.op === "bye") {
      leave(tab);
    }
  });
  port.start();
});

self.addEventListener("offline", () => hub.offline());
self.addEventListener("online", () => hub.online());

// For the tests and the bench (a console in chrome://inspect): how many event streams this browser holds.
self.liveHub = hub;
