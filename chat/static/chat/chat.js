// The chat page's script: send a prompt, follow answers as Server-Sent Events, stop them.
// Model output only ever goes into text nodes, so it is never interpreted as HTML.
(() => {
  "use strict";
  const form = document.getElementById("prompt-form");
  const prompt = form.elements.prompt;
  const sendButton = form.querySelector(".send");
  const thread = document.getElementById("thread");
  const formError = form.querySelector(".form-error");
  const csrfToken = () => form.elements.csrfmiddlewaretoken.value;
  let sending = false; // a prompt is on its way to the server

  // One prompt at a time: the next one is sent once the answer before it has ended, so that the
  // model sees that answer too.
  const busy = () => sending || !!thread.querySelector("[data-stream-url]");
  const updateSendButton = () => { sendButton.disabled = busy(); };

  // As the server labels Message.Status; a complete answer needs none.
  const statusLabel = (status) => (status === "complete" ? "" : status.charAt(0).toUpperCase() + status.slice(1));

  // Keep the newest text in view, unless the reader has scrolled up to read something else.
  const nearBottom = () => thread.scrollHeight - thread.scrollTop - thread.clientHeight < 80;
  const scrollToEnd = () => { thread.scrollTop = thread.scrollHeight; };

  function follow(article) {
    if (article.dataset.following) return;
    article.dataset.following = "yes";
    const body = article.querySelector(".body");
    const meta = article.querySelector(".meta");
    const source = new EventSource(article.dataset.streamUrl);
    let text = null; // the text node deltas go to; none until the first delta of a connection
    // Each (re)connection starts again with the whole text so far.
    source.addEventListener("open", () => { text = null; });
    source.addEventListener("delta", (e) => {
      const following = nearBottom();
      if (text === null) {
        body.textContent = "";
        text = body.appendChild(document.createTextNode(""));
      }
      text.appendData(JSON.parse(e.data).text);
      if (following) scrollToEnd();
    });
    const finish = (data) => {
      source.close();
      if (text === null) body.textContent = "";
      article.classList.remove("streaming");
      article.classList.add(data.status);
      article.removeAttribute("aria-busy");
      delete article.dataset.streamUrl;
      meta.querySelector(".stop")?.remove();
      meta.querySelector(".status").textContent = statusLabel(data.status);
      updateSendButton();
    };
    source.addEventListener("done", (e) => {
      const data = JSON.parse(e.data);
      finish(data);
      const tokens = data.usage && data.usage.completion_tokens;
      if (tokens) meta.querySelector(".usage").textContent = `${tokens} tokens`;
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
        meta.querySelector(".error").textContent = "This answer can no longer be followed. Reload the page to see it.";
      }
    });
    updateSendButton();
  }

  thread.addEventListener("click", async (e) => {
    const button = e.target.closest(".stop");
    if (!button) return;
    button.disabled = true;
    const article = button.closest("article");
    // The answer's own stream reports the stop, with the partial text.
    const response = await fetch(article.dataset.stopUrl, { method: "POST", headers: { "X-CSRFToken": csrfToken() } })
      .catch(() => null);
    if (!response || !response.ok) button.disabled = false;
  });

  function showFormError(message) {
    formError.textContent = message;
    formError.hidden = false;
  }

  async function errorOf(response) {
    if (!response) return "The site could not be reached. Try again.";
    try {
      return (await response.json()).error;
    } catch {
      return `The site answered ${response.status}.`;
    }
  }

  function refreshSidebar() {
    // The conversation moved to the top of the list, or is new in it.
    htmx.ajax("GET", location.pathname, { target: "#conversations", select: "#conversations", swap: "outerHTML" });
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (busy()) return;
    sending = true;
    updateSendButton();
    formError.hidden = true;
    try {
      const response = await fetch(form.action, {
        method: "POST",
        body: new FormData(form),
        headers: { "X-CSRFToken": csrfToken() },
      }).catch(() => null);
      if (!response || !response.ok) {
        showFormError(await errorOf(response));
        return;
      }
      const url = response.headers.get("X-Conversation-Url");
      if (!url) {
        // Redirected to the sign-in page: the session ended.
        showFormError("You were signed out. Reload the page to sign in again.");
        return;
      }
      thread.querySelector(".empty")?.remove();
      thread.insertAdjacentHTML("beforeend", await response.text());
      prompt.value = "";
      fitPrompt();
      if (url !== location.pathname) {
        history.pushState({}, "", url);
        form.action = `${url}send`;
      }
      refreshSidebar();
      thread.querySelectorAll("[data-stream-url]").forEach(follow);
      scrollToEnd();
    } finally {
      sending = false;
      updateSendButton();
    }
  });

  prompt.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      if (!busy()) form.requestSubmit();
    }
  });

  // The prompt box grows with its text, up to a point, then scrolls.
  function fitPrompt() {
    prompt.style.height = "auto";
    const borders = prompt.offsetHeight - prompt.clientHeight;
    prompt.style.height = `${Math.min(prompt.scrollHeight + borders, 240)}px`;
  }
  prompt.addEventListener("input", fitPrompt);

  const temperature = form.elements.temperature;
  temperature.addEventListener("input", () => { temperature.nextElementSibling.value = temperature.value; });

  // The sidebar's htmx requests (rename, delete) say what went wrong beside the conversation.
  document.body.addEventListener("htmx:responseError", (e) => {
    const box = e.detail.elt.closest("li")?.querySelector(".form-error");
    if (!box) return;
    let message = `The site answered ${e.detail.xhr.status}.`;
    try { message = JSON.parse(e.detail.xhr.responseText).error || message; } catch { /* not JSON */ }
    box.textContent = message;
    box.hidden = false;
  });
  // The tab's title follows the current conversation's, once the site has named or renamed it.
  document.body.addEventListener("htmx:afterSettle", () => {
    const current = document.querySelector("#conversations li.current > a");
    if (current) document.title = `${current.textContent} · Local chat`;
  });
  // Only the first prompt of a new conversation pushes a history entry; going back reloads.
  window.addEventListener("popstate", () => location.reload());

  const backend = document.getElementById("backend");
  async function checkBackend() {
    try {
      const health = await (await fetch("/healthz")).json();
      backend.className = `backend ${health.vllm === "ok" ? "up" : "down"}`;
      backend.textContent = health.vllm === "ok" ? "model server up" : "model server down";
      backend.title = health.detail;
    } catch {
      backend.className = "backend down";
      backend.textContent = "site unreachable";
      backend.title = "The site did not answer.";
    }
  }
  checkBackend();
  setInterval(checkBackend, 15000);

  thread.querySelectorAll("[data-stream-url]").forEach(follow);
  // A search result opens the conversation at the message it found, not at the end.
  const found = location.hash.startsWith("#message-") && document.getElementById(location.hash.slice(1));
  if (found) found.scrollIntoView({ block: "center" });
  else scrollToEnd();
})();
