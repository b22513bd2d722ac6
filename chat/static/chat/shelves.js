// The sidebar's pinned list and folders (templates/chat/shelves.html): a conversation dragged onto a
// folder, or onto the list, moves there; a conversation's menu offers the folders when opened; a
// new chat's preset, once picked, draws the page again with its settings.
"use strict";

(() => {
  let dragged = null;  // the conversation's item being dragged
  // Where an item's menu sends a move (shelves.html#item-menu), the drop sends it too.
  const moveUrl = (item) => item.querySelector("form.move")?.getAttribute("hx-post");

  document.addEventListener("dragstart", (e) => {
    const item = e.target.closest && e.target.closest("li[draggable=true]");
    if (!item || !moveUrl(item)) return;
    dragged = item;
    e.dataTransfer.effectAllowed = "move";
    e.dataTransfer.setData("text/plain", item.querySelector("a")?.textContent || "");
  });
  document.addEventListener("dragend", () => {
    dragged = null;
    document.querySelectorAll(".drop-target").forEach((el) => el.classList.remove("drop-target"));
  });

  // A folder, or the list (out of any folder).
  const targetOf = (e) => (dragged && e.target.closest ? e.target.closest("[data-folder], #conversations") : null);
  document.addEventListener("dragover", (e) => {
    const target = targetOf(e);
    if (!target) return;
    e.preventDefault();  // a drop is allowed here
    e.dataTransfer.dropEffect = "move";
    target.classList.add("drop-target");
  });
  document.addEventListener("dragleave", (e) => {
    const target = targetOf(e);
    if (target && !target.contains(e.relatedTarget)) target.classList.remove("drop-target");
  });
  document.addEventListener("drop", (e) => {
    const target = targetOf(e);
    if (!target) return;
    e.preventDefault();
    target.classList.remove("drop-target");
    // The server sends the sidebar again, swapped in out of band; the body's hx-headers carry the CSRF token.
    htmx.ajax("POST", moveUrl(dragged), {source: dragged, values: {folder: target.dataset.folder || ""}, swap: "none"});
    dragged = null;
  });

  // A conversation's menu: its folder choice, from the one list of the person's folders.
  document.addEventListener("toggle", (e) => {
    const menu = e.target;
    if (!(menu instanceof HTMLDetailsElement) || !menu.open || !menu.classList.contains("actions")) return;
    const select = menu.querySelector("form.move select");
    const options = document.getElementById("folder-options");
    if (!select || !options) return;
    select.replaceChildren(options.content.cloneNode(true));
    select.value = select.dataset.current;
  }, true);

  // A new chat's preset: the page again with its settings.
  document.addEventListener("change", (e) => {
    const form = e.target.closest && e.target.closest("form[data-submit-on-change]");
    if (form) form.requestSubmit();
  });
})();
