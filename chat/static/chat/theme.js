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

  // The switch goes system → light → dark → system, and says which it is on.
  const label = (choice) => `Theme: ${choice}`;
  document.addEventListener("DOMContentLoaded", () => {
    document.querySelectorAll("[data-theme-switch]").forEach((button) => {
      button.textContent = label(current);
      button.addEventListener("click", () => {
        const next = CHOICES[(CHOICES.indexOf(current) + 1) % CHOICES.length];
        try {
          if (next === "system") localStorage.removeItem(KEY);
          else localStorage.setItem(KEY, next);
        } catch { /* not remembered, but still applied to this page */ }
        current = next;
        apply(next);
        document.querySelectorAll("[data-theme-switch]").forEach((each) => { each.textContent = label(next); });
      });
    });
  });
  // Another tab changed it: follow.
  window.addEventListener("storage", (e) => {
    if (e.key !== KEY && e.key !== null) return;
    current = stored();
    apply(current);
    document.querySelectorAll("[data-theme-switch]").forEach((each) => { each.textContent = label(current); });
  });
})();
