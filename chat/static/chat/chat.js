// The chat page's script. htmx sends a prompt and swaps in the site's answer to it (the new turn,
// a fresh prompt form, the list of conversations), stops an answer, regenerates one, sends an
// edited prompt, shows another version, and saves the settings; this script follows each answer as
// Server-Sent Events and says what went wrong with a request.
// Prompts only ever go into text nodes; answers are rendered by render.js (ChatAnswer), safely.

// Deferred like htmx and after it, so this runs before htmx reads the page. No eval: the
// Content-Security-Policy would refuse it anyway. No history snapshots: they would copy
// conversations into sessionStorage and freeze a streaming answer; going back reloads instead.
Object.assign(htmx.config, {
  allowEval: false,
  allowScriptTags: false,
  historyCacheSize: 0,
  refreshOnHistoryMiss: true,
});

(() => {
  "use strict";
  const thread = document.getElementById("thread");
  // Each sent prompt brings a fresh form from the site, so the form is looked up when needed.
  const promptForm = () => document.getElementById("prompt-form");

  // One prompt at a time: the next one is sent once the answer before it has ended, so that the
  // model sees that answer too. (While a prompt is on its way, htmx disables Send itself.)
  const answering = () => !!thread.querySelector("[data-stream-url]");
  const updateSendButton = () => { promptForm().querySelector(".send").disabled = answering(); };

  // As the server labels Message.Status (Message.STATUS_LABELS); a complete answer needs none.
  const STATUS_LABELS = {
    streaming: pgettext("answer", "Streaming"), stopped: pgettext("answer", "Stopped"),
    error: pgettext("answer", "Error"), interrupted: pgettext("answer", "Interrupted"),
  };
  const statusLabel = (status) => (status === "complete" ? "" : STATUS_LABELS[status] ?? status);

  // Keep the newest text in view, unless the reader has scrolled up to read something else.
  const nearBottom = () => thread.scrollHeight - thread.scrollTop - thread.clientHeight < 80;
  const scrollToEnd = () => { thread.scrollTop = thread.scrollHeight; };
  const keepEndInView = (change) => {
    const following = nearBottom();
    change();
    if (following) scrollToEnd();
  };

  function follow(article) {
    if (article.dataset.following) return;
    article.dataset.following = "yes";
    const body = article.querySelector(".body");
    const meta = article.querySelector(".meta");
    const source = new EventSource(article.dataset.streamUrl);
    const answer = ChatAnswer.follow(body, keepEndInView);
    // Each (re)connection starts again with the whole text so far.
    source.addEventListener("open", () => answer.restart());
    source.addEventListener("delta", (e) => answer.append(JSON.parse(e.data).text));
    // A click is a press and a release on the same element. A line the text wraps between the two
    // would move Stop from under the pointer: the release would land on the text, and the click, on
    // what holds both, would be lost. So a press on Stop holds the text until the press ends.
    meta.querySelector(".stop")?.addEventListener("pointerdown", () => {
      answer.hold();
      const release = () => {
        answer.release();
        removeEventListener("pointerup", release, true);
        removeEventListener("pointercancel", release, true);
      };
      addEventListener("pointerup", release, true);
      addEventListener("pointercancel", release, true);
    });
    const finish = (data) => {
      source.close();
      answer.finish();
      article.classList.remove("streaming");
      article.classList.add(data.status);
      article.removeAttribute("aria-busy");
      delete article.dataset.streamUrl;
      meta.querySelector(".stop")?.remove();
      meta.querySelector(".status").textContent = statusLabel(data.status);
      updateSendButton();
      if (data.message_id) {
        // Until the site's footer replaces this one, its versions, Regenerate and Edit stay hidden
        // (chat.css): one pressed now would be detached from the page by the time its answer came,
        // and htmx would then look for the list of conversations the answer updates in vain.
        article.classList.add("ending");
        showEnded(article);
      }
    };
    source.addEventListener("done", (e) => {
      const data = JSON.parse(e.data);
      finish(data);
      const tokens = data.usage && data.usage.completion_tokens;
      if (tokens) meta.querySelector(".usage").textContent = interpolate(ngettext("%s token", "%s tokens", tokens), [tokens]);
      // The conversation's sidebar item, if it waits for the model's name for it, now asks (titles.py).
      document.body.dispatchEvent(new CustomEvent("chat:answered"));
    });
    source.addEventListener("error", (e) => {
      if (e.data) {
        const data = JSON.parse(e.data);
        finish(data);
        meta.querySelector(".error").textContent = data.message;
      } else if (source.readyState === EventSource.CLOSED) {
        // Not a dropped connection, which EventSource retries by itself: the site refused the
        // stream (the conversation is gone, or the session ended).
        finish({ status: "interrupted" });
        meta.querySelector(".error").textContent = gettext("This answer can no longer be followed. Reload the page to see it.");
      }
    });
    updateSendButton();
  }

  // An answer has ended: its footer as the site now has it, with the figures (model, time to first
  // token, speed, tokens) the end brought, and Regenerate. One rendering, the site's, live and after
  // a reload alike.
  async function showEnded(article) {
    const following = nearBottom();
    try {
      await htmx.ajax("GET", article.dataset.footerUrl, { target: article.querySelector(".meta"), swap: "outerHTML" });
    } finally {
      article.classList.remove("ending");
    }
    if (following) scrollToEnd();
  }

  // Edit under a prompt opens a box with its text, to change and send as a new branch; Cancel
  // closes it.
  thread.addEventListener("click", (e) => {
    const button = e.target.closest(".edit, .cancel-edit");
    if (!button) return;
    const meta = button.closest(".meta");
    const box = meta.querySelector(".edit-box");
    box.hidden = !box.hidden;
    meta.querySelector(".edit").setAttribute("aria-expanded", String(!box.hidden));
    if (!box.hidden) box.querySelector("textarea").focus();
  });

  // A new chat's settings have no conversation to be saved in yet: they go with its first prompt
  // (the prompt form includes them), so Enter in one of them does not send the form by itself.
  document.addEventListener("submit", (e) => {
    if (e.target.id === "settings" && !e.target.hasAttribute("hx-post")) e.preventDefault();
  });

  // A sent prompt's turn has been added to the thread, or the thread shows another branch: follow
  // its answer.
  document.body.addEventListener("htmx:afterSwap", (e) => {
    if (e.target !== thread) return;
    thread.querySelector(".empty")?.remove();
    ChatAnswer.showAll(thread, keepEndInView);
    thread.querySelectorAll("[data-stream-url]").forEach(follow);
    scrollToEnd();
  });

  // What went wrong with a request htmx made, said beside the form that made it (the prompt form,
  // or a conversation's rename and delete).
  function showError(elt, message) {
    const box = errorBoxFor(elt);
    if (!box) return;
    box.textContent = message;
    box.hidden = false;
  }
  // A conversation's own menu, or the form that was sent (the prompt, the settings, an edited
  // prompt); a button under a message (regenerate, its versions, stop) has its say by the prompt.
  function errorBoxFor(elt) {
    const place = elt.closest("#conversations li") ?? elt.closest("form, .edit-box, .feedback") ?? promptForm();
    return place.querySelector(".form-error");
  }
  // The page's own 400s are form errors (JSON), said beside the form. In DEBUG, django-htmx's
  // script (listening on the document) would show them as the whole page, as it does Django's
  // error pages: they stop here on their way up. htmx still reports them as errors, below.
  document.body.addEventListener("htmx:beforeOnLoad", (e) => {
    const xhr = e.detail.xhr;
    if (xhr.status === 400 && xhr.getResponseHeader("Content-Type")?.startsWith("application/json")) e.stopPropagation();
  });
  document.body.addEventListener("htmx:responseError", (e) => {
    let message = interpolate(gettext("The site answered %s."), [e.detail.xhr.status]);
    try { message = JSON.parse(e.detail.xhr.responseText).error || message; } catch { /* not JSON */ }
    showError(e.detail.elt, message);
  });
  document.body.addEventListener("htmx:sendError", (e) => {
    showError(e.detail.elt, gettext("The site could not be reached. Try again."));
  });
  // An answer from another address than the one asked: the site sent the request to the sign-in
  // page, as the session has ended. That page is not to be swapped into this one.
  document.body.addEventListener("htmx:beforeSwap", (e) => {
    const { finalRequestPath, responsePath } = e.detail.pathInfo;
    if (!responsePath || responsePath === finalRequestPath) return;
    e.detail.shouldSwap = false;
    // Here `elt` is where the answer would go; the request came from `requestConfig.elt`.
    showError(e.detail.requestConfig.elt, gettext("You were signed out. Reload the page to sign in again."));
  });

  // Enter in the prompt box sends, but not the Enter that ends a Hangul syllable (enter_sends.js).
  enterSends(answering);

  // The prompt box grows with its text, up to a point, then scrolls.
  function fitPrompt(prompt) {
    prompt.style.height = "auto";
    const borders = prompt.offsetHeight - prompt.clientHeight;
    prompt.style.height = `${Math.min(prompt.scrollHeight + borders, 240)}px`;
  }
  document.addEventListener("input", (e) => {
    if (e.target.id === "prompt") fitPrompt(e.target);
    if (e.target.name === "temperature") e.target.nextElementSibling.value = e.target.value;
  });

  // The tab's title follows the current conversation's, once the site has named or renamed it.
  document.body.addEventListener("htmx:afterSettle", () => {
    const current = document.querySelector("#conversations li.current > a");
    if (current) document.title = `${current.textContent} · ${gettext("Local chat")}`;
  });

  const backend = document.getElementById("backend");
  async function checkBackend() {
    try {
      const health = await (await fetch("/healthz")).json();
      backend.className = `backend ${health.vllm === "ok" ? "up" : "down"}`;
      backend.textContent = health.vllm === "ok" ? gettext("model server up") : gettext("model server down");
      backend.title = health.detail;
    } catch {
      backend.className = "backend down";
      backend.textContent = gettext("site unreachable");
      backend.title = gettext("The site did not answer.");
    }
  }
  checkBackend();
  setInterval(checkBackend, 15000);

  ChatAnswer.showAll(thread, keepEndInView);
  thread.querySelectorAll("[data-stream-url]").forEach(follow);
  // A search result opens the conversation at the message it found, not at the end.
  const found = location.hash.startsWith("#message-") && document.getElementById(location.hash.slice(1));
  if (found) found.scrollIntoView({ block: "center" });
  else scrollToEnd();
})();
