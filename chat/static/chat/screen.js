// The chat page on any screen, and by keyboard. On a narrow screen the conversations are a menu
// that a button opens over the chat (chat.css hides it otherwise). Shortcuts: Esc stops the answer
// being written (or closes the menu), Ctrl+Shift+O (⌘+Shift+O on a Mac) starts a new chat, as in
// ChatGPT. The controls that have a shortcut say so in their title and aria-keyshortcuts.
(() => {
  "use strict";
  const layout = document.querySelector(".layout");
  const toggle = document.querySelector(".menu-toggle");
  const sidebar = document.getElementById("sidebar");
  if (!layout || !toggle || !sidebar) return;

  const menuOpen = () => layout.classList.contains("menu-open");
  function showMenu(open) {
    layout.classList.toggle("menu-open", open);
    toggle.setAttribute("aria-expanded", String(open));
    if (open) sidebar.querySelector("a, button, summary")?.focus();
  }
  toggle.addEventListener("click", () => showMenu(!menuOpen()));
  // A tap on the chat beside the open menu closes it.
  document.querySelector("main.chat")?.addEventListener("click", (e) => {
    if (menuOpen() && !toggle.contains(e.target)) showMenu(false);
  });
  // Back to a wide screen: the sidebar is there anyway; a menu left open would reopen on the next narrowing.
  window.matchMedia("(min-width: 768px)").addEventListener("change", (e) => { if (e.matches) showMenu(false); });

  document.addEventListener("keydown", (e) => {
    if (e.isComposing) return; // a Hangul syllable being composed: Esc cancels that, not the answer
    if (e.key === "Escape") {
      if (menuOpen()) {
        showMenu(false);
        toggle.focus();
        return;
      }
      // An open actions menu of a conversation: the browser's Esc closes nothing there, so do it.
      const actions = document.querySelector("#conversations details[open]");
      if (actions) {
        actions.open = false;
        actions.querySelector("summary").focus();
        return;
      }
      const stop = document.querySelector("#thread .stop:not(:disabled)");
      if (stop) {
        e.preventDefault();
        stop.click();
      }
      return;
    }
    if ((e.ctrlKey || e.metaKey) && e.shiftKey && !e.altKey && e.key.toLowerCase() === "o") {
      e.preventDefault();
      const newChat = document.querySelector(".sidebar .new");
      if (newChat) window.location.assign(newChat.href);
    }
  });
})();
