// The API's docs page, rendered from openapi.json: every operation with its parameters,
// body and responses, and a form to send it. Plain DOM, no dependencies; everything that
// comes from a response is set as text, never as HTML.
(function () {
  "use strict";
  const script = document.currentScript;
  const el = (tag, attrs, ...children) => {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (name === "class") node.className = value;
      else node.setAttribute(name, value);
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  };
  // The descriptions use `code` and **bold** only.
  const inline = (text, node) => {
    for (const part of (text || "").split(/(`[^`]+`|\*\*[^*]+\*\*)/)) {
      if (part.startsWith("`")) node.append(el("code", {}, part.slice(1, -1)));
      else if (part.startsWith("**")) node.append(el("strong", {}, part.slice(2, -2)));
      else node.append(part);
    }
    return node;
  };
  const prose = (text) => {
    const p = el("div");
    for (const para of (text || "").split("\n\n")) p.append(inline(para, el("p")));
    return p;
  };

  let spec = null;
  const resolve = (schema) => {
    if (schema && schema.$ref) return resolve(spec.components.schemas[schema.$ref.split("/").pop()]);
    return schema || {};
  };
  // A sample body for the form, from the schema.
  const sample = (schema) => {
    schema = resolve(schema);
    if (schema.enum) return schema.enum[0];
    if (schema.type === "object") {
      const out = {};
      for (const [name, prop] of Object.entries(schema.properties || {})) out[name] = sample(prop);
      return out;
    }
    if (schema.type === "string") return schema.format === "uuid" ? "" : "Hello";
    if (schema.type === "integer") return 1;
    if (schema.type === "boolean") return false;
    return null;
  };
  const cookie = (name) => {
    const found = document.cookie.split("; ").find((c) => c.startsWith(name + "="));
    return found ? decodeURIComponent(found.split("=")[1]) : "";
  };

  function operation(path, method, op, shared) {
    const params = [...(shared || []), ...(op.parameters || [])];
    const form = el("form", { class: "try" });
    const inputs = {};
    if (params.length) {
      const table = el("table", { class: "params" }, el("tr", {}, el("th", {}, "Parameter"), el("th", {}, "In"), el("th", {}, "Value")));
      for (const param of params) {
        const input = el("input", { name: param.name, placeholder: param.required ? "required" : "" });
        inputs[param.name] = [param, input];
        table.append(el("tr", {}, el("td", {}, el("code", {}, param.name), inline(param.description, el("div", { class: "muted" }))), el("td", {}, param.in), el("td", {}, input)));
      }
      form.append(table);
    }
    let body = null;
    if (op.requestBody) {
      const media = op.requestBody.content["application/json"];
      body = el("textarea", { rows: "4" });
      // The spec's example is a body the endpoint accepts as it is; the schema's sample is not
      // (a repository named "Hello" does not exist).
      body.value = JSON.stringify(media.example ?? sample(media.schema), null, 1);
      form.append(el("label", {}, "Body (JSON)", body));
    }
    const out = el("pre", { "aria-live": "polite" });
    const stop = el("button", { type: "button", hidden: "" }, "Stop");
    form.append(el("div", { class: "row" }, el("button", { class: "primary", type: "submit" }, "Send"), stop), out);
    let controller = null;
    stop.addEventListener("click", () => controller && controller.abort());
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      let url = "/api/v1" + path;
      const query = new URLSearchParams();
      const headers = {};
      for (const [name, [param, input]] of Object.entries(inputs)) {
        let value = input.value.trim();
        if (name === "team" && !value) value = document.getElementById("team").value.trim();
        if (!value) continue;
        if (param.in === "path") url = url.replace("{" + name + "}", encodeURIComponent(value));
        else if (param.in === "query") query.set(name, value);
        else if (param.in === "header") headers[name] = value;
      }
      if ([...query].length) url += "?" + query;
      const key = document.getElementById("key").value.trim();
      if (key) headers.Authorization = "Bearer " + key;
      else if (method !== "get") headers["X-CSRFToken"] = cookie("csrftoken") || script.dataset.csrf;
      const init = { method: method.toUpperCase(), headers, credentials: key ? "omit" : "same-origin" };
      if (body) { init.body = body.value; headers["Content-Type"] = "application/json"; }
      controller = new AbortController();
      init.signal = controller.signal;
      out.textContent = init.method + " " + url + "\n…";
      try {
        const response = await fetch(url, init);
        const head = `${response.status} ${response.statusText}` + (response.headers.get("Retry-After") ? `  (Retry-After: ${response.headers.get("Retry-After")})` : "") + "\n\n";
        if ((response.headers.get("Content-Type") || "").startsWith("text/event-stream")) {
          out.textContent = head;
          stop.hidden = false;
          const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            out.textContent += value;
          }
        } else {
          const text = await response.text();
          let shown = text;
          try { shown = JSON.stringify(JSON.parse(text), null, 2); } catch (e) { /* not JSON */ }
          out.textContent = head + shown;
        }
      } catch (error) {
        out.textContent += "\n" + (error.name === "AbortError" ? "Stopped." : String(error));
      } finally {
        stop.hidden = true;
      }
    });
    const responses = el("ul");
    for (const [code, response] of Object.entries(op.responses)) {
      const resolved = response.$ref ? spec.components.responses[response.$ref.split("/").pop()] : response;
      responses.append(el("li", {}, el("strong", {}, code), " ", resolved.description));
    }
    return el("details", { class: "op", id: op.operationId },
      el("summary", {}, el("span", { class: "method " + method }, method.toUpperCase()), el("span", { class: "path" }, path), el("span", { class: "muted" }, op.summary || "")),
      el("div", { class: "body" }, prose(op.description), el("h4", {}, "Responses"), responses, form));
  }

  fetch(script.dataset.schema).then((r) => r.json()).then((loaded) => {
    spec = loaded;
    document.getElementById("title").textContent = spec.info.title;
    document.getElementById("description").replaceChildren(prose(spec.info.description));
    const ops = document.getElementById("ops");
    ops.replaceChildren();
    for (const [path, item] of Object.entries(spec.paths)) {
      for (const method of ["get", "post", "delete"]) {
        if (item[method]) ops.append(operation(path, method, item[method], item.parameters));
      }
    }
    const schemas = document.getElementById("schemas");
    for (const [name, schema] of Object.entries(spec.components.schemas)) {
      schemas.append(el("details", { class: "op", id: "schema-" + name }, el("summary", {}, el("code", {}, name)), el("div", { class: "body" }, el("pre", {}, JSON.stringify(schema, null, 1)))));
    }
  }).catch((error) => {
    document.getElementById("ops").textContent = "Could not load the schema: " + error;
  });
})();
