// The status page: renders what /api/stream sends, asks the JSON API for the rest; actions for a logged-in operator.
"use strict";

const state = { user: null, canAct: false, status: null, events: [], page: "status", plot: null, focus: null,
                scrolledTo: null, notificationsAsked: 0, catalogOffset: 0, catalogAsked: 0, run: null, runPlots: [],
                logbookOffset: 0, logbookSearch: "", logbookAsked: 0, editing: null, progress: null };
const CATALOG_PAGE = 50;    // runs a page of the Runs page shows
const LOGBOOK_PAGE = 20;    // entries a page of the Logbook page shows
const NOTIFICATIONS_EVERY_S = 5;   // how often the alarms page asks again what the notifier sent and what waits
const IN_RUN = ["RUN", "PAUSED"];   // a run is under way: its settings frozen
// what a transition under way is doing, as the page says it
const DOING = { prepare_run: "preparing", begin_run: "beginning", pause_run: "pausing", resume_run: "resuming",
                end_run: "ending", abort_run: "aborting" };

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

function span(seconds) {
  return typeof seconds === "number" && seconds < 10 ? `${seconds.toFixed(1)}s` : age(seconds);
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
  const options = body === undefined ? {} : body instanceof FormData ? { method: "POST", body } :
    { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
  const response = await fetch(path, options);
  const answer = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(answer.error || response.statusText);
  return answer;
}

function number(value, digits) {
  if (typeof value !== "number") return value === undefined || value === null ? "" : String(value);
  return Number.isInteger(value) ? String(value) : value.toPrecision(digits || 6).replace(/\.?0+(e|$)/, "$1");
}

function shown(value) {
  return typeof value === "object" && value !== null ? JSON.stringify(value) : number(value);
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
  for (const id of ["note-form", "run-note-form", "run-flag-form"]) document.getElementById(id).hidden = !me.user;
  if (state.page === "logbook") showLogbook().catch(() => {});   // its edit buttons too
  if (state.page === "run" && state.run !== null) showRunEntries().catch(() => {});
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
  const running = IN_RUN.includes(run.state) && current.start ? ` for ${age(status.taken - current.start)}` : "";
  runNode.replaceChildren("run ", el("span", { class: run.state, id: "run-state" }, run.state),
    ` number ${run.run ?? status.last_run ?? "-"}${running}`, current.comment ? ` “${current.comment}”` : "");
}

function byWhom(by) {
  if (!by || typeof by !== "object") return by || "";
  return by.operator || (by.alarm ? `alarm ${by.alarm}` : "") || by.client || "";
}

// The run's state beyond its name: the pause it is in (why, since when, by whom), the transition under way (who it
// waits for, who holds it and how far) and the participants left out of runs.
function renderRunDetail(status) {
  const run = status.run || {};
  const pauses = (run.current_run || {}).pauses || [];
  const pause = run.state === "PAUSED" ? pauses[pauses.length - 1] : null;
  const node = document.getElementById("run-pause");
  node.hidden = !pause;
  if (pause) {
    const by = run.current_run.suspended_by ? `alarm ${run.current_run.suspended_by}` : byWhom(pause.by);
    node.replaceChildren(el("b", {}, "PAUSED"), ` since ${clock(pause.at)} (${age(status.taken - pause.at)})`,
      by ? ` by ${by}` : "", ": ", el("span", { id: "run-pause-why" }, pause.why || "no reason given"));
  }
  renderTransition();
  const excluded = Object.entries(run.excluded || {});
  const left = document.getElementById("run-excluded");
  left.hidden = excluded.length === 0;
  left.replaceChildren("left out of runs: ", ...excluded.flatMap(([name, e], i) => [i ? "; " : "",
    el("span", { "data-participant": name }, `${name} (${e.why || "no reason given"}, by ${byWhom(e.by)}, ` +
      `${clock(e.at)}${e.stopped ? ", its program stopped" : ""})`)]));
}

// The transition under way, as the status (each second) or a run_progress event (between) tells it, whichever
// came last.
function renderTransition() {
  const run = (state.status && state.status.run) || {};
  const doing = state.progress || run.transition;
  const node = document.getElementById("run-transition");
  node.hidden = !doing;
  if (!doing) {
    node.replaceChildren();
    return;
  }
  node.dataset.from = state.progress ? "run_progress" : "status";
  const now = state.progress ? state.progress.ts : state.status.taken;
  const waiting = (doing.waiting || []).length ? `, waiting for ${doing.waiting.join(", ")}` : "";
  const parts = [el("b", {}, `${DOING[doing.transition] || doing.transition} run ${doing.run ?? ""}`),
    `: stage ${doing.stage} of ${doing.stages}${waiting}${doing.taking_back ? "; taking back the stages done" : ""}`];
  for (const [name, held] of Object.entries(doing.holders || {})) {
    const share = typeof held.fraction === "number" ? ` ${(held.fraction * 100).toFixed(0)}%` : "";
    parts.push(el("div", { class: "holder", "data-holder": name },
      `held by ${name}${share}${held.text ? `: ${held.text}` : ""}`,
      typeof held.since === "number" ? ` (for ${age(now - held.since)})` : "",
      typeof held.fraction === "number" ? el("progress", { value: held.fraction, max: 1 }) : ""));
  }
  node.replaceChildren(...parts);
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
  const busy = !!(status.run.transition || state.progress);   // the run controller takes no other until it is done
  const drawn = `${status.run.state}${busy ? " busy" : ""}`;
  if (node.dataset.state === drawn && node.childElementCount) return; // keep what is being typed
  node.dataset.state = drawn;
  const comment = el("input", { id: "run-comment", placeholder: "comment", size: 40 });
  const why = el("input", { id: "run-why", placeholder: "why pause (for the run log)", size: 40, maxlength: 500 });
  const button = (label, name, body) => el("button", { class: "action", id: `do-${name}`, disabled: busy ? "" : null,
    on: { click: () => action(label, `/api/run/${name}`, body ? body() : {}) } }, label);
  const byState = {
    STOP: [button("prepare run", "prepare_run")],
    READY: [comment, button("begin run", "begin_run", () => ({ comment: comment.value })), button("abort", "abort_run")],
    RUN: [why, button("pause", "pause_run", () => ({ why: why.value.trim() || undefined })),
          button("end run", "end_run"), button("abort", "abort_run")],
    PAUSED: [button("resume", "resume_run"), button("end run", "end_run"), button("abort", "abort_run")],
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
  state.progress = null;   // the status is newer than any run_progress event before it
  renderControls(status);
  renderRunDetail(status);
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

// (the Runs page, the catalog: below)

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
  const frozen = !live && IN_RUN.includes(run.state);   // the run controller refuses a change of it until the run ends
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

// A history plot of `name` (the historian's buckets [ts, min, max, mean]) in `node`; a drag across it calls
// `zoom(from, to)`, a double-click `unzoom()`.
function drawHistory(node, name, buckets, zoom, unzoom, height) {
  const data = [buckets.map((b) => b[0]), buckets.map((b) => b[3]), buckets.map((b) => b[1]), buckets.map((b) => b[2])];
  const made = new uPlot({
    title: name, width: Math.max(400, node.clientWidth || window.innerWidth - 40), height: height || 360,
    series: [{}, { label: "mean", stroke: "#4c4", spanGaps: false }, { label: "min", stroke: "#48f" },
             { label: "max", stroke: "#f44" }],
    axes: [{ stroke: "#aaa" }, { stroke: "#aaa" }],
    hooks: { setSelect: [(u) => {
      if (u.select.width < 5) return;
      zoom(u.posToVal(u.select.left, "x"), u.posToVal(u.select.left + u.select.width, "x"));
    }] },
    cursor: { drag: { x: true, y: false, setScale: false } },
  }, data, node);
  node.ondblclick = unzoom;
  return made;
}

async function history(name, since, until, points) {
  const query = new URLSearchParams({ name, since: String(since), points: String(points || 500) });
  if (until !== undefined) query.set("until", String(until));
  return (await api(`/api/history?${query}`))[name] || [];
}

async function plot(since, until) {
  const name = document.getElementById("history-name").value;
  if (!name) return;
  let buckets;
  try {
    buckets = await history(name, since, until);
    say(buckets.length ? "" : `no values of ${name} in that time`);
  } catch (exc) {
    say(exc.message, true);
    return;
  }
  const node = document.getElementById("plot");
  if (state.plot) state.plot.destroy();
  state.plot = drawHistory(node, name, buckets, (from, to) => plot(from, to),   // zoomed in: asked again, finer
                           () => plot(-Number(document.getElementById("history-since").value)));
}

document.getElementById("history-form").addEventListener("submit", (event) => {
  event.preventDefault();
  plot(-Number(document.getElementById("history-since").value));
});

// --- Markdown, shown safely ----------------------------------------------------------------------------
// A minimal rendering of a note's Markdown: headings, paragraphs, lists, tables, code, **bold**, *italic*, `code`
// and http(s) links. Every piece of text goes into the page as text (textContent), never as HTML.

function inline(text) {
  const out = [];
  const pattern = /(\*\*([^*]+)\*\*|`([^`]+)`|\*([^*\s][^*]*)\*|\[([^\]]+)\]\((https?:\/\/[^\s)]+)\))/g;
  let at = 0;
  for (const match of text.matchAll(pattern)) {
    if (match.index > at) out.push(text.slice(at, match.index));
    if (match[2] !== undefined) out.push(el("strong", {}, match[2]));
    else if (match[3] !== undefined) out.push(el("code", {}, match[3]));
    else if (match[4] !== undefined) out.push(el("em", {}, match[4]));
    else out.push(el("a", { href: match[6], target: "_blank", rel: "noopener noreferrer" }, match[5]));
    at = match.index + match[0].length;
  }
  if (at < text.length) out.push(text.slice(at));
  return out;
}

function tableCells(line) {
  return line.trim().replace(/^\||\|$/g, "").split(/(?<!\\)\|/).map((cell) => cell.trim().replace(/\\\|/g, "|"));
}

function markdown(text) {
  const lines = String(text || "").split("\n");
  const blocks = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) { i += 1; continue; }
    if (line.startsWith("```")) {
      const code = [];
      for (i += 1; i < lines.length && !lines[i].startsWith("```"); i += 1) code.push(lines[i]);
      blocks.push(el("pre", {}, el("code", {}, code.join("\n"))));
      i += 1;
      continue;
    }
    const heading = /^(#{1,6})\s+(.*)$/.exec(line);
    if (heading) {
      blocks.push(el(`h${Math.min(6, heading[1].length + 3)}`, {}, ...inline(heading[2])));
      i += 1;
      continue;
    }
    if (line.trim().startsWith("|") && /^\s*\|?[\s:|-]*-[\s:|-]*$/.test(lines[i + 1] || "")) {
      const head = tableCells(line);
      const rows = [];
      for (i += 2; i < lines.length && lines[i].trim().startsWith("|"); i += 1) rows.push(tableCells(lines[i]));
      const cells = (tag, texts) => el("tr", {}, ...texts.map((t) => el(tag, {}, ...inline(t))));
      blocks.push(el("table", { class: "md" }, el("thead", {}, cells("th", head)),
        el("tbody", {}, ...rows.map((r) => cells("td", r)))));
      continue;
    }
    if (/^\s*([-*+]|\d+\.)\s+/.test(line)) {
      const ordered = /^\s*\d+\./.test(line);
      const items = [];
      for (; i < lines.length && /^\s*([-*+]|\d+\.)\s+/.test(lines[i]); i += 1) {
        items.push(el("li", {}, ...inline(lines[i].replace(/^\s*([-*+]|\d+\.)\s+/, ""))));
      }
      blocks.push(el(ordered ? "ol" : "ul", {}, ...items));
      continue;
    }
    const paragraph = [];
    for (; i < lines.length && lines[i].trim() && !/^(```|#{1,6}\s|\s*([-*+]|\d+\.)\s|\s*\|)/.test(lines[i]); i += 1) {
      paragraph.push(lines[i]);
    }
    if (!paragraph.length) paragraph.push(lines[i++]);   // a line that only looked like the start of a block
    blocks.push(el("p", {}, ...inline(paragraph.join("\n"))));
  }
  return el("div", { class: "markdown" }, ...blocks);
}

// --- the Runs page: the run catalog ----------------------------------------------------------------------

const CATALOG_COLUMNS = [["run", "run"], ["flag", "flag"], ["result", "result"], ["start", "started"],
  ["duration", "duration"], ["comment", "comment"], ["began_by", "began by"], ["ended_by", "ended by"],
  ["files", "files"], ["alarms", "alarms"]];

const CONDITION = /^([A-Za-z][A-Za-z0-9_.-]*)(=|!=|<=|>=|<|>|~)/;

function conditionKeys(query) {
  return query.split(/\s+/).map((word) => CONDITION.exec(word.replace(/^["']/, ""))).filter((m) => m).map((m) => m[1]);
}

function catalogCell(key, row) {
  const value = row[key];
  if (key === "run") return el("td", {}, el("a", { href: `#run/${row.run}` }, String(row.run)));
  if (key === "start") return el("td", {}, clock(value));
  if (key === "duration") return el("td", {}, span(value));
  if (key === "flag") return el("td", { class: `flag-${value}` }, value || "");
  return el("td", { class: key === "comment" ? "comment" : "" }, shown(value));
}

async function showRuns() {
  const asked = ++state.catalogAsked;   // an answer to an older query is not drawn over a newer one
  const q = document.getElementById("catalog-query").value.trim();
  for (const kind of ["csv", "json"]) {
    document.getElementById(`catalog-${kind}`).href = `/api/catalog.${kind}?${new URLSearchParams({ q })}`;
  }
  const problem = document.getElementById("catalog-error");
  let found, running = [];
  try {
    found = await api(`/api/catalog?${new URLSearchParams({ q, limit: CATALOG_PAGE, offset: state.catalogOffset })}`);
    if (!q && !state.catalogOffset) running = (await api("/api/runs?n=3")).filter((r) => r.result === "running");
  } catch (exc) {
    if (asked !== state.catalogAsked) return;
    problem.textContent = exc.message;
    problem.hidden = false;
    document.getElementById("catalog-summary").textContent = "";
    fill(document.querySelector("#runs tbody"), []);
    return;
  }
  if (asked !== state.catalogAsked) return;
  problem.hidden = true;
  const extra = [...new Set(conditionKeys(q))].filter((k) => !CATALOG_COLUMNS.some(([key]) => key === k));
  const columns = [...CATALOG_COLUMNS, ...extra.map((k) => [k, k])];
  fill(document.querySelector("#runs thead"), [el("tr", {}, ...columns.map(([, label]) => el("th", {}, label)))]);
  const rows = running.map((r) => el("tr", { "data-run": r.run, class: "running" }, el("td", {}, String(r.run)),
    el("td", {}, ""), el("td", { class: "RUN" }, "running"), el("td", {}, clock(r.start)),
    el("td", {}, age(Date.now() / 1000 - r.start)), el("td", { class: "comment" }, r.comment || ""),
    el("td", {}, r.by || ""), el("td", { colspan: columns.length - 7 }, "in the catalog once it ends")));
  for (const row of found.runs) {
    rows.push(el("tr", { "data-run": row.run }, ...columns.map(([key]) => catalogCell(key, row))));
  }
  fill(document.querySelector("#runs tbody"), rows);
  const last = found.offset + found.runs.length;
  document.getElementById("catalog-summary").textContent = found.total
    ? `${found.total} run(s) found; ${found.offset + 1} to ${last} shown, newest first` : "no run found";
  document.getElementById("catalog-newer").disabled = found.offset === 0;
  document.getElementById("catalog-older").disabled = last >= found.total;
}

document.getElementById("catalog-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.catalogOffset = 0;
  showRuns().catch((exc) => say(exc.message, true));
});
for (const [id, step] of [["catalog-newer", -CATALOG_PAGE], ["catalog-older", CATALOG_PAGE]]) {
  document.getElementById(id).addEventListener("click", () => {
    state.catalogOffset = Math.max(0, state.catalogOffset + step);
    showRuns().catch((exc) => say(exc.message, true));
  });
}

// --- a run's page: its record, plots of its values, its logbook entries --------------------------------

function who(by) {
  if (!by) return "";
  let text = by.alarm ? `the alarm ${by.alarm}` : by.signal ? `a shutdown (${by.signal})`
    : by.operator || by.client || "";
  if (by.operator && by.client && by.client !== by.operator) text += ` (${by.client})`;
  if (by.sequence) text += `, sequence ${by.sequence.sequence} step ${by.sequence.step ?? "?"}`;
  return text;
}

function flagText(flag) {
  if (!flag) return "";
  return flag.value + (flag.by ? ` by ${flag.by}` : "") + (flag.at ? `, ${clock(flag.at)}` : "") +
    (flag.why ? `: ${flag.why}` : "");
}

function table(id, header, rows) {
  if (!rows.length) return el("p", { id, class: "none" }, "none");
  return el("table", { id }, el("thead", {}, el("tr", {}, ...header.map((h) => el("th", {}, h)))),
    el("tbody", {}, ...rows.map((cells) => el("tr", {},
      ...cells.map((c) => c instanceof Node ? c : el("td", {}, c))))));
}

function part(title, node) {
  return [el("h3", {}, title), node];
}

function recordSummary(r) {
  const fields = [
    ["result", r.result + (r.why ? `: ${r.why}` : "")], ["started", clock(r.start)], ["ended", clock(r.end)],
    ["duration", span(r.duration)], ["began by", who(r.began_by)], ["ended by", who(r.ended_by)],
    ["comment", r.comment || ""],
    ["params", Object.entries(r.params || {}).map(([k, v]) => `${k}=${shown(v)}`).join(", ")],
    ["participants", (r.participants || []).join(", ")],
    ["problems", Object.entries(r.problems || {}).map(([k, v]) => `${k}: ${shown(v)}`).join("; ")],
    ["flag", flagText(r.flag)], ["recorded", clock(r.recorded)],
    ["pending", (r.pending || []).length ? `waiting for ${r.pending.join(", ")}` : ""],
  ];
  const optional = new Set(["params", "problems", "pending"]);   // a line only when there is something to say
  const lines = fields.filter(([name, text]) => text || !optional.has(name));
  return el("table", { id: "run-summary" }, el("tbody", {}, ...lines.map(([name, text]) =>
    el("tr", { "data-field": name }, el("th", {}, name), el("td", { class: "detail" }, text)))));
}

function recordParts(r) {
  const run = r.run;
  const nodes = [recordSummary(r)];
  if ((r.flag_history || []).length) {
    nodes.push(...part("flag history", table("run-flag-history", ["flag", "by", "when", "why"],
      r.flag_history.map((f) => [f.value, f.by || "", clock(f.at), f.why || ""]))));
  }
  const changed = [];
  for (const [program, keys] of Object.entries(r.settings_changed || {})) {
    for (const [key, [before, now]] of Object.entries(keys)) changed.push([program, key, shown(before), shown(now)]);
  }
  nodes.push(...part("settings changed since the previous run",
    table("run-settings-changed", ["program", "setting", "before", "now"], changed)));
  const STATS = ["begin", "end", "min", "mean", "max"];
  const withUnits = (v, k) => number(v[k]) + (v.units && typeof v[k] === "number" ? ` ${v.units}` : "");
  nodes.push(...part("values", table("run-values", ["name", "published as", "units", ...STATS, "count"],
    Object.entries(r.values || {}).map(([name, v]) => [name, v.id || "", v.units || "",
      ...STATS.map((k) => withUnits(v, k)), String(v.count ?? "")]))));
  nodes.push(...part("files", table("run-files", ["program", "file", "size", "images", "sha256"],
    (r.files || []).map((f, i) => [f.program || "", el("td", {}, el("a", { href: `/api/catalog/${run}/files/${i}`,
      download: String(f.path).split("/").pop(), class: "run-file", title: f.path }, f.path)),
    size(f.size), String(f.images ?? ""), el("td", { class: "sha256" }, f.sha256 || "")]))));
  const counters = [];
  for (const [reader, figures] of Object.entries(r.readers || {})) {
    for (const [name, value] of Object.entries(figures)) counters.push([reader, name, number(value)]);
  }
  nodes.push(...part("readers' counters", table("run-readers", ["reader", "counter", "value"], counters)));
  nodes.push(...part("alarms during the run", table("run-alarms", ["alarm", "severity", "raised", "cleared", "message"],
    (r.alarms || []).map((a) => [a.name, a.severity || "", clock(a.raised),
      a.cleared ? clock(a.cleared) : "still raised at the end", a.message || ""]))));
  nodes.push(...part("operators' actions", table("run-actions", ["time", "by", "what", "detail"],
    (r.actions || []).map((a) => [clock(a.ts), a.by || "", a.what || "", a.detail || ""]))));
  const settings = [];
  for (const [program, keys] of Object.entries(r.settings || {})) {
    for (const [key, value] of Object.entries(keys || {})) {
      const was = ((r.settings_changed || {})[program] || {})[key];
      settings.push([program, key, shown(value), was ? `was ${shown(was[0])}` : ""]);
    }
  }
  nodes.push(...part("settings as the run began",
    table("run-settings", ["program", "setting", "value", "changed"], settings)));
  return nodes;
}

async function showRun() {
  const run = state.run;
  const problem = document.getElementById("run-error");
  document.getElementById("run-title").textContent = `Run ${run}`;
  let record;
  try {
    record = await api(`/api/run/record?number=${run}`);
  } catch (exc) {
    problem.textContent = exc.message;
    problem.hidden = false;
    fill(document.getElementById("run-record"), []);
    fill(document.getElementById("run-plots"), []);
    await showRunEntries();
    return;
  }
  if (run !== state.run) return;
  problem.hidden = true;
  document.getElementById("run-title").textContent = `Run ${run}${record.comment ? `: ${record.comment}` : ""}`;
  fill(document.getElementById("run-record"), recordParts(record));
  await Promise.all([showRunPlots(record), showRunEntries()]);
}

// Each catalog value's history over the run, drawn as the History page draws it.
async function showRunPlots(record) {
  for (const made of state.runPlots) made.destroy();
  state.runPlots = [];
  const node = document.getElementById("run-plots");
  const values = Object.entries(record.values || {}).filter(([, v]) => v.id);
  if (!values.length || !record.start || !record.end) {
    fill(node, [el("p", {}, values.length ? "the run has no end: no plot" : "the experiment lists no catalog values")]);
    return;
  }
  const margin = Math.max(5, 0.05 * (record.end - record.start));
  const boxes = values.map(([name]) => el("div", { class: "run-plot", "data-value": name }));
  fill(node, boxes);
  await Promise.all(values.map(async ([name, v], i) => {
    const draw = async (since, until) => {
      const buckets = await history(v.id, since, until, 300);
      if (state.run !== record.run) return;
      const old = state.runPlots.findIndex((p) => p.root.parentNode === boxes[i]);
      if (old >= 0) state.runPlots.splice(old, 1)[0].destroy();
      boxes[i].replaceChildren();
      if (!buckets.length) {
        boxes[i].append(el("p", {}, `no history of ${v.id} over the run`));
        return;
      }
      state.runPlots.push(drawHistory(boxes[i], `${name} (${v.id}${v.units ? `, ${v.units}` : ""})`, buckets,
        (from, to) => draw(from, to), () => draw(record.start - margin, record.end + margin), 240));
    };
    try {
      await draw(record.start - margin, record.end + margin);
    } catch (exc) {
      boxes[i].replaceChildren(el("p", { class: "bad" }, `${name}: ${exc.message}`));
    }
  }));
}

async function showRunEntries() {
  if (state.editing !== null) return;   // not drawn over a note being edited
  const run = state.run;
  const node = document.getElementById("run-entries");
  try {
    const answer = await api(`/api/logbook?${new URLSearchParams({ run, limit: 100 })}`);
    if (run === state.run) fill(node, answer.entries.map(entryNode));
  } catch (exc) {
    if (run === state.run) fill(node, [el("p", { class: "bad" }, `logbook: ${exc.message}`)]);
  }
}

document.getElementById("run-flag-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = { number: state.run, flag: document.getElementById("run-flag").value,
                 why: document.getElementById("run-flag-why").value.trim() };
  if (await action(`flag run ${state.run} ${body.flag}`, "/api/run/flag", body)) {
    document.getElementById("run-flag-why").value = "";
    await showRun();
  }
});

// --- the Logbook page -------------------------------------------------------------------------------------

function attachmentNode(a) {
  const href = `/api/logbook/attachments/${a.sha256}`;
  const label = `${a.name} (${size(a.size)})`;
  if (/^image\/(png|jpeg|gif)$/.test(a.type)) {
    return el("figure", { class: "attachment" },
      el("a", { href, target: "_blank" }, el("img", { src: href, alt: a.name })), el("figcaption", {}, label));
  }
  return el("div", { class: "attachment" }, el("a", { href, download: a.name }, label));
}

function entryHeader(e) {
  const runs = e.runs.flatMap((run, i) => [i ? ", " : "", el("a", { href: `#run/${run}` }, String(run))]);
  const edited = e.version > 1 ? ` · version ${e.version} by ${e.by}, ${clock(e.written)}` : "";
  return el("div", { class: "entry-head" }, el("b", {}, `#${e.entry}`), ` ${e.kind === "run" ? "run entry" : "note"}`,
    ` by ${e.author}, ${clock(e.kind === "run" ? e.time : e.created)}`, runs.length ? " · runs " : "", ...runs,
    el("span", { class: "entry-version" }, edited));
}

function versionsNode(e) {
  const details = el("details", { class: "versions" }, el("summary", {}, `${e.version - 1} older version(s)`));
  details.addEventListener("toggle", async () => {
    if (!details.open || details.dataset.loaded) return;
    details.dataset.loaded = "1";
    try {
      const whole = await api(`/api/logbook/entries/${e.entry}`);
      details.append(...whole.versions.map((v) => el("div", { class: "version", "data-version": v.version },
        el("div", { class: "entry-head" }, `version ${v.version} by ${v.by}, ${clock(v.written)}`),
        v.text === null ? el("p", {}, "(too long to show with the others)") : markdown(v.text),
        ...v.attachments.map(attachmentNode))));
    } catch (exc) {
      details.append(el("p", { class: "bad" }, exc.message));
    }
  });
  return details;
}

function entryNode(e) {
  const node = el("article", { class: `entry entry-${e.kind}`, "data-entry": e.entry }, entryHeader(e));
  if (e.snippet) node.append(el("p", { class: "snippet" }, ...inline(e.snippet)));
  node.append(el("div", { class: "entry-text" }, markdown(e.text)), ...e.attachments.map(attachmentNode));
  if (e.cut) {   // a list gives the first 2,000 characters of each text
    const whole = () => api(`/api/logbook/entries/${e.entry}`).then((full) => {
      node.querySelector(".entry-text").replaceChildren(markdown(full.text));
      more.remove();
    }).catch((exc) => say(exc.message, true));
    const more = el("button", { class: "whole", on: { click: whole } }, "the whole text");
    node.append(more);
  }
  if (e.version > 1) node.append(versionsNode(e));
  if (state.user && e.kind === "note") {
    node.append(el("button", { class: "action edit", on: { click: () => editForm(node, e) } }, "edit"));
  }
  return node;
}

// An operator edits note `e` in place: its text, and files added to those it has; saved as a new version.
async function editForm(node, e) {
  const whole = e.cut ? await api(`/api/logbook/entries/${e.entry}`) : e;
  const text = el("textarea", { class: "edit-text", rows: 6, cols: 80 });
  text.value = whole.text;
  const files = el("input", { type: "file", multiple: "", class: "edit-files" });
  const save = el("button", { class: "action save", type: "submit" }, "save a new version");
  const stop = () => { state.editing = null; refreshEntries(); };
  const cancel = el("button", { type: "button", on: { click: stop } }, "cancel");
  const form = el("form", { class: "edit-form" }, text, el("br"), files, save, cancel);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (await writeNote(`edit note ${e.entry}`, `/api/logbook/entries/${e.entry}`, text.value, null, files)) {
      state.editing = null;
      refreshEntries();
    }
  });
  state.editing = e.entry;
  node.querySelector(".entry-text").replaceChildren(form);
}

function refreshEntries() {
  if (state.page === "logbook") showLogbook().catch((exc) => say(exc.message, true));
  if (state.page === "run") showRunEntries().catch((exc) => say(exc.message, true));
}

async function writeNote(label, path, text, runs, filesInput) {
  const form = new FormData();
  form.append("text", text);
  if (runs !== null) form.append("runs", runs);
  for (const file of filesInput.files) form.append("attachments", file, file.name);
  return action(label, path, form);
}

async function showLogbook() {
  if (state.editing !== null) return;   // not drawn over a note being edited
  const asked = ++state.logbookAsked;
  const search = state.logbookSearch;
  const query = new URLSearchParams({ limit: LOGBOOK_PAGE, offset: state.logbookOffset });
  if (search) query.set("text", search);
  const summary = document.getElementById("logbook-summary");
  let answer;
  try {
    answer = await api(search ? `/api/logbook/search?${query}` : `/api/logbook?${query}`);
  } catch (exc) {
    if (asked !== state.logbookAsked) return;
    summary.textContent = exc.message;
    summary.className = "bad";
    fill(document.getElementById("logbook-entries"), []);
    return;
  }
  if (asked !== state.logbookAsked || state.editing !== null) return;
  const last = state.logbookOffset + answer.entries.length;
  summary.className = "";
  summary.textContent = (search ? `found by “${search}”: ` : "") + (answer.entries.length
    ? `${state.logbookOffset + 1} to ${last}${answer.total !== undefined ? ` of ${answer.total}` : ""}, newest first`
    : "no entry");
  fill(document.getElementById("logbook-entries"), answer.entries.map(entryNode));
  document.getElementById("logbook-newer").disabled = state.logbookOffset === 0;
  document.getElementById("logbook-older").disabled = !answer.more;
}

document.getElementById("logbook-search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.logbookSearch = document.getElementById("logbook-search").value.trim();
  state.logbookOffset = 0;
  showLogbook().catch((exc) => say(exc.message, true));
});
document.getElementById("logbook-all").addEventListener("click", () => {
  document.getElementById("logbook-search").value = "";
  state.logbookSearch = "";
  state.logbookOffset = 0;
  showLogbook().catch((exc) => say(exc.message, true));
});
for (const [id, step] of [["logbook-newer", -LOGBOOK_PAGE], ["logbook-older", LOGBOOK_PAGE]]) {
  document.getElementById(id).addEventListener("click", () => {
    state.logbookOffset = Math.max(0, state.logbookOffset + step);
    showLogbook().catch((exc) => say(exc.message, true));
  });
}

for (const [formId, textId, runsId, filesId] of [["note-form", "note-text", "note-runs", "note-files"],
                                                   ["run-note-form", "run-note-text", null, "run-note-files"]]) {
  document.getElementById(formId).addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = document.getElementById(textId);
    const files = document.getElementById(filesId);
    const runs = runsId ? document.getElementById(runsId).value : String(state.run);
    if (await writeNote("write the note", "/api/logbook/notes", text.value, runs, files)) {
      text.value = "";
      files.value = "";
      if (runsId) document.getElementById(runsId).value = "";
      refreshEntries();
    }
  });
}

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
  if (state.page === "run") {   // #run/12
    state.run = /^\d+$/.test(rest[0] || "") ? Number(rest[0]) : null;
    if (state.run === null) state.page = "runs";
  }
  state.editing = null;
  for (const section of document.querySelectorAll("main > section")) section.hidden = section.id !== `page-${state.page}`;
  const tab = state.page === "run" ? "runs" : state.page;
  for (const link of document.querySelectorAll("nav a")) link.classList.toggle("current", link.hash === `#${tab}`);
  const loaders = { runs: showRuns, alarms: showAlarms, events: loadEvents, history: showHistoryNames,
                    settings: showSettings, sequences: showSequences, run: showRun, logbook: showLogbook };
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
    if (event.kind === "run_progress" || event.kind === "run_state") {   // the latter ends the transition
      state.progress = event.kind === "run_progress" ? event : null;
      renderTransition();
      if (state.status) renderControls(state.status);
    }
    if (state.page === "events") renderEvents();
    if (state.page === "sequences" && String(event.kind).startsWith("sequence_")) renderSequenceEvents();
    if (state.page === "runs" && event.kind === "run_state") showRuns().catch(() => {});
    if (state.page === "alarms" && String(event.kind).startsWith("alarm_")) showAlarms().catch(() => {});
    if (state.page === "alarms" && String(event.kind).startsWith("maintenance")) showNotifications().catch(() => {});
    if (state.page === "settings" && String(event.kind).startsWith("config_")) showSettings().catch(() => {});
    if (event.kind === "logbook_entry" && (state.page === "logbook" ||
        (state.page === "run" && (event.runs || []).includes(state.run)))) refreshEntries();
  });
}

window.addEventListener("hashchange", showPage);
whoami().catch((exc) => say(exc.message, true));
loadEvents().catch(() => {});
showPage();
connect();
