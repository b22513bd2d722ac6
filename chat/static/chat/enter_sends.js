// The prompt box (#prompt) of the chat page and of the temporary chat: Enter sends, Shift+Enter is
// a new line; but an Enter that ends a Hangul syllable's composition (or a Japanese or Chinese
// one's) only ends it: the next Enter sends the whole text, once.
// Chromium and Firefox say the IME has the key (isComposing, keyCode 229). Safari ends the
// composition first and then fires the Enter's keydown as a plain one (some IMEs on Windows
// fire a second, plain keydown after compositionend too): a keydown within moments of
// compositionend is the key that ended it. A person's own next Enter comes far later.
// Each page calls enterSends once, with its own test of whether an answer is being written (Enter
// then sends nothing).
window.enterSends = (answering) => {
  const SAME_KEY_MS = 100;
  // The box being composed in; a box that a sent prompt's fresh form replaced composes nothing.
  let composingIn = null;
  let compositionEndedAt = -Infinity;
  document.addEventListener("compositionstart", (e) => {
    if (e.target.id === "prompt") composingIn = e.target;
  });
  document.addEventListener("compositionend", (e) => {
    if (e.target.id !== "prompt") return;
    composingIn = null;
    compositionEndedAt = performance.now();
  });
  document.addEventListener("keydown", (e) => {
    if (e.target.id !== "prompt" || e.key !== "Enter" || e.shiftKey) return;
    if (e.isComposing || e.keyCode === 229 || composingIn === e.target) return; // the IME's: it commits the syllable
    e.preventDefault(); // no new line either: the syllable was the Enter's whole work
    if (performance.now() - compositionEndedAt < SAME_KEY_MS) return;
    if (!answering()) e.target.form.requestSubmit();
  });
};
