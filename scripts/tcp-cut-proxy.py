#!/usr/bin/env python3
"""A TCP proxy that a test can cut: the storage outage of scripts/outage-test.sh.

    scripts/tcp-cut-proxy.py --upstream HOST:PORT --control FILE --port-file FILE

Listens on 127.0.0.1 (a free port, written to --port-file once listening)
and forwards every connection to --upstream. The test steers it by writing
one word to --control (read every 0.1 s):

    open   forward (the start state, also when the file is missing or empty)
    cut    drop every open connection (reset) and refuse new ones (the
           listening socket is closed: connects get "connection refused")
    stall  keep connections open but forward nothing, and accept new ones
           without ever reaching the upstream (a network black hole)

Going back to `open` listens again on the same port; connections dropped by
`cut` stay dropped (the client has to reconnect), stalled ones resume.

Bounded: each direction of a connection holds at most one read of
CHUNK bytes; at most MAX_CONNECTIONS connections at once (more are closed at
accept). Python standard library only. Ends on SIGTERM / SIGINT.
"""

import argparse
import os
import signal
import socket
import struct
import sys
import threading
import time

CHUNK = 64 * 1024
MAX_CONNECTIONS = 64
POLL_S = 0.1

mode_lock = threading.Lock()
mode = "open"
pairs_lock = threading.Lock()
pairs = set()
stopping = threading.Event()


def log(msg):
    print(f"tcp-cut-proxy: {msg}", file=sys.stderr, flush=True)


def current_mode():
    with mode_lock:
        return mode


def reset(sock):
    """Closes with a reset (SO_LINGER 0), waking any thread blocked on it."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class Pair:
    """One client connection and its upstream connection."""

    def __init__(self, client, upstream_addr):
        self.client = client
        self.upstream_addr = upstream_addr
        self.upstream = None
        self.closed = threading.Event()

    def start(self):
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        # A connection accepted while stalled waits before reaching upstream.
        while current_mode() == "stall" and not self.closed.is_set():
            time.sleep(POLL_S)
        if self.closed.is_set() or current_mode() == "cut":
            self.close()
            return
        try:
            self.upstream = socket.create_connection(self.upstream_addr, timeout=5)
            self.upstream.settimeout(None)
        except OSError as e:
            log(f"upstream connect failed: {e}")
            self.close()
            return
        if self.closed.is_set():
            self.close()
            return
        threading.Thread(target=self.pump, args=(self.upstream, self.client), daemon=True).start()
        self.pump(self.client, self.upstream)

    def pump(self, src, dst):
        try:
            while not self.closed.is_set():
                data = src.recv(CHUNK)
                if not data:
                    break
                while current_mode() == "stall" and not self.closed.is_set():
                    time.sleep(POLL_S)
                if self.closed.is_set():
                    break
                dst.sendall(data)
        except OSError:
            pass
        self.close()

    def close(self):
        self.closed.set()
        reset(self.client)
        if self.upstream is not None:
            reset(self.upstream)
        with pairs_lock:
            pairs.discard(self)


def listen(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(64)
    s.settimeout(POLL_S)
    return s


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--upstream", required=True, help="HOST:PORT to forward to")
    ap.add_argument("--control", required=True, help="file holding open, cut or stall")
    ap.add_argument("--port-file", required=True, help="where to write the listening port")
    ap.add_argument("--port", type=int, default=0, help="port to listen on (0: a free one)")
    args = ap.parse_args()
    host, _, port = args.upstream.rpartition(":")
    upstream = (host or "127.0.0.1", int(port))

    def on_signal(_sig, _frame):
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    global mode
    listener = listen(args.port)
    port = listener.getsockname()[1]
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(f"{port}\n")
    os.replace(tmp, args.port_file)
    log(f"127.0.0.1:{port} -> {upstream[0]}:{upstream[1]}")
    last_poll = 0.0
    while not stopping.is_set():
        now = time.monotonic()
        if now - last_poll >= POLL_S:
            last_poll = now
            try:
                with open(args.control) as f:
                    want = f.read().strip() or "open"
            except OSError:
                want = "open"
            if want not in ("open", "cut", "stall"):
                want = "open"
            with mode_lock:
                changed = want != mode
                mode = want
            if changed:
                log(f"mode {want}")
                if want == "cut":
                    if listener is not None:
                        listener.close()
                        listener = None
                    with pairs_lock:
                        doomed = list(pairs)
                    for p in doomed:
                        p.close()
                elif listener is None:
                    listener = listen(port)
        if listener is None:
            time.sleep(POLL_S)
            continue
        try:
            client, _ = listener.accept()
        except socket.timeout:
            continue
        except OSError:
            continue
        with pairs_lock:
            full = len(pairs) >= MAX_CONNECTIONS
        if full or current_mode() == "cut":
            reset(client)
            continue
        client.settimeout(None)
        pair = Pair(client, upstream)
        with pairs_lock:
            pairs.add(pair)
        pair.start()
    with pairs_lock:
        doomed = list(pairs)
    for p in doomed:
        p.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
