// The colour theme: the system's (light or dark, as prefers-color-scheme says) unless the person
// chose one with the page's switch, remembered in this browser. Loaded in <head> without `defer`,
// so the page is drawn in its theme from the start, with no flash of the other one. chat.css
// reads the `data-theme` attribute this sets on <html>; with none, it follows the system.
(() => {
  "use strict";
  const KEY = "theme";
  const CHOICES = ["system", "light", "dark"];
  const root = document.documentElement;

  const stored = () => {
    try {
      const value = localStorage.getItem(KEY);
      return CHOICES.includes(value) ? value : "system";
    } catch {
      return "system"; // storage refused (a private window's settings): the system's theme
    }
  };
  const apply = (choice) => {
    if (choice === "system") delete root.dataset.theme;
    else root.dataset.theme = choice;
  };
  let current = stored();
  apply(current);

  // The switch goes system → light → dark → system, and says which it is on. Listened for on the
  // document, so that it works as soon as it is drawn, before the page's other scripts have run.
  const label = (choice) => `Theme: ${choice}`;
  const showChoice = () => {
    document.querySelectorAll("[data-theme-switch]").forEach((button) => { button.textContent = label(current); });
  };
  document.addEventListener("DOMContentLoaded", showChoice);
  document.addEventListener("click", (e) => {
    if (!e.target.closest?.("[data-theme-switch]")) return;
    current = CHOICES[(CHOICES.indexOf(current) + 1) % CHOICES.length];
    try {
      if (current === "system") localStorage.removeItem(KEY);
      else localStorage.setItem(KEY, current);
    } catch { /* not remembered, but still applied to this page */ }
    apply(current);
    showChoice();
  });
  // Another tab changed it: follow.
  window.addEventListener("storage", (e) => {
    if (e.key !== KEY && e.key !== null) return;
    current = stored();
    apply(current);
    showChoice();
  });
})();
