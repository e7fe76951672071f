// The TypeScript client against a real two-server cluster (PostgreSQL and
// NATS): REDIRECT at login, a player moved to another server while playing,
// and entry URLs. Skipped unless TETHER_TEST_POSTGRES and TETHER_TEST_NATS
// hold URLs (CI sets both). Account names are unique per run.
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { CloseCode } from '../dist/index.js';
import { live, startCluster, waitFor, watchedClient } from './helpers.mjs';

const pg = process.env.TETHER_TEST_POSTGRES;
const nats = process.env.TETHER_TEST_NATS;
const skip = pg && nats ? false : 'set TETHER_TEST_POSTGRES and TETHER_TEST_NATS to run the cluster tests';
const tag = randomBytes(4).toString('hex');
const account = (who) => `ts${tag}_${who}`;

let cluster;
let n1;
let n2;
before(async () => {
  if (skip) return;
  cluster = await startCluster(2, { pg, nats });
  [n1, n2] = cluster.nodes;
});
after(async () => {
  await cluster?.stop();
});

const client = watchedClient;

/** The HTTP status of GET /v1/players/NAME at a server's admin API. */
async function held(server, name) {
  const r = await fetch(`${server.admin}/v1/players/${name}`);
  await r.body?.cancel();
  return r.status;
}

test('a login at another server is redirected to the session and takes it over', { skip }, async () => {
  const name = account('alice');
  const x = client(name, n1.url);
  x.c.connect();
  await live(x.c);
  assert.equal(x.c.stats.redirects, 0);

  // The same account at server 2 (its only entry URL): sent to server 1,
  // which holds the session, where it takes it over.
  const y = client(name, n2.url);
  y.c.connect();
  await live(y.c);
  assert.ok(y.c.stats.redirects >= 1, 'a REDIRECT was followed');
  assert.equal(y.seen.welcomes.length, 1);
  assert.equal(y.seen.welcomes[0].tookOver, true);
  await waitFor(() => x.seen.closed, 10_000, 'X closed');
  assert.equal(x.seen.closed.code, CloseCode.SESSION_TAKEN_OVER);
  assert.equal(x.c.state, 'offline');

  assert.equal(await held(n1, name), 200, 'server 1 holds the session');
  assert.equal(await held(n2, name), 404, 'server 2 does not');
  y.c.ping(1n);
  await waitFor(() => y.seen.pongs.includes(1n), 5000, 'a pong from server 1');
  y.c.logout();
});

test('a player moved to another server resumes there and every input applies exactly once', { skip }, async () => {
  const name = account('bob');
  const { c, seen } = client(name, n1.url);
  c.connect();
  await live(c);
  for (let t = 1n; t <= 10n; t += 1n) c.ping(t);
  const r = await fetch(`${n1.admin}/v1/players/${name}/move`, { method: 'POST', body: '{"node":"n2"}' });
  assert.equal(r.status, 200, await r.text());
  // Made while the server closes the connection, or while the session is paused.
  for (let t = 11n; t <= 20n; t += 1n) c.ping(t);
  await waitFor(() => seen.pongs.length >= 20 && c.pendingInputs === 0, 15_000, 'all pongs');
  await new Promise((res) => setTimeout(res, 500)); // a second answer would show up meanwhile
  assert.deepEqual(seen.pongs, Array.from({ length: 20 }, (_, i) => BigInt(i + 1)), 'each once, in order');
  assert.deepEqual(seen.states, ['connecting', 'live', 'resuming', 'live']);
  assert.equal(seen.welcomes.length, 1, 'the session went on: no second login');
  assert.ok(c.stats.resumes >= 1);
  assert.ok(c.stats.redirects >= 1);

  assert.equal(await held(n2, name), 200, 'server 2 holds the session');
  assert.equal(await held(n1, name), 404, 'server 1 does not');
  const session = await (await fetch(`${n2.admin}/v1/players/${name}`)).json();
  assert.equal(session.last_input, 20);
  c.logout();
});

test('an entry URL that cannot be reached: the next one is tried', { skip }, async () => {
  const name = account('carol');
  // Nothing listens on port 9: the first attempt fails, the second goes to server 2.
  const { c } = client(name, 'ws://127.0.0.1:9/', { otherUrls: [n2.url], reconnectInitialMs: 50 });
  c.connect();
  await live(c);
  assert.ok(c.stats.reconnects >= 1);
  assert.equal(await held(n2, name), 200);
  c.logout();
});
