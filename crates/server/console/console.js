// Tether console: a page over the admin API (docs/OPERATIONS.md).
//
// Every figure comes from /v1/status, /v1/history, /v1/players, /v1/bans and
// /v1/audit, asked with the token typed in at sign-in (kept in this tab's
// session storage). Writes go to the same API: the server decides what a
// token may do, and the page shows its answer. Player-chosen text (account
// names, notes) is only ever set as text, never as markup.
'use strict';

const STATUS_EVERY_MS = 2000;
const SLOW_EVERY = 3; // history, bans and audit every third refresh
const PLAYERS_SHOWN = 200;
const AUDIT_SHOWN = 50;

const state = {
  token: sessionStorage.getItem('tether.token'),
  role: null,
  timer: null,
  round: 0,
  search: '',
  draining: false,
};

const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// One admin request; the parsed JSON answer, or an ApiError with the
// server's own message.
async function api(method, path, body) {
  const headers = {};
  if (state.token) headers.Authorization = 'Bearer ' + state.token;
  const init = { method, headers, cache: 'no-store' };
  if (body !== undefined) {
    init.body = typeof body === 'string' ? body : JSON.stringify(body);
    headers['Content-Type'] = typeof body === 'string' ? 'text/plain' : 'application/json';
  }
  const resp = await fetch(path, init);
  const text = await resp.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (_) {
    data = null;
  }
  if (!resp.ok) {
    throw new ApiError(resp.status, (data && data.error) || text.trim() || resp.statusText);
  }
  return data;
}

// An element with attributes (on* are listeners) and children (strings
// become text nodes).
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (k === 'class') node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c !== null && c !== undefined) node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

function flash(message, kind) {
  const f = $('flash');
  f.textContent = message;
  f.className = kind || 'ok';
}

function fillTable(id, rows) {
  $(id).tBodies[0].replaceChildren(...rows);
}

function num(v) {
  return el('td', { class: 'num' }, v);
}

function duration(ms) {
  const s = Math.round(ms / 1000);
  if (s < 120) return s + ' s';
  const m = Math.round(s / 60);
  if (m < 120) return m + ' min';
  return Math.round(m / 60) + ' h';
}

// ----- sign-in ---------------------------------------------------------

async function signIn(token) {
  state.token = token;
  try {
    const who = await api('GET', '/v1/whoami');
    state.role = who.role;
  } catch (e) {
    state.token = null;
    sessionStorage.removeItem('tether.token');
    $('login-error').textContent =
      e.status === 401 ? 'Token refused: ' + e.message : 'Cannot reach the admin API: ' + e.message;
    return;
  }
  sessionStorage.setItem('tether.token', token);
  $('login-error').textContent = '';
  $('login').hidden = true;
  $('app').hidden = false;
  $('logout').hidden = false;
  $('who').textContent = 'signed in as ' + state.role;
  $('who').dataset.role = state.role;
  state.round = 0;
  await refresh();
  state.timer = setInterval(refresh, STATUS_EVERY_MS);
}

function signOut(message) {
  clearInterval(state.timer);
  state.timer = null;
  state.token = null;
  state.role = null;
  sessionStorage.removeItem('tether.token');
  $('app').hidden = true;
  $('logout').hidden = true;
  $('login').hidden = false;
  $('who').textContent = '';
  $('summary').replaceChildren();
  $('token').value = '';
  $('login-error').textContent = message || '';
}

// ----- refresh ---------------------------------------------------------

async function refresh() {
  const slow = state.round % SLOW_EVERY === 0;
  state.round += 1;
  const jobs = [showStatus(), showPlayers()];
  if (slow) jobs.push(showHistory(), showBans(), showAudit());
  const results = await Promise.allSettled(jobs);
  for (const r of results) {
    if (r.status === 'rejected') {
      if (r.reason.status === 401) {
        signOut('The server no longer accepts this token.');
        return;
      }
      flash('Refresh failed: ' + r.reason.message, 'error');
    }
  }
}

async function showStatus() {
  const s = await api('GET', '/v1/status');
  state.draining = s.draining;
  const storage = s.storage === 'ok' ? el('span', { class: 'ok' }, 'storage ok')
    : el('span', { class: 'error' }, 'storage ' + s.storage);
  $('summary').replaceChildren(
    el('span', {}, 'v' + s.version),
    el('span', {}, 'up ' + duration(s.uptime_s * 1000)),
    el('span', { id: 'players-now' }, s.players + ' players'),
    el('span', {}, s.zombies + ' link-dead'),
    el('span', {}, s.connections + ' connections'),
    el('span', {}, 'ping p99 ' + (s.rtt_p99_ms === null ? '?' : s.rtt_p99_ms.toFixed(1) + ' ms')),
    storage,
    ...(s.draining ? [el('span', { class: 'warn' }, 'draining')] : []),
  );
  $('drain').textContent = s.draining ? 'End drain' : 'Drain';
  $('drain-state').textContent = s.draining
    ? 'fresh logins refused (SERVER_BUSY); players stay' : 'accepting logins';
  $('protect-state').textContent = 'now: ' + s.protect_override + ', '
    + s.shards.filter((x) => x.protecting).length + ' of ' + s.shards.length + ' shards protecting';
  fillTable('shards', s.shards.map((x) => el('tr', {},
    num(x.shard), num(x.players), num(x.zombies), num(x.loading), num(x.loads_deferred),
    num(x.commit_backlog), num(x.io_backlog), num(x.tick_lag_ms), num(x.tick_us),
    num(x.tick_p99_us), el('td', {}, x.protecting ? 'on' : 'off'))));
}

async function showPlayers() {
  const q = encodeURIComponent(state.search);
  const rows = await api('GET', `/v1/players?q=${q}&limit=${PLAYERS_SHOWN}`);
  $('player-count').textContent = rows.length === PLAYERS_SHOWN
    ? `(first ${PLAYERS_SHOWN})` : `(${rows.length})`;
  fillTable('players', rows.map((p) => el('tr', { 'data-account': p.account },
    el('td', {}, el('button', { type: 'button', class: 'link', onclick: () => inspect(p.account) }, p.account)),
    num(p.shard),
    el('td', {}, el('span', { class: 'badge ' + p.link }, p.link)),
    num(p.last_input), num(p.frames_sent), num(p.frames_acked), num(p.replay_depth),
    el('td', {}, el('button', { type: 'button', class: 'danger kick', onclick: () => kick(p.account) }, 'Kick')),
  )));
}

async function showBans() {
  const bans = await api('GET', '/v1/bans');
  fillTable('bans', bans.map((b) => el('tr', {},
    el('td', {}, b.ip), el('td', {}, duration(b.remaining_ms)), el('td', {}, b.kernel ? 'yes' : 'no'),
    el('td', {}, b.note || ''),
    el('td', {}, el('button', { type: 'button', onclick: () => unban(b.ip) }, 'Lift')),
  )));
}

async function showAudit() {
  const entries = await api('GET', `/v1/audit?limit=${AUDIT_SHOWN}`);
  fillTable('audit', entries.reverse().map((a) => el('tr', {},
    el('td', {}, new Date(a.at_ms).toLocaleString()), el('td', {}, a.role), el('td', {}, a.action),
    el('td', {}, a.target), el('td', {}, a.note), el('td', { class: a.ok ? 'ok' : 'error' }, a.ok ? 'yes' : 'no'),
  )));
}

// ----- actions ---------------------------------------------------------

// Runs a write and says how it went; a refusal shows the server's reason.
async function act(what, fn) {
  try {
    await fn();
    flash(what + ': done', 'ok');
  } catch (e) {
    flash(what + ' refused: ' + e.message, 'error');
  }
  state.round = 0; // the next refresh re-reads everything
  refresh();
}

function kick(account) {
  if (!confirm(`Kick ${account}? The player is saved and disconnected.`)) return;
  act('Kick ' + account, () =>
    api('POST', `/v1/players/${encodeURIComponent(account)}/kick`, { note: 'from the console' }));
}

function unban(ip) {
  act('Lift ban on ' + ip, () => api('DELETE', `/v1/bans/${encodeURIComponent(ip)}`));
}

async function inspect(account) {
  const pre = $('session');
  try {
    const row = await api('GET', `/v1/players/${encodeURIComponent(account)}`);
    pre.textContent = JSON.stringify(row, null, 2);
  } catch (e) {
    pre.textContent = account + ': ' + e.message;
  }
  pre.hidden = false;
}

// ----- graphs ----------------------------------------------------------

// Each graph: a title, the unit, and the lines it draws from a sample.
const GRAPHS = [
  { title: 'Players', lines: [['players', (s) => s.players, '#4fb3ff'], ['link-dead', (s) => s.zombies, '#f0b429']] },
  { title: 'Messages/s', lines: [['msgs/s', (s) => s.msgs_per_s, '#4cc38a']] },
  { title: 'Ping: TCP round trip p99 (ms)', lines: [['p99', (s) => s.rtt_p99_ms, '#89ddff']] },
  { title: 'Tick p99 (ms)', lines: [['p99', (s) => s.tick_p99_us / 1000, '#c792ea'], ['lag', (s) => s.tick_lag_ms, '#ff6b6b']] },
  { title: 'Memory (MB RSS)', lines: [['RSS', (s) => s.rss_mb, '#82aaff']] },
  { title: 'Link-dead sessions', lines: [['zombies', (s) => s.zombies, '#f0b429']] },
  { title: 'Banned addresses', lines: [['bans', (s) => s.banned_ips, '#ff6b6b']] },
  { title: 'Storage (loads waiting; red: down)', lines: [['waiting', (s) => s.loads_deferred, '#f78c6c']], down: (s) => !s.storage_ok },
];

function buildGraphs() {
  $('graphs').replaceChildren(...GRAPHS.map((g, i) => el('div', { class: 'graph' },
    el('div', { class: 'title' }, el('span', {}, g.title), el('b', { id: 'graph-last-' + i }, '')),
    el('canvas', { id: 'graph-' + i, 'aria-label': g.title }))));
}

async function showHistory() {
  const minutes = $('minutes').value;
  const samples = await api('GET', `/v1/history?minutes=${minutes}`);
  $('samples').textContent = `(${samples.length} samples)`;
  GRAPHS.forEach((g, i) => draw($('graph-' + i), g, samples));
  GRAPHS.forEach((g, i) => {
    const last = samples[samples.length - 1];
    $('graph-last-' + i).textContent = last
      ? g.lines.map(([name, f]) => `${name} ${+f(last).toFixed(1)}`).join(' · ') : '';
  });
}

function draw(canvas, graph, samples) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth;
  const h = canvas.clientHeight;
  canvas.width = w * ratio;
  canvas.height = h * ratio;
  const ctx = canvas.getContext('2d');
  ctx.scale(ratio, ratio);
  ctx.clearRect(0, 0, w, h);
  if (samples.length === 0) return;
  const t0 = samples[0].at_ms;
  const span = Math.max(1, samples[samples.length - 1].at_ms - t0);
  let max = 1;
  for (const [, f] of graph.lines) for (const s of samples) max = Math.max(max, f(s));
  const x = (s) => ((s.at_ms - t0) / span) * (w - 2) + 1;
  const y = (v) => h - 12 - (v / max) * (h - 16);
  if (graph.down) {
    ctx.fillStyle = 'rgba(255,107,107,0.25)';
    for (const s of samples) if (graph.down(s)) ctx.fillRect(x(s) - 2, 0, 4, h);
  }
  ctx.fillStyle = '#8b96a1';
  ctx.font = '10px system-ui, sans-serif';
  ctx.fillText(String(+max.toFixed(1)), 2, 10);
  for (const [, f, color] of graph.lines) {
    ctx.strokeStyle = color;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    samples.forEach((s, i) => (i === 0 ? ctx.moveTo(x(s), y(f(s))) : ctx.lineTo(x(s), y(f(s)))));
    ctx.stroke();
  }
}

// ----- wiring ----------------------------------------------------------

function wire() {
  buildGraphs();
  $('login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    signIn($('token').value.trim());
  });
  $('logout').addEventListener('click', () => signOut(''));
  $('minutes').addEventListener('change', () => showHistory().catch((e) => flash(e.message, 'error')));
  $('player-search').addEventListener('input', (e) => {
    state.search = e.target.value.trim();
    showPlayers().catch((err) => flash(err.message, 'error'));
  });
  $('ban-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const ip = $('ban-ip').value.trim();
    act('Ban ' + ip, () => api('POST', '/v1/bans', {
      ip, minutes: Number($('ban-minutes').value), note: $('ban-note').value,
    }));
  });
  $('notice-form').addEventListener('submit', (e) => {
    e.preventDefault();
    act('Notice', () => api('POST', '/v1/notice', { text: $('notice-text').value }));
  });
  $('drain').addEventListener('click', () =>
    act(state.draining ? 'End drain' : 'Drain', () => api('PUT', '/v1/drain', state.draining ? 'off' : 'on')));
  $('protect-apply').addEventListener('click', () =>
    act('Protect mode ' + $('protect').value, () => api('PUT', '/v1/protect', $('protect').value)));
  if (state.token !== null) signIn(state.token);
}

wire();
