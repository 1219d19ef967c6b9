// The conversation list beside a conversation: open by default on wide screens (remembered),
// a drawer over the page on narrow ones (closed by Esc, the backdrop, or following a link).
(() => {
  "use strict";
  const sidebar = document.getElementById("sidebar");
  const toggle = document.querySelector(".sidebar-toggle");
  if (!sidebar || !toggle) return;
  const backdrop = document.querySelector(".sidebar-backdrop");
  const wide = window.matchMedia("(min-width: 1200px)");
  const KEY = "tandem.sidebar";

  function set(open, remember) {
    sidebar.hidden = !open;
    if (backdrop) backdrop.hidden = !open || wide.matches;
    toggle.setAttribute("aria-expanded", String(open));
    document.body.classList.toggle("sidebar-open", open && wide.matches);
    if (remember && wide.matches) localStorage.setItem(KEY, open ? "open" : "closed");
  }
  const initial = () => set(wide.matches && localStorage.getItem(KEY) !== "closed", false);

  toggle.addEventListener("click", () => {
    const open = sidebar.hidden;
    set(open, true);
    if (open && !wide.matches) sidebar.querySelector("input[type=search]")?.focus();
  });
  document.querySelectorAll("[data-sidebar-close]").forEach((el) =>
    el.addEventListener("click", () => {
      set(false, true);
      toggle.focus();
    }),
  );
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !sidebar.hidden && !wide.matches) {
      set(false, false);
      toggle.focus();
    }
  });
  wide.addEventListener("change", initial);
  initial();
})();
