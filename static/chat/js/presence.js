// Who else is looking at the open conversation: a row of initials in its header, names on hover
// and for screen readers. The person themself is not shown; more than MAX_SHOWN end in "+N".

const MAX_SHOWN = 5;
const HUES = 8; // .hue-0 … .hue-7 in app.css (no inline style under the CSP)

function hueOf(name) {
  let hash = 0;
  for (const char of name) hash = (hash * 31 + char.codePointAt(0)) >>> 0;
  return hash % HUES;
}

/** The initial a person is shown by: the first letter of the username, upper case. */
export function initialOf(name) {
  return (Array.from(name)[0] || "?").toUpperCase();
}

/**
 * Draw ``viewers`` (usernames; the current user left out) into ``container``, the header's presence row:
 * a visually hidden sentence for screen readers, and the initials (hidden from them) with names on hover.
 */
export function renderPresence(container, viewers, currentUser) {
  const others = [...new Set(viewers)].filter((name) => name !== currentUser).sort();
  container.hidden = others.length === 0;
  const sentence = `Also here: ${others.join(", ")}`;
  container.title = sentence;
  const said = document.createElement("span");
  said.className = "visually-hidden";
  said.textContent = sentence;
  const list = document.createElement("ul");
  list.className = "presence-list";
  list.setAttribute("aria-hidden", "true");
  const shown = others.slice(0, MAX_SHOWN);
  for (const name of shown) {
    const item = document.createElement("li");
    item.className = `presence-person hue-${hueOf(name)}`;
    item.title = name;
    item.dataset.username = name;
    item.textContent = initialOf(name);
    list.append(item);
  }
  if (others.length > shown.length) {
    const rest = others.slice(shown.length);
    const more = document.createElement("li");
    more.className = "presence-person presence-more";
    more.title = rest.join(", ");
    more.textContent = `+${rest.length}`;
    list.append(more);
  }
  container.replaceChildren(said, list);
}
