// The playground: stream each selected model's output side by side, shading every token by
// its probability. The server sends the same SSE chunks as /v1/completions (or chat) with
// stream=true; fetch() reads them because EventSource cannot POST a form.
(function () {
  "use strict";
  const form = document.getElementById("playground");
  if (!form) return;
  const outputs = document.getElementById("outputs");
  const systemRow = document.getElementById("system-row");
  const promptLabel = document.getElementById("prompt-label");
  const selects = Array.from(form.querySelectorAll("select[name=models]"));

  function mode() {
    return form.querySelector("input[name=mode]:checked").value;
  }

  // Chat mode needs a chat template: grey out models without one.
  function applyMode() {
    const chat = mode() === "chat";
    systemRow.hidden = !chat;
    promptLabel.textContent = chat ? "User message" : "Prompt";
    for (const select of selects) {
      for (const option of select.options) {
        if (option.value) option.disabled = chat && option.dataset.chat !== "1";
      }
    }
  }
  form.querySelectorAll("input[name=mode]").forEach((r) => r.addEventListener("change", applyMode));
  applyMode();

  function percent(logprob) {
    return (100 * Math.exp(logprob)).toFixed(1) + "%";
  }

  function tokenSpan(token, logprob, alternatives) {
    const span = document.createElement("span");
    span.className = "tok";
    span.textContent = token;
    if (logprob === null || logprob === undefined) return span;
    const p = Math.exp(logprob);
    // Hue 0 (red) for unlikely tokens up to 120 (green) for near-certain ones.
    span.style.backgroundColor = "hsla(" + Math.round(120 * p) + ", 75%, 70%, 0.55)";
    const lines = [JSON.stringify(token) + "  " + percent(logprob)];
    const ranked = Object.entries(alternatives || {}).sort((a, b) => b[1] - a[1]);
    for (const [alt, lp] of ranked) {
      if (alt !== token) lines.push("  " + JSON.stringify(alt) + "  " + percent(lp));
    }
    span.title = lines.join("\n");
    span.dataset.alts = lines.join("\n");
    span.dataset.p = p.toFixed(4);
    return span;
  }

  // Completions chunks carry {tokens, token_logprobs, top_logprobs}; chat chunks carry
  // {content: [{token, logprob, top_logprobs: [{token, logprob}]}]}.
  function appendChunk(target, choice) {
    const lp = choice.logprobs;
    if (lp && lp.content) {
      for (const entry of lp.content) {
        const alts = {};
        for (const t of entry.top_logprobs || []) alts[t.token] = t.logprob;
        target.appendChild(tokenSpan(entry.token, entry.logprob, alts));
      }
    } else if (lp && lp.tokens) {
      lp.tokens.forEach((token, i) => {
        target.appendChild(tokenSpan(token, lp.token_logprobs[i], lp.top_logprobs[i]));
      });
    } else {
      const text = choice.delta ? choice.delta.content : choice.text;
      if (text) target.appendChild(document.createTextNode(text));
    }
  }

  // A click or a tap on a token (hover alone does nothing on a phone) shows its alternatives
  // under the output. From the keyboard, the output is one tab stop (no trap of a stop per
  // token): the arrow keys, Home and End move through its tokens and show each one's.
  function select(token) {
    const box = token.closest(".pg-column");
    box.querySelectorAll(".tok.selected").forEach((t) => t.classList.remove("selected"));
    token.classList.add("selected");
    token.scrollIntoView({ block: "nearest" });
    const panel = box.querySelector(".pg-alts");
    panel.hidden = false;
    panel.textContent = token.dataset.alts;
  }

  outputs.addEventListener("click", (event) => {
    const token = event.target.closest(".tok");
    if (token && token.dataset.alts) select(token);
  });

  const STEPS = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1 };
  outputs.addEventListener("keydown", (event) => {
    const text = event.target.closest(".pg-text");
    if (!text) return;
    const tokens = Array.from(text.querySelectorAll(".tok[data-alts]"));
    if (!tokens.length) return;
    const at = tokens.findIndex((t) => t.classList.contains("selected"));
    let next;
    if (event.key in STEPS) next = at < 0 ? 0 : at + STEPS[event.key];
    else if (event.key === "Home") next = 0;
    else if (event.key === "End") next = tokens.length - 1;
    else return;
    event.preventDefault();
    select(tokens[Math.max(0, Math.min(tokens.length - 1, next))]);
  });

  function column(model, index) {
    const box = document.createElement("section");
    box.className = "panel pg-column";
    box.dataset.testid = "output-" + index;
    box.setAttribute("data-testid", "output-" + index);
    const title = document.createElement("h2");
    title.className = "mono";
    title.textContent = model;
    const text = document.createElement("pre");
    text.className = "pg-text";
    text.tabIndex = 0;
    text.setAttribute("role", "group");
    text.setAttribute("aria-label", "Output of " + model + ": arrow keys show each token's alternatives");
    const status = document.createElement("div");
    status.className = "muted small pg-status";
    status.textContent = "Waiting…";
    const alts = document.createElement("pre");
    alts.className = "pg-alts";
    alts.hidden = true;
    alts.setAttribute("aria-live", "polite");
    alts.dataset.testid = "alternatives";
    alts.setAttribute("data-testid", "alternatives-" + index);
    box.append(title, text, status, alts);
    outputs.appendChild(box);
    return { box, text, status };
  }

  function fail(col, message) {
    col.status.textContent = message;
    col.status.className = "badge error pg-status";
    col.box.dataset.state = "error";
  }

  async function run(model, col) {
    const data = new FormData(form);
    data.delete("models");
    data.append("model", model);
    const started = performance.now();
    const response = await fetch(form.dataset.streamUrl, {
      method: "POST",
      body: data,
      headers: { "X-CSRFToken": data.get("csrfmiddlewaretoken") },
    });
    if (!response.ok) {
      let message = "HTTP " + response.status;
      try {
        message = (await response.json()).error.message;
      } catch (e) { /* not JSON */ }
      fail(col, message);
      return;
    }
    col.status.textContent = "Streaming…";
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let finish = null;
    let tokens = 0;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        if (!event.startsWith("data: ")) continue;
        const payload = event.slice(6);
        if (payload === "[DONE]") continue;
        const chunk = JSON.parse(payload);
        if (chunk.error) {
          fail(col, chunk.error.message);
          return;
        }
        for (const choice of chunk.choices || []) {
          appendChunk(col.text, choice);
          tokens = col.text.querySelectorAll(".tok").length;
          if (choice.finish_reason) finish = choice.finish_reason;
        }
      }
    }
    const seconds = (performance.now() - started) / 1000;
    col.status.textContent =
      "finish_reason: " + finish + " · " + tokens + " tokens · " + seconds.toFixed(2) + " s";
    col.box.dataset.state = "done";
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const models = [...new Set(selects.map((s) => s.value).filter(Boolean))];
    outputs.replaceChildren();
    outputs.style.setProperty("--columns", String(models.length));
    models.forEach((model, i) => {
      const col = column(model, i);
      run(model, col).catch((err) => fail(col, String(err)));
    });
  });
})();
