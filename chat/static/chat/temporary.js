// A temporary chat (chat/temporary.py): this page keeps the conversation, in this variable only,
// and sends it whole with each prompt; the site streams the answer back (the chat page's events:
// delta, then done or error) and stores nothing. Prompts go into text nodes; answers are rendered
// by render.js (ChatAnswer), as on the chat page.
(() => {
  "use strict";
  const form = document.getElementById("prompt-form");
  const thread = document.getElementById("thread");
  const prompt = document.getElementById("prompt");
  const send = form.querySelector(".send");
  const errorBox = form.querySelector(".form-error");
  const history = [];
  let answering = false;

  const nearBottom = () => thread.scrollHeight - thread.scrollTop - thread.clientHeight < 80;
  const keepEndInView = (change) => {
    const following = nearBottom();
    change();
    if (following) thread.scrollTop = thread.scrollHeight;
  };
  const showError = (message) => { errorBox.textContent = message; errorBox.hidden = !message; };

  function article(role, text) {
    const node = document.createElement("article");
    node.className = `message ${role}`;
    const body = document.createElement("div");
    body.className = "body";
    body.textContent = text;
    node.append(body);
    thread.append(node);
    return node;
  }

  // Server-sent events from a fetch's body: [name, data] for each, as the bytes come.
  async function* events(response) {
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) name = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (data.length) yield [name, JSON.parse(data.join("\n"))];
      }
    }
  }

  async function ask(text) {
    const body = new URLSearchParams({ prompt: text, history: JSON.stringify(history) });
    const response = await fetch(form.action, {
      method: "POST",
      body,
      headers: { "X-CSRFToken": form.elements.csrfmiddlewaretoken.value },
      credentials: "same-origin",
    });
    if (!response.ok || !response.headers.get("Content-Type")?.startsWith("text/event-stream")) {
      let message = interpolate(gettext("The site answered %s."), [response.status]);
      try { message = (await response.json()).error || message; } catch { /* not JSON */ }
      showError(message);
      return;
    }
    prompt.value = "";
    thread.querySelector(".empty")?.remove();
    keepEndInView(() => article("user", text));
    const reply = article("assistant", "");
    reply.classList.add("streaming");
    reply.setAttribute("aria-busy", "true");
    const answer = ChatAnswer.follow(reply.querySelector(".body"), keepEndInView);
    let whole = "";
    let ended = { status: "interrupted", message: gettext("The answer was cut off. It was not saved.") };
    try {
      for await (const [name, data] of events(response)) {
        if (name === "delta") { whole += data.text; answer.append(data.text); }
        else if (name === "done" || name === "error") ended = data;
      }
    } catch { /* the connection broke: said below */ }
    answer.finish();
    reply.classList.remove("streaming");
    reply.classList.add(ended.status);
    reply.removeAttribute("aria-busy");
    if (ended.message) {
      const note = document.createElement("p");
      note.className = "error";
      note.textContent = ended.message;
      reply.append(note);
    }
    // The model sees this turn next time only if it was answered.
    if (whole) history.push({ role: "user", content: text }, { role: "assistant", content: whole });
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const text = prompt.value;
    if (answering) return;
    if (!text.trim()) { showError(gettext("Type a message first.")); return; }
    showError("");
    answering = true;
    send.disabled = true;
    try {
      await ask(text);
    } catch {
      showError(gettext("The site could not be reached. Try again."));
    } finally {
      answering = false;
      send.disabled = false;
      prompt.focus();
    }
  });
  // Enter in the prompt box sends, but not the Enter that ends a Hangul syllable (enter_sends.js).
  enterSends(() => answering);

  // The temporary chat takes no files (it stores nothing, and a file is stored to be read). A file
  // dropped anywhere on the page would be opened by the browser in its place, and the chat, which
  // only this page holds, lost: the drop is refused, and said so at the prompt.
  const noFiles = () =>
    showError(gettext("The temporary chat takes no files. Paste the text you need into the message."));
  const carriesFiles = (e) => [...(e.dataTransfer?.types ?? [])].includes("Files");
  window.addEventListener("dragover", (e) => { if (carriesFiles(e)) e.preventDefault(); });
  window.addEventListener("drop", (e) => {
    if (!carriesFiles(e)) return;
    e.preventDefault();
    noFiles();
  });
  // A copied file pasted into the box would otherwise be dropped without a word.
  prompt.addEventListener("paste", (e) => { if (e.clipboardData?.files.length) noFiles(); });
})();
