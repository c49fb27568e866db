// Model output to safe DOM: markdown-it (raw HTML off) then DOMPurify (allow-list).
//
// Whatever a model writes stays inert: no raw HTML, no script or event
// handler, links only to http(s)/mailto and opening in a new tab without a
// referrer, and no image is ever loaded (an image becomes a link a person may
// follow), so rendering makes no request to any other host.

import MarkdownIt from "../vendor/markdown-it.min.js";
import createDOMPurify from "../vendor/purify.es.js";

const md = new MarkdownIt({ html: false, linkify: true, typographer: false, breaks: false });
const escapeHtml = md.utils.escapeHtml;

// Images: never an <img>. An http(s) image becomes a labelled link; anything else plain text.
md.renderer.rules.image = (tokens, idx, options, env, self) => {
  const token = tokens[idx];
  const src = token.attrGet("src") || "";
  const alt = self.renderInlineAsText(token.children || [], options, env).trim();
  const label = `Image: ${alt || src}`;
  if (/^https?:\/\//i.test(src)) {
    return `<a href="${escapeHtml(src)}" class="image-link">${escapeHtml(label)}</a>`;
  }
  return `<span class="image-link">${escapeHtml(label)}</span>`;
};

// Table cell alignment comes as style="text-align:…", which the CSP (style-src 'self') ignores: use classes.
md.core.ruler.push("alignment_classes", (state) => {
  const walk = (tokens) => {
    for (const token of tokens) {
      if ((token.type === "th_open" || token.type === "td_open") && token.attrs) {
        const style = token.attrGet("style") || "";
        token.attrs = token.attrs.filter(([name]) => name !== "style");
        const match = /text-align:\s*(left|right|center)/.exec(style);
        if (match) token.attrJoin("class", `align-${match[1]}`);
      }
      if (token.children) walk(token.children);
    }
  };
  walk(state.tokens);
});

// Wide tables scroll on their own instead of widening the page.
md.renderer.rules.table_open = () => '<div class="table-wrap"><table>\n';
md.renderer.rules.table_close = () => "</table></div>\n";

const purify = createDOMPurify(window);

const ALLOWED_TAGS = [
  "a", "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "li", "blockquote", "pre", "code",
  "em", "strong", "del", "s", "sup", "sub", "table", "thead", "tbody", "tr", "th", "td", "span", "div",
];
const ALLOWED_ATTR = ["href", "title", "class", "start"];
const SAFE_CLASS = /^(?:language-[\w+#.-]{1,40}|align-(?:left|right|center)|image-link|table-wrap)$/;
export const SAFE_URL = /^(?:https?:|mailto:)/i;

purify.addHook("afterSanitizeAttributes", (node) => {
  if (node.hasAttribute && node.hasAttribute("class")) {
    const kept = node.getAttribute("class").split(/\s+/).filter((name) => SAFE_CLASS.test(name));
    if (kept.length) node.setAttribute("class", kept.join(" "));
    else node.removeAttribute("class");
  }
  if (node.nodeName === "A") {
    const href = node.getAttribute("href");
    if (href && SAFE_URL.test(href.trim())) {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer nofollow");
    } else {
      node.removeAttribute("href");
    }
  }
});

const PURIFY_CONFIG = {
  ALLOWED_TAGS,
  ALLOWED_ATTR,
  ALLOWED_URI_REGEXP: SAFE_URL,
  ALLOW_DATA_ATTR: false,
  ALLOW_ARIA_ATTR: false,
  RETURN_DOM_FRAGMENT: true,
};

function decorateCodeBlocks(fragment) {
  for (const pre of fragment.querySelectorAll("pre")) {
    const code = pre.querySelector("code");
    const wrapper = document.createElement("div");
    wrapper.className = "codeblock";
    const bar = document.createElement("div");
    bar.className = "codeblock-bar";
    const language = document.createElement("span");
    language.className = "codeblock-language";
    const match = code && /(?:^|\s)language-([\w+#.-]+)/.exec(code.className);
    language.textContent = match ? match[1] : "text";
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "copy-code";
    copy.textContent = "Copy";
    copy.setAttribute("aria-label", `Copy ${language.textContent} code`);
    bar.append(language, copy);
    pre.replaceWith(wrapper);
    wrapper.append(bar, pre);
  }
}

/** Markdown text as a sanitized DocumentFragment, ready to insert. */
export function renderMarkdown(text) {
  const fragment = purify.sanitize(md.render(text || ""), PURIFY_CONFIG);
  decorateCodeBlocks(fragment);
  return fragment;
}

/** Copy ``text`` to the clipboard; falls back to a selection where the Clipboard API is missing (plain http). */
export async function copyText(text, sourceElement) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  const selection = window.getSelection();
  const range = document.createRange();
  range.selectNodeContents(sourceElement);
  selection.removeAllRanges();
  selection.addRange(range);
  const ok = document.execCommand("copy");
  selection.removeAllRanges();
  if (!ok) throw new Error("copy refused");
}
