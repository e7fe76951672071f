// Tether's browser demo: a top-down view of the world around the player, on
// the TypeScript client (tether-client.js, built from clients/ts).
//
// ?name=NAME picks the character (dev auth), ?server=ws://HOST:PORT/ the
// server (default: the address this page came from). The client resumes
// by itself when the connection drops; the badge shows the link's state.
import { TetherClient, ChatScope, EntityKind, CloseCode, ResumeMode } from './tether-client.js';

const params = new URLSearchParams(location.search);
const name = params.get('name') || 'web' + Math.floor(Math.random() * 100000);
const server = params.get('server') || `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/`;

const STEP_MS = 100;
const MAX_LINES = 200;

const $ = (id) => document.getElementById(id);
const canvas = $('world');
const ctx = canvas.getContext('2d');

// What the player knows of the world, from the server's events.
const state = {
  self: null, // SelfState fields, kept current
  entities: new Map(), // id (string) -> {id, kind, name, x, y, hp, maxHp, linkDead, dead}
  target: null, // where the player walks to
  chat: [], // {from, text}
  gold: 0n,
  link: 'offline',
};

const client = new TetherClient({ url: server, auth: { devName: name }, clientName: 'tether-play/0.1' });
// For tests and the curious: window.tether.client, window.tether.state.
window.tether = { client, state, name };

function line(list, text) {
  const li = document.createElement('li');
  li.textContent = text; // never markup: names and chat come from players
  const ol = $(list);
  ol.append(li);
  while (ol.children.length > MAX_LINES) ol.firstChild.remove();
  ol.scrollTop = ol.scrollHeight;
}

function showLink(s) {
  state.link = s;
  const badge = $('link');
  badge.textContent = s;
  badge.className = 'link ' + s;
}

function showStats() {
  const s = state.self;
  $('me').textContent = s ? `${s.name} (level ${s.level})` : name;
  $('stats').textContent = s ? `hp ${s.hp}/${s.maxHp} · xp ${s.xp}/${s.xpNext} · gold ${state.gold}` : '';
  $('respawn').hidden = !(s && s.dead);
}

client.on('state', (s) => {
  showLink(s);
  line('events', `link: ${s}`);
});
client.on('welcome', (w) => {
  state.entities.clear();
  line('events', w.relogin ? `logged in again (${w.inputsDropped} inputs dropped)` : `logged in as ${name}`);
});
client.on('resumed', (r) => {
  if (r.mode === ResumeMode.SNAPSHOT) state.entities.clear();
  line('events', `resumed (${r.mode === ResumeMode.REPLAY ? 'replay' : 'snapshot'})`);
});
client.on('closed', (c) => line('events', `session ended: ${CloseCode[c.code] ?? c.code} ${c.message}`));
client.on('message', (m) => {
  const v = m.msg.value;
  switch (m.msg.case) {
    case 'selfState':
      state.self = { ...v, id: v.entityId };
      state.gold = v.gold;
      break;
    case 'appear':
      state.entities.set(String(v.id), {
        id: v.id, kind: v.kind, name: v.name, x: v.x, y: v.y, hp: v.hp, maxHp: v.maxHp,
        linkDead: v.linkDead, dead: v.dead,
      });
      break;
    case 'move': {
      const e = state.entities.get(String(v.id));
      if (e) Object.assign(e, { x: v.x, y: v.y });
      break;
    }
    case 'disappear':
      state.entities.delete(String(v.id));
      break;
    case 'correction':
      if (state.self) Object.assign(state.self, { x: v.x, y: v.y });
      state.target = null;
      break;
    case 'damage': {
      const e = state.entities.get(String(v.target));
      if (e) e.hp = v.targetHp;
      if (state.self && v.target === state.self.id) state.self.hp = v.targetHp;
      break;
    }
    case 'death': {
      const e = state.entities.get(String(v.id));
      if (e) e.dead = true;
      if (state.self && v.id === state.self.id) {
        state.self.dead = true;
        line('events', 'you died');
      }
      break;
    }
    case 'stats':
      if (state.self) Object.assign(state.self, { hp: v.hp, maxHp: v.maxHp, level: v.level, xp: v.xp, xpNext: v.xpNext });
      break;
    case 'link': {
      const e = state.entities.get(String(v.id));
      if (e) e.linkDead = v.linkDead;
      break;
    }
    case 'loot':
      state.gold = v.totalGold;
      line('events', `loot: +${v.gold} gold` + (v.items.length ? `, ${v.items.length} item(s)` : ''));
      break;
    case 'chat':
      state.chat.push({ from: v.fromName, text: v.text });
      line('chat', `${v.fromName}: ${v.text}`);
      break;
    case 'notice':
      line('events', `notice: ${v.text}`);
      break;
    case 'commandError':
      line('events', `refused (${v.code})`);
      break;
    default:
      break;
  }
  showStats();
});

// ----- input -----------------------------------------------------------

function worldAt(px, py) {
  const s = state.self;
  const w = client.world;
  if (!s || !w) return null;
  const scale = canvas.width / (2 * w.viewRadius);
  return { x: s.x + (px - canvas.width / 2) / scale, y: s.y + (py - canvas.height / 2) / scale, scale };
}

canvas.addEventListener('click', (ev) => {
  const r = canvas.getBoundingClientRect();
  const p = worldAt(((ev.clientX - r.left) * canvas.width) / r.width, ((ev.clientY - r.top) * canvas.height) / r.height);
  if (!p) return;
  // A monster under the cursor: attack it; anywhere else: walk there.
  let best = null;
  for (const e of state.entities.values()) {
    const d = Math.hypot(e.x - p.x, e.y - p.y);
    if (e.kind === EntityKind.MONSTER && !e.dead && d * p.scale < 14 && (!best || d < best.d)) best = { e, d };
  }
  if (best) act(() => client.attack(best.e.id));
  else state.target = { x: p.x, y: p.y };
});

const keys = new Set();
addEventListener('keydown', (e) => {
  if (document.activeElement === $('chat-text')) return;
  keys.add(e.key.toLowerCase());
});
addEventListener('keyup', (e) => keys.delete(e.key.toLowerCase()));

function act(fn) {
  try {
    fn();
  } catch (e) {
    line('events', String(e.message || e));
  }
}

// Walks toward the target (or along the held keys) at 70% of the allowed
// speed, one short step every STEP_MS, as docs/PROTOCOL.md advises.
setInterval(() => {
  const s = state.self;
  const w = client.world;
  if (!s || !w || s.dead || client.state !== 'live') return;
  let dx = 0;
  let dy = 0;
  if (keys.has('a') || keys.has('arrowleft')) dx -= 1;
  if (keys.has('d') || keys.has('arrowright')) dx += 1;
  if (keys.has('w') || keys.has('arrowup')) dy -= 1;
  if (keys.has('s') || keys.has('arrowdown')) dy += 1;
  if (dx || dy) state.target = { x: s.x + dx * 1000, y: s.y + dy * 1000 };
  if (!state.target) return;
  const tx = Math.min(Math.max(state.target.x, 0), w.width - 0.01);
  const ty = Math.min(Math.max(state.target.y, 0), w.height - 0.01);
  const dist = Math.hypot(tx - s.x, ty - s.y);
  if (dist < 0.05) {
    state.target = null;
    return;
  }
  const step = Math.min(dist, (w.moveSpeed * 0.7 * STEP_MS) / 1000);
  s.x += ((tx - s.x) / dist) * step;
  s.y += ((ty - s.y) / dist) * step;
  act(() => client.move(s.x, s.y));
}, STEP_MS);

$('chat-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const text = $('chat-text').value.trim();
  if (!text) return;
  act(() => client.chat(text, ChatScope.LOCAL));
  $('chat-text').value = '';
});
$('respawn').addEventListener('click', () => act(() => client.respawn()));

// ----- drawing ---------------------------------------------------------

function draw() {
  const s = state.self;
  const w = client.world;
  ctx.fillStyle = '#14202a';
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  if (s && w) {
    const scale = canvas.width / (2 * w.viewRadius);
    const sx = (x) => canvas.width / 2 + (x - s.x) * scale;
    const sy = (y) => canvas.height / 2 + (y - s.y) * scale;
    // The map's edge.
    ctx.strokeStyle = '#3a4a58';
    ctx.strokeRect(sx(0), sy(0), w.width * scale, w.height * scale);
    ctx.font = '11px system-ui, sans-serif';
    ctx.textAlign = 'center';
    for (const e of state.entities.values()) {
      const monster = e.kind === EntityKind.MONSTER;
      ctx.fillStyle = e.dead ? '#555' : monster ? '#e05555' : e.linkDead ? '#7a8a99' : '#4fa8ff';
      ctx.beginPath();
      ctx.arc(sx(e.x), sy(e.y), monster ? 6 : 7, 0, Math.PI * 2);
      ctx.fill();
      ctx.fillStyle = '#c8d2da';
      ctx.fillText(e.name + (e.linkDead ? ' (link-dead)' : ''), sx(e.x), sy(e.y) - 10);
    }
    ctx.fillStyle = s.dead ? '#555' : '#5ee08a';
    ctx.beginPath();
    ctx.arc(canvas.width / 2, canvas.height / 2, 8, 0, Math.PI * 2);
    ctx.fill();
    if (state.target) {
      ctx.strokeStyle = '#5ee08a';
      ctx.beginPath();
      ctx.arc(sx(state.target.x), sy(state.target.y), 4, 0, Math.PI * 2);
      ctx.stroke();
    }
  }
  if (state.link !== 'live') {
    ctx.fillStyle = 'rgba(0,0,0,0.5)';
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.fillStyle = '#f0c860';
    ctx.font = '20px system-ui, sans-serif';
    ctx.textAlign = 'center';
    ctx.fillText(state.link === 'resuming' ? 'connection lost: resuming…' : state.link, canvas.width / 2, canvas.height / 2);
  }
  requestAnimationFrame(draw);
}

showLink('offline');
showStats();
requestAnimationFrame(draw);
client.connect();
