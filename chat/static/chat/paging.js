// A long conversation comes a page at a time. The site renders the newest messages of the branch
// shown (chat/branches.py) and, above them while the branch goes on, a line (p.older) with the
// address of the messages before. As that line nears the view, this script asks for them and puts
// them in its place, with their own line above if there are more still, and keeps what the reader
// sees where it is. (The sidebar's list pages by itself, with htmx: chat/sidebar.py.)
(() => {
  "use strict";
  const thread = document.getElementById("thread");
  if (!thread) return;

  // A change above the view leaves the view as it was: the distance to the thread's end is kept.
  const keepView = (change) => {
    const fromEnd = thread.scrollHeight - thread.scrollTop;
    change();
    thread.scrollTop = thread.scrollHeight - fromEnd;
  };

  // Asked for a screen or so before the reader reaches the top, so that scrolling rarely waits.
  const observer = new IntersectionObserver((entries) => {
    for (const entry of entries) if (entry.isIntersecting) loadOlder(entry.target);
  }, { root: thread, rootMargin: "800px 0px 0px 0px" });

  const watch = () => thread.querySelectorAll("p.older:not([data-asked])").forEach((line) => observer.observe(line));

  async function loadOlder(line) {
    observer.unobserve(line);
    line.dataset.asked = "yes";
    let html;
    try {
      const response = await fetch(line.dataset.olderUrl, { headers: { "HX-Request": "true" } });
      // Sent elsewhere: the session has ended, and the answer is the sign-in page.
      if (response.redirected) return failed(line, gettext("You were signed out. Reload the page to sign in again."));
      if (!response.ok) return failed(line, interpolate(gettext("Earlier messages could not be loaded (the site answered %s)."), [response.status]));
      html = await response.text();
    } catch {
      return failed(line, gettext("Earlier messages could not be loaded: the site could not be reached."));
    }
    if (!line.isConnected) return; // the thread shows another branch meanwhile
    const page = document.createElement("template");
    page.innerHTML = html;
    const added = [...page.content.children];
    // The answers are rendered at once, with their true height (chat.css: .arriving), so that the
    // view is kept by that height. Left to the browser, an answer's blocks would be laid out as
    // they neared the screen, each from a guessed height, and the reader's view would jump.
    added.forEach((element) => element.classList.add("arriving"));
    keepView(() => {
      line.replaceWith(page.content);
      for (const element of added) element.querySelectorAll("article.assistant .body:not(.markdown)").forEach(render);
    });
    added.forEach((element) => htmx.process(element)); // their versions, Edit and Regenerate buttons
    // Once drawn, each block's height is remembered (contain-intrinsic-size: auto), and the browser
    // may skip laying out the ones off screen again.
    requestAnimationFrame(() => requestAnimationFrame(() => added.forEach((element) => element.classList.remove("arriving"))));
    watch();
  }

  function render(body) {
    const answer = ChatAnswer.follow(body, keepView); // a long one goes on rendering in slices
    answer.append(body.textContent);
    answer.finish();
  }

  function failed(line, message) {
    const retry = document.createElement("button");
    retry.type = "button";
    retry.textContent = gettext("Try again");
    retry.addEventListener("click", () => {
      line.replaceChildren(gettext("Loading earlier messages…"));
      loadOlder(line);
    });
    line.replaceChildren(message, " ", retry);
  }

  // The thread shows another branch (another version, an edited prompt): it has a line of its own.
  document.body.addEventListener("htmx:afterSwap", (e) => {
    if (e.target === thread) watch();
  });
  watch();
})();
