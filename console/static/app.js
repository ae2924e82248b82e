// The Soma console: one page, plain JavaScript, no build step. Every call carries the
// credential the operator signed in with; the console's server checks it on each call.
"use strict";

const state = { credential: sessionStorage.getItem("soma.credential") || "", who: null, notice: "" };
const main = document.getElementById("main");

// -- small helpers ---------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "text") el.textContent = v;
    else if (k === "style") el.style.cssText = v; // through the CSSOM, which the page's CSP allows
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// replaceChildren with what h() accepts: nested arrays, and nothing for null or false.
function fill(el, ...children) {
  el.replaceChildren(...children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false));
}

function json(value) { return h("pre", {}, JSON.stringify(value, null, 2)); }
function time(ts) { return ts ? new Date(ts * 1000).toISOString().replace("T", " ").slice(0, 23) : "-"; }
function short(s, n = 8) { return s ? String(s).slice(0, n) : "-"; }
function message(kind, text) { return h("p", { class: kind, role: kind === "error" ? "alert" : "status" }, text); }

class ApiError extends Error {
  constructor(status, text) { super(text); this.status = status; }
}

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${state.credential}` };
  if (options.body !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(path, {
    method: options.method || "GET",
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
    signal: options.signal,
  });
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { raw: text }; }
  if (!res.ok) {
    const why = (data && data.error && data.error.message) || `HTTP ${res.status}`;
    if (res.status === 401 && state.who) { signOut(why); }
    throw new ApiError(res.status, why);
  }
  return data;
}

function gatewayPath(path) { return `/console/api/gateway/${path}`; }

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (Array.isArray(v)) v.forEach((x) => q.append(k, x));
    else if (v !== "" && v !== null && v !== undefined) q.set(k, v);
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

function field(label, input) { return h("label", {}, label, input); }
function input(name, attrs = {}) { return h("input", { name, id: `f-${name}`, ...attrs }); }

function tenantField(value, empty = "all") {
  if (!state.who || !state.who.all_tenants) return null;
  return field(`Tenant (empty: ${empty})`, input("tenant", { value: value || "", placeholder: empty }));
}

// -- sign-in and navigation ------------------------------------------------------------------

let stopPage = () => {};

function signOut(why) {
  state.credential = "";
  state.who = null;
  sessionStorage.removeItem("soma.credential");
  document.getElementById("nav").hidden = true;
  document.getElementById("signout").hidden = true;
  document.getElementById("who").textContent = "";
  state.notice = why || "";
  if (location.hash !== "#/signin") location.hash = "#/signin";
  else renderSignIn();
}

function renderSignIn() {
  stopPage();
  const why = state.notice;
  state.notice = "";
  const credential = h("input", { id: "credential", type: "password", autocomplete: "off",
    required: true, placeholder: "sk-soma-… or an access token", size: 44 });
  const out = h("div", { id: "signin-message" }, why ? message("error", why) : null);
  const form = h("form", { class: "card signin", onsubmit: async (e) => {
    e.preventDefault();
    state.credential = credential.value.trim();
    try {
      state.who = await api("/console/api/session");
    } catch (err) {
      state.credential = "";
      out.replaceChildren(message("error", err.message));
      return;
    }
    sessionStorage.setItem("soma.credential", state.credential);
    showWho();
    location.hash = "#/live";
  } },
  h("h1", {}, "Sign in"),
  h("p", { class: "note" }, "An API key or access token with the operator or admin role."),
  field("API key or token", credential),
  h("p", {}, h("button", { class: "primary", type: "submit" }, "Sign in")),
  out);
  main.replaceChildren(form);
  credential.focus();
}

function showWho() {
  const w = state.who;
  document.getElementById("who").textContent =
    `${w.user} · ${w.roles.join(", ")} · ${w.all_tenants ? "all tenants" : `tenant ${w.tenant}`}`;
  document.getElementById("nav").hidden = false;
  document.getElementById("signout").hidden = false;
}

document.getElementById("signout").addEventListener("click", () => signOut());

const routes = [
  [/^#\/live$/, renderLive],
  [/^#\/story(?:\/(.+))?$/, (m) => renderStory(m[1] ? decodeURIComponent(m[1]) : "")],
  [/^#\/sagas$/, () => renderSagas()],
  [/^#\/sagas\/([^/]+)\/(.+)$/, (m) => renderSaga(decodeURIComponent(m[1]), decodeURIComponent(m[2]))],
  [/^#\/dead-letters$/, renderDeadLetters],
  [/^#\/streams$/, renderStreams],
  [/^#\/usage$/, renderUsage],
  [/^#\/keys$/, renderKeys],
];

async function route() {
  if (!state.credential) { renderSignIn(); return; }
  if (!state.who) {
    try { state.who = await api("/console/api/session"); showWho(); }
    catch (err) { signOut(err.message); return; }
  }
  stopPage();
  stopPage = () => {};
  const hash = location.hash || "#/live";
  for (const a of document.querySelectorAll("#nav a")) {
    a.toggleAttribute("aria-current", hash.startsWith(a.getAttribute("href")));
    if (a.hasAttribute("aria-current")) a.setAttribute("aria-current", "page");
  }
  for (const [pattern, render] of routes) {
    const m = hash.match(pattern);
    if (m) { await render(m); return; }
  }
  location.hash = "#/live";
}

window.addEventListener("hashchange", route);

// -- live events -------------------------------------------------------------------------------

async function* sse(path, signal) {
  const res = await fetch(path, { headers: { Authorization: `Bearer ${state.credential}` }, signal });
  if (!res.ok) {
    let why = `HTTP ${res.status}`;
    try { why = (await res.json()).error.message; } catch { /* keep the status */ }
    throw new ApiError(res.status, why);
  }
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).trimStart());
      }
      if (data.length) yield { event, data: JSON.parse(data.join("\n")) };
    }
  }
}

function messageRow(m, open) {
  const failed = String(m.schema).endsWith(".failed");
  return h("tr", { class: "clickable", "data-seq": `${m.stream}:${m.seq}`, "data-correlation": m.envelope.correlation_id || "" },
    h("td", { class: "mono" }, time(m.ts).slice(11)),
    h("td", { class: `kind-${m.kind}` }, m.kind),
    h("td", { class: failed ? "failed" : "" },
      h("button", { type: "button", class: "linkish", onclick: () => open(m) }, m.schema)),
    h("td", {}, m.tenant),
    h("td", { class: "mono" }, short(m.envelope.correlation_id)),
    h("td", { class: "mono note" }, m.dead_letter ? `reason: ${m.dead_letter.reason}` :
      JSON.stringify(m.body).slice(0, 90)));
}

function messageDetail(m) {
  const cid = m.envelope.correlation_id;
  return h("div", { class: "card", id: "detail" },
    h("h2", {}, `${m.schema} · ${m.stream} #${m.seq}`),
    cid ? h("p", {}, h("a", { href: `#/story/${encodeURIComponent(cid)}` }, "Open this request's story")) : null,
    h("p", { class: "mono" }, m.subject),
    h("h2", {}, "Envelope"), json(m.envelope),
    m.dead_letter ? [h("h2", {}, "Dead letter"), json(m.dead_letter)] : null,
    h("h2", {}, "Body"), json(m.body),
    h("details", {}, h("summary", {}, "All headers"), json(m.headers)));
}

function renderLive() {
  const saved = JSON.parse(sessionStorage.getItem("soma.live") || "{}");
  const status = h("span", { class: "status", id: "live-status", "data-state": "closed" }, "not connected");
  const rows = h("tbody", { id: "live-rows" });
  const detail = h("div", { id: "detail-slot" }, h("p", { class: "note" }, "Choose a message to see its envelope and body."));
  const errors = h("div", {});
  const streams = ["evt", "cmd", "dlq"].map((k) => h("label", { class: "inline" },
    h("input", { type: "checkbox", name: `s-${k}`, checked: (saved.streams || "evt,cmd,dlq").includes(k) }),
    { evt: "events", cmd: "commands", dlq: "dead letters" }[k]));
  const form = h("form", { class: "bar", id: "live-form" },
    tenantField(saved.tenant),
    field("Service", input("service", { value: saved.service || "", placeholder: "policy", size: 10 })),
    field("Type contains", input("type", { value: saved.type || "", placeholder: "chat", size: 12 })),
    field("Correlation id", input("correlation", { value: saved.correlation || "", size: 14 })),
    field("Text", input("text", { value: saved.text || "", size: 12 })),
    field("Replay from (UTC)", input("since", { type: "datetime-local", step: "1", value: "" })),
    h("fieldset", { class: "bar" }, h("legend", { class: "note" }, "Streams"), streams),
    h("button", { class: "primary", type: "submit" }, "Apply"),
    h("button", { type: "button", id: "pause", onclick: () => togglePause() }, "Pause"),
    h("button", { type: "button", onclick: () => { rows.replaceChildren(); } }, "Clear"),
    status);
  // While the pointer is over the list, new messages are held, as with Pause, so the row the
  // operator is about to click does not slide away under the pointer.
  const list = h("div", { class: "scroll", id: "live-list",
    onmouseenter: () => { pointing = true; },
    onmouseleave: () => { pointing = false; release(); } },
  h("table", {},
    h("thead", {}, h("tr", {}, ["time", "kind", "type", "tenant", "correlation", "body"].map((c) => h("th", {}, c)))),
    rows));
  main.replaceChildren(h("h1", {}, "Live events"), form, errors, h("div", { class: "split" }, list, detail));

  let controller = null;
  let paused = false;
  let pointing = false;
  const held = [];
  const open = (m) => { detail.replaceChildren(messageDetail(m)); };
  const show = (m) => {
    rows.prepend(messageRow(m, open));
    while (rows.children.length > 500) rows.lastChild.remove();
  };
  const live = () => {
    status.dataset.state = paused ? "paused" : "live";
    if (paused) status.textContent = `paused (${held.length} held)`;
    else status.textContent = held.length ? `live (${held.length} held while the pointer is on the list)` : "live";
  };
  function release() {
    if (paused || pointing) return;
    held.splice(0).forEach(show);
    live();
  }
  function togglePause() {
    paused = !paused;
    document.getElementById("pause").textContent = paused ? "Resume" : "Pause";
    live();
    release();
  }
  async function connect() {
    if (controller) controller.abort();
    controller = new AbortController();
    const f = new FormData(form);
    const chosen = ["evt", "cmd", "dlq"].filter((k) => f.get(`s-${k}`));
    const params = {
      streams: chosen.join(","), tenant: f.get("tenant") || "", service: f.get("service"),
      type: f.get("type"), correlation: f.get("correlation"), text: f.get("text"),
    };
    sessionStorage.setItem("soma.live", JSON.stringify({ ...params, since: undefined }));
    const since = f.get("since");
    if (since) params.since = `${since}Z`;
    status.dataset.state = "closed";
    status.textContent = "connecting…";
    errors.replaceChildren();
    rows.replaceChildren();
    held.splice(0);
    try {
      for await (const { event, data } of sse(`/console/api/events${query(params)}`, controller.signal)) {
        if (event === "ready") live();
        else if (event === "message") {
          if (paused || pointing) {
            held.push(data);
            if (held.length > 500) held.shift(); // the list shows no more than that either
            live();
          }
          else show(data);
        } else if (event === "dropped") errors.replaceChildren(message("note", `${data.count} messages skipped: the view fell behind`));
      }
      status.dataset.state = "closed"; status.textContent = "closed";
    } catch (err) {
      if (err.name === "AbortError") return;
      status.dataset.state = "closed"; status.textContent = "closed";
      errors.replaceChildren(message("error", err.message));
    }
  }
  form.addEventListener("submit", (e) => { e.preventDefault(); connect(); });
  stopPage = () => { if (controller) controller.abort(); };
  connect();
}

// -- a request's story -----------------------------------------------------------------------

async function renderStory(correlation) {
  const box = h("div", { id: "story" });
  const form = h("form", { class: "bar", onsubmit: (e) => {
    e.preventDefault();
    const cid = new FormData(form).get("correlation").trim();
    if (cid) location.hash = `#/story/${encodeURIComponent(cid)}`;
  } },
  field("Correlation id (a chat completion's id without chatcmpl-, a task id)",
    input("correlation", { value: correlation, size: 40, required: true })),
  tenantField(""),
  h("button", { class: "primary", type: "submit" }, "Show story"));
  main.replaceChildren(h("h1", {}, "A request's story"), form, box);
  if (!correlation) return;
  box.replaceChildren(h("p", { class: "note" }, "Reading the streams…"));
  let story;
  try { story = await api(`/console/api/story/${encodeURIComponent(correlation)}`); }
  catch (err) { box.replaceChildren(message("error", err.message)); return; }
  const steps = story.steps;
  const total = steps.length ? steps[steps.length - 1].since_first_ms : 0;
  const widest = Math.max(1, ...steps.map((s) => s.gap_ms));
  const detail = h("div", {});
  box.replaceChildren(
    h("p", {}, `${steps.length} messages over ${total.toFixed(1)} ms`),
    h("ol", { class: "timeline", id: "story-steps" },
      h("li", { class: "note" }, h("span", {}, "+ms"), h("span", {}, "gap"), h("span", {}, "hop"), h("span", {}, "message")),
      steps.map((s) => h("li", {},
        h("span", { class: "mono" }, s.since_first_ms.toFixed(1)),
        h("span", { title: `${s.gap_ms} ms` }, h("div", { class: "gap", style: `width:${Math.max(2, 70 * s.gap_ms / widest)}px` }), `${s.gap_ms.toFixed(1)}`),
        h("span", {}, s.hop),
        h("span", {}, h("span", { class: `kind-${s.kind}` }, s.kind), " ",
          h("button", { type: "button", class: String(s.schema).endsWith(".failed") ? "linkish failed" : "linkish",
            onclick: () => detail.replaceChildren(messageDetail(s)) }, s.schema))))),
    detail);
}

// -- sagas ---------------------------------------------------------------------------------------

async function renderSagas(cursor) {
  const saved = JSON.parse(sessionStorage.getItem("soma.sagas") || "{}");
  const list = h("div", { id: "saga-list" });
  const form = h("form", { class: "bar" },
    tenantField(saved.tenant, "your own"),
    field("Type", h("select", { name: "type" }, ["", "chat_turn", "agent_task"].map((t) =>
      h("option", { value: t, selected: saved.type === t }, t || "any")))),
    field("State", input("state", { value: saved.state || "", placeholder: "running", size: 12 })),
    field("Started before (UTC)", input("started_before", { type: "datetime-local", step: "1" })),
    field("Per page", input("limit", { type: "number", min: 1, max: 100, value: saved.limit || 20, size: 4 })),
    h("button", { class: "primary", type: "submit" }, "List"));
  main.replaceChildren(h("h1", {}, "Sagas"), form, list);
  const pages = [];
  async function load(before) {
    const f = new FormData(form);
    const until = f.get("started_before");
    if (!before && until) before = String(Date.parse(`${until}Z`) / 1000);
    const params = { tenant: f.get("tenant") || "", type: f.get("type"), state: f.get("state"), limit: f.get("limit") };
    sessionStorage.setItem("soma.sagas", JSON.stringify(params));
    let page;
    try { page = await api(`/console/api/sagas${query({ ...params, before })}`); }
    catch (err) { list.replaceChildren(message("error", err.message)); return; }
    list.replaceChildren(
      h("p", { class: "note" }, `tenant ${page.tenant} · ${page.data.length} shown`),
      h("table", {}, h("thead", {}, h("tr", {}, ["id", "type", "state", "waiting for", "started", "updated"].map((c) => h("th", {}, c)))),
        h("tbody", {}, page.data.map((s) => h("tr", {},
          h("td", { class: "mono" }, h("a", { href: `#/sagas/${encodeURIComponent(page.tenant)}/${encodeURIComponent(s.id)}` }, s.id)),
          h("td", {}, s.type), h("td", {}, s.state), h("td", {}, s.waiting_for.join(", ")),
          h("td", { class: "mono" }, time(s.created_at)), h("td", { class: "mono" }, time(s.updated_at)))))),
      h("p", { class: "bar" },
        pages.length ? h("button", { type: "button", onclick: () => { pages.pop(); load(pages[pages.length - 1]); } }, "Previous page") : null,
        page.next_cursor ? h("button", { type: "button", onclick: () => { pages.push(page.next_cursor); load(page.next_cursor); } }, "Next page") : null));
  }
  form.addEventListener("submit", (e) => { e.preventDefault(); pages.length = 0; load(); });
  await load(cursor);
}

async function renderSaga(tenant, id) {
  const out = h("div", { id: "saga-outcome", "aria-live": "polite" });
  const body = h("div", {});
  main.replaceChildren(h("p", {}, h("a", { href: "#/sagas" }, "← Sagas")), h("h1", {}, `Saga ${id}`), out, body);
  let saga;
  const ENDED = ["completed", "failed", "compensated", "compensation_failed", "cancelled", "terminated"];
  async function reload() {
    let fresh;
    try { fresh = await api(`/console/api/sagas/${encodeURIComponent(id)}${query({ tenant })}`); }
    catch (err) { body.replaceChildren(message("error", err.message)); return; }
    const changed = !saga || fresh.updated_at !== saga.updated_at || fresh.state !== saga.state;
    saga = fresh;
    if (changed) draw();
  }
  // A saga that has not ended is followed: its page redraws when it moves.
  const timer = setInterval(() => { if (saga && !ENDED.includes(saga.state)) reload(); }, 2000);
  stopPage = () => clearInterval(timer);
  async function act(path, payload, done) {
    try {
      await api(gatewayPath(`v1/tasks/${encodeURIComponent(id)}/${path}`), { method: "POST", body: payload });
      out.replaceChildren(message("ok", done));
    } catch (err) { out.replaceChildren(message("error", err.message)); }
    setTimeout(reload, 500);
  }
  function draw() {
    const ended = ENDED.includes(saga.state);
    const isTask = saga.type === "agent_task";
    const awaitingApproval = saga.waiting_for.includes("signal:approve");
    const signalName = input("signal-name", { value: "approve", size: 12 });
    const signalBody = h("textarea", { name: "signal-payload", rows: 2, cols: 40 }, '{"approved": true}');
    fill(body,
      h("div", { class: "card" }, h("dl", { class: "kv" },
        h("dt", {}, "type"), h("dd", {}, `${saga.type} v${saga.version}`),
        h("dt", {}, "tenant"), h("dd", {}, saga.tenant),
        h("dt", {}, "state"), h("dd", { id: "saga-state" }, saga.state),
        h("dt", {}, "waiting for"), h("dd", {}, saga.waiting_for.join(", ") || "-"),
        h("dt", {}, "started"), h("dd", {}, time(saga.created_at)),
        h("dt", {}, "updated"), h("dd", {}, time(saga.updated_at)),
        h("dt", {}, "story"), h("dd", {}, h("a", { href: `#/story/${encodeURIComponent(saga.id)}` }, "Open this saga's story")))),
      !ended && isTask ? h("div", { class: "card bar" },
        awaitingApproval ? h("button", { class: "primary", type: "button", id: "approve",
          onclick: () => act("signal", { name: "approve", payload: { approved: true, by: state.who.user } }, "Approval sent.") }, "Approve") : null,
        awaitingApproval ? h("button", { type: "button", id: "reject",
          onclick: () => act("signal", { name: "approve", payload: { approved: false, by: state.who.user } }, "Rejection sent.") }, "Reject") : null,
        field("Signal", signalName), field("Payload (JSON)", signalBody),
        h("button", { type: "button", onclick: () => {
          let payload;
          try { payload = JSON.parse(signalBody.value || "{}"); }
          catch { out.replaceChildren(message("error", "The payload is not JSON.")); return; }
          act("signal", { name: signalName.value, payload }, `Signal ${signalName.value} sent.`);
        } }, "Send signal"),
        h("button", { class: "danger", type: "button", onclick: () => {
          if (confirm(`Cancel saga ${id}? Its compensations run in reverse.`)) act("cancel", { reason: `cancelled from the console by ${state.who.user}` }, "Cancellation sent.");
        } }, "Cancel")) : null,
      !ended && !isTask ? h("p", { class: "note" }, "The API offers signals and cancellation for agent tasks; for this saga use `soma saga signal` or `soma saga cancel`.") : null,
      saga.parent_id ? h("p", {}, "Started by ", h("a", { href: `#/sagas/${encodeURIComponent(saga.tenant)}/${encodeURIComponent(saga.parent_id)}` }, saga.parent_id)) : null,
      saga.children.length ? [h("h2", {}, "Children"), h("ul", { id: "saga-children" }, saga.children.map((c) =>
        h("li", {}, h("a", { href: `#/sagas/${encodeURIComponent(saga.tenant)}/${encodeURIComponent(c)}` }, c))))] : null,
      h("h2", {}, "Input"), json(saga.input),
      saga.data ? [h("h2", {}, "Data"), h("div", { id: "saga-data" }, json(saga.data))] : null,
      saga.result ? [h("h2", {}, "Result"), h("div", { id: "saga-result" }, json(saga.result))] : null,
      saga.error ? [h("h2", {}, "Error"), h("p", { class: "error" }, saga.error)] : null,
      h("h2", {}, "History"),
      h("ol", { class: "timeline", id: "saga-history" }, saga.history.map((step, i) => h("li", {},
        h("span", { class: "mono" }, time(step.at).slice(11)),
        h("span", { class: "mono" }, i ? `+${((step.at - saga.history[i - 1].at) * 1000).toFixed(0)} ms` : ""),
        h("span", {}, step.kind),
        h("span", { class: "mono" }, step.detail)))));
  }
  await reload();
}

// -- dead letters ----------------------------------------------------------------------------

async function renderDeadLetters() {
  const out = h("div", { id: "dlq-outcome", "aria-live": "polite" });
  const list = h("div", {});
  const detail = h("div", {});
  const form = h("form", { class: "bar" },
    tenantField(""),
    field("Service", input("service", { size: 10 })),
    field("Text", input("text", { size: 14 })),
    h("button", { class: "primary", type: "submit" }, "List"),
    h("button", { type: "button", id: "replay-all", onclick: () => replayAll() }, "Replay all shown"));
  main.replaceChildren(h("h1", {}, "Dead letters"), form, out, h("div", { class: "split" }, list, detail));
  const outcome = (o) => o.replayed
    ? message("ok", `Dead letter ${o.seq} replayed to ${o.subject}.`)
    : message("error", `Dead letter ${o.seq} stays: ${o.reasons.join("; ")}`);
  async function replayOne(seq) {
    try { out.replaceChildren(outcome(await api(`/console/api/dead-letters/${seq}/replay`, { method: "POST", body: {} }))); }
    catch (err) { out.replaceChildren(message("error", err.message)); }
    await load();
  }
  async function replayAll() {
    const f = new FormData(form);
    try {
      const done = await api("/console/api/dead-letters/replay", { method: "POST",
        body: { tenant: f.get("tenant") || null, service: f.get("service") || null, text: f.get("text") || null } });
      out.replaceChildren(h("div", {}, message("ok", `${done.data.filter((o) => o.replayed).length} of ${done.data.length} replayed.`), done.data.map(outcome)));
    } catch (err) { out.replaceChildren(message("error", err.message)); }
    await load();
  }
  async function load() {
    const f = new FormData(form);
    let page;
    try { page = await api(`/console/api/dead-letters${query({ tenant: f.get("tenant") || "" })}`); }
    catch (err) { list.replaceChildren(message("error", err.message)); return; }
    const service = f.get("service"); const text = (f.get("text") || "").toLowerCase();
    const letters = page.data.filter((l) => (!service || l.service === service) && (!text || JSON.stringify(l).toLowerCase().includes(text)));
    list.replaceChildren(letters.length ? h("table", { id: "dlq-table" },
      h("thead", {}, h("tr", {}, ["#", "time", "tenant", "from", "original subject", "reason", ""].map((c) => h("th", {}, c)))),
      h("tbody", {}, letters.map((l) => h("tr", {},
        h("td", { class: "num" }, h("button", { type: "button", onclick: () => detail.replaceChildren(messageDetail(l)) }, String(l.seq))),
        h("td", { class: "mono" }, time(l.ts).slice(11)), h("td", {}, l.tenant), h("td", {}, l.service),
        h("td", { class: "mono" }, l.dead_letter.subject), h("td", { class: "failed" }, l.dead_letter.reason),
        h("td", {}, h("button", { type: "button", class: "replay", onclick: () => replayOne(l.seq) }, "Replay"))))))
      : h("p", { class: "note", id: "dlq-empty" }, "No dead letters."));
  }
  form.addEventListener("submit", (e) => { e.preventDefault(); load(); });
  await load();
}

// -- streams -------------------------------------------------------------------------------------

async function renderStreams() {
  const box = h("div", { id: "streams" });
  const auto = h("input", { type: "checkbox", checked: true, id: "auto-refresh" });
  main.replaceChildren(h("h1", {}, "Streams and consumers"),
    h("p", { class: "bar" }, h("label", { class: "inline" }, auto, "refresh every 2 s")), box);
  let previous = null;
  async function load() {
    let page;
    try { page = await api("/console/api/streams"); }
    catch (err) { box.replaceChildren(message("error", err.message)); return; }
    const now = Date.now() / 1000;
    const rate = (s) => {
      if (!previous || !previous.seqs[s.name]) return "-";
      return ((s.last_seq - previous.seqs[s.name]) / Math.max(0.001, now - previous.at)).toFixed(1);
    };
    box.replaceChildren(...page.data.map((s) => h("div", { class: "card" },
      h("h2", {}, `${s.name} — ${s.messages} messages, ${(s.bytes / 1024).toFixed(1)} KiB, ${rate(s)} msg/s`),
      h("p", { class: "mono note" }, s.subjects.join(" ")),
      s.consumers.length ? h("table", {}, h("thead", {}, h("tr", {}, ["consumer", "durable", "lag (pending)", "in flight", "redelivered", "waiting pulls"].map((c) => h("th", {}, c)))),
        h("tbody", {}, s.consumers.map((c) => h("tr", {},
          h("td", { class: "mono" }, c.name), h("td", {}, c.durable ? "yes" : "no"),
          h("td", { class: "num" }, c.pending), h("td", { class: "num" }, c.ack_pending),
          h("td", { class: "num" }, c.redelivered), h("td", { class: "num" }, c.waiting))))) : h("p", { class: "note" }, "No consumers."))));
    previous = { at: now, seqs: Object.fromEntries(page.data.map((s) => [s.name, s.last_seq])) };
  }
  const timer = setInterval(() => { if (auto.checked) load(); }, 2000);
  stopPage = () => clearInterval(timer);
  await load();
}

// -- usage -----------------------------------------------------------------------------------------

async function renderUsage() {
  const box = h("div", { id: "usage" });
  const form = h("form", { class: "bar" },
    field("Group by", h("select", { name: "group_by" }, ["model", "day", "saga_type", "user", "key"].map((g) => h("option", { value: g }, g)))),
    field("Then by", h("select", { name: "then_by" }, ["", "day", "model", "user"].map((g) => h("option", { value: g }, g || "nothing")))),
    h("button", { class: "primary", type: "submit" }, "Show"));
  main.replaceChildren(h("h1", {}, "Usage"), h("p", { class: "note" }, `Tenant ${state.who.tenant}, from the analytics service through the API.`), form, box);
  function chart(title, rows, value, fmt) {
    const top = Math.max(1e-9, ...rows.map(value));
    return h("div", { class: "card" }, h("h2", {}, title), h("div", { class: "chart" },
      rows.map((r) => [h("span", { class: "mono" }, Object.values(r.group).join(" · ") || "all"),
        h("div", { class: "bar-fill", style: `width:${Math.max(1, 100 * value(r) / top)}%`, role: "img", "aria-label": fmt(value(r)) }),
        h("span", { class: "num" }, fmt(value(r)))])));
  }
  async function load() {
    const f = new FormData(form);
    const group = [f.get("group_by"), f.get("then_by")].filter((g, i, all) => g && all.indexOf(g) === i);
    let report;
    try { report = await api(gatewayPath(`v1/usage${query({ group_by: group })}`)); }
    catch (err) { box.replaceChildren(message("error", err.message)); return; }
    const rows = report.data;
    if (!rows.length) { box.replaceChildren(h("p", { class: "note" }, "No usage recorded yet.")); return; }
    box.replaceChildren(
      chart("Tokens", rows, (r) => r.total_tokens, (v) => v.toLocaleString()),
      chart("Cost (USD)", rows, (r) => r.cost_usd, (v) => `$${v.toFixed(4)}`),
      chart("Average latency", rows, (r) => r.latency_ms_avg, (v) => `${v.toFixed(0)} ms`),
      chart("Requests", rows, (r) => r.requests, (v) => String(v)));
  }
  form.addEventListener("submit", (e) => { e.preventDefault(); load(); });
  await load();
}

// -- keys and tenants ----------------------------------------------------------------------------

async function renderKeys() {
  const out = h("div", { "aria-live": "polite", id: "keys-outcome" });
  const keys = h("div", {});
  const tenants = h("div", {});
  const keyForm = h("form", { class: "bar" },
    field("User", h("select", { name: "user_id", id: "f-user_id", required: true })),
    field("Name", input("name", { size: 14 })),
    field("Roles (comma-separated; empty: the user's)", input("roles", { size: 18 })),
    h("button", { class: "primary", type: "submit" }, "Create key"));
  const tenantForm = h("form", { class: "bar" },
    field("Tenant id", input("id", { required: true, pattern: "[a-z0-9][a-z0-9_-]{0,62}", size: 14 })),
    field("Name", input("tname", { size: 18 })),
    h("button", { class: "primary", type: "submit" }, "Create tenant"));
  main.replaceChildren(h("h1", {}, "Keys and tenants"), out,
    h("h2", {}, `API keys of tenant ${state.who.tenant}`), keyForm, keys,
    h("h2", {}, "Tenants"), tenantForm, tenants);
  async function loadKeys() {
    let page;
    try { page = await api(gatewayPath("v1/admin/keys")); }
    catch (err) { keys.replaceChildren(message("error", err.message)); return; }
    keys.replaceChildren(h("table", { id: "keys-table" }, h("thead", {}, h("tr", {}, ["id", "user", "name", "roles", "created", "revoked", ""].map((c) => h("th", {}, c)))),
      h("tbody", {}, page.data.map((k) => h("tr", {},
        h("td", { class: "mono" }, k.id), h("td", {}, k.user), h("td", {}, k.name), h("td", {}, k.roles.join(", ")),
        h("td", { class: "mono" }, time(k.created_at)), h("td", { class: "mono" }, k.revoked_at ? time(k.revoked_at) : "-"),
        h("td", {}, k.revoked_at ? null : h("button", { class: "danger", type: "button", onclick: async () => {
          if (!confirm(`Revoke key ${k.id}?`)) return;
          try { await api(gatewayPath(`v1/admin/keys/${encodeURIComponent(k.id)}`), { method: "DELETE" }); out.replaceChildren(message("ok", `Key ${k.id} revoked.`)); }
          catch (err) { out.replaceChildren(message("error", err.message)); }
          loadKeys();
        } }, "Revoke")))))));
  }
  async function loadUsers() {
    let page;
    try { page = await api(gatewayPath("v1/admin/users")); }
    catch (err) { out.replaceChildren(message("error", err.message)); return; }
    fill(keyForm.querySelector("select[name=user_id]"),
      page.data.map((u) => h("option", { value: u.id }, `${u.name} (${u.roles.join(", ")})`)));
  }
  async function loadTenants() {
    let page;
    try { page = await api(gatewayPath("v1/admin/tenants")); }
    catch (err) { tenants.replaceChildren(message("note", err.message)); return; }
    tenants.replaceChildren(h("table", {}, h("thead", {}, h("tr", {}, ["id", "name", "created"].map((c) => h("th", {}, c)))),
      h("tbody", {}, page.data.map((t) => h("tr", {}, h("td", { class: "mono" }, t.id), h("td", {}, t.name), h("td", { class: "mono" }, time(t.created_at)))))));
  }
  keyForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = new FormData(keyForm);
    const roles = String(f.get("roles") || "").split(",").map((r) => r.trim()).filter(Boolean);
    try {
      const made = await api(gatewayPath("v1/admin/keys"), { method: "POST",
        body: { user_id: f.get("user_id"), name: f.get("name") || "", roles: roles.length ? roles : null } });
      out.replaceChildren(h("div", { class: "ok" }, "New key (shown once, copy it now): ", h("code", { id: "new-key" }, made.key)));
    } catch (err) { out.replaceChildren(message("error", err.message)); }
    loadKeys();
  });
  tenantForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = new FormData(tenantForm);
    try {
      await api(gatewayPath("v1/admin/tenants"), { method: "POST", body: { id: f.get("id"), name: f.get("tname") || null } });
      out.replaceChildren(message("ok", `Tenant ${f.get("id")} created.`));
    } catch (err) { out.replaceChildren(message("error", err.message)); }
    loadTenants();
  });
  await Promise.all([loadUsers(), loadKeys(), loadTenants()]);
}

route();
