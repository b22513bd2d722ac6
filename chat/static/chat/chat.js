// The chat page's script: send a prompt, follow answers as Server-Sent Events, stop them.
// Model output only ever goes into textContent, so it is never interpreted as HTML.
(() => {
  "use strict";
  const form = document.getElementById("prompt-form");
  const thread = document.getElementById("thread");
  const formError = form.querySelector(".form-error");
  const csrfToken = () => form.querySelector("[name=csrfmiddlewaretoken]").value;

  function follow(article) {
    if (article.dataset.following) return;
    article.dataset.following = "yes";
    const body = article.querySelector(".body");
    const meta = article.querySelector(".meta");
    const source = new EventSource(article.dataset.streamUrl);
    let fresh = true; // each (re)connection starts again from the whole text so far
    source.addEventListener("open", () => { fresh = true; });
    source.addEventListener("delta", (e) => {
      const { text } = JSON.parse(e.data);
      if (fresh) { body.textContent = ""; fresh = false; }
      body.textContent += text;
      thread.scrollTop = thread.scrollHeight;
    });
    const finish = (data) => {
      source.close();
      if (fresh) body.textContent = "";
      article.classList.remove("streaming");
      article.classList.add(data.status);
      delete article.dataset.streamUrl;
      meta.querySelector(".stop")?.remove();
      meta.querySelector(".status").textContent = data.status === "complete" ? "" : data.status;
      setSending(false);
    };
    source.addEventListener("done", (e) => {
      const data = JSON.parse(e.data);
      finish(data);
      const tokens = data.usage && data.usage.completion_tokens;
      if (tokens) meta.querySelector(".usage").textContent = `${tokens} tokens`;
    });
    source.addEventListener("error", (e) => {
      if (!e.data) return; // a dropped connection: EventSource reconnects by itself
      const data = JSON.parse(e.data);
      finish(data);
      meta.querySelector(".error").textContent = data.message;
    });
    setSending(true);
  }

  function setSending(busy) {
    form.querySelector(".send").disabled = busy && !!thread.querySelector("[data-stream-url]");
  }

  thread.addEventListener("click", async (e) => {
    const button = e.target.closest(".stop");
    if (!button) return;
    button.disabled = true;
    const article = button.closest("article");
    await fetch(article.dataset.stopUrl, { method: "POST", headers: { "X-CSRFToken": csrfToken() } });
  });

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    formError.hidden = true;
    const response = await fetch(form.action, {
      method: "POST",
      body: new FormData(form),
      headers: { "X-CSRFToken": csrfToken() },
    }).catch(() => null);
    if (!response || !response.ok) {
      let message = "The site could not be reached. Try again.";
      if (response) {
        try { message = (await response.json()).error; } catch { message = `The site answered ${response.status}.`; }
      }
      formError.textContent = message;
      formError.hidden = false;
      return;
    }
    thread.querySelector(".empty")?.remove();
    thread.insertAdjacentHTML("beforeend", await response.text());
    form.prompt.value = "";
    const url = response.headers.get("X-Conversation-Url");
    if (url && url !== location.pathname) {
      history.pushState({}, "", url);
      form.action = `${url}send`;
      htmx.ajax("GET", url, { target: "#conversations", select: "#conversations", swap: "outerHTML" });
    }
    thread.querySelectorAll("[data-stream-url]").forEach(follow);
  });

  form.prompt.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      form.requestSubmit();
    }
  });

  const temperature = form.querySelector("[name=temperature]");
  temperature.addEventListener("input", () => { temperature.nextElementSibling.value = temperature.value; });

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
    }
  }
  checkBackend();
  setInterval(checkBackend, 15000);

  thread.querySelectorAll("[data-stream-url]").forEach(follow);
  thread.scrollTop = thread.scrollHeight;
})();
