// A TCP proxy on loopback that a test can cut: `cut()` resets every open
// connection and refuses new ones until `restore()`. No dependencies: the
// browser tests and the TypeScript client's tests share it.
import net from 'node:net';

/** A proxy to `host:port`; resolves once it listens (`port`, `url`). */
export async function startCutProxy(port, host = '127.0.0.1') {
  const sockets = new Set();
  let open = true;
  const server = net.createServer((client) => {
    if (!open) {
      client.resetAndDestroy();
      return;
    }
    const upstream = net.connect(port, host);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {});
    }
    client.pipe(upstream);
    upstream.pipe(client);
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const listening = server.address().port;
  return {
    port: listening,
    url: `ws://127.0.0.1:${listening}/`,
    cut() {
      open = false;
      for (const s of sockets) s.resetAndDestroy();
    },
    restore() {
      open = true;
    },
    close: () => new Promise((r) => {
      for (const s of sockets) s.destroy();
      server.close(r);
    }),
  };
}
