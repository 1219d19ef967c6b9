// Keyboard shortcuts on every signed-in page: "/" focuses the conversation search (opening the
// sidebar's drawer first where it is closed), "?" opens the shortcuts help, a modal <dialog>
// (Esc closes it, focus comes back where it was). Keys typed into a field are left alone.
(() => {
  "use strict";
  const help = document.getElementById("shortcuts");
  if (!help) return;

  function typing(target) {
    return target instanceof Element
      && (target.closest("input, textarea, select, [contenteditable]") !== null);
  }

  function focusSearch() {
    const search = document.querySelector("[data-shortcut-search]");
    if (!search) return false;
    const sidebar = search.closest("#sidebar");
    if (sidebar && sidebar.hidden) document.querySelector(".sidebar-toggle")?.click();
    search.focus();
    return true;
  }

  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || event.isComposing) return;
    if (typing(event.target) || document.querySelector("dialog[open]")) return;
    if (event.key === "/" && focusSearch()) {
      event.preventDefault();
    } else if (event.key === "?") {
      event.preventDefault();
      help.showModal();
    }
  });
  document.querySelectorAll("[data-shortcuts-open]").forEach((button) =>
    button.addEventListener("click", () => help.showModal()),
  );
})();
