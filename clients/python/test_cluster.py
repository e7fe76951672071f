#!/usr/bin/env python3
"""The Python client against a real two-server cluster (REDIRECT).

    python3 clients/python/test_cluster.py --game1 H:P --admin1 H:P --game2 H:P --admin2 H:P \\
        --node2 n2 --name ACCOUNT

clients/python/test_cluster.sh starts the cluster and runs this. Two drills,
one account:

1. Redirected at login: client X logs in at server 1 and stays; client Y
   (entry addresses: one that refuses, then server 2) logs in as the same
   account at server 2, is told REDIRECT to server 1, follows, and takes
   the session over there (X gets SESSION_TAKEN_OVER).
2. Moved while playing: an operator moves Y's session to server 2 (admin
   POST /v1/players/ACCOUNT/move) with pings in flight; Y is told REDIRECT,
   resumes at server 2, and every ping is answered exactly once.

Exits 0 only if both pass. Python 3.11+, standard library only.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
import urllib.error
import urllib.request

from tether_client import (CLOSE_REDIRECT, ConnectionLost, ServerClosed, TetherClient,
                           parse_addr)

STEP = 10.0  # seconds any one step may take


class Failed(Exception):
    pass


def admin(addr: str, method: str, path: str, body: bytes | None = None) -> tuple[int, str]:
    req = urllib.request.Request(f"http://{addr}{path}", data=body, method=method)
    try:
        with urllib.request.urlopen(req, timeout=STEP) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def holders(args) -> list[str]:
    """Which servers hold a session of the account ("1", "2")."""
    return [i for i, a in (("1", args.admin1), ("2", args.admin2))
            if admin(a, "GET", f"/v1/players/{args.name}")[0] == 200]


def ok(msg: str) -> None:
    print(f"[ok] {msg}", flush=True)


def redirected_login(args, game1, game2) -> TetherClient:
    """Drill 1; returns Y, playing at server 1."""
    x = TetherClient(*game1)
    x.connect()
    x.login(dev_name=args.name, timeout=STEP)
    x.wait_for(lambda k, b: k == "snapshot_end", STEP, "X's snapshot")
    if holders(args) != ["1"]:
        raise Failed(f"after X's login the session is on {holders(args)}, not on server 1")
    ok(f"X logged in as {args.name} at server 1")

    # Y's entry addresses: one where nothing listens (a socket bound, not
    # listening: refused), then server 2.
    with socket.socket() as dead:
        dead.bind(("127.0.0.1", 0))
        y = TetherClient(*dead.getsockname(), other_addrs=[game2])
        y.connect()
    if y.stats.connect_failures != 1 or y.entry != 1:
        raise Failed(f"Y did not move on from its dead entry address to server 2: {y.stats}")
    w = y.login(dev_name=args.name, timeout=STEP)
    if y.stats.redirects < 1:
        raise Failed(f"Y was welcomed without a redirect: {y.stats}")
    if y.target != game1:
        raise Failed(f"Y was welcomed at {y.target}, not at server 1 {game1}")
    if not w["took_over"]:
        raise Failed("Y's Welcome does not say it took the session over")
    y.wait_for(lambda k, b: k == "snapshot_end", STEP, "Y's snapshot")
    ok(f"Y's first entry address refused, Y logged in at server 2, was redirected to server 1 "
       f"and took the session over ({y.stats})")

    try:
        x.idle(STEP)
        raise Failed("X was not closed")
    except ServerClosed as closed:
        if closed.name != "SESSION_TAKEN_OVER":
            raise Failed(f"X was closed with {closed.name}, not SESSION_TAKEN_OVER") from closed
    finally:
        x.drop()
    ok("X was closed with SESSION_TAKEN_OVER")

    s1 = admin(args.admin1, "GET", f"/v1/players/{args.name}")[0]
    s2 = admin(args.admin2, "GET", f"/v1/players/{args.name}")[0]
    if (s1, s2) != (200, 404):
        raise Failed(f"GET /v1/players/{args.name}: {s1} at server 1, {s2} at server 2 (want 200, 404)")
    ok("server 1 holds the session (200), server 2 does not (404)")
    return y


def moved_while_playing(args, y: TetherClient, game2) -> None:
    """Drill 2: Y is moved to server 2 with pings around the move."""
    redirects_before = y.stats.redirects
    answered: dict[int, int] = {}
    sent: list[int] = []

    def count(events) -> None:
        for k, b in events:
            if k == "pong" and b["client_time"] in sent:
                answered[b["client_time"]] = answered.get(b["client_time"], 0) + 1

    def ping() -> None:
        t = 1_000_000 + len(sent)
        sent.append(t)
        try:
            y.send_input("ping", {"client_time": t})
        except ConnectionLost:
            pass  # the server already closed: kept, re-sent after the resume

    for _ in range(5):
        ping()
    status, body = admin(args.admin1, "POST", f"/v1/players/{args.name}/move",
                         f'{{"node":"{args.node2}"}}'.encode())
    if status != 200:
        raise Failed(f"move refused: {status} {body}")
    for _ in range(5):  # in flight while the server closes the connection
        ping()
    deadline = time.monotonic() + STEP
    try:
        while time.monotonic() < deadline:
            count(y.poll(deadline - time.monotonic()))
        raise Failed("Y was not told to move")
    except ServerClosed as closed:
        if closed.code != CLOSE_REDIRECT:
            raise Failed(f"Y was closed with {closed.name}, not REDIRECT") from closed
        away = closed
        ok(f"Y was told to move: {away}")
    except ConnectionLost as e:
        # The pings written after the server closed may have reset the
        # connection before its Close was read: server 1 then redirects
        # the Resume itself.
        away = None
        ok(f"Y's connection ended before it read the Close ({e}); it resumes through server 1")
    for _ in range(5):  # made while the session is paused: kept
        ping()
    r = y.reconnect(away, within=30)
    if r.get("relogged"):
        raise Failed("the session was lost in the move: Y logged in again")
    if y.target != game2:
        raise Failed(f"Y resumed at {y.target}, not at server 2 {game2}")
    if y.stats.redirects <= redirects_before:
        raise Failed(f"the move was not counted as a redirect: {y.stats}")
    ok(f"Y resumed at server 2 (mode {r['mode']}, last_input_seq {r['last_input_seq']})")

    # Every ping answered; then 2 s more for a second answer to show up.
    deadline = time.monotonic() + STEP
    while len(answered) < len(sent):
        if time.monotonic() > deadline:
            missing = sorted(set(sent) - set(answered))
            raise Failed(f"pings never answered: {missing}")
        count(y.poll(deadline - time.monotonic()))
    quiet = time.monotonic() + 2
    while time.monotonic() < quiet:
        count(y.poll(quiet - time.monotonic()))
    twice = {t: n for t, n in answered.items() if n != 1}
    if twice:
        raise Failed(f"pings answered more than once: {twice}")
    y.wait_until(lambda: not y.unacked, STEP, "InputAck for every input")
    ok(f"all {len(sent)} pings around the move were answered exactly once")

    s1 = admin(args.admin1, "GET", f"/v1/players/{args.name}")[0]
    s2, body = admin(args.admin2, "GET", f"/v1/players/{args.name}")
    if (s1, s2) != (404, 200):
        raise Failed(f"GET /v1/players/{args.name}: {s1} at server 1, {s2} at server 2 (want 404, 200)")
    ok(f"server 2 holds the session (200), server 1 does not (404); stats {y.stats}")
    y.logout(timeout=STEP)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for flag in ("--game1", "--admin1", "--game2", "--admin2", "--node2", "--name"):
        p.add_argument(flag, required=True)
    args = p.parse_args(argv)
    game1, game2 = parse_addr(args.game1), parse_addr(args.game2)
    y = None
    try:
        print("---- cluster drill: redirected at login ----", flush=True)
        y = redirected_login(args, game1, game2)
        print("---- cluster drill: moved while playing ----", flush=True)
        moved_while_playing(args, y, game2)
        print("PASS", flush=True)
        return 0
    except Exception as e:  # noqa: BLE001 - the drill reports any failure
        print(f"FAIL: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        if y is not None:
            y.drop()


if __name__ == "__main__":
    sys.exit(main())
