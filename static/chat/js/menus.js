// Menus made of <details class="menu-button">: they close on a click elsewhere and on Escape, as menus do.
//
// Every signed-in page loads it (the user menu); the chat page's main.js imports it too.

function closeOthers(event) {
  for (const menu of document.querySelectorAll("details.menu-button[open], details.regen-more[open]")) {
    if (!menu.contains(event.target)) menu.open = false;
  }
}

function escape(event) {
  if (event.key !== "Escape") return;
  const menu = event.target.closest && event.target.closest("details.menu-button[open]");
  if (!menu) return;
  event.preventDefault();
  menu.open = false;
  menu.querySelector("summary").focus();
}

// A module runs once per page, however many modules import it.
document.addEventListener("click", closeOthers);
document.addEventListener("keydown", escape);
