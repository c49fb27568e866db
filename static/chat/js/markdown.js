// Message text to safe DOM: markdown-it (raw HTML off, code highlighted by
// highlight.js, $math$ by KaTeX as MathML) then DOMPurify (allow-list).
//
// Whatever a model or a person writes stays inert: no raw HTML, no script or
// event handler, no style attribute, links only to http(s)/mailto and opening
// in a new tab without a referrer, and no image is ever loaded (an image
// becomes a link a person may follow), so rendering makes no request to any
// other host. KaTeX runs with trust off (\href, \url, \htmlStyle... render as
// red text) and writes MathML only: its HTML output needs style attributes,
// which the CSP (style-src 'self') drops; Chromium, Firefox and Safari draw
// MathML themselves.

import hljs from "../vendor/highlight.min.js";
import "../vendor/katex.min.js"; // a UMD build: as a module it sets self.katex
import MarkdownIt from "../vendor/markdown-it.min.js";
import createDOMPurify from "../vendor/purify.es.js";

const katex = self.katex;

// A highlighted block is a span per token to sanitise and insert (measured: about 11 ms per 1,000 characters of
// Python on a busy 2-core machine): past this a block stays plain, so one huge paste never blocks the page long.
const HIGHLIGHT_MAX_CHARS = 30_000;

/**
 * ``fn(key, flag)`` remembered for the last ``size`` keys: a streaming reply re-renders its tail every
 * frame, and the formulas and closed code blocks in it are the same each time.
 */
function remembered(fn, size = 200) {
  const cache = new Map();
  return (key, flag) => {
    const id = `${flag}\u0000${key}`;
    let value = cache.get(id);
    if (value === undefined) {
      value = fn(key, flag);
      if (cache.size >= size) cache.delete(cache.keys().next().value);
    }
    cache.delete(id); // most recently used last
    cache.set(id, value);
    return value;
  };
}

const highlight = remembered((code, lang) => {
  if (!lang || code.length > HIGHLIGHT_MAX_CHARS || !hljs.getLanguage(lang)) return "";
  return hljs.highlight(code, { language: lang, ignoreIllegals: true }).value;
}, 50);

const md = new MarkdownIt({ html: false, linkify: true, typographer: false, breaks: false, highlight });
// People type line breaks and mean them; a model's single newlines are Markdown's soft breaks.
const mdBreaks = new MarkdownIt({ html: false, linkify: true, typographer: false, breaks: true, highlight });
const escapeHtml = md.utils.escapeHtml;

/** KaTeX's MathML for ``tex``; a formula it cannot read is shown as its source. */
const renderMath = remembered((tex, displayMode) => {
  let html;
  try {
    html = katex.renderToString(tex, {
      displayMode,
      output: "mathml",
      throwOnError: false,
      trust: false,
      strict: "ignore",
      maxSize: 50,
      maxExpand: 1000,
    });
  } catch {
    html = `<code class="katex-error">${escapeHtml(tex)}</code>`;
  }
  // A few commands (\colorbox, an error's colour) still write style="": dropped here, as the CSP would, before
  // DOMPurify's parse reports it as a violation. KaTeX escapes every quote in its output, so this only meets attributes.
  html = html.replace(/ style="[^"]*"/g, "");
  return displayMode ? `<div class="math-block">${html}</div>` : `<span class="math-inline">${html}</span>`;
}, 500);

/**
 * The $…$ / $$…$$ rules (Pandoc's): an opening $ has no space after it, a
 * closing $ no space before it and no digit after it, so "$5 and $10" stays
 * text. Code spans and fences are parsed before math can start in them.
 */
function mathPlugin(parser) {
  parser.inline.ruler.after("escape", "math_inline", (state, silent) => {
    const { src, pos, posMax } = state;
    if (src.charCodeAt(pos) !== 0x24 /* $ */) return false;
    const display = src.charCodeAt(pos + 1) === 0x24;
    const open = display ? 2 : 1;
    if (!display && /\s/.test(src[pos + 1] || " ")) return false;
    let end = -1;
    for (let i = pos + open; i < posMax; i++) {
      const char = src[i];
      if (char === "\\") {
        i++;
        continue;
      }
      if (char === "`") return false; // TeX has no use for it; a code span starts here ("$5 and `$x`")
      if (char !== "$") continue;
      if (display) {
        if (src[i + 1] === "$") end = i;
      } else if (!/\s/.test(src[i - 1]) && !/\d/.test(src[i + 1] || "")) {
        end = i;
      }
      if (end !== -1) break;
    }
    if (end === -1 || end === pos + open) return false;
    if (!silent) {
      const token = state.push("math_inline", "math", 0);
      token.content = src.slice(pos + open, end);
      token.markup = display ? "$$" : "$";
    }
    state.pos = end + open;
    return true;
  });

  // $$ on its own line opens a display formula, closed by a line ending in $$.
  parser.block.ruler.before(
    "fence",
    "math_block",
    (state, startLine, endLine, silent) => {
      const start = state.bMarks[startLine] + state.tShift[startLine];
      const firstLine = state.src.slice(start, state.eMarks[startLine]);
      if (state.sCount[startLine] - state.blkIndent >= 4 || !firstLine.startsWith("$$")) return false;
      let body = firstLine.slice(2);
      let line = startLine;
      let closed = body.trimEnd().endsWith("$$");
      if (closed) body = body.trimEnd().slice(0, -2);
      while (!closed && ++line < endLine) {
        const text = state.src.slice(state.bMarks[line] + state.tShift[line], state.eMarks[line]);
        if (state.sCount[line] < state.blkIndent) return false; // left its container
        closed = text.trimEnd().endsWith("$$");
        body += `\n${closed ? text.trimEnd().slice(0, -2) : text}`;
      }
      if (!closed || !body.trim()) return false; // still being typed (or streamed): text until it closes
      if (silent) return true;
      state.line = line + 1;
      const token = state.push("math_block", "math", 0);
      token.block = true;
      token.content = body.trim();
      token.markup = "$$";
      token.map = [startLine, state.line];
      return true;
    },
    { alt: ["paragraph", "reference", "blockquote", "list"] },
  );

  parser.renderer.rules.math_inline = (tokens, idx) => renderMath(tokens[idx].content, tokens[idx].markup === "$$");
  parser.renderer.rules.math_block = (tokens, idx) => `${renderMath(tokens[idx].content, true)}\n`;
}

/**
 * A fence still open (a reply streaming its code, or a paste cut short) runs
 * to the end of the text: it is shown plain and highlighted once it closes,
 * so a growing block is not re-highlighted at every frame.
 */
function openFences(state) {
  let lines = null;
  for (const token of state.tokens) {
    if (token.type !== "fence" || !token.map) continue;
    lines ??= state.src.split("\n");
    const last = (lines[token.map[1] - 1] || "").replace(/^(?:\s*>)*\s*/, "");
    const marker = /^(`{3,}|~{3,})\s*$/.exec(last);
    const closed =
      token.map[1] - 1 > token.map[0] && marker && marker[1][0] === token.markup[0] && marker[1].length >= token.markup.length;
    if (!closed) token.meta = { ...token.meta, open: true };
  }
}

/** This app's rules, the same for both parsers. */
function appRules(parser) {
  // Images: never an <img>. An http(s) image becomes a labelled link; anything else plain text.
  parser.renderer.rules.image = (tokens, idx, options, env, self) => {
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
  parser.core.ruler.push("alignment_classes", (state) => {
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
  parser.renderer.rules.table_open = () => '<div class="table-wrap"><table>\n';
  parser.renderer.rules.table_close = () => "</table></div>\n";

  // The stock fence renderer, told not to highlight a block still open.
  parser.core.ruler.after("block", "open_fences", openFences);
  const fence = parser.renderer.rules.fence;
  parser.renderer.rules.fence = (tokens, idx, options, env, self) =>
    fence(tokens, idx, tokens[idx].meta?.open ? { ...options, highlight: null } : options, env, self);
}

for (const parser of [md, mdBreaks]) {
  appRules(parser);
  mathPlugin(parser);
}

const purify = createDOMPurify(window);

const ALLOWED_TAGS = [
  "a", "p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "li", "blockquote", "pre", "code",
  "em", "strong", "del", "s", "sup", "sub", "table", "thead", "tbody", "tr", "th", "td", "span", "div",
  // What KaTeX's MathML uses (never annotation-xml, mglyph or malignmark: the namespace-confusion tags).
  "math", "semantics", "annotation", "mrow", "mi", "mn", "mo", "ms", "mtext", "mspace", "msup", "msub", "msubsup",
  "mfrac", "msqrt", "mroot", "mover", "munder", "munderover", "mtable", "mtr", "mtd", "mstyle", "mpadded",
  "mphantom", "menclose",
];
// MathML presentation attributes, kept on MathML elements only.
const MATHML_ATTR = [
  "display", "encoding", "mathvariant", "mathcolor", "mathbackground", "fence", "stretchy", "separator", "accent",
  "accentunder", "lspace", "rspace", "minsize", "maxsize", "largeop", "movablelimits", "symmetric", "width",
  "height", "depth", "voffset", "linethickness", "scriptlevel", "displaystyle", "notation", "rowspacing",
  "columnspacing", "columnalign", "rowalign", "columnlines", "rowlines",
];
const MATHML_NS = "http://www.w3.org/1998/Math/MathML";
const ALLOWED_ATTR = ["href", "title", "class", "start", ...MATHML_ATTR];
const SAFE_CLASS =
  /^(?:language-[\w+#.-]{1,40}|align-(?:left|right|center)|image-link|table-wrap|hljs-[\w-]{1,40}|[a-z]{1,20}_{1,2}|katex|katex-error|math-inline|math-block)$/;
export const SAFE_URL = /^(?:https?:|mailto:)/i;

purify.addHook("afterSanitizeAttributes", (node) => {
  if (node.namespaceURI !== MATHML_NS && node.removeAttribute) {
    for (const name of MATHML_ATTR) node.removeAttribute(name);
  }
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
  } else if (node.removeAttribute) {
    node.removeAttribute("href"); // MathML 3 had links on any element; only <a> may link
  }
});

const PURIFY_CONFIG = {
  ALLOWED_TAGS,
  ALLOWED_ATTR,
  ALLOWED_URI_REGEXP: SAFE_URL,
  // DOMPurify tests every other attribute's value against ALLOWED_URI_REGEXP: these are never URLs.
  ADD_URI_SAFE_ATTR: ["start", ...MATHML_ATTR],
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

/**
 * Markdown text as a sanitized DocumentFragment, ready to insert: closed code
 * fences highlighted, math as MathML. ``breaks``: a newline is a line break
 * (what a person typed), not a soft wrap.
 */
export function renderMarkdown(text, { breaks = false } = {}) {
  const fragment = purify.sanitize((breaks ? mdBreaks : md).render(text || ""), PURIFY_CONFIG);
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
