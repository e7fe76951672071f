// The admin console in a real headless Chromium, against a running server
// with bots playing (scripts/console-test.sh starts both).
//
// Environment: TETHER_ADMIN (host:port), TETHER_VIEWER_TOKEN,
// TETHER_OPERATOR_TOKEN, CHROMIUM (the browser binary), SHOTS (a folder
// for screenshots, optional).
//
// Steps: a wrong token is refused at sign-in; the operator signs in and sees
// players appear and the graphs fill; inspects one (address, round trip)
// and kicks it (the server's audit log has it); the viewer signs in, sees
// the players, and is refused a kick.
import { chromium } from 'playwright-core';
import assert from 'node:assert/strict';

const admin = process.env.TETHER_ADMIN;
const viewer = process.env.TETHER_VIEWER_TOKEN;
const operator = process.env.TETHER_OPERATOR_TOKEN;
const shots = process.env.SHOTS;
for (const [k, v] of Object.entries({ TETHER_ADMIN: admin, TETHER_VIEWER_TOKEN: viewer, TETHER_OPERATOR_TOKEN: operator })) {
  if (!v) throw new Error(`${k} is not set`);
}
const base = `http://${admin}`;
const STEP_MS = 30_000;

function log(...a) {
  console.log('[console-test]', ...a);
}

async function auditEntries() {
  const resp = await fetch(`${base}/v1/audit?limit=1000`, { headers: { Authorization: `Bearer ${viewer}` } });
  assert.equal(resp.status, 200);
  return resp.json();
}

async function signIn(page, token) {
  await page.goto(`${base}/console/`);
  await page.locator('#token').fill(token);
  await page.locator('#login-form button[type=submit]').click();
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox'],
});
try {
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
  const page = await context.newPage();
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  page.on('console', (m) => {
    if (m.type() === 'error') pageErrors.push(m.text());
  });

  // / leads to the console; a wrong token is refused.
  await page.goto(base + '/');
  assert.equal(new URL(page.url()).pathname, '/console/');
  await signIn(page, 'not-a-token-of-this-server');
  await page.locator('#login-error').filter({ hasText: 'Token refused' }).waitFor({ timeout: STEP_MS });
  assert.equal(await page.locator('#app').isHidden(), true, 'the console stays closed');
  log('a wrong token is refused');
  // The refused sign-in logged a 401 to the console: not a page error.
  pageErrors.length = 0;

  // The operator: players appear while the bots play, the graphs fill.
  await signIn(page, operator);
  await page.locator('#who').filter({ hasText: 'operator' }).waitFor({ timeout: STEP_MS });
  const rows = page.locator('#players tbody tr');
  await rows.first().waitFor({ timeout: STEP_MS });
  await page.waitForFunction(() => document.querySelectorAll('#players tbody tr').length >= 5, null, { timeout: STEP_MS });
  log(`operator sees ${await rows.count()} players`);
  await page.waitForFunction(
    () => /\((\d+) samples\)/.test(document.getElementById('samples').textContent)
      && Number(document.getElementById('samples').textContent.match(/\d+/)[0]) >= 3,
    null,
    { timeout: STEP_MS },
  );
  const playersGraph = await page.locator('#graph-last-0').textContent();
  assert.match(playersGraph, /players [1-9]/, `the players graph shows players: ${playersGraph}`);
  log(`graphs: ${await page.locator('#samples').textContent()}, ${playersGraph}`);
  if (shots) await page.screenshot({ path: `${shots}/console-operator.png`, fullPage: true });

  // Inspect one: the session with its connection's address and round trip.
  const account = await rows.first().getAttribute('data-account');
  await page.locator(`#players tr[data-account="${account}"] button.link`).click();
  await page.locator('#session').filter({ hasText: '"rtt_ms"' }).waitFor({ timeout: STEP_MS });
  const session = JSON.parse(await page.locator('#session').textContent());
  assert.equal(session.account, account);
  assert.match(session.connection.peer, /^127\.0\.0\.1:\d+$/, JSON.stringify(session));
  log(`${account}: from ${session.connection.peer}, round trip ${session.connection.rtt_ms} ms`);

  // Kick it: the audit log (server and page) has it.
  page.once('dialog', (d) => d.accept());
  await page.locator(`#players tr[data-account="${account}"] button.kick`).click();
  await page.locator('#flash').filter({ hasText: `Kick ${account}: done` }).waitFor({ timeout: STEP_MS });
  const kicked = (await auditEntries()).filter((a) => a.action === 'kick' && a.target === account);
  assert.equal(kicked.length, 1, 'one audited kick');
  assert.equal(kicked[0].ok, true);
  assert.equal(kicked[0].role, 'operator');
  await page.locator('#audit tbody tr').filter({ hasText: account }).first().waitFor({ timeout: STEP_MS });
  log(`kicked ${account}; audited as operator`);

  // The viewer: sees the players, and a kick is refused by the server.
  await page.locator('#logout').click();
  await signIn(page, viewer);
  await page.locator('#who').filter({ hasText: 'viewer' }).waitFor({ timeout: STEP_MS });
  await page.waitForFunction(() => document.querySelectorAll('#players tbody tr').length >= 5, null, { timeout: STEP_MS });
  const target = await rows.first().getAttribute('data-account');
  page.once('dialog', (d) => d.accept());
  await page.locator(`#players tr[data-account="${target}"] button.kick`).click();
  await page.locator('#flash').filter({ hasText: 'refused' }).waitFor({ timeout: STEP_MS });
  const flash = await page.locator('#flash').textContent();
  assert.match(flash, /operator token/, flash);
  const viewerKicks = (await auditEntries()).filter((a) => a.action === 'kick' && a.target === target);
  assert.equal(viewerKicks.length, 0, 'the refused kick never reached the server');
  assert.ok(await page.locator(`#players tr[data-account="${target}"]`).count() === 1, 'the player is still there');
  log(`viewer refused: ${flash}`);
  if (shots) await page.screenshot({ path: `${shots}/console-viewer.png`, fullPage: true });

  assert.deepEqual(pageErrors.filter((e) => !/status of 40[13]/.test(e)), [], 'no script errors');
  log('passed');
} finally {
  await browser.close();
}
