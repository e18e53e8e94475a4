// clipcap serve's page: choose images, caption each as its own request, stream the tokens.
// No build step, no dependencies: fetch + ReadableStream parse the Server-Sent Events (EventSource
// cannot POST a file).
"use strict";

const $ = (selector) => document.querySelector(selector);
const STRATEGY_FIELDS = ["top_k", "top_p", "temperature", "beam_size", "seed"];
const state = { models: [], files: [], runs: 0 };

// -- models ----------------------------------------------------------------------------------------

function modelList(body) {
  // GET /v1/models: {"models": [...]}, a list, or {name: entry}.
  let list = Array.isArray(body) ? body : body && (body.models || body.data);
  if (!list && body && typeof body === "object") {
    list = Object.entries(body).map(([name, entry]) => ({ name, ...entry }));
  }
  return (list || []).filter((m) => m && (m.name || m.id)).map((m) => ({ ...m, name: m.name || m.id }));
}

function describeModel(m) {
  const parts = [];
  const model = m.model || m.sizes || {};
  const size = [];
  if (model.n_layer) size.push(`${model.n_layer} layers`);
  if (model.embed_dim || model.n_embd) size.push(`width ${model.embed_dim || model.n_embd}`);
  if (size.length) parts.push(`GPT-2 ${size.join(" × ")}`);
  const mapper = m.variant || model.mapper || model.mapper_kind || m.mapper;
  if (mapper) parts.push(`${typeof mapper === "string" ? mapper : mapper.kind || "?"} mapper`);
  if (m.precision) parts.push(m.precision);
  const clip = m.clip;
  if (clip) parts.push(`CLIP ${typeof clip === "string" ? clip : clip.name || clip.model || clip.arch || "?"}`);
  const g = defaultsOf(m);
  if (g.strategy) parts.push(`default ${g.strategy}, up to ${g.max_new_tokens ?? "?"} tokens`);
  if (m.batching) {
    const rows = m.max_batch_rows ? ` (≤ ${m.max_batch_rows} rows)` : "";
    parts.push(m.batching === "none" ? "no batching" : `${m.batching} batching${rows}`);
  }
  return parts.join(" · ");
}

function defaultsOf(m) {
  return m.generation || m.defaults || m.generation_defaults || {};
}

async function loadModels() {
  const info = $("#model-info");
  const select = $("#model");
  try {
    const response = await fetch("/v1/models");
    if (!response.ok) throw new Error(await errorText(response));
    state.models = modelList(await response.json());
  } catch (e) {
    info.textContent = `Could not list the models: ${e.message}`;
    info.classList.add("error");
    return;
  }
  select.replaceChildren(
    ...state.models.map((m) => {
      const option = document.createElement("option");
      option.value = m.name;
      option.textContent = m.precision ? `${m.name} (${m.precision})` : m.name;
      return option;
    }),
  );
  if (!state.models.length) info.textContent = "The server lists no models.";
  applyDefaults();
}

function currentModel() {
  return state.models.find((m) => m.name === $("#model").value);
}

function applyDefaults() {
  const m = currentModel();
  if (!m) return;
  $("#model-info").textContent = describeModel(m);
  const g = defaultsOf(m);
  const set = (id, value) => {
    if (value !== undefined && value !== null) $(`#${id}`).value = value;
  };
  set("max_new_tokens", g.max_new_tokens);
  set("min_new_tokens", g.min_new_tokens);
  set("temperature", g.temperature);
  set("beam_size", g.beam_size);
  if (g.top_k) set("top_k", g.top_k);
  if (g.top_p !== undefined && g.top_p < 1) set("top_p", g.top_p);
  if (g.strategy) {
    const strategy = g.strategy.replace("-", "_");
    if ([...$("#strategy").options].some((o) => o.value === strategy)) $("#strategy").value = strategy;
  }
  showStrategyFields();
}

function showStrategyFields() {
  const strategy = $("#strategy").value;
  for (const field of document.querySelectorAll(".field[data-for]")) {
    field.hidden = !field.dataset.for.split(" ").includes(strategy);
  }
}

// -- options ---------------------------------------------------------------------------------------

function options() {
  // The form's options as [name, value] pairs, only those the strategy uses.
  const strategy = $("#strategy").value;
  const pairs = [["strategy", strategy]];
  const model = $("#model").value;
  if (model) pairs.push(["model", model]);
  for (const id of ["max_new_tokens", "min_new_tokens"]) {
    const value = $(`#${id}`).value.trim();
    if (value !== "") pairs.push([id, value]);
  }
  for (const id of STRATEGY_FIELDS) {
    const field = $(`#${id}`).closest(".field");
    const value = $(`#${id}`).value.trim();
    if (!field.hidden && value !== "") pairs.push([id, value]);
  }
  for (const stop of $("#stop").value.split(",")) {
    if (stop.trim() !== "") pairs.push(["stop", stop.trim()]);
  }
  pairs.push(["stream", $("#stream").checked ? "true" : "false"]);
  return pairs;
}

// -- captioning ------------------------------------------------------------------------------------

async function errorText(response) {
  let message = response.statusText || "request failed";
  try {
    const body = await response.json();
    if (body && body.error) message = body.error;
    // A request whose only image is unusable (400) still says what was wrong with it.
    const item = body && Array.isArray(body.results) && body.results.find((r) => r && r.error);
    if (item && item.error !== message) message += ` — ${item.error}`;
    else if (body && body.detail) message = JSON.stringify(body.detail);
  } catch (_) {
    /* not JSON */
  }
  const retry = response.headers.get("Retry-After");
  return `HTTP ${response.status}: ${message}${retry ? ` (retry after ${retry} s)` : ""}`;
}

async function* serverSentEvents(response) {
  // Parse text/event-stream: blocks separated by a blank line, "event:" and "data:" lines.
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
    buffer = buffer.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const key = colon < 0 ? line : line.slice(0, colon);
        const val = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (key === "event") event = val;
        else if (key === "data") data.push(val);
      }
      if (data.length) yield { event, data: JSON.parse(data.join("\n")) };
    }
    if (done) return;
  }
}

function ms(value) {
  return `${Math.round(value)} ms`;
}

function showResult(card, entry, timing) {
  const t = card.timing;
  if (entry.error) {
    fail(card, entry.error);
    return;
  }
  card.querySelector(".caption").textContent = entry.caption;
  const meta = [];
  if (t.first !== null) meta.push(`first token ${ms(t.first - t.start)}`);
  meta.push(`total ${ms(performance.now() - t.start)}`);
  if (entry.tokens) meta.push(`${entry.tokens.length} tokens`);
  if (timing && timing.queue_ms !== undefined) meta.push(`queued ${ms(timing.queue_ms)}`);
  if (typeof entry.score === "number") meta.push(`score ${entry.score.toFixed(2)}`);
  card.querySelector(".meta").textContent = meta.join(" · ");
  card.dataset.totalMs = String(Math.round(performance.now() - t.start));
  if (t.first !== null) card.dataset.ttftMs = String(Math.round(t.first - t.start));
  card.dataset.state = "done";
}

function fail(card, message) {
  card.querySelector(".error").textContent = message;
  card.querySelector(".meta").textContent = `failed after ${ms(performance.now() - card.timing.start)}`;
  card.dataset.state = "error";
}

async function caption(card, file, pairs) {
  const body = new FormData();
  body.append("image", file, file.name);
  for (const [name, value] of pairs) body.append(name, value);
  const stream = pairs.some(([name, value]) => name === "stream" && value === "true");
  card.timing = { start: performance.now(), first: null };
  card.dataset.state = "running";
  card.dataset.tokenEvents = "0";
  card.querySelector(".caption").textContent = "";
  card.querySelector(".error").textContent = "";
  card.querySelector(".meta").textContent = "waiting for the server…";
  let entry = null;
  try {
    const response = await fetch("/v1/captions", { method: "POST", body });
    if (!response.ok) throw new Error(await errorText(response));
    if (!stream) {
      const answer = await response.json();
      entry = answer.results[0];
      card.timing.first = null;
      showResult(card, entry, answer.timing);
      return;
    }
    for await (const { event, data } of serverSentEvents(response)) {
      if (event === "token") {
        if (card.timing.first === null) card.timing.first = performance.now();
        card.dataset.tokenEvents = String(Number(card.dataset.tokenEvents) + 1);
        card.querySelector(".caption").textContent = data.text;
        card.querySelector(".meta").textContent =
          `first token ${ms(card.timing.first - card.timing.start)} · generating…`;
      } else if (event === "result") {
        if (card.timing.first === null) card.timing.first = performance.now(); // beam: no token events
        entry = data;
      } else if (event === "done") {
        entry = (data.results && data.results[0]) || entry;
        showResult(card, entry || { error: "the server answered no result" }, data.timing);
        return;
      } else if (event === "error") {
        throw new Error(`HTTP ${data.status || 500}: ${data.error}`);
      }
    }
    if (entry) showResult(card, entry, null);
    else throw new Error("the stream ended before the caption");
  } catch (e) {
    fail(card, e.message || String(e));
  } finally {
    updateSummary();
  }
}

// -- images ----------------------------------------------------------------------------------------

function addFiles(fileList) {
  const files = [...fileList];
  if (!files.length) return;
  const list = $("#results");
  const pairs = options();
  for (const file of files) {
    const card = $("#card-template").content.firstElementChild.cloneNode(true);
    const thumb = card.querySelector(".thumb");
    thumb.src = URL.createObjectURL(file);
    thumb.alt = file.name;
    thumb.onerror = () => {
      // Not a picture the browser can show (the server will say whether it can read it).
      const blank = document.createElement("div");
      blank.className = "thumb blank";
      blank.textContent = "no preview";
      thumb.replaceWith(blank);
    };
    card.querySelector(".name").textContent = file.name;
    list.append(card);
    state.files.push({ file, card });
    caption(card, file, pairs);
  }
  $("#rerun").disabled = $("#clear").disabled = false;
  updateSummary();
}

function updateSummary() {
  const cards = state.files.map((f) => f.card.dataset.state);
  const count = (s) => cards.filter((c) => c === s).length;
  const running = count("running") + count("waiting");
  const text = [`${cards.length} image${cards.length === 1 ? "" : "s"}`, `${count("done")} captioned`];
  if (count("error")) text.push(`${count("error")} failed`);
  if (running) text.push(`${running} in progress`);
  $("#summary").textContent = cards.length ? text.join(", ") : "";
}

function setUp() {
  const input = $("#file-input");
  const drop = $("#drop");
  input.addEventListener("change", () => {
    addFiles(input.files);
    input.value = "";
  });
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      input.click();
    }
  });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (e) => {
      e.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    addFiles([...e.dataTransfer.files].filter((f) => !f.type || f.type.startsWith("image/")));
  });
  $("#model").addEventListener("change", applyDefaults);
  $("#strategy").addEventListener("change", showStrategyFields);
  $("#rerun").addEventListener("click", () => {
    const pairs = options();
    for (const { file, card } of state.files) caption(card, file, pairs);
    updateSummary();
  });
  $("#clear").addEventListener("click", () => {
    for (const { card } of state.files) {
      const src = card.querySelector("img.thumb")?.src;
      if (src) URL.revokeObjectURL(src);
    }
    state.files = [];
    $("#results").replaceChildren();
    $("#rerun").disabled = $("#clear").disabled = true;
    updateSummary();
  });
  showStrategyFields();
  loadModels();
}

document.addEventListener("DOMContentLoaded", setUp);
