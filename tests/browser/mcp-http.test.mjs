// MCP over streamable HTTP at /mcp on the admin listener, with the official
// MCP TypeScript SDK as the client (scripts/console-test.sh starts the
// server and the bots).
//
// Environment: TETHER_ADMIN (host:port), TETHER_VIEWER_TOKEN,
// TETHER_OPERATOR_TOKEN.
//
// Steps: without a token the endpoint refuses; a viewer is offered the
// read-only tools only, can call them, and is refused a write tool; an
// operator is offered the write tools too, and a notice sent through MCP
// reaches the audit log as the operator's.
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import assert from 'node:assert/strict';

const admin = process.env.TETHER_ADMIN;
const viewer = process.env.TETHER_VIEWER_TOKEN;
const operator = process.env.TETHER_OPERATOR_TOKEN;
const url = new URL(`http://${admin}/mcp`);
const READ_TOOLS = ['metrics', 'metrics_over_time', 'players', 'recent_events', 'session', 'status', 'why_is_latency_up'];
const WRITE_TOOLS = ['ban', 'drain', 'kick', 'notice'];

function log(...a) {
  console.log('[mcp-http-test]', ...a);
}

async function connect(token) {
  const client = new Client({ name: 'tether-mcp-http-test', version: '1.0.0' });
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  await client.connect(new StreamableHTTPClientTransport(url, { requestInit: { headers } }));
  return client;
}

function textOf(result) {
  return result.content.filter((c) => c.type === 'text').map((c) => c.text).join('\n');
}

// No token: the admin listener's own check refuses it.
await assert.rejects(connect(null), /401|Unauthorized|token/i, 'a tokenless client is refused');
log('no token: refused');

// The viewer: read-only tools, which work; a write tool is refused.
const v = await connect(viewer);
const vTools = (await v.listTools()).tools.map((t) => t.name).sort();
assert.deepEqual(vTools, READ_TOOLS, 'a viewer is offered the read-only tools');
const status = JSON.parse(textOf(await v.callTool({ name: 'status', arguments: {} })));
assert.ok(status.players > 0, `the bots are playing: ${status.players} players`);
const players = JSON.parse(textOf(await v.callTool({ name: 'players', arguments: { prefix: '', limit: 5 } })));
assert.equal(players.length, 5);
const session = JSON.parse(textOf(await v.callTool({ name: 'session', arguments: { account: players[0].account } })));
assert.equal(session.account, players[0].account);
const why = textOf(await v.callTool({ name: 'why_is_latency_up', arguments: {} }));
assert.ok(why.length > 0);
const refused = await v.callTool({ name: 'notice', arguments: { text: 'from a viewer' } }).then(
  (r) => (r.isError ? textOf(r) : null),
  (e) => e.message,
);
assert.ok(refused && /write tool|operator/.test(refused), `a viewer's write is refused: ${refused}`);
await v.close();
log(`viewer: tools ${vTools.join(', ')}; status says ${status.players} players; notice refused`);

// The operator: the write tools too, audited as the operator's.
const o = await connect(operator);
const oTools = (await o.listTools()).tools.map((t) => t.name).sort();
assert.deepEqual(oTools, [...READ_TOOLS, ...WRITE_TOOLS].sort(), 'an operator is offered every tool');
const text = `MCP notice ${Date.now()}`;
const sent = await o.callTool({ name: 'notice', arguments: { text } });
assert.ok(!sent.isError, textOf(sent));
assert.match(textOf(sent), /"sessions":\s*[1-9]/, 'the notice reached the players');
const events = JSON.parse(textOf(await o.callTool({ name: 'recent_events', arguments: { limit: 50 } })));
const audited = events.filter((e) => e.action === 'notice' && e.note === text);
assert.equal(audited.length, 1, 'the notice is audited once');
assert.equal(audited[0].role, 'operator');
assert.ok(!events.some((e) => e.note === 'from a viewer'), "the viewer's notice never reached the server");
await o.close();
log(`operator: ${oTools.length} tools; ${textOf(sent).trim()}; audited as operator`);
log('passed');
