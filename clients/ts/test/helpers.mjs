// Test helpers: a real Tether server on free loopback ports, a cluster of
// them, a TCP proxy a test can cut, a client whose events are recorded, and
// waiting for conditions.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import { TetherClient } from '../dist/index.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const TETHER_BIN = process.env.TETHER_BIN ?? path.join(root, process.env.CARGO_TARGET_DIR ?? 'target', 'debug', 'tether');

/** A WebSocket factory for the client, from the `ws` package. */
export const nodeWebSocket = (url) => new WebSocket(url);

async function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/**
 * Starts `tether` with a WebSocket listener and the given extra flags; the
 * server is killed by `stop()`. Retries on a port taken meanwhile.
 */
export async function startServer(extra = []) {
  for (let attempt = 0; attempt < 3; attempt += 1) {
    const [game, admin, ws] = [await freePort(), await freePort(), await freePort()];
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tether-ts-'));
    const child = spawn(TETHER_BIN, [
      '--listen', `127.0.0.1:${game}`,
      '--admin-listen', `127.0.0.1:${admin}`,
      '--ws-listen', `127.0.0.1:${ws}`,
      '--data-dir', dir,
      '--log', 'warn',
      ...extra,
    ], { stdio: ['ignore', 'ignore', 'pipe'] });
    let log = '';
    child.stderr.on('data', (d) => { log += d; });
    child.on('error', (e) => { log += `cannot start ${TETHER_BIN}: ${e.message}`; });
    const up = await waitFor(async () => {
      if (child.exitCode !== null) return 'exited';
      try {
        const r = await fetch(`http://127.0.0.1:${admin}/healthz`);
        return r.ok ? 'up' : null;
      } catch {
        return null;
      }
    }, 10_000).catch(() => 'timeout');
    if (up === 'up') {
      return {
        url: `ws://127.0.0.1:${ws}/`,
        wsPort: ws,
        admin: `http://127.0.0.1:${admin}`,
        log: () => log,
        stop: async () => {
          const exited = new Promise((r) => {
            if (child.exitCode !== null || child.signalCode !== null) r();
            else child.once('exit', r);
          });
          child.kill('SIGTERM');
          const killer = setTimeout(() => child.kill('SIGKILL'), 10_000);
          await exited;
          clearTimeout(killer);
          fs.rmSync(dir, { recursive: true, force: true });
        },
      };
    }
    child.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
    if (attempt === 2) throw new Error(`tether did not start (${up}): ${log}`);
  }
  throw new Error('unreachable');
}

/**
 * Starts `n` servers of one cluster (nodes `n1`..`nN`) over PostgreSQL `pg`
 * and NATS `nats`, under a cluster name of their own (their own NATS
 * buckets and subjects), and waits until each lists all of them alive in
 * `GET /cluster`. `stop()` stops them all.
 */
export async function startCluster(n, { pg, nats }) {
  const name = `tsc-${randomBytes(4).toString('hex')}`;
  const nodes = [];
  const stop = () => Promise.all(nodes.map((s) => s.stop()));
  try {
    for (let i = 1; i <= n; i += 1) {
      nodes.push(await startServer(['--store', pg, '--cluster', nats, '--cluster-name', name, '--node', `n${i}`]));
    }
    const seesAll = async (s) => {
      try {
        const r = await fetch(`${s.admin}/cluster`);
        if (!r.ok) return false;
        const { nodes: seen } = await r.json();
        return seen.filter((x) => x.alive).length === n;
      } catch {
        return false;
      }
    };
    await waitFor(async () => (await Promise.all(nodes.map(seesAll))).every(Boolean), 20_000, 'the servers to see each other');
  } catch (e) {
    await stop();
    throw e;
  }
  return { name, nodes, stop };
}

/** A TCP proxy to `port` on loopback that a test can cut (shared with the browser tests). */
export { startCutProxy as startProxy } from '../../../tests/browser/cut-proxy.mjs';

/** Polls `check` every 20 ms until it returns something truthy. */
export async function waitFor(check, timeoutMs = 10_000, what = 'a condition') {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * A client of `name` at `url` whose pongs, chat lines, states, close,
 * welcomes and resumes are recorded in `seen`.
 */
export function watchedClient(name, url, extra = {}) {
  const c = new TetherClient({ url, auth: { devName: name }, webSocket: nodeWebSocket, ...extra });
  const seen = { pongs: [], chats: [], states: [], closed: null, welcomes: [], resumes: [] };
  c.on('message', (m) => {
    if (m.msg.case === 'pong') seen.pongs.push(m.msg.value.clientTime);
    if (m.msg.case === 'chat') seen.chats.push(m.msg.value.text);
  });
  c.on('state', (s) => seen.states.push(s));
  c.on('closed', (x) => { seen.closed = x; });
  c.on('welcome', (w) => seen.welcomes.push(w));
  c.on('resumed', (r) => seen.resumes.push(r));
  return { c, seen };
}

/** Waits until client `c` is live. */
export const live = (c) => waitFor(() => c.state === 'live', 10_000, 'live');
