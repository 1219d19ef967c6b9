// The read-only file view: bring the line a reply pointed at into view, once the file is there
// (it may arrive later, when a worker has read it: htmx swaps it in).
(() => {
  "use strict";
  function show() {
    const body = document.getElementById("file-body");
    const row = body && body.dataset.line && document.getElementById("L" + body.dataset.line);
    if (row) row.scrollIntoView({ block: "center" });
  }
  show();
  document.body.addEventListener("htmx:afterSettle", show);
})();
