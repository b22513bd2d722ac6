// Files in a prompt (issue 21): the paperclip, a drop onto the chat and a pasted file each upload
// at once to the site (POST /files, one file a request) and show as a chip above the box; the chip
// holds the file's id as a hidden "files" field, so the prompt form sends it with the prompt. A
// sent prompt brings a fresh form from the site (page.html, `sent`): the chips go with the old one.
// A paste longer than a screen offers to become a file instead.
// File names and the site's sentences only ever go into text nodes.
"use strict";

(() => {
  // Each sent prompt brings a fresh form, so the form and its parts are looked up when needed.
  const promptForm = () => document.getElementById("prompt-form");
  const chipList = () => promptForm()?.querySelector(".attachments");
  const canAttach = () => !!promptForm()?.dataset.uploadUrl;
  const csrfToken = () => promptForm().querySelector("[name=csrfmiddlewaretoken]").value;

  // What "a screen of text" is: beyond either, a paste is offered as a file.
  const LONG_PASTE_CHARS = 2000;
  const LONG_PASTE_LINES = 40;

  // As Django's filesizeformat counts (1 KB = 1024 bytes), so a chip and the thread agree.
  function formatSize(bytes) {
    const steps = [["byte", 1], ["kilobyte", 1024], ["megabyte", 1024 ** 2], ["gigabyte", 1024 ** 3]];
    let [unit, scale] = steps[0];
    for (const step of steps) if (bytes >= step[1]) [unit, scale] = step;
    const value = bytes / scale;
    return new Intl.NumberFormat(document.documentElement.lang || undefined, {
      // "82 bytes" in full, as "82 byte" reads wrong; "1.5 kB" and "3 MB" short.
      style: "unit", unit, unitDisplay: scale === 1 ? "long" : "short", maximumFractionDigits: value < 10 && scale > 1 ? 1 : 0,
    }).format(value);
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // A note under the chips, for a person and for a screen reader (role="status" in page.html).
  function say(text) {
    const note = promptForm()?.querySelector(".attach-note");
    if (note) note.textContent = text;
  }

  // --- chips ----------------------------------------------------------------------------------

  // The request uploading each chip's file, while it does (Remove stops it).
  const uploads = new WeakMap();

  function makeChip(name, size) {
    const chip = element("li", "attachment uploading");
    const label = element("span", "file-name", name);
    label.title = name;
    const progress = element("progress", "file-progress");
    progress.max = 1;
    progress.setAttribute("aria-label", interpolate(gettext("Uploading %s"), [name]));
    const remove = element("button", "remove-file", "×");
    remove.type = "button";
    remove.setAttribute("aria-label", interpolate(gettext("Remove %s"), [name]));
    remove.title = gettext("Remove");
    chip.append(label, element("span", "file-size", formatSize(size)), progress, remove);
    return chip;
  }

  function showList() {
    const list = chipList();
    list.hidden = list.children.length === 0;
  }

  function failChip(chip, message) {
    chip.classList.remove("uploading");
    chip.classList.add("failed");
    chip.querySelector(".file-progress")?.remove();
    // An alert: a file the person meant to send did not go, wherever their eyes are.
    const error = element("span", "file-error", message);
    error.setAttribute("role", "alert");
    chip.querySelector(".remove-file").before(error);
  }

  // The site's sentence when it gave one (JSON {"error": ...}); otherwise one for the status.
  function refusal(xhr) {
    try {
      const error = JSON.parse(xhr.responseText).error;
      if (error) return String(error);
    } catch { /* not JSON: a proxy's page, say */ }
    if (xhr.status === 413) return gettext("This file is larger than the site accepts.");
    return interpolate(gettext("The site answered %s."), [xhr.status]);
  }

  function upload(file, name = file.name) {
    const form = promptForm();
    const chip = makeChip(name, file.size);
    chipList().append(chip);
    showList();
    const xhr = new XMLHttpRequest();
    uploads.set(chip, xhr);
    xhr.open("POST", form.dataset.uploadUrl);
    xhr.setRequestHeader("X-CSRFToken", csrfToken());
    xhr.upload.addEventListener("progress", (e) => {
      const progress = chip.querySelector(".file-progress");
      if (progress && e.lengthComputable) progress.value = e.loaded / e.total;
    });
    xhr.addEventListener("load", () => {
      if (!chip.isConnected) return;  // removed meanwhile
      let attached = null;
      try { attached = xhr.status === 201 ? JSON.parse(xhr.responseText) : null; } catch { /* below */ }
      if (attached?.id && chip.parentElement.querySelector(`[data-id="${CSS.escape(attached.id)}"]`)) {
        chip.remove();  // already shown: the list of unsent files, asked for on load, had it
      } else if (attached?.id) {
        showAttached(chip, attached);
      } else if (xhr.status < 300 && xhr.responseURL && !xhr.responseURL.endsWith(form.dataset.uploadUrl)) {
        // Sent to the sign-in page: the session has ended.
        failChip(chip, gettext("You were signed out. Reload the page to sign in again."));
      } else {
        failChip(chip, refusal(xhr));
      }
      settled();
    });
    xhr.addEventListener("error", () => { failChip(chip, gettext("The site could not be reached. Try again.")); settled(); });
    xhr.addEventListener("abort", settled);
    const body = new FormData();
    body.append("file", file, name);
    xhr.send(body);
  }

  // The files this tab uploaded and has not sent, kept in sessionStorage: after a reload their chips
  // are shown again, so nothing uploaded goes with a prompt unseen, nor stays forgotten. Only this
  // tab's: a file uploaded through the API, or in another tab, is not offered here.
  const KEPT = "chat:unsent-files";
  function kept() {
    try { return new Set(JSON.parse(sessionStorage.getItem(KEPT) ?? "[]")); } catch { return new Set(); }
  }
  function keep(change) {
    const ids = kept();
    change(ids);
    try { sessionStorage.setItem(KEPT, JSON.stringify([...ids])); } catch { /* storage off: no restoring */ }
  }

  function showAttached(chip, attached) {
    chip.classList.remove("uploading");
    chip.classList.add("attached");
    chip.querySelector(".file-progress")?.remove();
    chip.dataset.id = attached.id;
    // As the site named and measured it (it cleans a name it could not keep).
    chip.querySelector(".file-name").textContent = attached.name;
    chip.querySelector(".file-name").title = attached.name;
    chip.querySelector(".file-size").textContent = formatSize(attached.size);
    const field = element("input");
    Object.assign(field, { type: "hidden", name: "files", value: attached.id });
    chip.append(field);
    keep((ids) => ids.add(attached.id));
  }

  async function showUnsent() {
    const url = promptForm()?.dataset.unsentUrl;
    if (!url || kept().size === 0) return;
    let unsent = [];
    try {
      const response = await fetch(url, { headers: { Accept: "application/json" } });
      if (response.ok) unsent = (await response.json()).files ?? [];
    } catch { return; /* the site is unreachable: the backend line says so */ }
    const list = chipList();
    const shown = new Set([...list.querySelectorAll("[data-id]")].map((chip) => chip.dataset.id));
    const ours = kept();
    // Those sent or removed meanwhile (in this tab before the reload, or elsewhere) are forgotten.
    keep((ids) => { for (const id of ids) if (!unsent.some((file) => file.id === id)) ids.delete(id); });
    for (const attached of unsent) {
      if (shown.has(attached.id) || !ours.has(attached.id)) continue;
      const chip = makeChip(attached.name, attached.size);
      showAttached(chip, attached);
      list.append(chip);
    }
    showList();
  }

  function attachAll(files) {
    if (!canAttach()) return;
    for (const file of files) upload(file);
  }

  // Remove: an upload still going is stopped; an attached file is taken off at the site, and its
  // chip goes once the site has done so (until then it would still go with the prompt).
  async function removeChip(chip) {
    const list = chip.parentElement;
    const hadFocus = chip.contains(document.activeElement);
    const next = chip.nextElementSibling?.querySelector(".remove-file")
      ?? chip.previousElementSibling?.querySelector(".remove-file");
    if (chip.classList.contains("uploading")) {
      uploads.get(chip)?.abort();
    } else if (chip.dataset.id) {
      const button = chip.querySelector(".remove-file");
      // Not `disabled`, which would take the keyboard's focus away to nowhere while the site answers.
      if (button.getAttribute("aria-disabled") === "true") return;
      button.setAttribute("aria-disabled", "true");
      const url = promptForm().dataset.fileUrl.replace("00000000-0000-0000-0000-000000000000", chip.dataset.id);
      let response = null;
      try {
        response = await fetch(url, { method: "DELETE", headers: { "X-CSRFToken": csrfToken() } });
      } catch { /* below */ }
      if (!response || !(response.ok || response.status === 404)) {
        button.removeAttribute("aria-disabled");
        chip.querySelector(".file-error")?.remove();
        const message = response ? interpolate(gettext("The site answered %s."), [response.status]) : gettext("The site could not be reached. Try again.");
        const error = element("span", "file-error", message);
        error.setAttribute("role", "alert");
        button.before(error);
        return;
      }
    }
    if (chip.dataset.id) keep((ids) => ids.delete(chip.dataset.id));
    chip.remove();
    if (list) list.hidden = list.children.length === 0;
    // The keyboard stays among the chips, or goes back to the box.
    if (hadFocus) (next ?? document.getElementById("prompt"))?.focus();
    settled();
  }

  document.addEventListener("click", (e) => {
    const target = e.target instanceof Element ? e.target : null;
    const remove = target?.closest("#prompt-form .remove-file");
    if (remove) { removeChip(remove.closest(".attachment")); return; }
    if (target?.closest("#prompt-form .attach")) {
      const picker = promptForm().querySelector(".file-picker");
      picker.value = "";  // the same file chosen again is a change too
      picker.click();
      return;
    }
    if (target?.closest("#prompt-form .paste-attach")) { acceptPaste(); return; }
    if (target?.closest("#prompt-form .paste-keep")) { hidePasteOffer(); document.getElementById("prompt")?.focus(); }
  });
  document.addEventListener("change", (e) => {
    if (e.target instanceof HTMLInputElement && e.target.matches("#prompt-form .file-picker")) {
      attachAll(e.target.files);
      document.getElementById("prompt")?.focus();
    }
  });

  // The person's choice for a file too long for the model (page.html, #file-choice): said when saved.
  document.body.addEventListener("htmx:afterRequest", (e) => {
    const form = e.detail.elt.closest?.("#file-choice");
    if (!form) return;
    form.querySelector(".saved").hidden = !e.detail.successful;
    if (e.detail.successful) form.querySelector(".form-error").hidden = true;
  });

  // --- a send while files are uploading --------------------------------------------------------

  // Send, pressed while a file is still on its way, waits for it and says so: the prompt is sent
  // as soon as the last file is attached. A file that could not be attached holds the send: the
  // person removes it (and sends without it) or tries again, rather than the model answering
  // without a file they meant it to read.
  let sendWaiting = false;
  const uploading = () => !!chipList()?.querySelector(".attachment.uploading");
  const failed = () => !!chipList()?.querySelector(".attachment.failed");
  const FAILED_HOLDS = () => gettext("A file could not be attached: remove it to send without it.");

  document.body.addEventListener("htmx:confirm", (e) => {
    if (e.target !== promptForm()) return;
    if (failed()) {
      e.preventDefault();
      say(FAILED_HOLDS());
    } else if (uploading()) {
      e.preventDefault();
      sendWaiting = true;
      say(gettext("Sending once the files have uploaded…"));
    }
  });

  // A prompt sent: its files are the prompt's now, no longer this tab's to show again.
  let sending = [];
  document.body.addEventListener("htmx:beforeRequest", (e) => {
    if (e.target === promptForm()) sending = [...promptForm().querySelectorAll("input[name=files]")].map((field) => field.value);
  });
  document.body.addEventListener("htmx:afterRequest", (e) => {
    if (e.detail.elt.id !== "prompt-form" || !e.detail.successful) return;
    keep((ids) => sending.forEach((id) => ids.delete(id)));
  });

  function settled() {
    if (uploading()) return;
    if (!sendWaiting) {
      if (!failed()) say("");
      return;
    }
    sendWaiting = false;
    if (failed()) { say(FAILED_HOLDS()); return; }
    say("");
    promptForm().requestSubmit();
  }

  // --- drop onto the chat ---------------------------------------------------------------------

  // Only files: a conversation dragged in the sidebar (shelves.js) is no concern of the chat's.
  const carriesFiles = (e) => canAttach() && [...(e.dataTransfer?.types ?? [])].includes("Files");
  const chat = document.querySelector("main.chat");
  if (chat) {
    chat.addEventListener("dragover", (e) => {
      if (!carriesFiles(e)) return;
      e.preventDefault();  // a drop is allowed here
      e.dataTransfer.dropEffect = "copy";
      chat.classList.add("dropping");
    });
    chat.addEventListener("dragleave", (e) => {
      if (!chat.contains(e.relatedTarget)) chat.classList.remove("dropping");
    });
    chat.addEventListener("drop", (e) => {
      chat.classList.remove("dropping");
      if (!carriesFiles(e)) return;
      e.preventDefault();  // not opened by the browser in place of the chat
      attachAll(e.dataTransfer.files);
    });
  }
  // A file dropped beside the drop zone is not opened in place of the chat either.
  window.addEventListener("dragover", (e) => { if (carriesFiles(e)) e.preventDefault(); });
  window.addEventListener("drop", (e) => { if (carriesFiles(e)) e.preventDefault(); });

  // --- paste ----------------------------------------------------------------------------------

  // What the last long paste put in the box, while its offer is shown.
  let pasted = null;

  document.addEventListener("paste", (e) => {
    if (!(e.target instanceof HTMLTextAreaElement) || e.target.id !== "prompt" || !canAttach()) return;
    const files = [...(e.clipboardData?.files ?? [])];
    const text = e.clipboardData?.getData("text/plain") ?? "";
    // Cells copied from a spreadsheet come as text and as a picture of them: the text is meant.
    const pictureOfText = text && files.every((file) => file.type.startsWith("image/"));
    if (files.length && !pictureOfText) {
      e.preventDefault();  // a copied file: attached, its name not pasted as text
      attachAll(files);
      return;
    }
    if (text.length > LONG_PASTE_CHARS || text.split("\n").length > LONG_PASTE_LINES) {
      // The paste goes into the box as usual; the offer is beside it, and the person chooses.
      pasted = { text, at: e.target.selectionStart };
      showPasteOffer(text);
    }
  });

  function pasteOffer() { return promptForm()?.querySelector(".paste-offer .offer"); }

  function showPasteOffer(text) {
    const offer = pasteOffer();
    const lines = text.split("\n").length;
    offer.querySelector(".paste-size").textContent = interpolate(
      ngettext("You pasted %(chars)s characters on %(lines)s line.", "You pasted %(chars)s characters on %(lines)s lines.", lines),
      { chars: text.length.toLocaleString(document.documentElement.lang || undefined), lines: lines.toLocaleString(document.documentElement.lang || undefined) },
      true,
    );
    offer.hidden = false;
  }

  function hidePasteOffer() {
    pasted = null;
    const offer = pasteOffer();
    if (offer) offer.hidden = true;
  }

  // The pasted text leaves the box (where it went, or wherever it now is) and goes as a file.
  function acceptPaste() {
    const box = document.getElementById("prompt");
    if (!pasted || !box) { hidePasteOffer(); return; }
    const { text, at } = pasted;
    let start = box.value.startsWith(text, at) ? at : box.value.indexOf(text);
    if (start >= 0) {
      box.value = box.value.slice(0, start) + box.value.slice(start + text.length);
      box.dispatchEvent(new Event("input", { bubbles: true }));  // chat.js fits the box to what is left
    }
    upload(new File([text], "pasted.txt", { type: "text/plain" }));
    hidePasteOffer();
    box.focus();
    box.setSelectionRange(Math.max(start, 0), Math.max(start, 0));
  }

  // Once the pasted text is no longer in the box (deleted, or sent), the offer has nothing to offer.
  document.addEventListener("input", (e) => {
    if (pasted && e.target.id === "prompt" && !e.target.value.includes(pasted.text)) hidePasteOffer();
  });

  showUnsent();
})();
