// The Share dialog: opens on the Share button (htmx loads its content), copies a new link, and
// shows the server's refusal (422: public links switched off, a bad choice) in place.
(() => {
  "use strict";

  document.addEventListener("click", (event) => {
    const opener = event.target.closest("[data-share-open]");
    if (opener) {
      const dialog = document.getElementById(opener.dataset.shareOpen);
      if (dialog && !dialog.open) dialog.showModal();
      return;
    }
    const copy = event.target.closest("[data-copy]");
    if (copy) copyLink(copy);
  });

  async function copyLink(button) {
    const input = document.getElementById(button.dataset.copy);
    if (!input) return;
    input.select();
    try {
      await navigator.clipboard.writeText(input.value);
    } catch {
      // No clipboard API (plain http on another host): the selected text copies the old way.
      document.execCommand("copy");
    }
    button.textContent = "Copied";
    setTimeout(() => (button.textContent = "Copy link"), 2000);
  }

  // htmx leaves 4xx answers unswapped; the dialog's are forms with the error in them.
  document.body.addEventListener("htmx:beforeSwap", (event) => {
    const target = event.detail.target;
    if (event.detail.xhr.status === 422 && target && target.id === "share-dialog-body") {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
  });
})();
