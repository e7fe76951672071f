// The TypeScript client against a real Tether server (target/debug/tether,
// or TETHER_BIN), over WebSocket.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import {
  TetherClient,
  TooManyPendingInputs,
  CloseCode,
  ChatScope,
  AttackSchema,
  FrameReader,
  frame,
  create,
  toBinary,
  fromBinary,
} from '../dist/index.js';
import { live, nodeWebSocket, startProxy, startServer, waitFor, watchedClient } from './helpers.mjs';

let server;
let shortGrace;
before(async () => {
  server = await startServer();
  // For the relogin test: sessions expire 1.5 s after their connection.
  shortGrace = await startServer(['--zombie-grace-ms', '1500', '--unplayed-zombie-grace-ms', '1500']);
});
after(async () => {
  await server?.stop();
  await shortGrace?.stop();
});

const client = (name, url = server.url, extra = {}) => watchedClient(name, url, extra);


test('64-bit ids survive encoding without precision loss', () => {
  const big = 2n ** 64n - 2n;
  const back = fromBinary(AttackSchema, toBinary(AttackSchema, create(AttackSchema, { target: big })));
  assert.equal(back.target, big);
  const reader = new FrameReader();
  const f = frame(new Uint8Array([1, 2, 3]));
  assert.deepEqual(reader.push(f.subarray(0, 1)), []);
  assert.deepEqual(reader.push(f.subarray(1)).map((p) => [...p]), [[1, 2, 3]]);
});

test('inputs waiting for the server are bounded', () => {
  // Nothing listens there: the client stays connecting and keeps inputs.
  const c = new TetherClient({
    url: 'ws://127.0.0.1:9/', auth: { devName: 'tsbound' }, webSocket: nodeWebSocket,
    maxPendingInputs: 3, reconnectInitialMs: 60_000,
  });
  c.connect();
  for (let t = 1n; t <= 3n; t += 1n) c.ping(t);
  assert.equal(c.pendingInputs, 3);
  assert.throws(() => c.ping(4n), TooManyPendingInputs);
  assert.equal(c.pendingInputs, 3);
  c.logout();
});

test('logs in, plays, and its view has the world', async () => {
  const { c, seen } = client('tsa');
  c.connect();
  await live(c);
  assert.ok(c.world.width > 0, 'world info from the Welcome');
  assert.equal(typeof c.entityId, 'bigint');
  c.ping(1n);
  c.chat('hello from TypeScript', ChatScope.LOCAL);
  await waitFor(() => seen.pongs.includes(1n) && seen.chats.includes('hello from TypeScript'), 5000, 'pong and chat');
  await waitFor(() => c.pendingInputs === 0, 5000, 'inputs applied (InputAck)');
  c.logout();
  assert.equal(c.state, 'offline');
  assert.equal(seen.closed.code, CloseCode.LOGOUT);
});

test('a dropped connection resumes and every input applies exactly once', async () => {
  const { c, seen } = client('tsb');
  c.connect();
  await live(c);
  for (let t = 1n; t <= 20n; t += 1n) {
    c.ping(t);
    if (t === 10n) c.dropConnection(); // mid-stream, some unsent, some unacked
  }
  assert.equal(c.state, 'resuming');
  await waitFor(() => seen.pongs.length >= 20 && c.pendingInputs === 0, 10_000, 'all pongs');
  await new Promise((r) => setTimeout(r, 300));
  assert.deepEqual(seen.pongs, Array.from({ length: 20 }, (_, i) => BigInt(i + 1)), 'each once, in order');
  assert.equal(c.stats.resumes, 1);
  assert.deepEqual(seen.states, ['connecting', 'live', 'resuming', 'live']);
  c.logout();
});

test('a network cut: inputs made offline are sent after the resume, none lost or doubled', async () => {
  const proxy = await startProxy(server.wsPort);
  const { c, seen } = client('tsc', proxy.url);
  c.connect();
  await live(c);
  c.ping(100n);
  await waitFor(() => seen.pongs.includes(100n), 5000, 'first pong');
  proxy.cut();
  await waitFor(() => c.state === 'resuming', 5000, 'resuming');
  for (let t = 101n; t <= 110n; t += 1n) c.ping(t);
  await new Promise((r) => setTimeout(r, 700)); // reconnects are refused meanwhile
  assert.equal(c.state, 'resuming');
  proxy.restore();
  await waitFor(() => seen.pongs.length === 11 && c.pendingInputs === 0, 10_000, 'pongs after the cut');
  assert.deepEqual(seen.pongs, Array.from({ length: 11 }, (_, i) => BigInt(100 + i)));
  assert.ok(c.stats.reconnects >= 1);
  c.logout();
  await proxy.close();
});

test('a session lost past its grace: the client logs in again and says what it dropped', async () => {
  const proxy = await startProxy(shortGrace.wsPort);
  const { c, seen } = client('tsd', proxy.url);
  c.connect();
  await live(c);
  c.ping(1n);
  await waitFor(() => seen.pongs.includes(1n) && c.pendingInputs === 0, 5000, 'pong and InputAck');
  proxy.cut();
  c.ping(2n); // made while offline: lost with the session
  await new Promise((r) => setTimeout(r, 2500)); // past the 1.5 s grace
  proxy.restore();
  await waitFor(() => seen.welcomes.length === 2, 15_000, 'a second Welcome');
  const again = seen.welcomes[1];
  assert.equal(again.relogin, true);
  assert.equal(again.inputsDropped, 1);
  assert.equal(c.stats.relogins, 1);
  assert.equal(c.state, 'live');
  c.ping(3n);
  await waitFor(() => seen.pongs.includes(3n), 5000, 'pong after the relogin');
  c.logout();
  await proxy.close();
});

test('a kick ends the session for good', async () => {
  const { c, seen } = client('tse');
  c.connect();
  await live(c);
  const r = await fetch(`${server.admin}/v1/players/tse/kick`, { method: 'POST', body: '{"note":"test"}' });
  assert.equal(r.status, 200);
  await waitFor(() => seen.closed, 5000, 'closed');
  assert.equal(seen.closed.code, CloseCode.KICKED);
  assert.equal(c.state, 'offline');
  await new Promise((r) => setTimeout(r, 500));
  assert.equal(c.stats.reconnects, 0, 'no reconnect after a final close');
});
