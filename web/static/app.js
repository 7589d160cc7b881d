// The status page: renders what /api/stream sends, asks the JSON API for the rest; actions for a logged-in operator.
"use strict";

const state = { user: null, canAct: false, status: null, events: [], page: "status", plot: null, focus: null,
                scrolledTo: null, notificationsAsked: 0 };
const NOTIFICATIONS_EVERY_S = 5;   // how often the alarms page asks again what the notifier sent and what waits

// --- small helpers -------------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "on") for (const [kind, fn] of Object.entries(value)) node.addEventListener(kind, fn);
    else if (value !== undefined && value !== null) node.setAttribute(key, value);
  }
  for (const child of children) node.append(child === undefined || child === null ? "" : child);
  return node;
}

function age(seconds) {
  if (typeof seconds !== "number") return "";
  seconds = Math.max(0, seconds);
  if (seconds < 120) return `${seconds.toFixed(0)}s`;
  if (seconds < 7200) return `${(seconds / 60).toFixed(0)}m`;
  return `${(seconds / 3600).toFixed(1)}h`;
}

function size(bytes) {
  if (typeof bytes !== "number") return "";
  for (const unit of ["B", "K", "M", "G"]) {
    if (bytes < 1024 || unit === "G") return `${bytes.toFixed(0)}${unit}`;
    bytes /= 1024;
  }
}

function clock(ts) {
  return typeof ts === "number" ? new Date(ts * 1000).toLocaleString() : "";
}

function say(text, bad) {
  const node = document.getElementById("message");
  node.textContent = text;
  node.className = bad ? "bad" : "";
}

async function api(path, body) {
  const options = body === undefined ? {} :
    { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const response = await fetch(path, options);
  const answer = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(answer.error || response.statusText);
  return answer;
}

async function action(label, path, body) {
  say(`${label}…`);
  try {
    const answer = await api(path, body || {});
    say(`${label}: done`);
    return answer;
  } catch (exc) {
    say(`${label}: ${exc.message}`, true);
    return null;
  }
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

// --- the operator ----------------------------------------------------------------------------------

async function whoami() {
  const me = await api("/api/whoami");
  state.user = me.user;
  state.canAct = me.can_act;
  document.getElementById("login").hidden = !me.can_act || !!me.user;
  document.getElementById("user").hidden = !me.user;
  document.getElementById("user").textContent = me.user ? `operator ${me.user}` : "";
  document.getElementById("logout").hidden = !me.user;
  if (state.status) renderStatus(state.status);
  if (state.page === "settings") showSettings().catch(() => {});
  if (state.page === "alarms") showAlarms().catch(() => {});   // its acknowledge buttons are an operator's
}

document.getElementById("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    await api("/api/login", { name: document.getElementById("login-name").value,
                              password: document.getElementById("login-password").value });
    document.getElementById("login-password").value = "";
    say("");
  } catch (exc) {
    say(exc.message, true);
  }
  await whoami();
});

document.getElementById("logout").addEventListener("click", async () => {
  await api("/api/logout", {});
  await whoami();
});

// --- the status page -------------------------------------------------------------------------------

function renderHeader(status) {
  const server = status.server || {};
  const run = status.run || {};
  const current = run.current_run || {};
  document.getElementById("experiment").textContent = server.experiment || run.experiment || "?";
  document.title = `Orbit ${server.experiment || ""}`;
  document.getElementById("server").textContent =
    `server ${server.instance || "?"} up ${age(server.uptime)} · ${server.clients ?? "?"} clients`;
  const runNode = document.getElementById("run");
  if (!status.run) {
    runNode.replaceChildren(el("span", { class: "lost" }, `run: unknown (${status.run_error || "no run controller"})`));
    return;
  }
  const running = run.state === "RUN" && current.start ? ` for ${age(status.taken - current.start)}` : "";
  runNode.replaceChildren("run ", el("span", { class: run.state, id: "run-state" }, run.state),
    ` number ${run.run ?? status.last_run ?? "-"}${running}`, current.comment ? ` “${current.comment}”` : "");
}

function renderBanner(status) {
  const alarms = (status.run && status.run.alarms) || [];
  fill(document.getElementById("alarms-banner"), alarms.map((alarm) => {
    const kind = alarm.acked ? "alarm-acked" : alarm.state === "cleared" ? "alarm-cleared" : "alarm-new";
    const tail = (alarm.state === "cleared" ? " (cleared)" : "") + (alarm.acked ? ` acked by ${alarm.acked.by}` : "");
    return el("div", { class: `${kind} severity-${alarm.severity}`, "data-alarm": alarm.alarm },
      `${alarm.severity.toUpperCase()} ${alarm.message} [${alarm.alarm}] ${age(status.taken - alarm.raised)} ago${tail} `,
      state.user && !alarm.acked ? el("button", { class: "action", on: { click: () =>
        action(`ack ${alarm.alarm}`, `/api/alarms/${encodeURIComponent(alarm.alarm)}/ack`) } }, "acknowledge") : "");
  }));
}

function renderMaintenance(status) {
  const windows = status.maintenance || [];
  fill(document.getElementById("maintenance-banner"), windows.map((window) =>
    el("div", {}, `${window.text} `, el("a", { href: "#alarms" }, "notifications"))));
  document.getElementById("maintenance-controls").hidden = !state.user;
  document.getElementById("maintenance-end").disabled = windows.length === 0;
}

function renderControls(status) {
  const node = document.getElementById("run-controls");
  if (!state.user || !status.run) {
    node.replaceChildren();
    return;
  }
  if (node.dataset.state === status.run.state && node.childElementCount) return; // keep what is being typed
  node.dataset.state = status.run.state;
  const comment = el("input", { id: "run-comment", placeholder: "comment", size: 40 });
  const button = (label, name, body) => el("button", { class: "action", id: `do-${name}`,
    on: { click: () => action(label, `/api/run/${name}`, body ? body() : {}) } }, label);
  const byState = {
    STOP: [button("prepare run", "prepare_run")],
    READY: [comment, button("begin run", "begin_run", () => ({ comment: comment.value })), button("abort", "abort_run")],
    RUN: [button("end run", "end_run"), button("abort", "abort_run")],
  };
  node.replaceChildren(...(byState[status.run.state] || []));
}

function programRow(name, info, taken) {
  const cell = (cls, text) => el("td", { class: cls }, text);
  return el("tr", { "data-program": name },
    cell("name", info.config_changed ? `${name}*` : name), cell(`state ${info.state}`, info.state), cell("host", info.host), cell("pid", info.pid ?? ""),
    cell("uptime", age(info.uptime)), cell("restarts", String(info.restarts ?? "")),
    cell("heartbeat", age(info.heartbeat_age)),
    cell("cpu", typeof info.cpu_percent === "number" ? info.cpu_percent.toFixed(0) : ""), cell("rss", size(info.rss)),
    el("td", {}, state.user ? el("button", { class: "action", on: { click: () =>
      action(`restart ${name}`, `/api/programs/${encodeURIComponent(name)}/restart`) } }, "restart") : ""));
}

function hostRow(name, info) {
  const figures = info.figures || {};
  const load = (figures.load || [])[0];
  return el("tr", { "data-host": name }, el("td", {}, name),
    el("td", { class: info.reachable ? "up" : "LOST" }, info.reachable ? "up" : "LOST"),
    el("td", {}, typeof load === "number" ? load.toFixed(2) : ""),
    el("td", {}, typeof figures.cpu_percent === "number" ? figures.cpu_percent.toFixed(0) : ""),
    el("td", {}, typeof figures.memory_percent === "number" ? figures.memory_percent.toFixed(0) : ""),
    el("td", {}, size(figures.disk_free)), el("td", {}, info.reachable ? "" : info.problem || ""));
}

function renderStatus(status) {
  state.status = status;
  renderHeader(status);
  renderBanner(status);
  renderMaintenance(status);
  renderControls(status);
  if (state.page === "alarms" && status.taken - state.notificationsAsked >= NOTIFICATIONS_EVERY_S) {
    showNotifications().catch(() => {});
  }
  renderSequencer(status);
  if (state.page === "settings" && runState() !== state.settingsDrawnIn) showSettings().catch(() => {});
  const run = status.run || {};
  fill(document.querySelector("#programs tbody"),
       Object.entries(run.programs || {}).map(([name, info]) => programRow(name, info, status.taken)));
  const hosts = Object.entries(run.hosts || {});
  document.getElementById("hosts").hidden = hosts.length === 0;
  fill(document.querySelector("#hosts tbody"), hosts.map(([name, info]) => hostRow(name, info)));
  const rates = status.rates || {};
  document.getElementById("rates").textContent = typeof rates.msgs_in_per_s === "number"
    ? `server: ${rates.msgs_in_per_s.toFixed(0)} msg/s in, ${rates.msgs_out_per_s.toFixed(0)} out; ${status.dropped ?? 0} dropped`
    : "";
}

// --- runs, alarms, events --------------------------------------------------------------------------

async function showRuns() {
  const records = await api("/api/runs?n=200");
  fill(document.querySelector("#runs tbody"), records.map((r) => el("tr", { "data-run": r.run },
    el("td", {}, String(r.run)), el("td", { class: "result" }, r.result), el("td", {}, clock(r.start)),
    el("td", {}, age(r.duration ?? (r.start ? Date.now() / 1000 - r.start : null))),
    el("td", { class: "comment" }, r.comment || ""), el("td", {}, (r.participants || []).join(", ")),
    el("td", { class: "detail" }, r.why || ""))));
}

async function showAlarms() {
  const answer = await api("/api/alarms?log=200");
  fill(document.querySelector("#alarms tbody"), answer.alarms.map((a) => el("tr", { "data-alarm": a.alarm },
    el("td", {}, a.alarm), el("td", { class: `severity-${a.severity}` }, a.severity),
    el("td", { class: "message" }, a.message),
    el("td", {}, a.value ?? ""), el("td", {}, clock(a.raised)), el("td", {}, a.state),
    el("td", {}, a.acked ? `${a.acked.by}, ${clock(a.acked.at)}` : ""),
    el("td", {}, state.user && !a.acked ? el("button", { class: "action", on: { click: () =>
      action(`ack ${a.alarm}`, `/api/alarms/${encodeURIComponent(a.alarm)}/ack`).then(showAlarms) } },
      "acknowledge") : ""))));
  fill(document.querySelector("#alarm-log tbody"), (answer.log || []).slice().reverse().map((e) =>
    el("tr", { "data-alarm": e.alarm },
      el("td", {}, clock(e.ts)), el("td", {}, e.change), el("td", {}, e.alarm),
      el("td", { class: "detail" }, e.message || (e.acked ? `by ${e.acked.by}` : JSON.stringify(e.result ?? e.why ?? ""))))));
  focusAlarm(answer.alarms.some((a) => a.alarm === state.focus));
  await showNotifications();
}

// The alarm a message's link names (#alarms/NAME): its row marked, and scrolled to once.
function focusAlarm(standing) {
  const note = document.getElementById("alarm-focus");
  const rows = [...document.querySelectorAll("#alarms tr[data-alarm], #alarm-log tr[data-alarm]")];
  for (const row of rows) row.classList.toggle("focus", row.dataset.alarm === state.focus);
  note.hidden = !state.focus || standing;
  note.textContent = state.focus && !standing
    ? `no alarm ${state.focus} stands now (cleared and acknowledged); its changes, if any, are marked in the log` : "";
  const first = rows.find((row) => row.dataset.alarm === state.focus);
  if (first && state.scrolledTo !== state.focus) {
    first.scrollIntoView({ block: "center" });
    state.scrolledTo = state.focus;
  }
}

async function showNotifications() {
  state.notificationsAsked = state.status ? state.status.taken : 0;
  const summary = document.getElementById("notify-summary");
  let answer;
  try {
    answer = await api("/api/run/notifications?n=20");
  } catch (exc) {
    summary.textContent = `notifications: ${exc.message}`;
    summary.className = "bad";
    for (const table of ["#notify-pending", "#notify-sent"]) fill(document.querySelector(`${table} tbody`), []);
    return;
  }
  summary.textContent = `${answer.pending.length} waiting to be sent, ${answer.failing} failing` +
    (answer.maintenance.length ? `; maintenance: ${answer.maintenance.length} window(s) open` : "");
  summary.className = answer.failing ? "bad" : "";
  fill(document.querySelector("#notify-pending tbody"), answer.pending.map((d) => el("tr", { "data-delivery": d.id },
    el("td", {}, String(d.id)), el("td", {}, d.route), el("td", {}, d.kind), el("td", {}, d.alarm),
    el("td", {}, clock(d.created)), el("td", {}, String(d.attempts)), el("td", {}, clock(d.next_at)),
    el("td", { class: "detail bad" }, d.error || ""))));
  fill(document.querySelector("#notify-sent tbody"), answer.sent.slice().reverse().map((e) => el("tr", { "data-delivery": e.id },
    el("td", {}, clock(e.ts)), el("td", {}, e.route), el("td", {}, e.kind), el("td", {}, e.alarm),
    el("td", { class: "detail" }, e.title), el("td", {}, String(e.attempt)),
    el("td", { class: e.ok ? "up" : "detail bad" }, e.ok ? "sent" : e.error || "failed"))));
}

function namesIn(id) {
  return document.getElementById(id).value.split(",").map((name) => name.trim()).filter((name) => name);
}

document.getElementById("maintenance-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = { minutes: Number(document.getElementById("maintenance-minutes").value),
                 reason: document.getElementById("maintenance-reason").value.trim() };
  for (const [key, id] of [["alarms", "maintenance-alarms"], ["programs", "maintenance-programs"]]) {
    const names = namesIn(id);
    if (names.length) body[key] = names;
  }
  if (await action("start maintenance", "/api/run/maintenance", body)) {
    document.getElementById("maintenance-reason").value = "";
    showNotifications().catch(() => {});
  }
});

document.getElementById("maintenance-end").addEventListener("click", async () => {
  if (await action("end maintenance", "/api/run/maintenance", { end: true })) showNotifications().catch(() => {});
});

function eventText(e) {
  const skip = new Set(["kind", "ts", "from", "tail", "actions", "meta"]);
  if (e.message) return e.message;
  return Object.entries(e).filter(([k, v]) => !skip.has(k) && v !== null && v !== undefined)
    .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(" ");
}

function renderEvents() {
  fill(document.querySelector("#events tbody"), state.events.slice(0, 300).map((e) => el("tr", {},
    el("td", {}, clock(e.ts)), el("td", { class: eventClass(e) }, e.kind), el("td", { class: "detail" }, eventText(e)))));
}

function eventClass(e) {
  if (e.kind === "alarm_raised") return `severity-${e.severity}`;
  if (e.kind === "sequence_paused" || e.kind === "maintenance") return "paused";
  return /fatal|lost|unreachable|sequence_aborted/.test(e.kind) ? "bad" : "";
}

async function loadEvents() {
  state.events = await api("/api/events?n=200");
  renderEvents();
  renderSequenceEvents();
}

// --- sequences -----------------------------------------------------------------------------------------

// Each button: the sequencer's command, its body, and whether it applies to the sequencer's status.
const SEQUENCER_BUTTONS = {
  "seq-start": ["start", () => ({}), (seq) => seq.state === "stopped" && seq.queue.length > 0],
  "seq-pause": ["pause", () => ({ why: why() }), (seq) => seq.state === "running"],
  "seq-pause-now": ["pause", () => ({ at_once: true, why: why() }),
                    (seq) => seq.state === "running" || (seq.state === "pausing" && !seq.paused.at_once)],
  "seq-resume": ["resume", () => ({}), (seq) => !!seq.paused],   // paused, or pausing after its step
  "seq-skip": ["skip", () => ({}), (seq) => taking(seq)],
  "seq-abort": ["abort", () => ({ why: why() }), (seq) => taking(seq)],
};

function taking(seq) {
  return !!seq.current || seq.state === "running";
}

function why() {
  return document.getElementById("sequence-why").value.trim() || undefined;
}

function loopText(loop) {
  return Object.entries(loop || {}).map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ");
}

function renderSequencer(status) {
  const seq = status.sequencer;
  const operator = !!state.user && !!seq;
  document.getElementById("sequence-controls").hidden = !state.user;
  document.getElementById("sequence-form").hidden = !state.user;
  for (const [id, [, , applies]] of Object.entries(SEQUENCER_BUTTONS)) {
    document.getElementById(id).disabled = !(operator && applies(seq));
  }
  for (const id of ["seq-queue", "seq-dry-run"]) document.getElementById(id).disabled = !operator;
  const line = document.getElementById("sequencer");
  if (!seq) {
    line.replaceChildren(el("span", { class: "lost" }, `no sequencer: ${status.sequencer_error || "not registered"}`));
    renderStep(null);
    for (const table of ["#sequence-queue", "#sequence-finished"]) fill(document.querySelector(`${table} tbody`), []);
    document.getElementById("sequence-queue-left").textContent = "";
    return;
  }
  const paused = seq.paused;
  line.replaceChildren("sequencer ", el("span", { class: `seq-${seq.state}`, id: "sequencer-state" }, seq.state),
    paused ? el("span", { class: "paused", id: "sequencer-paused" },
      ` ${paused.at_once ? "at once" : "after its step"}: ${paused.why} (by ${paused.by}, ${clock(paused.at)})`) : "");
  renderStep(seq.current, status.taken);
  fill(document.querySelector("#sequence-queue tbody"), seq.queue.map((e) => el("tr", { "data-entry": e.id },
    el("td", {}, e.id), el("td", {}, e.sequence), el("td", {}, String(e.steps)),
    el("td", { class: `state seq-${e.state}` }, e.state), el("td", { class: "detail" }, loopText(e.given)),
    el("td", {}, clock(e.queued)), el("td", {}, e.by || ""))));
  document.getElementById("sequence-queue-left").textContent = seq.queue_left_s
    ? `the sequences waiting: about ${age(seq.queue_left_s)}` : "";
  fill(document.querySelector("#sequence-finished tbody"), seq.finished.slice().reverse().map((e) =>
    el("tr", { "data-entry": e.id }, el("td", {}, e.id), el("td", {}, e.sequence), el("td", {}, String(e.steps)),
      el("td", { class: `state seq-${e.state}` }, e.state), el("td", {}, clock(e.ended)),
      el("td", { class: "detail" }, e.why || ""))));
}

function renderStep(current, taken) {
  const bar = document.getElementById("sequence-progress");
  bar.hidden = !current;
  if (!current) {
    fill(document.querySelector("#sequence-step tbody"), [el("tr", {}, el("td", {}, "no step running"))]);
    return;
  }
  bar.max = current.steps;
  bar.value = current.index;
  bar.title = `${current.index} of ${current.steps} steps done`;
  const rows = [
    ["sequence", `${current.sequence} (${current.id})`],
    ["step", `${Math.min(current.index + 1, current.steps)}/${current.steps}`],
    ["kind", current.kind || ""], ["where", current.where || ""], ["loop", loopText(current.loop)],
    ["run", String(current.run ?? "")], ["attempt", String(current.attempt ?? "")], ["phase", current.phase],
    ["waiting for", current.waiting_for || ""],
    ["spent", `${age(current.elapsed_s)} in this sequence, ${age(taken - current.step_since)} in this step`],
    ["left", `about ${age(current.left_s)} of this sequence`],
  ];
  fill(document.querySelector("#sequence-step tbody"), rows.map(([name, text]) =>
    el("tr", { "data-field": name }, el("th", {}, name), el("td", {}, text))));
}

function renderSequenceEvents() {
  fill(document.querySelector("#sequence-events tbody"), state.events.filter((e) => String(e.kind).startsWith("sequence_"))
    .slice(0, 50).map((e) => el("tr", {}, el("td", {}, clock(e.ts)), el("td", { class: eventClass(e) }, e.kind),
      el("td", { class: "detail" }, eventText(e)))));
}

async function showSequences() {
  renderSequenceEvents();
  const select = document.getElementById("sequence-name");
  const chosen = select.value;
  const names = (await api("/api/sequencer/sequences")).sequences;
  select.replaceChildren(...names.map((n) => el("option", { value: n }, n)));
  if (names.includes(chosen)) select.value = chosen;
}

function sequenceOrder() {
  const sequence = document.getElementById("sequence-name").value;
  if (!sequence) {
    say("choose a sequence", true);
    return null;
  }
  let variables;
  try {
    variables = JSON.parse(document.getElementById("sequence-variables").value || "{}");
  } catch (exc) {
    say(`variables: not JSON: ${exc.message}`, true);
    return null;
  }
  if (!variables || typeof variables !== "object" || Array.isArray(variables)) {
    say('variables: give a JSON object, e.g. {"seconds": 30}', true);
    return null;
  }
  return { sequence, variables };
}

for (const [id, [command, body]] of Object.entries(SEQUENCER_BUTTONS)) {
  const button = document.getElementById(id);
  button.addEventListener("click", async () => {
    if (await action(`sequences: ${button.textContent.toLowerCase()}`, `/api/sequencer/${command}`, body())) {
      document.getElementById("sequence-why").value = "";   // said once, with that action
    }
  });
}

document.getElementById("sequence-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const order = sequenceOrder();
  if (order) action(`queue ${order.sequence}`, "/api/sequencer/queue", order);
});

document.getElementById("seq-dry-run").addEventListener("click", async () => {
  const order = sequenceOrder();
  const node = document.getElementById("sequence-verdict");
  node.replaceChildren();
  const verdict = order && await action(`dry run of ${order.sequence}`, "/api/sequencer/dry_run", order);
  if (!verdict) return;
  node.className = verdict.ok ? "" : "bad";
  node.textContent = verdict.ok ? `ok: ${verdict.steps} steps, about ${age(verdict.estimate_s)}`
    : verdict.problems.join("; ");
});

// --- settings ----------------------------------------------------------------------------------------

function runState() {
  return ((state.status && state.status.run) || {}).state;
}

function settingRow(program, name, value, spec, live) {
  const run = (state.status && state.status.run) || {};
  const frozen = !live && run.state === "RUN";   // the run controller refuses a change of it until the run ends
  const input = el("input", { value: JSON.stringify(value ?? null), size: 14, "data-setting": `${program}.${name}` });
  const apply = () => {
    let parsed;
    try { parsed = JSON.parse(input.value); } catch (exc) { say(`${program}.${name}: not JSON: ${exc.message}`, true); return; }
    action(`set ${program}.${name}`, `/api/programs/${encodeURIComponent(program)}/config`,
           { values: { [name]: parsed } }).then(showSettings);
  };
  const editable = state.user && !frozen;
  return el("tr", { "data-program": program },
    el("td", {}, program), el("td", {}, name),
    el("td", { class: "value" }, editable ? input : JSON.stringify(value ?? null)),
    el("td", {}, live ? "may change" : "frozen"), el("td", { class: "detail" }, spec.description || ""),
    el("td", { class: "why" }, editable ? el("button", { class: "action", on: { click: apply } }, "apply")
      : frozen ? `read-only: run ${run.run} is on` : ""));
}

async function showSettings() {
  const all = await api("/api/config");
  const rows = [];
  for (const [program, entry] of Object.entries(all)) {
    const properties = (entry.schema && entry.schema.properties) || {};
    if (entry.problem) rows.push(el("tr", {}, el("td", {}, program), el("td", { class: "bad", colspan: 5 }, entry.problem.error)));
    for (const [name, spec] of Object.entries(properties)) {
      rows.push(settingRow(program, name, (entry.values || {})[name], spec, (entry.live || []).includes(name)));
    }
  }
  state.settingsDrawnIn = runState();
  fill(document.querySelector("#settings tbody"), rows);
}

// --- history -----------------------------------------------------------------------------------------

function numbers(prefix, value, out) {
  if (typeof value === "boolean") return out;
  if (typeof value === "number") out.push(prefix);
  else if (Array.isArray(value)) value.slice(0, 64).forEach((v, i) => numbers(`${prefix}.${i}`, v, out));
  else if (value && typeof value === "object") for (const [k, v] of Object.entries(value)) numbers(`${prefix}.${k}`, v, out);
  return out;
}

async function showHistoryNames() {
  const snap = await api("/api/status");
  const names = [];
  for (const [key, held] of Object.entries(snap.retained || {}).sort()) {
    if (!key.startsWith("host.")) numbers(key, held.data, names);
  }
  const select = document.getElementById("history-name");
  const chosen = select.value;
  select.replaceChildren(...names.map((n) => el("option", { value: n }, n)));
  if (names.includes(chosen)) select.value = chosen;
}

async function plot(since, until) {
  const name = document.getElementById("history-name").value;
  if (!name) return;
  const query = new URLSearchParams({ name, since: String(since), points: "500" });
  if (until !== undefined) query.set("until", String(until));
  let buckets;
  try {
    buckets = (await api(`/api/history?${query}`))[name] || [];
    say(buckets.length ? "" : `no values of ${name} in that time`);
  } catch (exc) {
    say(exc.message, true);
    return;
  }
  const data = [buckets.map((b) => b[0]), buckets.map((b) => b[3]), buckets.map((b) => b[1]), buckets.map((b) => b[2])];
  const node = document.getElementById("plot");
  if (state.plot) state.plot.destroy();
  state.plot = new uPlot({
    title: name, width: Math.max(400, node.clientWidth || window.innerWidth - 40), height: 360,
    series: [{}, { label: "mean", stroke: "#4c4", spanGaps: false }, { label: "min", stroke: "#48f" },
             { label: "max", stroke: "#f44" }],
    axes: [{ stroke: "#aaa" }, { stroke: "#aaa" }],
    hooks: { setSelect: [(u) => {
      if (u.select.width < 5) return;
      const from = u.posToVal(u.select.left, "x");
      const to = u.posToVal(u.select.left + u.select.width, "x");
      plot(from, to);   // zoomed in: asked again, in finer buckets
    }] },
    cursor: { drag: { x: true, y: false, setScale: false } },
  }, data, node);
  node.ondblclick = () => plot(-Number(document.getElementById("history-since").value));
}

document.getElementById("history-form").addEventListener("submit", (event) => {
  event.preventDefault();
  plot(-Number(document.getElementById("history-since").value));
});

// --- pages and the live stream ---------------------------------------------------------------------

function fragmentName(text) {
  try {
    return decodeURIComponent(text);
  } catch (exc) {   // not percent-encoding: taken as it is
    return text;
  }
}

function showPage() {
  const [page, ...rest] = (location.hash || "#status").slice(1).split("/");
  state.page = page || "status";
  state.focus = page === "alarms" && rest.length ? fragmentName(rest.join("/")) : null;
  for (const section of document.querySelectorAll("main > section")) section.hidden = section.id !== `page-${state.page}`;
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("current", link.hash === `#${state.page}`);
  const loaders = { runs: showRuns, alarms: showAlarms, events: loadEvents, history: showHistoryNames,
                    settings: showSettings, sequences: showSequences };
  if (loaders[state.page]) loaders[state.page]().catch((exc) => say(exc.message, true));
}

function connect() {
  const source = new EventSource("/api/stream");
  const link = document.getElementById("link");
  source.onopen = () => { link.textContent = "live"; link.className = "live"; };
  source.onerror = () => { link.textContent = "reconnecting"; link.className = "lost"; };
  source.addEventListener("status", (message) => renderStatus(JSON.parse(message.data)));
  source.addEventListener("event", (message) => {
    const event = JSON.parse(message.data);
    state.events.unshift(event);
    state.events.length = Math.min(state.events.length, 500);
    if (state.page === "events") renderEvents();
    if (state.page === "sequences" && String(event.kind).startsWith("sequence_")) renderSequenceEvents();
    if (state.page === "runs" && event.kind === "run_state") showRuns().catch(() => {});
    if (state.page === "alarms" && String(event.kind).startsWith("alarm_")) showAlarms().catch(() => {});
    if (state.page === "alarms" && String(event.kind).startsWith("maintenance")) showNotifications().catch(() => {});
    if (state.page === "settings" && String(event.kind).startsWith("config_")) showSettings().catch(() => {});
  });
}

window.addEventListener("hashchange", showPage);
whoami().catch((exc) => say(exc.message, true));
loadEvents().catch(() => {});
showPage();
connect();
