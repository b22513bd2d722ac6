// A shared link's page (templates/chat/shared.html): its answers rendered from their text by
// render.js, the chat page's safe path (sanitised, nothing fetched).
(() => {
  "use strict";
  ChatAnswer.showAll(document.getElementById("thread"), (change) => change());
})();
