// A turn's diff (assistant/diff_html.py renders it unified, one <details> per file):
//   data-diff-fold="open|close"  Expand all / Collapse all, within that turn's changes
//   data-diff-split              the side-by-side view, on or off, remembered in this browser
// A file's side-by-side table is built from its unified rows only once the file is open, so a
// folded (large) file costs nothing until someone looks at it. Until it is built, and on narrow
// screens (CSS), the unified rows show.
(() => {
  "use strict";
  const KEY = "tandem.diffView";
  const root = document.documentElement;

  function stored() {
    try {
      return localStorage.getItem(KEY) === "split";
    } catch {
      return false; // storage refused (private mode): unified
    }
  }

  function cells(row, side, kind) {
    const ln = document.createElement("td");
    ln.className = "ln";
    const code = document.createElement("td");
    if (row) {
      const number = row.cells[side].dataset.ln;
      if (number) ln.dataset.ln = number;
      code.textContent = row.cells[2].textContent;
      code.className = kind;
    } else {
      code.className = "de";
    }
    return [ln, code];
  }

  function buildSplit(file) {
    const unified = file.querySelector(".diff-table:not(.diff-split-table)");
    if (!unified || file.querySelector(".diff-split-table")) return;
    const table = document.createElement("table");
    table.className = "diff-table diff-split-table";
    table.setAttribute("role", "presentation");
    // Fixed layout takes its widths from here, not from a first row that may span all four.
    const columns = document.createElement("colgroup");
    for (const kind of ["ln", "code", "ln", "code"]) {
      const column = document.createElement("col");
      column.className = "col-" + kind;
      columns.append(column);
    }
    table.append(columns);
    const body = table.createTBody();
    let dels = [];
    let adds = [];
    const flush = () => {
      for (let i = 0; i < Math.max(dels.length, adds.length); i++) {
        const tr = body.insertRow();
        tr.append(...cells(dels[i], 0, "dd"), ...cells(adds[i], 1, "da"));
      }
      dels = [];
      adds = [];
    };
    for (const row of unified.rows) {
      if (row.className === "dd") {
        if (adds.length) flush();
        dels.push(row);
      } else if (row.className === "da") {
        adds.push(row);
      } else {
        flush();
        const tr = body.insertRow();
        if (row.className === "dc") {
          tr.append(...cells(row, 0, "dc"), ...cells(row, 1, "dc"));
        } else {
          tr.className = row.className; // a hunk header or "\ No newline at end of file"
          const td = document.createElement("td");
          td.colSpan = 4;
          td.textContent = row.cells[2].textContent;
          tr.append(td);
        }
      }
    }
    flush();
    unified.after(table);
    file.classList.add("split-ready");
  }

  function apply() {
    const split = root.dataset.diffView === "split";
    document.querySelectorAll("[data-diff-split]").forEach((button) => {
      button.setAttribute("aria-pressed", String(split));
    });
    if (split) document.querySelectorAll("details.diff-file[open]:not(.split-ready)").forEach(buildSplit);
  }

  function setView(split) {
    root.dataset.diffView = split ? "split" : "unified";
    try {
      localStorage.setItem(KEY, split ? "split" : "unified");
    } catch {
      // Not remembered; this page still switches.
    }
    apply();
  }

  root.dataset.diffView = stored() ? "split" : "unified";
  apply();

  document.addEventListener("click", (event) => {
    const target = event.target instanceof Element ? event.target : null;
    const fold = target && target.closest("[data-diff-fold]");
    if (fold) {
      const changes = fold.closest(".changes") || document;
      const open = fold.dataset.diffFold === "open";
      changes.querySelectorAll("details.diff-file").forEach((file) => (file.open = open));
    }
    if (target && target.closest("[data-diff-split]")) setView(root.dataset.diffView !== "split");
  });
  // "toggle" does not bubble: listen while it goes down.
  document.addEventListener(
    "toggle",
    (event) => {
      const file = event.target;
      if (root.dataset.diffView === "split" && file instanceof HTMLDetailsElement && file.open && file.matches(".diff-file")) buildSplit(file);
    },
    true,
  );
  // Turns arrive and are replaced live (conversation.js): their open files get their split
  // tables on the next frame. Only watched while the split view is on.
  let pending = false;
  new MutationObserver(() => {
    if (pending || root.dataset.diffView !== "split") return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      apply();
    });
  }).observe(document.body, { childList: true, subtree: true });
})();
