// The admin page: polls the queue manager's admin API every two seconds and draws what it gets.
// No framework, nothing from the internet: plain DOM and inline SVG charts.
"use strict";

const POLL_MS = 2000;
const $ = (id) => document.getElementById(id);
const esc = (value) => String(value ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const short = (id) => esc(String(id ?? "").split("-")[0]);
const ago = (iso) => (iso ? `${Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000))} s ago` : "–");
const state = (name) => `<span class="state ${esc(name)}">${esc(name)}</span>`;

async function call(method, path, body) {
  const reply = await fetch(path, {
    method,
    credentials: "same-origin",
    headers: body ? { "Content-Type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  if (reply.status === 401 || reply.status === 403) {
    location.href = "/w/login?next=/admin/";
    throw new Error("not logged in as admin");
  }
  if (!reply.ok) {
    const detail = await reply.json().catch(() => ({}));
    throw new Error(detail.detail || `${method} ${path}: ${reply.status}`);
  }
  return reply.status === 204 ? null : reply.json();
}

// Redraw a section, unless the admin is typing in one of its inputs (a priority): that one waits
// for her to leave the field, and every other section goes on refreshing.
function put(id, html) {
  const typing = document.activeElement;
  if (typing?.tagName === "INPUT" && $(id).contains(typing)) return;
  $(id).innerHTML = html;
}

function table(headers, rows, empty) {
  if (!rows.length) return `<p class="empty">${esc(empty)}</p>`;
  const head = headers.map((h) => `<th>${esc(h)}</th>`).join("");
  return `<table><thead><tr>${head}</tr></thead><tbody>${rows.map((r) => `<tr>${r}</tr>`).join("")}</tbody></table>`;
}

function line(svg, series, max) {
  const values = series.length === 1 ? [series[0], series[0]] : series;
  const top = Math.max(max ?? Math.max(...values, 1), 1e-9);
  const step = values.length > 1 ? 300 / (values.length - 1) : 300;
  const points = values.map((v, i) => `${(i * step).toFixed(1)},${(78 - (v / top) * 74).toFixed(1)}`).join(" ");
  svg.innerHTML = values.length
    ? `<polyline fill="none" stroke="#4f9cf7" stroke-width="2" points="${points}"/>`
    : `<text x="4" y="44" fill="#9aa0a6" font-size="12">no samples yet</text>`;
}

function bars(svg, values) {
  const top = Math.max(...values, 1);
  const width = 300 / values.length;
  svg.innerHTML = values
    .map((v, i) => {
      const height = (v / top) * 74;
      return `<rect x="${(i * width).toFixed(1)}" y="${(78 - height).toFixed(1)}" width="${(width - 1).toFixed(1)}" height="${height.toFixed(1)}" fill="#57c26b"/>`;
    })
    .join("");
}

// Where a job is: its worker, else the busy worker it is held (prepared) for, else its pool.
function place(job, holder) {
  if (job.worker_id) return esc(job.worker_id);
  const pool = esc(job.pool ?? "any pool");
  return holder ? `<span class="held" title="runs next on ${esc(holder)} unless an idle worker claims it first">held for ${esc(holder)}</span> · ${pool}` : pool;
}

function jobRow(job, actions, holder) {
  return `<td>${job.position != null ? job.position + 1 : ""}</td><td><code title="${esc(job.id)}">${short(job.id)}</code></td>` +
    `<td>${esc(job.user)}</td><td>${state(job.state)}</td><td>${place(job, holder)}</td>` +
    `<td>${ago(job.queued_at)}</td><td>${actions}</td>`;
}

function queueActions(job) {
  const priority = `<input type="number" min="-100" max="100" value="${job.priority}" data-priority="${esc(job.id)}">`;
  return `${priority} <button data-action="priority" data-job="${esc(job.id)}">Set priority</button> ` +
    `<button class="danger" data-action="cancel" data-job="${esc(job.id)}">Cancel</button>`;
}

// The jobs the evening's save held as running: closed, they run again tomorrow; the morning after,
// they were carried over and run again first. Their owners see them queued then.
function drawNight(overview) {
  const carried = overview.carried ?? [];
  const count = `${carried.length} job${carried.length === 1 ? " was" : "s were"}`;
  const note = overview.restored === false
    ? "The morning's restore has not run yet: last night's queue, and the jobs it carries over, are not back, " +
      "and no GPU takes a job until they are. `pulumi up` runs it in its restore step (cli load)."
    : overview.closed
    ? "Closed for the night: the queue, saved files and settings are saved for tomorrow. " +
      (carried.length
        ? `${count} still running at the save: each runs again from the start tomorrow morning, first in line (what it makes tonight stays in the vault).`
        : "No job was running at the save.")
    : carried.length
      ? `Carried over from last night: ${count} still running when the workshop closed, and run${carried.length === 1 ? "s" : ""} again from the start, first in line.`
      : "No job was carried over the night.";
  const rows = carried.map((j) =>
    `<td><code title="${esc(j.id)}">${short(j.id)}</code></td><td>${esc(j.user)}</td><td>${esc(j.worker)}</td>` +
    `<td>${j.state ? state(j.state) : "gone"}</td>`);
  put("night", `<p class="note">${esc(note)}</p>` +
    (carried.length ? table(["job", "user", "worker at the save", "state now"], rows, "") : ""));
}

function drawQueue(overview) {
  const waiting = overview.queued.length + overview.delayed.length;
  $("banner").textContent = overview.closed
    ? "Closed for the night"
    : overview.paused
      ? `Dispatch is paused: ${overview.running.length} running, ${waiting} waiting`
      : "";
  drawNight(overview);
  const running = overview.running.map((j) => jobRow(j, `<button class="danger" data-action="cancel" data-job="${esc(j.id)}">Cancel</button>`));
  const held = overview.held ?? {};
  const lined = [...overview.queued, ...overview.delayed].map((j) => jobRow(j, queueActions(j), held[j.id]));
  put("queue", table(["place", "job", "user", "state", "worker / pool", "queued", ""], [...running, ...lined], "The queue is empty."));
  const dead = overview.dead.map((j) => jobRow(j, `<span title="${esc(j.error?.message)}">${esc(j.error?.type ?? "")}</span> <button data-action="requeue" data-job="${esc(j.id)}">Requeue</button>`));
  put("dead", table(["#", "job", "user", "state", "last worker", "queued", "error"], dead, "No dead letters."));
}

// A worker's models sync while it is not ready: files, bytes, rate, time left, or why it waits or failed.
function models(sync) {
  if (!sync) return "ready";
  const mb = (n) => (n / 1048576).toFixed(0);
  const eta = sync.eta_seconds == null ? "" : `, ${Math.round(sync.eta_seconds)} s left`;
  const counts = `${sync.files_done}/${sync.files_total} files, ${mb(sync.bytes_done)}/${mb(sync.bytes_total)} MB, ` +
    `${mb(sync.rate_bytes_per_s)} MB/s${eta}`;
  return `${esc(sync.state)}: ${esc(counts)}${sync.message ? `<br>${esc(sync.message)}` : ""}`;
}

// What keeps a worker from taking jobs until someone acts (e.g. its ComfyUI stuck in a node), with the fix.
const problem = (text) => (text ? `<br><span class="problem">${esc(text)}</span>` : "");

function drawWorkers(workers) {
  const sorted = [...workers].sort((a, b) => `${a.capabilities.pool}/${a.capabilities.provider}`.localeCompare(`${b.capabilities.pool}/${b.capabilities.provider}`));
  const rows = sorted.map((w) =>
    `<td>${esc(w.capabilities.pool)}</td><td>${esc(w.capabilities.provider)}</td><td>${esc(w.worker_id)}</td>` +
    `<td>${state(w.state)}${problem(w.capabilities.problem)}</td><td><code>${short(w.job_id)}</code></td><td><code title="${esc(w.holding)}">${short(w.holding)}</code></td>` +
    `<td>${esc(w.capabilities.gpu)}</td><td>${models(w.capabilities.models_sync)}</td><td>${ago(w.last_seen)}</td>`);
  put("workers", table(["pool", "provider", "worker", "state", "job", "holds next", "GPU", "models", "seen"], rows, "No worker has registered."));
}

const names = (list) => (list.length ? esc(list.join(", ")) : "–");

function drawCatalogues(state) {
  const approved = state.approved ? `<code>${esc(state.approved.slice(0, 12))}</code>` : "none yet";
  const rows = state.pending.map((c) =>
    `<td><code title="${esc(c.digest)}">${esc(c.digest.slice(0, 12))}</code></td><td>${esc(c.pool)} / ${esc(c.worker_id)}</td>` +
    `<td>${c.nodes}</td><td>+ ${names(c.added)}<br>− ${names(c.removed)}<br>~ ${names(c.changed)}` +
    `${c.markup?.length ? `<br><b>markup (HTML on every participant's page, so it cannot be approved): ${names(c.markup)}</b>` : ""}</td>` +
    `<td>+ ${names(c.extensions_added)}<br>~ ${names(c.extensions_changed)}<br>− ${names(c.extensions_removed)}</td>` +
    `<td>${c.markup?.length ? "" : `<button data-action="approve-catalogue" data-digest="${esc(c.digest)}">Approve</button>`}</td>`);
  put("catalogues", `<p>Participants get version ${approved}. A version a worker offers that removes or changes ` +
    `nodes, or brings web extensions (JavaScript for every participant's page), waits here for you.</p>` +
    table(["version", "offered by", "nodes", "node classes", "web extensions", ""], rows, "No version is waiting."));
}

function drawStats(stats) {
  const queued = stats.samples.map((s) => s.queued);
  const busy = stats.samples.map((s) => (s.workers ? s.busy / s.workers : 0));
  $("depth-now").textContent = queued.length ? queued[queued.length - 1] : "–";
  line($("chart-depth"), queued);
  $("jpm-now").textContent = stats.jobs_per_minute[stats.jobs_per_minute.length - 1];
  bars($("chart-jpm"), stats.jobs_per_minute);
  $("busy-now").textContent = `${Math.round(stats.busy_share * 100)} %`;
  line($("chart-busy"), busy, 1);
  $("cost-now").textContent = stats.cost_so_far.toFixed(2);
  const pools = Object.entries(stats.cost_by_pool);
  $("cost-pools").textContent = pools.length ? pools.map(([p, c]) => `${p}: ${c.toFixed(2)}`).join(" · ") : "no GPU time yet";
  const ms = (v) => (v === null ? "–" : `${v.toFixed(1)} ms`);
  const secs = (v) => (v === null ? "–" : `${v.toFixed(2)} s`);
  const gpu = Object.entries(stats.gpu_by_pool).map(([pool, g]) =>
    `<td>${esc(pool)}</td><td>${Math.round(g.busy_fraction * 100)} %</td><td>${ms(g.gap_ms_p50)}</td>` +
    `<td>${ms(g.gap_ms_p99)}</td><td>${secs(g.upload_s_p50)}</td><td>${secs(g.upload_s_max)}</td><td>${g.jobs}</td>` +
    `<td>${stats.held_by_pool[pool] ?? 0}</td>`);
  put("gpu-pools", table(
    ["pool", "GPU busy", "idle gap p50", "idle gap p99", "upload p50", "upload max", "jobs", "held for busy workers"], gpu,
    "No pool has run a job yet."));
  const rows = stats.participants.map((p) =>
    `<td>${esc(p.user)}</td><td>${p.online ? "online" : ""}</td><td>${p.queued}</td><td>${p.running}</td>` +
    `<td><input type="number" min="-100" max="100" value="${p.priority}" data-user-priority="${esc(p.user)}"> ` +
    `<button data-action="user-priority" data-user="${esc(p.user)}">Set</button></td>` +
    `<td><button class="danger" data-action="log-out" data-user="${esc(p.user)}" title="End every login session of ${esc(p.user)}">Log out everywhere</button></td>`);
  put("participants", table(["participant", "", "queued", "running", "priority", "sessions"], rows, "No participants."));
}

async function refresh() {
  try {
    const [overview, workers, stats, catalogues] = await Promise.all([
      call("GET", "/api/admin/queue"), call("GET", "/api/admin/workers"), call("GET", "/admin/api/stats"),
      call("GET", "/api/admin/catalogues"),
    ]);
    drawQueue(overview);
    drawWorkers(workers);
    drawCatalogues(catalogues);
    drawStats(stats);
    $("error").textContent = "";
  } catch (error) {
    $("error").textContent = error.message;
  }
}

async function act(target) {
  const job = target.dataset.job;
  const user = target.dataset.user;
  switch (target.dataset.action) {
    case "cancel": return call("POST", `/api/admin/jobs/${job}/cancel`);
    case "requeue": return call("POST", `/api/admin/dead/${job}/requeue`);
    case "approve-catalogue": return call("POST", `/api/admin/catalogues/${encodeURIComponent(target.dataset.digest)}/approve`);
    case "priority": {
      const input = document.querySelector(`[data-priority="${job}"]`);
      return call("POST", `/api/admin/jobs/${job}/priority`, { priority: Number(input.value) });
    }
    case "log-out": {
      const ended = await call("DELETE", `/api/admin/users/${encodeURIComponent(user)}/sessions`);
      return `${ended.user} is logged out everywhere (${ended.ended} session(s) ended)`;
    }
    case "user-priority": {
      const input = document.querySelector(`[data-user-priority="${user}"]`);
      return call("POST", `/api/admin/users/${encodeURIComponent(user)}/priority`, { priority: Number(input.value) });
    }
  }
}

document.addEventListener("click", async (event) => {
  const target = event.target.closest("button[data-action]");
  if (!target) return;
  try {
    const note = await act(target);
    await refresh();
    if (typeof note === "string") $("banner").textContent = note;
  } catch (error) { $("error").textContent = error.message; }
});
$("pause").addEventListener("click", () => call("POST", "/api/admin/pause").then(refresh, (e) => ($("error").textContent = e.message)));
$("resume").addEventListener("click", () => call("POST", "/api/admin/resume").then(refresh, (e) => ($("error").textContent = e.message)));
$("drain").addEventListener("click", async () => {
  try {
    const result = await call("POST", "/api/admin/drain?seconds=0"); // answers at once: the banner follows the rest
    await refresh();
    $("banner").textContent = `Draining: dispatch paused, ${result.running} running, ${result.queued} waiting`;
  } catch (error) { $("error").textContent = error.message; }
});

refresh();
setInterval(refresh, POLL_MS);
