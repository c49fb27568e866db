// The JSON API over fetch: CSRF header on unsafe methods, contract errors as ApiError.

export class ApiError extends Error {
  constructor(status, code, message, retryAfter = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }

  /** The error as a sentence a person can act on, with the wait for a 429 unless the message gives one. */
  describe() {
    let text = this.message;
    if (this.status === 429 && !SAYS_WHEN.test(text)) {
      const wait = retryAfterSeconds(this.retryAfter);
      text += wait === null ? " Try again later." : ` Try again in ${formatWait(wait)}.`;
    }
    return text;
  }
}

// A message that already says when ("Try again in 7 s", "resets at midnight UTC, in 5 h 16 min").
const SAYS_WHEN = /try again|\bin \d+ (s|min|h|d)\b|\bresets\b/i;

/** A wait as a person reads it: "7 s", "3 min", "5 h 16 min" (chat/selectors.py _wait says the same). */
export function formatWait(seconds) {
  if (seconds < 90) return `${seconds} s`;
  const minutes = Math.ceil(seconds / 60);
  const hours = Math.floor(minutes / 60);
  if (hours >= 24) return `${Math.floor(hours / 24)} d ${hours % 24} h`;
  return hours ? `${hours} h ${minutes % 60} min` : `${minutes} min`;
}

/** Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); null if absent. */
export function retryAfterSeconds(value) {
  if (value === null || value === undefined || value === "") return null;
  if (/^\d+$/.test(value.trim())) return Number(value.trim());
  const when = Date.parse(value);
  if (Number.isNaN(when)) return null;
  return Math.max(0, Math.ceil((when - Date.now()) / 1000));
}

export function csrfToken() {
  for (const part of document.cookie.split(";")) {
    const [name, ...rest] = part.trim().split("=");
    if (name === "csrftoken") return decodeURIComponent(rest.join("="));
  }
  return "";
}

const FALLBACK_MESSAGES = {
  401: "Your session has ended: log in again.",
  403: "You are not allowed to do this.",
  404: "This conversation does not exist or is no longer shared with you.",
  409: "A reply is already being generated in this conversation. Wait for it or stop it first.",
  413: "That is too long for the server.",
  429: "Too many requests.",
};

/** Call the API; resolves to the JSON body (null for 204), rejects with ApiError. */
export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const init = { method, headers, credentials: "same-origin" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  if (method !== "GET" && method !== "HEAD") headers["X-CSRFToken"] = csrfToken();
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, "network_error", "The server could not be reached. Check your connection and try again.");
  }
  if (response.status === 204) return null;
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const error = (data && data.error) || {};
    const message = error.message || FALLBACK_MESSAGES[response.status] || `The server answered ${response.status}.`;
    const apiError = new ApiError(response.status, error.code || `http_${response.status}`, message, response.headers.get("Retry-After"));
    if (response.status === 401) window.dispatchEvent(new CustomEvent("chat:unauthenticated"));
    throw apiError;
  }
  return data;
}

export const urls = {
  models: () => "/api/models/",
  conversations: () => "/api/conversations/",
  search: (q) => `/api/conversations/?q=${encodeURIComponent(q)}`,
  exportAs: (id, format) => `/api/conversations/${encodeURIComponent(id)}/export/?format=${encodeURIComponent(format)}`,
  conversation: (id) => `/api/conversations/${encodeURIComponent(id)}/`,
  members: (id) => `/api/conversations/${encodeURIComponent(id)}/members/`,
  member: (id, username) => `/api/conversations/${encodeURIComponent(id)}/members/${encodeURIComponent(username)}/`,
  messages: (id) => `/api/conversations/${encodeURIComponent(id)}/messages/`,
  regenerate: (id, mid) => `/api/conversations/${encodeURIComponent(id)}/messages/${encodeURIComponent(mid)}/regenerate/`,
  stop: (id, mid) => `/api/conversations/${encodeURIComponent(id)}/messages/${encodeURIComponent(mid)}/stop/`,
  events: (id) => `/api/conversations/${encodeURIComponent(id)}/events/`,
  userEvents: () => "/api/events/",
  users: (prefix) => `/api/users/?q=${encodeURIComponent(prefix)}`,
  page: (id) => (id ? `/c/${encodeURIComponent(id)}/` : "/"),
};
