// The browser demo (served by the server's WebSocket listener) in a real
// headless Chromium: two pages see each other and chat; one page's network
// is cut and restored, and it resumes with every input applied once.
//
// Environment: TETHER_WS (host:port of ws_listen), CHROMIUM, SHOTS
// (optional, a folder for screenshots). scripts/play-test.sh starts the
// server on the smallest map (four view radii a side), where the two
// players meet by walking to its middle.
import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';
import { startCutProxy } from './cut-proxy.mjs';

const wsAddr = process.env.TETHER_WS;
if (!wsAddr) throw new Error('TETHER_WS is not set');
const [wsHost, wsPort] = wsAddr.split(':');
const shots = process.env.SHOTS;
const STEP_MS = 30_000;

function log(...a) {
  console.log('[play-test]', ...a);
}

const linkOf = (page) => page.locator('#link').textContent();
const chatLines = (page) => page.evaluate(() => window.tether.state.chat.map((c) => `${c.from}: ${c.text}`));
const sees = (page, name) =>
  page.evaluate((n) => [...window.tether.state.entities.values()].some((e) => e.name === n), name);

// Bob's page reaches the server through a proxy the test cuts.
const proxy = await startCutProxy(Number(wsPort), wsHost);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox'],
});
try {
  const errors = [];
  const open = async (name, server) => {
    const page = await browser.newPage({ viewport: { width: 1100, height: 760 } });
    page.on('pageerror', (e) => errors.push(`${name}: ${e.message}`));
    const q = server ? `&server=${encodeURIComponent(server)}` : '';
    await page.goto(`http://${wsAddr}/?name=${name}${q}`);
    await page.locator('#link').filter({ hasText: /^live$/ }).waitFor({ timeout: STEP_MS });
    return page;
  };
  // Alice straight to the server, Bob through the proxy the test cuts.
  const alice = await open('alice_web');
  const bob = await open('bob_web', `ws://127.0.0.1:${proxy.port}/`);
  log('both pages live');

  // They walk to the middle of the map until they see each other, and chat.
  for (const page of [alice, bob]) {
    await page.evaluate(() => {
      const w = window.tether.client.world;
      window.tether.state.target = { x: w.width / 2, y: w.height / 2 };
    });
  }
  await alice.waitForFunction(() => [...window.tether.state.entities.values()].some((e) => e.name === 'bob_web'), null, { timeout: 60_000 });
  assert.ok(await sees(bob, 'alice_web'), 'bob sees alice');
  await alice.locator('#chat-text').fill('hello bob');
  await alice.locator('#chat-form button').click();
  await bob.locator('#chat li').filter({ hasText: 'alice_web: hello bob' }).waitFor({ timeout: STEP_MS });
  await bob.locator('#chat-text').fill('hi alice');
  await bob.locator('#chat-form button').click();
  await alice.locator('#chat li').filter({ hasText: 'bob_web: hi alice' }).waitFor({ timeout: STEP_MS });
  log('they see each other and chat');
  if (shots) await alice.screenshot({ path: `${shots}/play-alice.png` });

  // Bob's network is cut: his page shows it, keeps what he types, and
  // after the network is back resumes and delivers each line once.
  proxy.cut();
  await bob.locator('#link').filter({ hasText: /^resuming$/ }).waitFor({ timeout: STEP_MS });
  const offline = ['while offline 1', 'while offline 2', 'while offline 3'];
  for (const text of offline) {
    await bob.locator('#chat-text').fill(text);
    await bob.locator('#chat-form button').click();
  }
  assert.equal(await bob.evaluate(() => window.tether.client.pendingInputs >= 3), true, 'kept while offline');
  if (shots) await bob.screenshot({ path: `${shots}/play-bob-resuming.png` });
  await bob.waitForTimeout(1500);
  assert.equal(await linkOf(bob), 'resuming');
  proxy.restore();
  await bob.locator('#link').filter({ hasText: /^live$/ }).waitFor({ timeout: STEP_MS });
  for (const text of offline) {
    await alice.locator('#chat li').filter({ hasText: `bob_web: ${text}` }).waitFor({ timeout: STEP_MS });
  }
  await bob.waitForFunction(() => window.tether.client.pendingInputs === 0, null, { timeout: STEP_MS });
  await alice.waitForTimeout(500);
  const heard = (await chatLines(alice)).filter((l) => l.startsWith('bob_web: while offline'));
  assert.deepEqual(heard, offline.map((t) => `bob_web: ${t}`), 'each line once, in order');
  const stats = await bob.evaluate(() => ({ resumes: window.tether.client.stats.resumes, relogins: window.tether.client.stats.relogins }));
  assert.equal(stats.resumes, 1);
  assert.equal(stats.relogins, 0);
  log(`bob resumed after the cut; alice heard ${heard.length} lines once each`);

  // Walking and a click on the map work after the resume.
  const before = await bob.evaluate(() => ({ x: window.tether.state.self.x, y: window.tether.state.self.y }));
  await bob.locator('#world').click({ position: { x: 400, y: 320 } });
  await bob.waitForFunction((b) => Math.abs(window.tether.state.self.x - b.x) > 0.5, before, { timeout: STEP_MS });
  if (shots) await bob.screenshot({ path: `${shots}/play-bob.png` });
  assert.deepEqual(errors, [], 'no script errors');
  log('passed');
} finally {
  await browser.close();
  await proxy.close();
}
