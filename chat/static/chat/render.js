// Answers as people read them: the model's markdown rendered in the browser, by one code path
// whether the answer is streaming, reloaded, or followed from another tab.
//
// Safe by construction. markdown-it parses with raw HTML off, so any tag the model writes is
// shown as text; links pass only for http, https and mailto and open in a new tab without a
// referrer; a markdown image becomes a link, so nothing an answer names is ever fetched; KaTeX runs
// untrusted (no \href, \url, \includegraphics). What the renderers made then goes through
// DOMPurify, with the same link and image rules, before it reaches the page.
//
// Cheap as it streams. The text is cut into chunks at blank lines that end a top-level block
// (never inside a fenced code block or a display formula, never between the items of a list). A
// complete chunk is rendered once; only the open last chunk is rendered again, at most once per
// animation frame, so the cost of a delta grows with the open chunk, not with the answer. Where
// the cuts fall depends on the text alone: an answer rendered as it streamed and the same text
// rendered at once after a reload are the same DOM.
(() => {
  "use strict";

  const SAFE_URL = /^(?:https?:|mailto:)/i;
  const { escapeHtml } = window.markdownit().utils;

  // The raw markdown of each rendered answer, for its Copy button.
  const rawText = new WeakMap();

  function highlight(code, language) {
    if (!language || !window.hljs.getLanguage(language)) return ""; // markdown-it escapes it
    return window.hljs.highlight(code, { language, ignoreIllegals: true }).value;
  }

  const markdown = window.markdownit({ html: false, linkify: false, typographer: false, highlight });
  markdown.validateLink = (url) => SAFE_URL.test(url.trim());
  markdown.use(window.markdownitTaskLists);
  markdown.use(mathRules);

  // A code block has a header naming its language, with a button that copies the code.
  const codeHead = (language) =>
    `<div class="code-head"><span class="language">${escapeHtml(language)}</span>` +
    `<button type="button" class="copy-code" title="${escapeHtml(gettext("Copy the code"))}">${escapeHtml(gettext("Copy"))}</button></div>`;
  const { fence, code_block: codeBlock } = markdown.renderer.rules;
  markdown.renderer.rules.fence = (tokens, i, ...rest) => {
    const language = tokens[i].info.trim().split(/\s+/)[0];
    return `<div class="code-block">${codeHead(language)}${fence(tokens, i, ...rest)}</div>`;
  };
  markdown.renderer.rules.code_block = (...args) => `<div class="code-block">${codeHead("")}${codeBlock(...args)}</div>`;

  // An image would be fetched by the reader's browser, and its address can carry the conversation
  // to whoever serves it: show it as a link to follow by choice instead.
  markdown.renderer.rules.image = (tokens, i, options, env, self) => {
    const src = tokens[i].attrGet("src");
    const alt = self.renderInlineAsText(tokens[i].children, options, env);
    return `<a href="${escapeHtml(src)}" class="image-link" title="${escapeHtml(interpolate(gettext("Image, not loaded: %s"), [src]))}">` +
      `${escapeHtml(interpolate(gettext("Image: %s"), [alt || src]))}</a>`;
  };

  // Math as Qwen2 writes it: $…$ and \(…\) inline, $$…$$ and \[…\] displayed. KaTeX shows a
  // formula it cannot parse as its source, in red; the markdown around it never eats its
  // backslashes, underscores or asterisks.
  function mathRules(md) {
    const DELIMITERS = [
      ["\\(", "\\)", false],
      ["\\[", "\\]", true],
      ["$$", "$$", true],
      ["$", "$", false],
    ];
    const SPACE = /\s/;
    const DIGIT = /\d/;

    // Where `close` ends the formula that starts at `from`, or -1. A single dollar follows
    // Pandoc's rule so that prices are not formulas: "$5 and $10" has none.
    function closing(src, open, close, from, max) {
      if (open !== "$") {
        const at = src.indexOf(close, from);
        return at !== -1 && at + close.length <= max ? at : -1;
      }
      if (from >= max || SPACE.test(src[from])) return -1;
      for (let at = src.indexOf("$", from); at !== -1 && at < max; at = src.indexOf("$", at + 1)) {
        if (at > from && !SPACE.test(src[at - 1]) && src[at - 1] !== "\\" && !DIGIT.test(src[at + 1] ?? "")) return at;
      }
      return -1;
    }

    md.inline.ruler.before("escape", "math_inline", (state, silent) => {
      const { src, pos, posMax } = state;
      const delimiter = DELIMITERS.find(([open]) => src.startsWith(open, pos));
      if (!delimiter) return false;
      const [open, close, display] = delimiter;
      const end = closing(src, open, close, pos + open.length, posMax);
      if (end === -1 || end === pos + open.length) {
        if (open[0] !== "\\") return false; // a lone dollar is just a dollar
        // Not a formula after all: keep the backslash, which markdown would take as an escape.
        if (!silent) state.pending += open;
        state.pos += open.length;
        return true;
      }
      if (!silent) {
        const token = state.push("math", "", 0);
        token.content = src.slice(pos + open.length, end);
        token.meta = { display };
      }
      state.pos = end + close.length;
      return true;
    });

    // A displayed formula that starts a line may run over several, blank ones included.
    const BLOCK_OPEN = /^(\$\$|\\\[)/;
    md.block.ruler.before("fence", "math_block", (state, startLine, endLine, silent) => {
      if (state.sCount[startLine] - state.blkIndent >= 4) return false;
      const lineText = (line) => state.src.slice(state.bMarks[line] + state.tShift[line], state.eMarks[line]);
      const first = lineText(startLine);
      const open = BLOCK_OPEN.exec(first)?.[1];
      if (!open) return false;
      const close = open === "$$" ? "$$" : "\\]";
      let line = startLine;
      let text = first.slice(open.length);
      let content = "";
      for (;;) {
        const at = text.indexOf(close);
        if (at !== -1) {
          if (text.slice(at + close.length).trim()) return false; // text after it: an inline formula
          content += text.slice(0, at);
          break;
        }
        content += `${text}\n`;
        line += 1;
        if (line >= endLine) return false; // not closed (yet)
        text = lineText(line);
      }
      if (!content.trim()) return false;
      if (silent) return true;
      const token = state.push("math", "", 0);
      token.block = true;
      token.content = content;
      token.meta = { display: true };
      token.map = [startLine, line + 1];
      state.line = line + 1;
      return true;
    }, { alt: ["paragraph", "reference", "blockquote", "list"] });

    md.renderer.rules.math = (tokens, i) => {
      const { content, meta, block } = tokens[i];
      let html;
      try {
        html = window.katex.renderToString(content, {
          displayMode: meta.display, throwOnError: false, trust: false, strict: "ignore", maxSize: 50, maxExpand: 1000,
        });
      } catch {
        html = `<code class="math-source">${escapeHtml(content)}</code>`;
      }
      return block ? `<div class="math-block">${html}</div>\n` : html;
    };
  }

  // DOMPurify, on its own instance so that its hooks are this page's alone.
  const purifier = window.DOMPurify(window);
  // DOMPurify's own URI rule stays (it also vets every attribute value not known to be safe);
  // the hook below narrows the addresses further.
  const PURIFY = {
    RETURN_DOM_FRAGMENT: true,
    // KaTeX's MathML keeps the formula's source in an annotation: text only, for screen readers and copying.
    ADD_TAGS: ["semantics", "annotation"],
    // Whatever could fetch something or run something, should a renderer ever produce it.
    FORBID_TAGS: ["img", "image", "picture", "source", "video", "audio", "track", "iframe", "object", "embed",
      "link", "style", "use", "feImage", "form", "meta", "base"],
    FORBID_ATTR: ["srcset", "ping", "background", "poster"],
  };
  const ADDRESSES = ["href", "xlink:href", "src", "action", "formaction"];
  purifier.addHook("afterSanitizeAttributes", (node) => {
    for (const name of ADDRESSES) {
      if (node.hasAttribute(name) && !SAFE_URL.test(node.getAttribute(name).trim())) node.removeAttribute(name);
    }
    if (node.hasAttribute("style") && /url\s*\(|image-set|@import/i.test(node.getAttribute("style"))) {
      node.removeAttribute("style");
    }
    if (node.tagName === "A") {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer nofollow");
    }
  });

  const renderChunk = (text) => purifier.sanitize(markdown.render(text), PURIFY);

  // Where the text can be cut: before a line that starts a new top-level block after a blank line,
  // outside a fenced code block or a displayed formula, and not before the next item of a list.
  // Only complete lines are read, once each.
  const FENCE = /^ {0,3}(`{3,}|~{3,})(.*)$/;
  const FORMULA = /^ {0,3}(\$\$|\\\[)(.*)$/;
  const LIST_ITEM = /^ {0,3}(?:[-+*]|\d{1,9}[.)])(?:[ \t]|$)/;
  const BLANK = /^[ \t\r]*$/;

  class Cutter {
    scanned = 0; // where the first line not read yet starts
    fence = null; // the open fence's marker, as in "```"
    fenceStart = 0; // where the line that opened it starts
    formulaEnd = null; // what closes the open displayed formula
    afterBlank = false;
    chunkHasList = false;

    // The cuts that the complete lines of `text` not read yet make.
    cuts(text) {
      const found = [];
      for (let end = text.indexOf("\n", this.scanned); end !== -1; end = text.indexOf("\n", this.scanned)) {
        if (this.isCut(text.slice(this.scanned, end))) found.push(this.scanned);
        this.scanned = end + 1;
      }
      return found;
    }

    isCut(line) {
      if (this.fence) {
        const closing = FENCE.exec(line);
        if (closing && closing[1][0] === this.fence[0] && closing[1].length >= this.fence.length && !closing[2].trim()) {
          this.fence = null;
        }
        return false;
      }
      if (this.formulaEnd) {
        if (line.includes(this.formulaEnd)) this.formulaEnd = null;
        return false;
      }
      if (BLANK.test(line)) {
        this.afterBlank = true;
        return false;
      }
      const listItem = LIST_ITEM.test(line);
      const cut = this.afterBlank && !/^[ \t]/.test(line) && !(listItem && this.chunkHasList);
      this.afterBlank = false;
      if (cut) this.chunkHasList = false;
      if (listItem) this.chunkHasList = true;
      const fence = FENCE.exec(line);
      const formula = FORMULA.exec(line);
      if (fence && !(fence[1][0] === "`" && fence[2].includes("`"))) {
        this.fence = fence[1];
        this.fenceStart = this.scanned;
      } else if (formula) {
        const end = formula[1] === "$$" ? "$$" : "\\]";
        if (!formula[2].includes(end)) this.formulaEnd = end;
      }
      return cut;
    }
  }

  // One answer's body, rendered from its text as the text grows.
  //
  // Many complete chunks at once (a reload, a reconnection, a tab that was in the background) are
  // rendered in slices of at most SLICE_MS, each its own task, so that the page stays responsive:
  // the answer then fills in from the top within a few frames.
  const SLICE_MS = 20;
  const BATCH = 16; // complete chunks sanitised together, between two looks at the clock
  // A fenced code block still open and longer than this is not rendered whole on every frame:
  // its code is highlighted in pieces, each once, and only its last lines again (see showOpenCode).
  const LONG_CODE = 4000;
  const CODE_TAIL = 1500;

  class RenderedAnswer {
    constructor(body, around = (change) => change()) {
      this.body = body;
      this.around = around; // wraps each change of the page (the chat keeps the end in view)
      this.restart();
      body.classList.add("markdown");
    }

    // From nothing again: a reconnected stream sends the whole text so far.
    restart() {
      clearTimeout(this.nextSlice);
      this.text = "";
      this.cutter = new Cutter();
      this.cuts = []; // cuts found but not rendered yet
      this.openStart = 0; // where the open chunk starts in the text
      this.openBlock = null; // the element that shows it
      this.shown = null; // the open chunk's text as last rendered
      this.openCode = null; // a long open code block, shown piece by piece
      this.clear = true; // the body still shows what was there before
      rawText.set(this.body, "");
    }

    append(delta) {
      this.text += delta;
      rawText.set(this.body, this.text);
      if (!this.held) this.frame ||= requestAnimationFrame(() => this.render());
    }

    // Keep the text on screen as it is (what comes meanwhile is kept, and shown on release): the
    // chat holds it while a Stop under it is pressed, so that it does not move from under the pointer.
    hold() {
      this.held = true;
    }

    release() {
      this.held = false;
      this.frame ||= requestAnimationFrame(() => this.render());
    }

    // The text is complete: render what is left now, rather than at the next frame.
    finish() {
      this.render(true);
    }

    render(final = false) {
      cancelAnimationFrame(this.frame);
      clearTimeout(this.nextSlice);
      this.frame = 0;
      if (this.held && !final) return;
      // A reconnected stream that has sent nothing yet: keep showing the text it will send again.
      if (this.clear && !this.text && !final) return;
      const started = performance.now();
      this.around(() => {
        if (this.clear) {
          this.body.replaceChildren();
          this.clear = false;
        }
        this.cuts.push(...this.cutter.cuts(this.text));
        let done = 0;
        while (done < this.cuts.length) {
          const batch = this.cuts.slice(done, done + BATCH);
          this.showComplete(batch.map((cut) => {
            const chunk = this.text.slice(this.openStart, cut);
            this.openStart = cut;
            return chunk;
          }));
          done += batch.length;
          if (done < this.cuts.length && performance.now() - started > SLICE_MS) {
            this.cuts = this.cuts.slice(done);
            this.nextSlice = setTimeout(() => this.render(final), 0);
            return;
          }
        }
        this.cuts = [];
        const open = this.text.slice(this.openStart);
        const { fence, fenceStart } = this.cutter;
        if (!final && fence && fenceStart >= this.openStart && this.text.length - fenceStart > LONG_CODE) {
          this.showOpenCode(fenceStart - this.openStart);
        } else if (open || this.openBlock) {
          this.show(open);
        }
      });
    }

    // Chunks that are complete: the first may be the one shown open until now.
    showComplete(chunks) {
      if (this.openBlock) {
        this.show(chunks.shift());
        this.openBlock = null;
      }
      if (!chunks.length) return;
      const html = chunks.map((chunk) => `<div class="block">${markdown.render(chunk)}</div>`).join("");
      this.body.append(purifier.sanitize(html, PURIFY));
    }

    show(chunk) {
      if (this.openBlock && chunk === this.shown) return;
      if (!this.openBlock) {
        this.openBlock = document.createElement("div");
        this.openBlock.className = "block";
        this.body.append(this.openBlock);
      }
      this.openBlock.replaceChildren(renderChunk(chunk));
      this.shown = chunk;
      this.openCode = null;
    }

    // The open chunk ends in a long code block still being written (`fenceAt` into the chunk).
    // What comes before the block is rendered once; the code is highlighted in pieces, each once,
    // and only its last CODE_TAIL characters or so again on each frame. A piece cut mid-construct
    // (a long string, a comment) may be coloured wrongly until the chunk is complete, when it is
    // rendered whole like any other.
    showOpenCode(fenceAt) {
      const chunk = this.text.slice(this.openStart);
      const fenceLineEnd = chunk.indexOf("\n", fenceAt) + 1;
      const code = chunk.slice(fenceLineEnd);
      if (this.openCode?.fenceAt !== fenceAt) {
        const language = chunk.slice(fenceAt, fenceLineEnd).trim().replace(/^[`~]+/, "").trim().split(/\s+/)[0];
        this.show(chunk.slice(0, fenceAt));
        const block = purifier.sanitize(`<div class="code-block">${codeHead(language)}<pre><code` +
          `${language ? ` class="language-${escapeHtml(language)}"` : ""}></code></pre></div>`, PURIFY);
        const element = block.querySelector("code");
        this.openBlock.append(block);
        this.openCode = { fenceAt, language, element, tail: document.createElement("span"), frozen: 0 };
        this.openCode.tail.className = "piece";
        element.append(this.openCode.tail);
        this.shown = null; // the whole chunk is rendered again once complete
      }
      const open = this.openCode;
      if (code.length - open.frozen > 2 * CODE_TAIL) {
        const end = code.lastIndexOf("\n", code.length - CODE_TAIL) + 1;
        if (end > open.frozen) {
          // Each piece a block of its own, so that the browser lays out only the new ones.
          const piece = document.createElement("span");
          piece.className = "piece";
          piece.append(this.highlightedCode(code.slice(open.frozen, end), open.language));
          open.tail.before(piece);
          open.frozen = end;
        }
      }
      open.tail.replaceChildren(this.highlightedCode(code.slice(open.frozen), open.language));
    }

    highlightedCode(code, language) {
      const html = highlight(code, language);
      return html ? purifier.sanitize(html, PURIFY) : document.createTextNode(code);
    }
  }

  const copyLabels = new WeakMap();  // each button's own label, put back after "Copied"

  async function copy(text, button) {
    let copied = true;
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      // No Clipboard API outside a secure context (the site served over plain http to another
      // machine): the older way still works from a click.
      const scratch = document.createElement("textarea");
      scratch.value = text;
      scratch.setAttribute("readonly", "");
      scratch.style.position = "fixed";
      scratch.style.opacity = "0";
      document.body.append(scratch);
      scratch.select();
      copied = document.execCommand("copy");
      scratch.remove();
    }
    if (!copyLabels.has(button)) copyLabels.set(button, button.textContent);
    if (!copied) {
      // Both ways refused (the browser's clipboard blocked): say so until the next click, never
      // "Copied" for a clipboard that holds something else.
      button.textContent = gettext("Could not copy");
      return;
    }
    button.textContent = gettext("Copied");
    setTimeout(() => { button.textContent = copyLabels.get(button); }, 1500);
  }

  document.addEventListener("click", (e) => {
    const codeButton = e.target.closest(".copy-code");
    if (codeButton) {
      copy(codeButton.closest(".code-block").querySelector("code").textContent, codeButton);
      return;
    }
    const answerButton = e.target.closest(".copy-answer");
    if (answerButton) {
      const body = answerButton.closest("article").querySelector(".body");
      copy(rawText.get(body) ?? body.textContent, answerButton);
    }
  });

  window.ChatAnswer = {
    // Render every answer under `root` not rendered yet, from the text the page carries. The last
    // ones come first, as they are the ones in view; past SLICE_MS, each of the others waits for
    // a task of its own, so that a long conversation opens without freezing the page.
    showAll(root, around) {
      const waiting = [...root.querySelectorAll("article.assistant .body:not(.markdown)")].reverse();
      const show = (body) => {
        if (body.classList.contains("markdown")) return; // followed meanwhile
        const answer = new RenderedAnswer(body, around);
        answer.append(body.textContent);
        answer.finish();
      };
      const started = performance.now();
      while (waiting.length && performance.now() - started < SLICE_MS) show(waiting.shift());
      const next = () => {
        if (!waiting.length) return;
        show(waiting.shift());
        setTimeout(next, 0);
      };
      setTimeout(next, 0);
    },
    // An answer that is still being written: append() each delta, finish() at the end.
    follow(body, around) {
      return new RenderedAnswer(body, around);
    },
  };
})();
