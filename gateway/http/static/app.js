// The genmesh page: asks POST /v1/chat/completions with stream=true and reads the server-sent events as they
// arrive (fetch + a stream reader, so that an API key can go in the Authorization header). The answer grows
// token by token; genmesh's named events (genmesh.sources, genmesh.tool_result, genmesh.degraded,
// genmesh.timings) fill their sections. Cancel aborts the fetch: the HTTP front sees the disconnect and cancels
// the gRPC call, so inference drops the sequence on the server. Tools come from GET /v1/genmesh/tools (only
// served when `genmesh serve http` has --tools); the picked ones become forced genmesh.tool_calls.
"use strict";

const RRF_BEST = 2 / 61; // hybrid retrieval ranks by reciprocal rank fusion: 1/(60+rank) summed over two rankings

const $ = (id) => document.getElementById(id);
let running = null; // {controller, cancelled}

function headers() {
  const result = { "Content-Type": "application/json", Accept: "text/event-stream" };
  const key = $("api-key").value.trim();
  if (key) result.Authorization = `Bearer ${key}`;
  return result;
}

function setStatus(text, state) {
  const status = $("status");
  status.textContent = text;
  status.dataset.state = state;
  document.body.dataset.state = state;
}

function clear(element) {
  while (element.firstChild) element.removeChild(element.firstChild);
}

function add(parent, tag, text, className) {
  const element = document.createElement(tag);
  if (text !== undefined) element.textContent = text;
  if (className) element.className = className;
  parent.appendChild(element);
  return element;
}

// ---- tools picker -------------------------------------------------------------------------------------------

function exampleValue(schema) {
  if (Array.isArray(schema.enum) && schema.enum.length) return schema.enum[0];
  if ("default" in schema) return schema.default;
  const kind = Array.isArray(schema.type) ? schema.type[0] : schema.type;
  const examples = { number: 1, integer: 1, boolean: true, array: [], object: {}, null: null, string: "" };
  return kind in examples ? examples[kind] : "";
}

// Arguments prefilled from the tool's JSON Schema: each required argument with an example value.
function exampleArguments(schema) {
  const properties = (schema && schema.properties) || {};
  const required = new Set((schema && schema.required) || []);
  const example = {};
  for (const [name, spec] of Object.entries(properties)) {
    if (required.has(name)) example[name] = exampleValue(spec || {});
  }
  return example;
}

function describeArguments(schema) {
  const properties = (schema && schema.properties) || {};
  const required = new Set((schema && schema.required) || []);
  const parts = Object.entries(properties).map(([name, spec]) => {
    const kind = Array.isArray(spec.type) ? spec.type.join(" or ") : spec.type || "any";
    const choices = Array.isArray(spec.enum) ? ` one of ${spec.enum.slice(0, 10).join(", ")}` : "";
    return `${name} (${kind}, ${required.has(name) ? "required" : "optional"}${choices})`;
  });
  return parts.length ? `Arguments: ${parts.join("; ")}.` : "No arguments.";
}

function renderTools(tools) {
  const list = $("tool-list");
  clear(list);
  tools.forEach((tool, index) => {
    const box = add(list, "div", undefined, "tool");
    const pick = document.createElement("input");
    pick.type = "checkbox";
    pick.id = `tool-${index}`;
    pick.dataset.tool = tool.name;
    pick.disabled = tool.available === false;
    box.appendChild(pick);
    const label = add(box, "label", ` ${tool.name}`);
    label.htmlFor = pick.id;
    const help = add(box, "small", ` ${tool.description || ""} ${describeArguments(tool.parameters)}`);
    help.id = `tool-${index}-help`;
    if (tool.available === false) add(box, "small", " (unavailable: its MCP server is down)");
    const argsLabel = add(box, "label", `Arguments of ${tool.name} (JSON)`, "args");
    argsLabel.htmlFor = `tool-${index}-args`;
    const args = document.createElement("textarea");
    args.id = `tool-${index}-args`;
    args.rows = 1;
    args.spellcheck = false;
    args.setAttribute("aria-describedby", help.id);
    args.value = JSON.stringify(exampleArguments(tool.parameters));
    box.appendChild(args);
  });
}

async function loadTools() {
  let response;
  try {
    response = await fetch("v1/genmesh/tools", { headers: headers() });
  } catch (error) {
    return;
  }
  if (!response.ok) return; // no --tools: the picker stays hidden
  const body = await response.json();
  renderTools(body.tools || []);
  $("tools").hidden = false;
  $("tools-status").textContent = body.tools && body.tools.length ? "" : "The tools service lists no tools.";
}

// The picked tools as genmesh.tool_calls, or throws naming the tool whose arguments are not a JSON object.
function pickedToolCalls() {
  const calls = [];
  for (const pick of document.querySelectorAll("#tool-list input[type=checkbox]:checked")) {
    const text = $(`${pick.id}-args`).value.trim() || "{}";
    let args;
    try {
      args = JSON.parse(text);
    } catch (error) {
      throw new Error(`arguments of ${pick.dataset.tool}: ${error.message}`);
    }
    if (args === null || typeof args !== "object" || Array.isArray(args)) {
      throw new Error(`arguments of ${pick.dataset.tool}: must be a JSON object`);
    }
    calls.push({ name: pick.dataset.tool, arguments: args });
  }
  return calls;
}

// ---- rendering the events -----------------------------------------------------------------------------------

function showSources(data) {
  const passages = data.passages || [];
  const list = $("sources");
  clear(list);
  // One entry per document, at its best passage (passages come best first), with how many passages it gave.
  const documents = new Map();
  for (const passage of passages) {
    const id = passage.document_id || passage.chunk_id;
    if (documents.has(id)) documents.get(id).count += 1;
    else documents.set(id, { passage, count: 1 });
  }
  for (const [id, { passage, count }] of documents) {
    const item = add(list, "li", undefined, "source");
    item.dataset.document = id;
    add(item, "strong", passage.title || id);
    const score = Number(passage.score || 0);
    const meter = document.createElement("meter");
    meter.min = 0;
    meter.max = RRF_BEST;
    meter.value = Math.min(score, RRF_BEST);
    meter.title = `rank score ${score.toFixed(3)} of ${RRF_BEST.toFixed(3)} at best`;
    const more = count > 1 ? `, ${count} passages` : "";
    add(item, "span", ` (${id}) rank ${passage.rank}, rank score ${score.toFixed(3)}${more} `);
    item.appendChild(meter);
    add(item, "div", (passage.text || "").slice(0, 240), "passage");
  }
  $("sources-note").textContent = documents.size
    ? `Rank score: reciprocal rank fusion of the keyword and embedding rankings; ${RRF_BEST.toFixed(3)} is the best a passage can get.`
    : "No passages.";
}

function showToolResult(data) {
  const item = add($("tool-results"), "li", undefined, "tool-result");
  const name = data.name;
  item.dataset.tool = name;
  add(item, "strong", `${name} (call ${data.call_id})`);
  const duration = Number(data.duration_ms || 0);
  add(item, "span", ` ${duration.toFixed(1)} ms`);
  const error = data.error;
  if (error) {
    item.dataset.failed = "true";
    add(item, "pre", `error (${error.type || error.reason}): ${error.message}`);
  } else if ("result" in data) {
    add(item, "pre", JSON.stringify(data.result, null, 1));
  } else {
    add(item, "pre", data.result_json || "");
  }
}

function showDegraded(data) {
  const error = data.error || {};
  const text = `${data.stage} left out (${error.type || error.reason}): ${error.message || ""}`;
  add($("degraded"), "li", text, "degraded");
}

function timing(label, ms) {
  const list = $("timings");
  add(list, "dt", label);
  add(list, "dd", `${Number(ms || 0).toFixed(1)} ms`);
}

function showTimings(data) {
  clear($("timings"));
  timing("time to first token", data.time_to_first_token_ms);
  timing("total", data.total_ms);
  timing("retrieval", data.retrieval_ms);
  timing("tools", data.tools_ms);
  timing("before inference", data.pre_inference_ms);
  timing("inference queue", data.queue_ms);
  for (const span of data.stages || []) {
    const start = Number(span.start_ms || 0);
    const end = Number(span.end_ms || 0);
    add($("timings"), "dt", `stage ${span.stage}`);
    add($("timings"), "dd", `${start.toFixed(1)} → ${end.toFixed(1)} ms (${(end - start).toFixed(1)} ms)`);
  }
}

function showBrowserTimings(started, firstToken, ended) {
  if (firstToken !== null) timing("time to first token (this browser)", firstToken - started);
  timing("total (this browser)", ended - started);
}

// ---- the stream ---------------------------------------------------------------------------------------------

function errorText(body, fallback) {
  const error = body && body.error;
  if (!error) return fallback;
  return error.param ? `${error.message} (field: ${error.param})` : error.message || fallback;
}

// Parses server-sent events from the body as they arrive; calls onEvent(name, data) for each.
async function readEvents(response, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length && onEvent(name, data.join("\n")) === false) return;
    }
  }
}

function requestBody(question, toolCalls) {
  const body = {
    messages: [{ role: "user", content: question }],
    stream: true,
    stream_options: { include_usage: true },
    max_tokens: Number($("max-tokens").value) || 256,
  };
  const genmesh = { events: true }; // the named genmesh.* events: sources, tool results, degraded, timings
  const collection = $("collection").value.trim();
  if (collection) genmesh.retrieval = { collection };
  if (toolCalls.length) genmesh.tool_calls = toolCalls;
  body.genmesh = genmesh;
  return body;
}

function resetOutput() {
  clear($("answer"));
  clear($("sources"));
  clear($("tool-results"));
  clear($("degraded"));
  clear($("timings"));
  $("sources-note").textContent = "";
}

function finish(state, text) {
  setStatus(text, state);
  $("answer").setAttribute("aria-busy", "false");
  $("send").disabled = false;
  $("cancel").disabled = true;
  running = null;
}

async function ask(event) {
  event.preventDefault();
  if (running) return;
  const question = $("question").value.trim();
  if (!question) {
    setStatus("Type a question first.", "error");
    $("question").focus();
    return;
  }
  let toolCalls;
  try {
    toolCalls = pickedToolCalls();
  } catch (error) {
    setStatus(error.message, "error");
    return;
  }
  resetOutput();
  const answer = document.createTextNode("");
  $("answer").appendChild(answer);
  $("answer").setAttribute("aria-busy", "true");
  const current = { controller: new AbortController(), cancelled: false };
  running = current;
  $("send").disabled = true;
  $("cancel").disabled = false;
  setStatus("asking…", "running");
  const started = performance.now();
  let firstToken = null;
  let usage = null;
  let failure = null;
  try {
    const response = await fetch("v1/chat/completions", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify(requestBody(question, toolCalls)),
      signal: current.controller.signal,
    });
    if (!response.ok) {
      const body = await response.json().catch(() => null);
      finish("error", `error ${response.status}: ${errorText(body, response.statusText)}`);
      return;
    }
    setStatus("streaming…", "streaming");
    await readEvents(response, (name, data) => {
      if (data === "[DONE]") return false;
      const payload = JSON.parse(data);
      if (name === "message") {
        const choice = (payload.choices || [])[0];
        const text = choice && choice.delta && choice.delta.content;
        if (text) {
          if (firstToken === null) firstToken = performance.now();
          answer.appendData(text);
        }
        if (payload.usage) usage = payload.usage;
      } else if (name === "genmesh.sources") showSources(payload);
      else if (name === "genmesh.tool_result") showToolResult(payload);
      else if (name === "genmesh.degraded") showDegraded(payload);
      else if (name === "genmesh.timings") showTimings(payload);
      else if (name === "error") failure = errorText(payload, "the stream failed");
      return true;
    });
  } catch (error) {
    if (current.cancelled) return; // cancel() already said so
    finish("error", `error: ${error.message}`);
    return;
  }
  if (current.cancelled) return;
  showBrowserTimings(started, firstToken, performance.now());
  if (failure) finish("error", `error: ${failure}`);
  else {
    const tokens = usage ? ` (${usage.prompt_tokens} prompt, ${usage.completion_tokens} completion tokens)` : "";
    finish("done", `done${tokens}`);
  }
}

// Stops the generation on the server: aborting the fetch closes the connection, which the HTTP front turns into
// a cancelled gRPC call, so inference drops the sequence.
function cancel() {
  if (!running) return;
  running.cancelled = true;
  running.controller.abort();
  finish("cancelled", "cancelled");
}

document.addEventListener("DOMContentLoaded", () => {
  $("ask").addEventListener("submit", ask);
  $("cancel").addEventListener("click", cancel);
  loadTools();
});
