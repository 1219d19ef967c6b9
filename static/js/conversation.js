// Live conversation: applies the WebSocket's events to the page.
//
// Deltas carry a sequence number per run. A delta we already have is dropped; a gap (pub/sub
// is at-most-once) makes us ask the server for a fresh snapshot. After a reconnect we reload
// the message list over HTTP and resync, so nothing sent while we were away is missing.
(() => {
  "use strict";
  const script = document.currentScript;
  const wsPath = script.dataset.ws;
  const messagesUrl = script.dataset.messagesUrl;
  const runUrlTemplate = script.dataset.runUrl;
  const messages = document.getElementById("messages");
  // A read-only page (a shared conversation) has no composer; its notices go to data-notice.
  const composer = document.getElementById("composer");
  const textarea = composer?.querySelector("textarea");
  const errorBox = document.getElementById(script.dataset.notice || "composer-error");
  const connection = document.getElementById("connection");
  const presence = document.getElementById("presence");

  let socket = null;
  let attempts = 0;
  let connectedOnce = false;
  let buffer = null; // frames held while the message list reloads
  let pingTimer = null;
  let reconnectTimer = null;
  let gone = false;

  const runEl = (id) => document.getElementById("run-" + id);
  const nearBottom = () => window.innerHeight + window.scrollY >= document.body.scrollHeight - 120;

  function keepScrolled(fn) {
    const stick = nearBottom();
    fn();
    if (stick) window.scrollTo(0, document.body.scrollHeight);
  }

  // Fenced code in saved messages: its language, and a Copy button.
  function enhanceCode(root) {
    root.querySelectorAll(".markdown:not(.stream-view) pre > code").forEach((code) => {
      const pre = code.parentElement;
      if (pre.parentElement.classList.contains("code-block")) return;
      const lang = ([...code.classList].find((c) => c.startsWith("language-")) || "").slice(9);
      const wrap = document.createElement("div");
      wrap.className = "code-block";
      const head = document.createElement("div");
      head.className = "code-head";
      const label = document.createElement("span");
      label.className = "code-lang";
      label.textContent = lang || "code";
      const copy = document.createElement("button");
      copy.type = "button";
      copy.className = "link code-copy";
      copy.textContent = "Copy";
      copy.dataset.testid = "copy-code";
      copy.setAttribute("aria-label", "Copy " + (lang || "code"));
      head.append(label, copy);
      pre.replaceWith(wrap);
      wrap.append(head, pre);
    });
  }
  messages.addEventListener("click", async (event) => {
    const button = event.target.closest(".code-copy");
    if (!button) return;
    const text = button.closest(".code-block").querySelector("pre").textContent;
    try {
      await navigator.clipboard.writeText(text);
    } catch {
      // No clipboard API (plain http on another host): select it for Ctrl+C instead.
      const range = document.createRange();
      range.selectNodeContents(button.closest(".code-block").querySelector("pre"));
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      button.textContent = "Selected: press Ctrl+C";
      return;
    }
    button.textContent = "Copied";
    setTimeout(() => (button.textContent = "Copy"), 1500);
  });

  function insertHtml(html) {
    const empty = document.getElementById("empty-state");
    if (empty) empty.remove();
    const template = document.createElement("template");
    template.innerHTML = html;
    const nodes = [...template.content.children];
    keepScrolled(() => nodes.forEach((node) => messages.appendChild(node)));
    nodes.forEach((node) => {
      htmx.process(node);
      enhanceCode(node);
    });
  }

  // A reply goes under the message it answers, after that turn's other replies (a retry of
  // an older turn must not land under the latest message).
  function insertRun(html, replyTo) {
    const anchor = replyTo && document.getElementById("msg-" + replyTo);
    if (!anchor || anchor.parentElement !== messages) return insertHtml(html);
    let last = anchor;
    while (last.nextElementSibling && last.nextElementSibling.matches("[data-run]")) {
      last = last.nextElementSibling;
    }
    const node = fromHtml(html);
    keepScrolled(() => last.after(node));
    htmx.process(node);
  }

  function replaceRun(id, html) {
    const el = runEl(id);
    if (!el) return refreshMessages();
    const node = fromHtml(html);
    keepScrolled(() => el.replaceWith(node));
    htmx.process(node);
    enhanceCode(node);
  }

  function send(frame) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(frame));
  }

  let resyncPending = false;
  function requestResync() {
    if (resyncPending) return;
    resyncPending = true;
    send({ t: "resync" });
  }

  // New text goes to the last piece of the reply: tool calls split it into several.
  const lastStream = (el) => {
    const pieces = el ? el.querySelectorAll(".stream") : [];
    return pieces.length ? pieces[pieces.length - 1] : null;
  };

  function fromHtml(html) {
    const template = document.createElement("template");
    template.innerHTML = html;
    return template.content.firstElementChild;
  }

  function applyDelta(frame) {
    const el = runEl(frame.r);
    const stream = lastStream(el);
    if (!stream) return requestResync();
    const seq = Number(el.dataset.seq || 0);
    if (frame.s <= seq) return; // already have it (snapshot covered it)
    // A frame carries deltas f..s when the server merged those that waited for this socket.
    if ((frame.f || frame.s) !== seq + 1) return requestResync(); // a gap, or part already had
    keepScrolled(() => stream.append(document.createTextNode(frame.x)));
    el.dataset.seq = String(frame.s);
    setRunning(el);
    scheduleRender(el);
  }

  // Markdown while a reply streams: the raw text stays in the .stream piece (screen readers
  // hear it as it comes, visually hidden), and a rendered copy beside it is redrawn at most a
  // few times a second, sanitised with the same tags and attributes the server allows. The
  // server's rendering (with Pygments) replaces both when the reply ends.
  const md =
    window.markdownit &&
    window
      .markdownit("commonmark", { html: false, linkify: false, typographer: false })
      .enable(["table", "strikethrough"]);
  const PURIFY = {
    ALLOWED_TAGS: ["a", "b", "blockquote", "br", "code", "del", "em", "h1", "h2", "h3", "h4",
      "h5", "h6", "hr", "i", "li", "ol", "p", "pre", "s", "span", "strong", "table", "tbody",
      "td", "th", "thead", "tr", "ul", "div"],
    ALLOWED_ATTR: ["href", "title", "class", "align"],
    ALLOWED_URI_REGEXP: /^(?:https?:|mailto:|[^a-z]|[a-z+.-]+(?:[^a-z+.:-]|$))/i,
  };
  if (window.DOMPurify) {
    window.DOMPurify.addHook("afterSanitizeAttributes", (node) => {
      if (node.tagName === "A") node.setAttribute("rel", "noopener noreferrer nofollow");
    });
  }
  const renderTimers = new Map();
  function scheduleRender(el) {
    if (!md || !window.DOMPurify || renderTimers.has(el)) return;
    const stream = lastStream(el);
    // Longer texts cost more to parse: redraw them less often.
    const wait = Math.max(120, Math.min(1000, (stream?.textContent.length || 0) / 100));
    renderTimers.set(
      el,
      setTimeout(() => {
        renderTimers.delete(el);
        if (el.isConnected) renderStream(lastStream(el));
      }, wait),
    );
  }
  function renderStream(stream) {
    if (!stream) return;
    let view = stream.nextElementSibling;
    if (!view || !view.classList.contains("stream-view")) {
      view = document.createElement("div");
      view.className = "content markdown stream-view";
      view.setAttribute("aria-hidden", "true");
      stream.after(view);
    }
    const html = window.DOMPurify.sanitize(md.render(stream.textContent), PURIFY);
    keepScrolled(() => {
      view.innerHTML = html;
      stream.classList.add("rendered");
    });
  }


  function setRunning(el) {
    if (el.dataset.status === "running") return;
    el.dataset.status = "running";
    const status = el.querySelector(".status-text");
    if (status) status.textContent = "Writing…";
  }

  // A tool call's card: replaced where it is, or added after the text so far with a fresh
  // text piece after it for what the model writes next.
  function applyTool(frame) {
    const el = runEl(frame.run);
    const body = el && el.querySelector(".run-body");
    if (!body) return refreshMessages();
    const node = fromHtml(frame.html);
    const existing = document.getElementById("tool-" + frame.call.id);
    keepScrolled(() => {
      if (existing) {
        existing.replaceWith(node);
      } else {
        const next = document.createElement("div");
        next.className = "content stream";
        next.dataset.testid = "stream";
        body.append(node, next);
      }
    });
    htmx.process(node);
    const status = el.querySelector(".status-text");
    if (status && el.dataset.status === "running") {
      status.textContent = frame.t === "tool.started" ? "Running " + frame.call.name + "…" : "Writing…";
    }
  }

  function setWaiting(id) {
    const el = runEl(id);
    if (!el) return;
    el.dataset.status = "waiting";
    const status = el.querySelector(".status-text");
    if (status) status.textContent = "Waiting for a teammate to approve a command…";
  }

  function applySync(frame) {
    resyncPending = false;
    const active = new Set();
    let unknown = false;
    for (const run of frame.runs) {
      active.add(run.run);
      const el = runEl(run.run);
      const stream = lastStream(el);
      if (!stream) {
        unknown = true;
        continue;
      }
      if (el.querySelector(".tool-call")) {
        // The text is cut into pieces around tool calls: the server renders it whole.
        if (run.seq > Number(el.dataset.seq || 0)) refreshRun(run.run);
        continue;
      }
      if (run.seq > Number(el.dataset.seq || 0)) {
        stream.textContent = run.text;
        el.dataset.seq = String(run.seq);
        if (run.seq > 0) setRunning(el);
        scheduleRender(el);
      }
    }
    // A run shown as in flight that the server no longer lists ended while we were away.
    messages.querySelectorAll('[data-status="queued"],[data-status="running"]').forEach((el) => {
      if (!active.has(el.dataset.run)) refreshRun(el.dataset.run);
    });
    if (unknown) refreshMessages();
  }

  async function refreshRun(id) {
    try {
      const url = runUrlTemplate.replace("00000000-0000-0000-0000-000000000000", id);
      const response = await fetch(url);
      if (response.ok) replaceRun(id, await response.text());
    } catch {
      // Offline again: the next reconnect reloads everything.
    }
  }

  async function refreshMessages() {
    if (buffer) return;
    buffer = [];
    try {
      const response = await fetch(messagesUrl, {
        headers: { "HX-Request": "true", "HX-Target": "messages" },
      });
      if (response.ok) {
        const html = await response.text();
        keepScrolled(() => {
          messages.innerHTML = html;
        });
        htmx.process(messages);
        enhanceCode(messages);
      }
    } catch {
      // Offline again: the next reconnect reloads everything.
    } finally {
      const held = buffer;
      buffer = null;
      held.forEach(handle);
    }
  }

  function handle(frame) {
    if (buffer && frame.t !== "pong") {
      buffer.push(frame);
      return;
    }
    switch (frame.t) {
      case "d":
        return applyDelta(frame);
      case "sync":
        return applySync(frame);
      case "message.created":
        if (!document.getElementById("msg-" + frame.message_id)) insertHtml(frame.html);
        return;
      case "run.queued":
        if (!runEl(frame.run.id)) insertRun(frame.html, frame.reply_to);
        return;
      case "run.started": {
        const el = runEl(frame.run);
        if (el) setRunning(el);
        return;
      }
      case "run.completed":
      case "run.failed":
      case "run.cancelled":
        return frame.html ? replaceRun(frame.run, frame.html) : refreshRun(frame.run);
      case "run.updated":
        return refreshRun(frame.run);
      case "run.waiting":
        return setWaiting(frame.run);
      case "tool.started":
      case "tool.finished":
      case "tool.awaiting":
      case "tool.decided":
        return applyTool(frame);
      case "conversation.renamed": {
        const input = document.querySelector("#title input");
        if (input && document.activeElement !== input) input.value = frame.title;
        document.title = frame.title + " · Tandem";
        const listed = document.querySelector("#sidebar [aria-current=page]");
        if (listed) listed.textContent = frame.title;
        return;
      }
      case "conversation.deleted":
        return end("This conversation was deleted by a teammate.");
      case "presence":
        if (!presence) return; // a share viewer's page: never sent, nowhere to show
        presence.textContent = frame.viewers.length ? "Viewing: " + frame.viewers.join(", ") : "";
        return;
    }
  }

  // Stop for good (no reconnecting), and say why.
  function end(text) {
    gone = true;
    composer?.querySelectorAll("textarea,button").forEach((el) => (el.disabled = true));
    errorBox.innerHTML = "";
    errorBox.append(banner(text));
    // Nothing more will arrive: a "Writing…" spinner would claim otherwise.
    messages.querySelectorAll(".run-status .spinner").forEach((el) => el.remove());
    messages.querySelectorAll(".run-status .status-text").forEach((el) => {
      el.textContent = "No longer updated.";
    });
  }

  // Close codes after which reconnecting is pointless. 4460/4461: a share link revoked or
  // expired while watching (sharing/consumers.py).
  const FINAL_CLOSES = {
    4404: "You no longer have access to this conversation.",
    4460: "This link was revoked.",
    4461: "This link has expired.",
  };

  function notice(text) {
    const div = document.createElement("div");
    div.className = "notice";
    div.setAttribute("role", "status");
    div.dataset.testid = "notice";
    div.textContent = text;
    return div;
  }

  function banner(text) {
    const div = document.createElement("div");
    div.className = "error";
    div.setAttribute("role", "alert");
    div.textContent = text;
    return div;
  }

  function setConnection(state, text) {
    connection.dataset.state = state;
    connection.textContent = text;
  }

  function connect() {
    if (gone) return;
    // One socket at a time: the "online" event and a pending retry must not open two.
    clearTimeout(reconnectTimer);
    reconnectTimer = null;
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const ws = new WebSocket(scheme + location.host + wsPath);
    socket = ws;
    window.tandemSocket = ws; // for tests and debugging
    ws.onopen = () => {
      attempts = 0;
      setConnection("live", "live");
      if (connectedOnce) refreshMessages(); // events may have passed while we were away
      connectedOnce = true;
      clearInterval(pingTimer);
      pingTimer = setInterval(() => send({ t: "ping" }), 30000);
    };
    ws.onmessage = (event) => {
      if (ws === socket) handle(JSON.parse(event.data));
    };
    ws.onclose = (event) => {
      if (ws !== socket) return; // an old socket, already replaced
      clearInterval(pingTimer);
      resyncPending = false;
      // Removed from the team, or a share link ended, while watching: stop, and say so.
      if (FINAL_CLOSES[event.code]) end(FINAL_CLOSES[event.code]);
      if (gone) return setConnection("closed", "closed");
      setConnection("down", "reconnecting…");
      const delay = Math.min(5000, 250 * 2 ** attempts++);
      reconnectTimer = setTimeout(connect, delay);
    };
  }

  window.addEventListener("online", () => {
    if (socket && socket.readyState === WebSocket.CLOSED) connect();
  });

  // Composer: Enter sends, Shift+Enter is a new line; ↑ in an empty composer brings back
  // your last message; Esc stops the reply being written.
  textarea?.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      if (textarea.value.trim()) htmx.trigger(composer, "submit");
    } else if (event.key === "ArrowUp" && !textarea.value && lastSent) {
      event.preventDefault();
      textarea.value = lastSent;
      updateCount();
    } else if (event.key === "Escape") {
      const stop = [...messages.querySelectorAll("[data-testid=stop]")].pop();
      if (stop) {
        event.preventDefault();
        stop.click();
      }
    }
  });

  // Length: a counter once the message nears the limit, and a refusal in words past it
  // (the server refuses too, with the same words, for anything that gets by this).
  const maxChars = Number(textarea?.dataset.maxChars || 0);
  const counter = document.getElementById("composer-count");
  let lastSent = "";
  const fmt = (n) => n.toLocaleString("en-US");
  const tooLong = () => maxChars && textarea.value.length > maxChars;
  function updateCount() {
    if (!counter || !maxChars) return;
    const n = textarea.value.length;
    counter.classList.toggle("over", n > maxChars);
    if (n > maxChars) {
      counter.textContent = `${fmt(n)} / ${fmt(maxChars)} characters: ${fmt(n - maxChars)} too many`;
    } else if (n >= maxChars * 0.9) {
      counter.textContent = `${fmt(n)} / ${fmt(maxChars)} characters`;
    } else {
      counter.textContent = "";
    }
  }
  textarea?.addEventListener("input", updateCount);
  composer?.addEventListener("htmx:beforeRequest", (event) => {
    if (event.detail.elt !== composer) return;
    if (tooLong()) {
      event.preventDefault();
      errorBox.innerHTML = "";
      errorBox.append(
        banner(
          `This message has ${fmt(textarea.value.length)} characters; the limit is ${fmt(maxChars)}. ` +
            "Shorten it or split it into parts.",
        ),
      );
      return;
    }
    lastSent = textarea.value;
  });

  // Open at the newest message (also after a reload, or a redirect back from Attach or Push),
  // and offer a way back down when scrolled up.
  if ("scrollRestoration" in history) history.scrollRestoration = "manual";
  const jump = document.getElementById("jump-latest");
  const toBottom = () => window.scrollTo(0, document.body.scrollHeight);
  enhanceCode(messages);
  toBottom();
  window.addEventListener("load", toBottom, { once: true });
  jump?.addEventListener("click", () => {
    toBottom();
    textarea?.focus({ preventScroll: true });
  });
  let jumpPending = false;
  window.addEventListener(
    "scroll",
    () => {
      if (jumpPending || !jump) return;
      jumpPending = true;
      requestAnimationFrame(() => {
        jumpPending = false;
        jump.hidden = nearBottom();
      });
    },
    { passive: true },
  );

  // Download patch: fetched here, so "nothing changed yet" is said in the page instead of
  // leaving it for a bare text response.
  document.addEventListener("click", async (event) => {
    const link = event.target.closest("a[data-patch]");
    if (!link || event.ctrlKey || event.metaKey || event.shiftKey) return;
    event.preventDefault();
    try {
      // As htmx would ask: a refusal comes back as a fragment in words, not a whole page.
      // 202: a worker is writing the patch (the web has no repositories); ask again shortly.
      let response = await fetch(link.href, { headers: { "HX-Request": "true" } });
      for (let tries = 0; response.status === 202 && tries < 600; tries++) {
        errorBox.innerHTML = "";
        errorBox.append(notice("Preparing the patch…"));
        await new Promise((resolve) => setTimeout(resolve, 1000));
        response = await fetch(link.href, { headers: { "HX-Request": "true" } });
      }
      errorBox.innerHTML = "";
      if (!response.ok || response.status === 202) {
        const words = document.createElement("template");
        words.innerHTML = await response.text();
        const text = words.content.textContent.trim();
        errorBox.innerHTML = "";
        errorBox.append(notice(text || `Could not make the patch (error ${response.status}).`));
        return;
      }
      const disposition = response.headers.get("Content-Disposition") || "";
      const name = (disposition.match(/filename="([^"]+)"/) || [])[1] || "tandem.patch";
      const url = URL.createObjectURL(await response.blob());
      const a = document.createElement("a");
      a.href = url;
      a.download = name;
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    } catch {
      errorBox.innerHTML = "";
      errorBox.append(banner("Could not reach Tandem to make the patch."));
    }
  });

  // htmx dispatches htmx:beforeSwap on the swap *target* (#messages), not on the form that
  // sent the request, so this listens on the body and picks out the composer's requests.
  document.body.addEventListener("htmx:beforeSwap", (event) => {
    if (event.detail.requestConfig?.elt !== composer) return;
    const xhr = event.detail.xhr;
    if (xhr.status === 422) {
      // The server's words (too long, empty...): shown above the composer, text kept.
      event.detail.shouldSwap = true;
      event.detail.target = errorBox;
      event.detail.swapOverride = "innerHTML";
      return;
    }
    if (xhr.status >= 400) {
      event.detail.shouldSwap = false;
      errorBox.innerHTML = "";
      errorBox.append(
        banner(
          xhr.status === 403
            ? "Tandem refused this message (your session may have ended: reload the page). Your message is still here."
            : `Tandem could not take this message (error ${xhr.status}). Your message is still here: send it again.`,
        ),
      );
      return;
    }
    // The WebSocket may have delivered this message first: don't show it twice.
    const id = (xhr.responseText.match(/id="msg-([0-9a-f-]+)"/) || [])[1];
    if (id && document.getElementById("msg-" + id)) event.detail.shouldSwap = false;
  });
  composer?.addEventListener("htmx:afterRequest", (event) => {
    if (event.detail.successful) {
      textarea.value = "";
      updateCount();
      errorBox.innerHTML = "";
      document.getElementById("empty-state")?.remove();
      window.scrollTo(0, document.body.scrollHeight);
    }
  });
  composer?.addEventListener("htmx:sendError", () => {
    errorBox.innerHTML = "";
    errorBox.append(banner("Could not reach Tandem. Your message is still here: send it again."));
  });
  // A retry's bubble may already have come over the WebSocket; if not, it goes in its turn.
  messages.addEventListener("htmx:beforeSwap", (event) => {
    const html = event.detail.xhr.responseText;
    const id = (html.match(/id="run-([0-9a-f-]+)"/) || [])[1];
    if (event.detail.requestConfig.verb === "post" && id && runEl(id)) event.detail.shouldSwap = false;
    if (event.detail.requestConfig.elt?.hasAttribute("data-retry") && event.detail.successful) {
      event.detail.shouldSwap = false;
      if (id && !runEl(id)) insertRun(html, fromHtml(html).dataset.replyTo);
    }
  });

  connect();
})();
