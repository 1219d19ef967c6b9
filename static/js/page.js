// Small behaviours every page may use, declared with data attributes instead of inline event
// handlers (the Content-Security-Policy allows no inline script):
//   data-confirm="Question?"   on a button or link: ask first, do nothing unless confirmed
//   data-select-on-click       on an input: select its text when clicked
//   data-copy-previous         on a button: copy the value of the input just before it
//   data-submit-on-change      on a select: submit its form when changed
//   data-show-if="name=value"  on a part of a form: shown only while the form's field "name"
//                              has that value (hidden parts keep their inputs out of the way)
//   data-fresh-from="URL"      on a <details>: each time it opens, its [data-fresh] part (by
//                              id) is replaced by the same part of that URL's page, unless the
//                              person has typed in it: a proposal (Push's commit message) stays
//                              current as turns finish, and nothing written is lost
(() => {
  "use strict";
  document.addEventListener("click", (event) => {
    const target = event.target instanceof Element ? event.target : null;
    if (!target) return;
    const asking = target.closest("[data-confirm]");
    if (asking && !window.confirm(asking.dataset.confirm)) {
      event.preventDefault();
      event.stopImmediatePropagation();
      return;
    }
    const field = target.closest("[data-select-on-click]");
    if (field && typeof field.select === "function") field.select();
    const copier = target.closest("[data-copy-previous]");
    if (copier) {
      const source = copier.previousElementSibling;
      if (source && "value" in source) navigator.clipboard.writeText(source.value);
    }
  }, true);
  document.addEventListener("change", (event) => {
    const select = event.target instanceof Element ? event.target.closest("[data-submit-on-change]") : null;
    if (select && select.form) select.form.submit();
    if (event.target instanceof Element && event.target.form) showIf(event.target.form);
  });

  function showIf(form) {
    form.querySelectorAll("[data-show-if]").forEach((part) => {
      const [name, value] = part.dataset.showIf.split("=");
      const field = form.elements.namedItem(name);
      part.hidden = !field || field.value !== value;
    });
  }
  document.querySelectorAll("form").forEach((form) => {
    if (form.querySelector("[data-show-if]")) showIf(form);
  });

  document.addEventListener("input", (event) => {
    const part = event.target instanceof Element ? event.target.closest("[data-fresh]") : null;
    if (part) part.dataset.edited = "1";
  });
  // "toggle" does not bubble: listened for on the way down.
  document.addEventListener("toggle", async (event) => {
    const details = event.target;
    if (!(details instanceof HTMLDetailsElement) || !details.open || !details.dataset.freshFrom) return;
    const part = details.querySelector("[data-fresh]");
    if (!part || !part.id || part.dataset.edited) return;
    try {
      const response = await fetch(details.dataset.freshFrom, { headers: { "HX-Request": "true" } });
      if (!response.ok) return;
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.getElementById(part.id);
      if (fresh && !part.dataset.edited && part.isConnected) part.replaceWith(fresh);
    } catch {
      // Offline: the proposal shown is the one the page came with.
    }
  }, true);
})();
