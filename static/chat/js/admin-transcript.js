// The admin's transcript (templates/admin/chat/conversation/change_form.html): each message's Markdown
// rendered by the app's own renderer, so it reads as the team saw it, and stays as inert (markdown.js).
//
// The server escaped the text into the element; it is read back with textContent, never as HTML.

import { renderMarkdown } from "./markdown.js";

for (const element of document.querySelectorAll(".message-content[data-markdown]")) {
  const source = element.textContent;
  // A person's message keeps its single line breaks, as the app shows it.
  element.replaceChildren(renderMarkdown(source, { breaks: element.dataset.markdown === "user" }));
  element.classList.remove("is-source");
}
