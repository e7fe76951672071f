#!/usr/bin/env python3
"""A dependency-free Tether client, written from docs/PROTOCOL.md and
proto/tether.proto alone.

It carries its own minimal protobuf codec (varint, length-delimited and
fixed32 fields; unknown fields are skipped), the frame layer
([u16 little-endian length][payload]) and the session rules: counted frames,
cumulative acks, numbered inputs kept until an InputAck covers them, and
resume with re-sending of unacknowledged inputs.

As a program it runs a scripted session and exits 0 only if every step worked:

    python3 clients/python/tether_client.py --addr 127.0.0.1:7777 --name PyBot --seconds 5

log in (dev auth) -> print Welcome -> walk a few steps at legal speed -> ping
(print RTT) -> local chat (wait for its echo) -> drop the socket with an input
in flight -> Resume (must get Resumed) -> ping again -> logout (Close LOGOUT).

In a cluster it follows REDIRECT to the server that holds the session, and
tries its entry addresses in turn (see TetherClient); test_cluster.py drills
that against two real servers.

Python 3.11+, standard library only.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import hmac
import math
import select
import socket
import struct
import sys
import time

PROTOCOL_VERSION = 1
CLIENT_NAME = "tether_client.py/1"

# ===========================================================================
# Protobuf wire format (just what Tether needs)
# ===========================================================================

WT_VARINT, WT_I64, WT_LEN, WT_SGROUP, WT_EGROUP, WT_I32 = 0, 1, 2, 3, 4, 5


class DecodeError(Exception):
    """Bytes that are not a valid message (the peer broke the protocol)."""


def enc_varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int32/int64 go out as 10-byte two's complement
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def dec_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise DecodeError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result & ((1 << 64) - 1), pos
        shift += 7
        if shift >= 70:
            raise DecodeError("varint longer than 10 bytes")


def iter_fields(buf: bytes):
    """Yields (field_number, wire_type, value); value is an int for varint /
    fixed fields and bytes for length-delimited ones. Groups are skipped."""
    pos = 0
    end = len(buf)
    while pos < end:
        key, pos = dec_varint(buf, pos)
        num, wt = key >> 3, key & 7
        if num == 0:
            raise DecodeError("field number 0")
        if wt == WT_VARINT:
            val, pos = dec_varint(buf, pos)
        elif wt == WT_I64:
            if pos + 8 > end:
                raise DecodeError("truncated fixed64")
            val = int.from_bytes(buf[pos:pos + 8], "little")
            pos += 8
        elif wt == WT_LEN:
            ln, pos = dec_varint(buf, pos)
            if pos + ln > end:
                raise DecodeError("truncated length-delimited field")
            val = bytes(buf[pos:pos + ln])
            pos += ln
        elif wt == WT_I32:
            if pos + 4 > end:
                raise DecodeError("truncated fixed32")
            val = int.from_bytes(buf[pos:pos + 4], "little")
            pos += 4
        elif wt == WT_SGROUP:  # deprecated groups: skip to the matching end
            depth = 1
            while depth:
                k, pos = dec_varint(buf, pos)
                t = k & 7
                if t == WT_SGROUP:
                    depth += 1
                elif t == WT_EGROUP:
                    depth -= 1
                elif t == WT_VARINT:
                    _, pos = dec_varint(buf, pos)
                elif t == WT_I64:
                    pos += 8
                elif t == WT_I32:
                    pos += 4
                elif t == WT_LEN:
                    ln, pos = dec_varint(buf, pos)
                    pos += ln
                else:
                    raise DecodeError(f"bad wire type {t}")
                if pos > end:
                    raise DecodeError("truncated group")
            continue
        else:
            raise DecodeError(f"bad wire type {wt}")
        yield num, wt, val


# Field kinds: scalar kinds name their proto type; ("msg", Name) is an
# embedded message, ("rep", Name) a repeated embedded message.
SCALAR_WIRE = {
    "uint32": WT_VARINT, "uint64": WT_VARINT, "int32": WT_VARINT, "bool": WT_VARINT,
    "enum": WT_VARINT, "float": WT_I32, "string": WT_LEN, "bytes": WT_LEN,
}
SCALAR_DEFAULT = {
    "uint32": 0, "uint64": 0, "int32": 0, "bool": False, "enum": 0,
    "float": 0.0, "string": "", "bytes": b"",
}

# message -> {field number: (name, kind, in_oneof)}, transcribed from tether.proto.
SCHEMA: dict[str, dict[int, tuple]] = {
    # ---- client -> server ----
    "ClientMessage": {
        1: ("hello", ("msg", "Hello"), True), 2: ("resume", ("msg", "Resume"), True),
        3: ("input", ("msg", "Input"), True), 4: ("ack", ("msg", "Ack"), True),
        5: ("logout", ("msg", "Logout"), True),
    },
    "Hello": {1: ("protocol_version", "uint32", False), 2: ("dev_name", "string", True),
              3: ("ticket", "string", True), 4: ("client", "string", False)},
    "Resume": {1: ("session_id", "uint64", False), 2: ("token", "bytes", False),
               3: ("frames_received", "uint64", False), 4: ("restart_token", "bytes", False)},
    "Input": {
        1: ("seq", "uint32", False), 2: ("ack", "uint64", False),
        3: ("move", ("msg", "Move"), True), 4: ("attack", ("msg", "Attack"), True),
        5: ("chat", ("msg", "Chat"), True), 6: ("ping", ("msg", "Ping"), True),
        7: ("respawn", ("msg", "Respawn"), True),
    },
    "Move": {1: ("x", "float", False), 2: ("y", "float", False)},
    "Attack": {1: ("target", "uint64", False)},
    "Chat": {1: ("scope", "enum", False), 2: ("to", "string", False), 3: ("text", "string", False)},
    "Ping": {1: ("client_time", "uint64", False)},
    "Respawn": {},
    "Ack": {1: ("frames_received", "uint64", False)},
    "Logout": {},
    # ---- server -> client ----
    "ServerMessage": {
        1: ("welcome", ("msg", "Welcome"), True), 2: ("resumed", ("msg", "Resumed"), True),
        3: ("close", ("msg", "Close"), True), 4: ("notice", ("msg", "Notice"), True),
        10: ("input_ack", ("msg", "InputAck"), True), 11: ("pong", ("msg", "Pong"), True),
        12: ("self_state", ("msg", "SelfState"), True),
        13: ("snapshot_end", ("msg", "SnapshotEnd"), True),
        14: ("appear", ("msg", "EntityAppear"), True), 15: ("move", ("msg", "EntityMove"), True),
        16: ("disappear", ("msg", "EntityDisappear"), True),
        17: ("correction", ("msg", "Correction"), True), 18: ("damage", ("msg", "Damage"), True),
        19: ("death", ("msg", "Death"), True), 20: ("loot", ("msg", "LootGranted"), True),
        21: ("chat", ("msg", "ChatMessage"), True), 22: ("link", ("msg", "LinkState"), True),
        23: ("command_error", ("msg", "CommandError"), True),
        24: ("stats", ("msg", "StatChange"), True),
    },
    "Welcome": {
        1: ("session_id", "uint64", False), 2: ("resume_token", "bytes", False),
        3: ("entity_id", "uint64", False), 4: ("world", ("msg", "WorldInfo"), False),
        5: ("heartbeat_interval_ms", "uint32", False), 6: ("heartbeat_timeout_ms", "uint32", False),
        7: ("resume_grace_ms", "uint32", False), 8: ("took_over", "bool", False),
        9: ("restart_token", "bytes", False),
    },
    "WorldInfo": {
        1: ("width", "float", False), 2: ("height", "float", False),
        3: ("view_radius", "float", False), 4: ("move_speed", "float", False),
        5: ("attack_range", "float", False), 6: ("attack_cooldown_ms", "uint32", False),
        7: ("pvp", "bool", False),
    },
    "Resumed": {
        1: ("session_id", "uint64", False), 2: ("resume_token", "bytes", False),
        3: ("mode", "enum", False), 4: ("frames_base", "uint64", False),
        5: ("last_input_seq", "uint32", False),
    },
    "Close": {1: ("code", "enum", False), 2: ("message", "string", False),
              3: ("retry_after_ms", "uint32", False), 4: ("redirect", ("msg", "Redirect"), False)},
    "Redirect": {1: ("node", "string", False), 2: ("address", "string", False),
                 3: ("ws_url", "string", False)},
    "InputAck": {1: ("seq", "uint32", False)},
    "Notice": {1: ("text", "string", False)},
    "Pong": {1: ("client_time", "uint64", False)},
    "ItemStack": {1: ("item_id", "uint32", False), 2: ("count", "uint32", False)},
    "SelfState": {
        1: ("entity_id", "uint64", False), 2: ("name", "string", False),
        3: ("x", "float", False), 4: ("y", "float", False), 5: ("hp", "int32", False),
        6: ("max_hp", "int32", False), 7: ("level", "uint32", False), 8: ("xp", "uint64", False),
        9: ("xp_next", "uint64", False), 10: ("gold", "uint64", False),
        11: ("inventory", ("rep", "ItemStack"), False), 12: ("dead", "bool", False),
    },
    "SnapshotEnd": {},
    "EntityAppear": {
        1: ("id", "uint64", False), 2: ("kind", "enum", False), 3: ("name", "string", False),
        4: ("x", "float", False), 5: ("y", "float", False), 6: ("hp", "int32", False),
        7: ("max_hp", "int32", False), 8: ("level", "uint32", False),
        9: ("link_dead", "bool", False), 10: ("dead", "bool", False),
    },
    "EntityMove": {1: ("id", "uint64", False), 2: ("x", "float", False), 3: ("y", "float", False)},
    "EntityDisappear": {1: ("id", "uint64", False)},
    "Correction": {1: ("seq", "uint32", False), 2: ("x", "float", False),
                   3: ("y", "float", False), 4: ("reason", "enum", False)},
    "Damage": {1: ("attacker", "uint64", False), 2: ("target", "uint64", False),
               3: ("amount", "int32", False), 4: ("target_hp", "int32", False)},
    "Death": {1: ("id", "uint64", False), 2: ("killer", "uint64", False)},
    "LootGranted": {1: ("tx_id", "uint64", False), 2: ("gold", "uint64", False),
                    3: ("items", ("rep", "ItemStack"), False), 4: ("total_gold", "uint64", False)},
    "ChatMessage": {1: ("scope", "enum", False), 2: ("from_id", "uint64", False),
                    3: ("from_name", "string", False), 4: ("text", "string", False)},
    "LinkState": {1: ("id", "uint64", False), 2: ("link_dead", "bool", False)},
    "CommandError": {1: ("seq", "uint32", False), 2: ("code", "enum", False)},
    "StatChange": {1: ("hp", "int32", False), 2: ("max_hp", "int32", False),
                   3: ("level", "uint32", False), 4: ("xp", "uint64", False),
                   5: ("xp_next", "uint64", False)},
}

CLOSE_CODES = {
    0: "UNSPECIFIED", 1: "LOGOUT", 2: "PROTOCOL_ERROR", 3: "FRAME_TOO_LARGE",
    4: "UNSUPPORTED_VERSION", 5: "AUTH_FAILED", 6: "TICKET_EXPIRED", 7: "RESUME_REFUSED",
    8: "SESSION_TAKEN_OVER", 9: "ALREADY_LOGGED_IN", 10: "HANDSHAKE_TIMEOUT",
    11: "HEARTBEAT_TIMEOUT", 12: "SLOW_CONSUMER", 13: "RATE_LIMITED", 14: "SERVER_BUSY",
    15: "SERVER_SHUTDOWN", 16: "BANNED", 17: "INPUT_SEQ_GAP", 18: "STORAGE_UNAVAILABLE",
    19: "KICKED", 20: "REDIRECT",
}
CLOSE_REDIRECT = 20
# After these the session cannot go on by connecting again (LOGOUT,
# PROTOCOL_ERROR ... KICKED); after any other code it can, at least
# retry_after_ms later.
FINAL_CLOSE_CODES = {1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 17, 19}
COMMAND_ERRORS = {
    0: "UNSPECIFIED", 1: "NO_SUCH_TARGET", 2: "OUT_OF_RANGE", 3: "COOLDOWN", 4: "DEAD",
    5: "PVP_DISABLED", 6: "NO_SUCH_PLAYER", 7: "BAD_TEXT", 8: "NOT_DEAD", 9: "RATE_LIMITED",
    10: "STORAGE_UNAVAILABLE", 11: "PLAYER_UNREACHABLE",
}
CORRECTION_REASONS = {0: "TOO_FAST", 1: "OFF_MAP", 2: "DEAD"}
RESUME_MODES = {0: "REPLAY", 1: "SNAPSHOT"}
CHAT_LOCAL, CHAT_WHISPER, CHAT_WORLD = 0, 1, 2

# The three uncounted (control) frames; every other ServerMessage is counted.
CONTROL_FIELDS = {1, 2, 3}


def encode(msg_name: str, value: dict) -> bytes:
    """Encodes a dict as `msg_name`. Missing / None keys are left out; plain
    fields equal to their default are left out (proto3), oneof members are
    always written when given (their presence is the information)."""
    schema = SCHEMA[msg_name]
    out = bytearray()
    for num, (name, kind, in_oneof) in sorted(schema.items()):
        v = value.get(name)
        if v is None:
            continue
        if isinstance(kind, tuple):
            items = v if kind[0] == "rep" else [v]
            for item in items:
                body = encode(kind[1], item)
                out += enc_varint(num << 3 | WT_LEN) + enc_varint(len(body)) + body
            continue
        if not in_oneof and v == SCALAR_DEFAULT[kind]:
            continue
        wt = SCALAR_WIRE[kind]
        out += enc_varint(num << 3 | wt)
        if kind == "float":
            out += struct.pack("<f", v)
        elif kind == "string":
            b = v.encode("utf-8")
            out += enc_varint(len(b)) + b
        elif kind == "bytes":
            out += enc_varint(len(v)) + bytes(v)
        elif kind == "bool":
            out += enc_varint(1 if v else 0)
        else:
            out += enc_varint(int(v))
    return bytes(out)


def decode(msg_name: str, buf: bytes) -> dict:
    """Decodes `buf` as `msg_name` into a dict with every known field (proto3
    defaults for absent ones; oneof members only when present). Unknown
    fields are skipped; for a repeated-once scalar the last value wins."""
    schema = SCHEMA[msg_name]
    out: dict = {}
    for num, (name, kind, in_oneof) in schema.items():
        if in_oneof:
            continue
        if isinstance(kind, tuple):
            out[name] = [] if kind[0] == "rep" else None
        else:
            out[name] = SCALAR_DEFAULT[kind]
    for num, wt, val in iter_fields(buf):
        field = schema.get(num)
        if field is None:
            continue  # unknown field: skipped
        name, kind, _ = field
        if isinstance(kind, tuple):
            if wt != WT_LEN:
                raise DecodeError(f"{msg_name}.{name}: wire type {wt}")
            sub = decode(kind[1], val)
            if kind[0] == "rep":
                out[name].append(sub)
            else:
                out[name] = sub
            continue
        if wt != SCALAR_WIRE[kind]:
            raise DecodeError(f"{msg_name}.{name}: wire type {wt}")
        if kind == "float":
            out[name] = struct.unpack("<f", val.to_bytes(4, "little"))[0]
        elif kind == "string":
            try:
                out[name] = val.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DecodeError(f"{msg_name}.{name}: invalid UTF-8") from e
        elif kind == "bytes":
            out[name] = val
        elif kind == "bool":
            out[name] = val != 0
        elif kind in ("int32", "enum"):
            v = val & 0xFFFFFFFF
            out[name] = v - (1 << 32) if v >= 1 << 31 else v
        elif kind == "uint32":
            out[name] = val & 0xFFFFFFFF
        else:
            out[name] = val
    return out


def decode_server_message(payload: bytes) -> tuple[str | None, dict | None, bool]:
    """Returns (kind, body, counted). kind is None for a message kind this
    client does not know (still counted: only Welcome, Resumed and Close are
    not). The last oneof member in the payload wins, as in protobuf."""
    kind = body = None
    seen_any = False
    control = False
    for num, wt, val in iter_fields(payload):
        seen_any = True
        field = SCHEMA["ServerMessage"].get(num)
        control = num in CONTROL_FIELDS
        if field is None:
            kind, body = None, None
            continue
        if wt != WT_LEN:
            raise DecodeError(f"ServerMessage field {num}: wire type {wt}")
        kind = field[0]
        body = decode(field[1][1], val)
    if not seen_any:
        raise DecodeError("ServerMessage without a body")
    return kind, body, not control


def client_frame(kind: str, body: dict) -> bytes:
    payload = encode("ClientMessage", {kind: body})
    if not 0 < len(payload) <= 0xFFFF:
        raise ValueError("payload does not fit a frame")
    return struct.pack("<H", len(payload)) + payload


def mint_ticket(secret: str, name: str, expiry_unix: int) -> str:
    """NAME.EXPIRY.HEX where HEX = lowercase hex HMAC-SHA256(secret, "NAME.EXPIRY")."""
    signed = f"{name}.{expiry_unix}"
    sig = hmac.new(secret.encode(), signed.encode(), hashlib.sha256).hexdigest()
    return f"{signed}.{sig}"


# ===========================================================================
# Session
# ===========================================================================


class ProtocolViolation(Exception):
    """The server sent something the protocol does not allow."""


class ServerClosed(Exception):
    """The server sent Close; `.code` is the CloseCode number, `.redirect`
    the Redirect (node, address, ws_url) of a REDIRECT, else None."""

    def __init__(self, close: dict):
        self.close = close
        self.code = close["code"]
        self.name = CLOSE_CODES.get(self.code, f"#{self.code}")
        self.redirect = close.get("redirect")
        to = ""
        if self.redirect is not None:
            to = f", to {self.redirect['node']} at {self.redirect['address']}"
        super().__init__(f"server closed the connection: {self.name} "
                         f"({close['message']!r}, retry_after_ms={close['retry_after_ms']}{to})")


class ConnectionLost(Exception):
    """The TCP connection ended without a Close frame."""


def now_ms() -> float:
    return time.monotonic() * 1000.0


# REDIRECTs followed in a row without a Welcome or Resumed; past it the
# client backs off as for SERVER_BUSY and goes back to its entry addresses.
# Two servers of a cluster may disagree for a moment about who holds an
# account (while one takes over a failed one's): a few hops settle it, an
# endless ping-pong must not spin. 8, as in Tether's Rust client.
MAX_REDIRECTS_IN_A_ROW = 8


def parse_addr(text: str) -> tuple[str, int] | None:
    """HOST:PORT (IPv6 as [ADDR]:PORT) as a (host, port) pair; None when it
    is not one."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


@dataclasses.dataclass
class ClientStats:
    """What happened to the client's connections."""

    # Connect or handshake attempts that failed (each moves the client on
    # to its next entry address).
    connect_failures: int = 0
    # Sessions got back (Resumed).
    resumes: int = 0
    # Logins again after a refused resume.
    relogins: int = 0
    # REDIRECTs followed to another server of a cluster.
    redirects: int = 0


class TetherClient:
    """One session, over one connection at a time.

    Counted frames are counted in `frames_received`; acks go out piggybacked on
    inputs or as a standalone Ack (32 frames, 1000 ms, or keep-alive). Inputs are
    numbered from 1 and kept in `unacked` until an InputAck covers them.

    Entry addresses: (host, port) first, then `other_addrs` (a cluster's
    other servers, as (host, port) pairs or "HOST:PORT"): a connect or
    handshake attempt that fails moves the next one to the next entry
    address. A REDIRECT (this login or session belongs on another server)
    is followed: during `login` / `resume` the same Hello / Resume goes to
    the server it names; on a live connection `poll` raises ServerClosed
    REDIRECT and `reconnect(closed)` resumes the session there."""

    ACK_EVERY_FRAMES = 32
    ACK_DELAY_MS = 1000.0
    MAX_UNACKED_INPUTS = 1024

    def __init__(self, host: str, port: int, log=print, verbose: bool = False,
                 other_addrs=()):
        self.entries: list[tuple[str, int]] = [(host, port)]
        for a in other_addrs:
            addr = parse_addr(a) if isinstance(a, str) else (a[0], int(a[1]))
            if addr is None:
                raise ValueError(f"not a HOST:PORT address: {a!r}")
            self.entries.append(addr)
        # Which entry address the client is on, and where the next
        # connection goes: that entry, or the server a REDIRECT named.
        self.entry = 0
        self.target = self.entries[0]
        self.redirects_in_a_row = 0
        self.stats = ClientStats()
        self.log = log
        self.verbose = verbose
        self.sock: socket.socket | None = None
        self.rbuf = bytearray()
        self.established = False
        # A Close or the connection's end read behind game events, for the
        # next poll to raise.
        self.ended_pending: ServerClosed | ConnectionLost | None = None
        # Session state (survives connections).
        self.session_id: int | None = None
        self.token = b""
        self.restart_token = b""
        self.credentials: dict = {}
        self.entity_id = 0
        self.world: dict = {}
        self.heartbeat_interval_ms = 2000.0
        self.heartbeat_timeout_ms = 15000.0
        self.frames_received = 0
        self.frames_acked_sent = 0
        self.ack_due: float | None = None
        self.last_sent = 0.0
        self.last_heard = 0.0
        self.next_seq = 1
        self.acked_input = 0
        self.unacked: list[tuple[int, str, dict]] = []  # (seq, cmd, body)
        # Game state the client keeps.
        self.self_state: dict = {}
        self.view: dict[int, dict] = {}
        self.in_snapshot = False
        self.corrections: list[dict] = []
        self.command_errors: list[dict] = []

    # ---- connection ------------------------------------------------------

    def connect(self, timeout: float = 5.0) -> None:
        """Opens a connection to the current target (an entry address, or
        where a REDIRECT sent the client). Each failure moves the target on
        to the next entry address; after as many failures as there are
        entry addresses, raises the last error."""
        self.drop()
        for attempt in range(len(self.entries)):
            try:
                self.sock = socket.create_connection(self.target, timeout=timeout)
                break
            except OSError:
                self._attempt_failed()
                if attempt + 1 == len(self.entries):
                    raise
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.rbuf = bytearray()
        self.established = False
        self.ended_pending = None

    def _to_entry(self, i: int) -> None:
        """The next connection goes to entry address `i` (wrapping)."""
        self.entry = i % len(self.entries)
        self.target = self.entries[self.entry]

    def _attempt_failed(self) -> None:
        """A connect or handshake attempt failed: the server it went to may
        be down (a redirect's target, or one of a cluster's), so the next
        attempt goes to the next entry address."""
        self.stats.connect_failures += 1
        self._to_entry(self.entry + 1)

    def drop(self) -> None:
        """Abandons the connection without a word (as a network failure would)."""
        if self.sock is not None:
            try:
                self.sock.close()
            finally:
                self.sock = None
        self.established = False
        self.ack_due = None

    def _write(self, data: bytes) -> None:
        if self.sock is None:
            raise ConnectionLost("not connected")
        view = memoryview(data)
        deadline = time.monotonic() + 10
        while view:
            try:
                n = self.sock.send(view)
                view = view[n:]
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise ConnectionLost("write stalled for 10 s")
                select.select([], [self.sock], [], 0.1)
            except OSError as e:
                raise ConnectionLost(f"write failed: {e}") from e

    def _send(self, kind: str, body: dict) -> None:
        self._write(client_frame(kind, body))
        self.last_sent = now_ms()

    # ---- handshake ---------------------------------------------------------

    def login(self, dev_name: str | None = None, ticket: str | None = None,
              timeout: float = 5.0) -> dict:
        """Sends Hello and waits for Welcome. The snapshot (SelfState,
        EntityAppear..., SnapshotEnd) follows; `wait_snapshot` reads it."""
        hello = {"protocol_version": PROTOCOL_VERSION, "client": CLIENT_NAME}
        if ticket is not None:
            hello["ticket"] = ticket
        else:
            hello["dev_name"] = dev_name
        kind, body = self._handshake("hello", hello, timeout)
        if kind != "welcome":
            raise ProtocolViolation(f"expected Welcome, got {kind}")
        self.session_id = body["session_id"]
        self.token = body["resume_token"]
        # Fixed for the session: lets a restarted server restore it.
        self.restart_token = body["restart_token"]
        self.credentials = {"dev_name": dev_name, "ticket": ticket}
        self.entity_id = body["entity_id"]
        self.world = body["world"] or {}
        if body["heartbeat_interval_ms"]:
            self.heartbeat_interval_ms = float(body["heartbeat_interval_ms"])
        if body["heartbeat_timeout_ms"]:
            self.heartbeat_timeout_ms = float(body["heartbeat_timeout_ms"])
        # A Welcome starts a new numbering on both sides.
        self.frames_received = 0
        self.frames_acked_sent = 0
        self.next_seq = 1
        self.acked_input = 0
        self.unacked.clear()
        self.view.clear()
        self.in_snapshot = True
        self._establish()
        return body

    def resume(self, timeout: float = 5.0) -> dict:
        """On a fresh connection: Resume -> Resumed, then re-sends every input
        the server has not applied. Raises ServerClosed (RESUME_REFUSED: log in
        again) if the server will not resume."""
        if self.session_id is None:
            raise RuntimeError("no session to resume")
        resume = {"session_id": self.session_id, "token": self.token,
                  "frames_received": self.frames_received,
                  "restart_token": self.restart_token}
        kind, body = self._handshake("resume", resume, timeout)
        if kind != "resumed":
            raise ProtocolViolation(f"expected Resumed, got {kind}")
        if body["session_id"] != self.session_id:
            raise ProtocolViolation("Resumed for another session")
        mode = body["mode"]
        if mode == 0:  # REPLAY
            if body["frames_base"] != self.frames_received:
                raise ProtocolViolation(
                    f"REPLAY with frames_base {body['frames_base']} != our count {self.frames_received}")
        elif mode == 1:  # SNAPSHOT
            if body["frames_base"] < self.frames_received:
                raise ProtocolViolation("SNAPSHOT with frames_base below our count")
            self.frames_received = body["frames_base"]
            self.view.clear()
            self.in_snapshot = True
        else:
            raise ProtocolViolation(f"unknown resume mode {mode}")
        if body["last_input_seq"] >= self.next_seq:
            raise ProtocolViolation("Resumed claims inputs never sent")
        self.token = body["resume_token"]
        self._inputs_acked(body["last_input_seq"])
        self._establish()
        self.stats.resumes += 1
        # Re-send what the server has not applied, with the original numbers.
        for seq, cmd, cbody in list(self.unacked):
            self._send("input", {"seq": seq, "ack": self._take_ack(), cmd: cbody})
        return body

    def reconnect(self, closed: "ServerClosed | None" = None, within: float = 30.0) -> dict:
        """Gets the session back after the connection was lost or closed with
        a code that invites a return (SERVER_SHUTDOWN, SERVER_BUSY, ...): waits
        the server's retry_after_ms, then connects and resumes, with backoff
        (0.1 s doubling to 2 s) while the server is not there (a restart).
        A restarted server restores the session from storage. A REDIRECT
        (the player was moved to another server of a cluster) is followed:
        the session resumes at the server it names. If the server refuses the
        resume (the session is over), logs in again with the same
        credentials. Returns the Resumed body, or the Welcome body with
        "relogged": True. Raises the last error after `within` seconds."""
        if closed is not None and not (closed.code == CLOSE_REDIRECT and self._follow(closed)) \
                and closed.close.get("retry_after_ms"):
            time.sleep(closed.close["retry_after_ms"] / 1000)
        deadline = time.monotonic() + within
        delay = 0.1
        while True:
            self.drop()
            try:
                self.connect()
                return self.resume()
            except ServerClosed as e:
                if e.name == "RESUME_REFUSED":
                    self.drop()
                    self.connect()
                    body = self.login(**self.credentials)
                    body["relogged"] = True
                    self.stats.relogins += 1
                    return body
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(max(delay, e.close.get("retry_after_ms", 0) / 1000))
            except (OSError, ConnectionLost):
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def _establish(self) -> None:
        self.established = True
        self.frames_acked_sent = self.frames_received  # the Hello/Resume carried it
        self.ack_due = None
        self.last_heard = now_ms()
        self.redirects_in_a_row = 0

    def _handshake(self, kind: str, body: dict, timeout: float) -> tuple[str, dict]:
        """Sends Hello or Resume on the connection just opened and returns
        the answer (Welcome / Resumed), `timeout` seconds at most per server.
        A REDIRECT is followed: the same message goes to the server it
        names. A connection that breaks, stays silent or is closed with a
        retryable code counts as a failed attempt (the next goes to the next
        entry address)."""
        while True:
            try:
                self._send(kind, body)
                return self._read_control(timeout)
            except ServerClosed as closed:
                if closed.code != CLOSE_REDIRECT or not self._follow(closed):
                    if closed.code not in FINAL_CLOSE_CODES:
                        self._attempt_failed()  # SERVER_BUSY and the like
                    raise
            except ConnectionLost:
                self._attempt_failed()
                raise
            self.connect()

    def _follow(self, closed: ServerClosed) -> bool:
        """A REDIRECT: points the next connection at the server it names and
        waits its retry_after_ms. False when it is not followed (no usable
        address, or MAX_REDIRECTS_IN_A_ROW already: the target goes back to
        the entry address), for the caller to handle as a retryable close."""
        to = parse_addr((closed.redirect or {}).get("address", ""))
        if to is None:
            return False
        if self.redirects_in_a_row >= MAX_REDIRECTS_IN_A_ROW:
            self.redirects_in_a_row = 0
            self._to_entry(self.entry)
            return False
        self.redirects_in_a_row += 1
        self.stats.redirects += 1
        self.target = to
        self.drop()
        if self.verbose:
            self.log(f"  redirected to {closed.redirect['node']} at {to[0]}:{to[1]}")
        if closed.close.get("retry_after_ms"):
            time.sleep(closed.close["retry_after_ms"] / 1000)
        return True

    def _read_control(self, timeout: float) -> tuple[str, dict]:
        """The first frame of a connection must be Welcome / Resumed / Close."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self._next_payload(deadline)
            if frame is None:
                raise ConnectionLost("no answer to the handshake in time")
            kind, body, counted = decode_server_message(frame)
            if kind == "close":
                self.established = False
                raise ServerClosed(body)
            if counted:
                raise ProtocolViolation(f"counted frame {kind} before Welcome/Resumed")
            return kind, body

    # ---- reading -----------------------------------------------------------

    def _next_payload(self, deadline: float) -> bytes | None:
        """The next whole frame's payload, or None at the deadline.
        Raises ConnectionLost on EOF / reset."""
        while True:
            if len(self.rbuf) >= 2:
                ln = self.rbuf[0] | self.rbuf[1] << 8
                if ln == 0:
                    raise ProtocolViolation("zero-length frame from the server")
                if len(self.rbuf) >= 2 + ln:
                    payload = bytes(self.rbuf[2:2 + ln])
                    del self.rbuf[:2 + ln]
                    self.last_heard = now_ms()
                    return payload
            wait = deadline - time.monotonic()
            if wait <= 0:
                return None
            if self.sock is None:
                raise ConnectionLost("not connected")
            r, _, _ = select.select([self.sock], [], [], wait)
            if not r:
                return None
            try:
                chunk = self.sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError as e:
                raise ConnectionLost(f"read failed: {e}") from e
            if not chunk:
                raise ConnectionLost("connection closed by the server (EOF)")
            self.rbuf += chunk

    def poll(self, timeout: float) -> list[tuple[str | None, dict | None]]:
        """Reads for up to `timeout` seconds (returns early once something
        arrived), handles session bookkeeping, sends due acks / keep-alives and
        returns the game events received as (kind, body). A Close raises
        ServerClosed, the connection's end ConnectionLost; when game events
        came before either in the same read, they are returned first and the
        next poll raises it."""
        if self.ended_pending is not None:
            ended, self.ended_pending = self.ended_pending, None
            raise ended
        events = []
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            self.service()
            # Wake up in time for the next ack / keep-alive.
            wake = min(deadline, time.monotonic() + self._ms_until_service() / 1000.0)
            payload = self._next_payload(wake)
            if payload is not None:
                try:
                    events.append(self._on_frame(payload))
                    # Drain whatever else is already buffered without waiting.
                    while True:
                        p = self._next_payload(time.monotonic())
                        if p is None:
                            break
                        events.append(self._on_frame(p))
                except (ServerClosed, ConnectionLost) as ended:
                    if not events:
                        raise
                    self.ended_pending = ended
                    return events
                self.service()
                return events
            if time.monotonic() >= deadline:
                self.service()
                return events

    def _on_frame(self, payload: bytes) -> tuple[str | None, dict | None]:
        kind, body, counted = decode_server_message(payload)
        if kind == "close":
            self.established = False
            raise ServerClosed(body)
        if not counted:
            raise ProtocolViolation(f"{kind} on an established connection")
        if not self.established:
            raise ProtocolViolation("counted frame before Welcome/Resumed")
        self.frames_received += 1
        t = now_ms()
        if self.ack_due is None:
            self.ack_due = t + self.ACK_DELAY_MS
        if self.frames_received - self.frames_acked_sent >= self.ACK_EVERY_FRAMES:
            self.ack_due = t
        self._apply(kind, body)
        return kind, body

    def _apply(self, kind: str | None, b: dict | None) -> None:
        """Keeps the client's picture of the world up to date."""
        if kind == "input_ack":
            if b["seq"] >= self.next_seq:
                raise ProtocolViolation(f"InputAck {b['seq']} for an input never sent")
            self._inputs_acked(b["seq"])
        elif kind == "self_state":
            self.self_state = b
        elif kind == "snapshot_end":
            self.in_snapshot = False
        elif kind == "appear":
            self.view[b["id"]] = b
        elif kind == "move":
            if b["id"] == self.entity_id:
                self.self_state.update(x=b["x"], y=b["y"])
            elif b["id"] in self.view:
                self.view[b["id"]].update(x=b["x"], y=b["y"])
        elif kind == "disappear":
            self.view.pop(b["id"], None)
        elif kind == "correction":
            self.self_state.update(x=b["x"], y=b["y"])
            self.corrections.append(b)
        elif kind == "damage":
            if b["target"] == self.entity_id:
                self.self_state["hp"] = b["target_hp"]
            elif b["target"] in self.view:
                self.view[b["target"]]["hp"] = b["target_hp"]
        elif kind == "death":
            if b["id"] == self.entity_id:
                self.self_state["dead"] = True
            elif b["id"] in self.view:
                self.view[b["id"]]["dead"] = True
        elif kind == "stats":
            self.self_state.update(b)
        elif kind == "loot":
            self.self_state["gold"] = b["total_gold"]
        elif kind == "link":
            if b["id"] in self.view:
                self.view[b["id"]]["link_dead"] = b["link_dead"]
        elif kind == "command_error":
            self.command_errors.append(b)
        if self.verbose:
            self.log(f"  <- #{self.frames_received} {kind} {b}")

    # ---- writing -----------------------------------------------------------

    def _take_ack(self) -> int:
        """The ack to piggyback on an input (0 = none)."""
        if self.frames_received != self.frames_acked_sent:
            self.frames_acked_sent = self.frames_received
            self.ack_due = None
            return self.frames_received
        return 0

    def _inputs_acked(self, seq: int) -> None:
        self.acked_input = max(self.acked_input, seq)
        self.unacked = [u for u in self.unacked if u[0] > seq]

    def send_input(self, cmd: str, body: dict) -> int:
        """Numbers and sends a command; keeps it until an InputAck covers it.
        While no connection is established it is only kept (sent after Resumed)."""
        if len(self.unacked) >= self.MAX_UNACKED_INPUTS:
            raise RuntimeError("too many inputs wait for the server's InputAck")
        seq = self.next_seq
        self.next_seq += 1
        self.unacked.append((seq, cmd, body))
        if self.established:
            self._send("input", {"seq": seq, "ack": self._take_ack(), cmd: body})
        return seq

    def send_ack(self) -> None:
        self.frames_acked_sent = self.frames_received
        self.ack_due = None
        self._send("ack", {"frames_received": self.frames_received})

    def _ms_until_service(self) -> float:
        if not self.established:
            return 1e9
        t = now_ms()
        nxt = self.last_sent + self.heartbeat_interval_ms
        if self.ack_due is not None:
            nxt = min(nxt, self.ack_due)
        return max(0.0, nxt - t) + 1.0

    def service(self) -> None:
        """Sends an Ack when one is due (frames to ack or keep-alive) and
        notices a silent server."""
        if not self.established:
            return
        t = now_ms()
        if t - self.last_heard > self.heartbeat_timeout_ms:
            raise ConnectionLost(f"nothing heard from the server for {self.heartbeat_timeout_ms:.0f} ms")
        if (self.ack_due is not None and t >= self.ack_due) or \
                t >= self.last_sent + self.heartbeat_interval_ms:
            self.send_ack()

    def logout(self, timeout: float = 5.0) -> dict:
        """Logout -> Close{LOGOUT}. Frames before the Close are still counted."""
        self._send("logout", {})
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.poll(max(0.0, deadline - time.monotonic()))
            except ServerClosed as c:
                if c.code != 1:
                    raise
                self.drop()
                self.session_id = None
                return c.close
            if time.monotonic() >= deadline:
                raise ConnectionLost("no Close{LOGOUT} in time")

    def wait_for(self, pred, timeout: float, what: str):
        """Polls until an event satisfies pred(kind, body); returns it."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"timed out after {timeout:.1f} s waiting for {what}")
            for kind, body in self.poll(left):
                if pred(kind, body):
                    return kind, body

    def wait_until(self, cond, timeout: float, what: str) -> None:
        """Polls until cond() holds (checked before the first read too)."""
        deadline = time.monotonic() + timeout
        while not cond():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"timed out after {timeout:.1f} s waiting for {what}")
            self.poll(left)

    def idle(self, seconds: float) -> None:
        """Keeps the connection alive (acks, keep-alives) for `seconds`."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.poll(deadline - time.monotonic())


# ===========================================================================
# The scripted session
# ===========================================================================


class StepFailed(Exception):
    pass


def client_for(args) -> TetherClient:
    """A client for --addr: HOST:PORT, or a comma-separated list of a
    cluster's servers (the first is tried first)."""
    addrs = []
    for text in args.addr.split(","):
        addr = parse_addr("127.0.0.1" + text if text.startswith(":") else text)
        if addr is None:
            raise SystemExit(f"--addr: not HOST:PORT: {text!r}")
        addrs.append(addr)
    (host, port), others = addrs[0], addrs[1:]
    return TetherClient(host, port, verbose=args.verbose, other_addrs=others)


def run(args) -> int:
    step_timeout = max(5.0, float(args.seconds))
    play = max(1.0, float(args.seconds))
    c = client_for(args)
    step = "connect"

    def ok(msg: str) -> None:
        print(f"[ok] {msg}", flush=True)

    try:
        # 1. Log in.
        step = "login"
        c.connect()
        ticket = args.ticket
        if ticket is None and args.ticket_secret:
            ticket = mint_ticket(args.ticket_secret, args.name, int(time.time()) + 3600)
        w = c.login(dev_name=args.name, ticket=ticket, timeout=step_timeout)
        world = w["world"] or {}
        print(f"Welcome: session_id={w['session_id']:#x} entity_id={w['entity_id']:#x} "
              f"took_over={w['took_over']} heartbeat={w['heartbeat_interval_ms']}/"
              f"{w['heartbeat_timeout_ms']} ms resume_grace={w['resume_grace_ms']} ms", flush=True)
        print("  world: " + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                                        for k, v in world.items()), flush=True)
        step = "snapshot"
        c.wait_for(lambda k, b: k == "snapshot_end", step_timeout, "SnapshotEnd")
        me = c.self_state
        if me.get("entity_id") != c.entity_id:
            raise StepFailed("the snapshot's SelfState is not our entity")
        ok(f"snapshot: {me['name']} at ({me['x']:.2f}, {me['y']:.2f}) hp {me['hp']}/{me['max_hp']} "
           f"level {me['level']}, {len(c.view)} entities in view, frames so far {c.frames_received}")

        # 2. Walk at half the allowed speed toward the map centre.
        step = "move"
        if me.get("dead"):  # a stored character may have died last time
            c.send_input("respawn", {})
            c.wait_for(lambda k, b: k == "self_state", step_timeout, "SelfState after Respawn")
        speed = float(world.get("move_speed") or 6.0)
        width, height = float(world.get("width") or 100.0), float(world.get("height") or 100.0)
        interval = 0.2
        step_len = speed * 0.5 * interval
        x, y = c.self_state["x"], c.self_state["y"]
        dx, dy = width / 2 - x, height / 2 - y
        norm = math.hypot(dx, dy) or 1.0
        ux, uy = (dx / norm, dy / norm) if norm > 1.0 else (1.0, 0.0)
        n_steps = max(3, min(15, int(play * 0.3 / interval)))
        move_seqs = []
        for _ in range(n_steps):
            x = min(max(x + ux * step_len, 0.0), width - 0.01)
            y = min(max(y + uy * step_len, 0.0), height - 0.01)
            move_seqs.append(c.send_input("move", {"x": x, "y": y}))
            c.idle(interval)
        last_move = move_seqs[-1]
        c.wait_until(lambda: c.acked_input >= last_move, step_timeout,
                     f"InputAck covering move #{last_move}")
        bad = [k for k in c.corrections if k["seq"] in move_seqs]
        if bad:
            raise StepFailed(f"moves refused: {bad}")
        ok(f"walked {n_steps} steps of {step_len:.2f} units to ({x:.2f}, {y:.2f}); "
           f"all acknowledged (InputAck {c.acked_input}), no Correction")

        # 3. Ping.
        step = "ping"
        t0 = time.monotonic_ns() // 1000
        c.send_input("ping", {"client_time": t0})
        c.wait_for(lambda k, b: k == "pong" and b["client_time"] == t0, step_timeout, "Pong")
        print(f"ping RTT: {(time.monotonic_ns() // 1000 - t0) / 1000:.2f} ms", flush=True)

        # 4. Local chat: the speaker gets its own line back.
        step = "chat"
        text = f"hello from {args.name} (python)"
        cseq = c.send_input("chat", {"scope": CHAT_LOCAL, "text": text})
        c.wait_for(lambda k, b: (k == "chat" and b["from_id"] == c.entity_id and b["text"] == text)
                   or (k == "command_error" and b["seq"] == cseq), step_timeout, "chat echo")
        if any(e["seq"] == cseq for e in c.command_errors):
            raise StepFailed(f"chat refused: {c.command_errors}")
        ok("local chat echoed back")

        # 5. Stay a while (acks and keep-alives flow).
        step = "idle"
        c.idle(max(0.0, play * 0.3))
        ok(f"acked {c.frames_acked_sent} of {c.frames_received} counted frames")

        # 6. Drop the socket with an input in flight, queue one while cut
        #    off, then resume: both must be answered exactly once.
        step = "drop"
        t_lost = time.monotonic_ns() // 1000
        lost_seq = c.send_input("ping", {"client_time": t_lost})
        frames_before = c.frames_received
        c.drop()
        ok(f"socket dropped with input #{lost_seq} unacknowledged (count {frames_before})")
        t_queued = time.monotonic_ns() // 1000 + 1
        queued_seq = c.send_input("ping", {"client_time": t_queued})  # kept, not sent
        time.sleep(0.3)
        step = "resume"
        c.connect()
        r = c.resume(timeout=step_timeout)
        resent = [u[0] for u in c.unacked]
        print(f"Resumed: mode={RESUME_MODES.get(r['mode'], r['mode'])} frames_base={r['frames_base']} "
              f"last_input_seq={r['last_input_seq']} re-sent inputs {resent}", flush=True)
        if r["session_id"] != w["session_id"]:
            raise StepFailed("Resumed names another session")
        if r["resume_token"] == w["resume_token"] or len(r["resume_token"]) != 16:
            raise StepFailed("resume token was not rotated")
        if queued_seq not in resent:
            raise StepFailed(f"input #{queued_seq} was never sent, yet the server claims it")
        want = {t_lost, t_queued}
        answered: dict[int, int] = {}

        def pong_counter(k, b):
            if k == "pong" and b["client_time"] in want:
                answered[b["client_time"]] = answered.get(b["client_time"], 0) + 1
            return set(answered) == want

        c.wait_for(pong_counter, step_timeout, "the Pongs of the in-flight and queued pings")
        ok(f"in-flight ping #{lost_seq} ({'applied before the drop' if r['last_input_seq'] >= lost_seq else 're-sent'})"
           f" and queued ping #{queued_seq} (re-sent) both answered after resume")

        # 7. Ping again on the new connection.
        step = "ping after resume"
        t1 = time.monotonic_ns() // 1000
        c.send_input("ping", {"client_time": t1})
        c.wait_for(lambda k, b: k == "pong" and b["client_time"] == t1, step_timeout, "Pong")
        print(f"ping RTT after resume: {(time.monotonic_ns() // 1000 - t1) / 1000:.2f} ms", flush=True)

        step = "idle after resume"
        deadline = time.monotonic() + max(0.5, play * 0.2)
        while time.monotonic() < deadline:
            for k, b in c.poll(deadline - time.monotonic()):
                pong_counter(k, b)
        if any(n != 1 for n in answered.values()):
            raise StepFailed(f"pings answered more than once (not exactly-once): {answered}")
        c.wait_until(lambda: not c.unacked, step_timeout, "InputAck for every input")

        # 8. Log out.
        step = "logout"
        close = c.logout(timeout=step_timeout)
        ok(f"logged out: Close {CLOSE_CODES[close['code']]} ({close['message']!r}); "
           f"{c.frames_received} counted frames, {c.next_seq - 1} inputs, all acknowledged")
        print(f"stats: {c.stats}", flush=True)
        print("PASS", flush=True)
        return 0
    except (StepFailed, TimeoutError, ServerClosed, ConnectionLost, ProtocolViolation,
            DecodeError, OSError) as e:
        print(f"FAIL at step '{step}': {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        c.drop()


def restart_drill(args) -> int:
    """Logs in, plays, and tells the caller (by creating the file named by
    --restart-drill) to restart the server; then must be told to come back
    (Close SERVER_SHUTDOWN with retry_after_ms), must get its session back
    from the next process by itself (Resumed, not a new login), and a ping
    sent while the server was away must be answered exactly once."""
    c = client_for(args)
    try:
        c.connect()
        w = c.login(dev_name=args.name)
        if len(w["restart_token"]) != 16:
            print("[FAILED] Welcome has no 16-byte restart_token", flush=True)
            return 1
        c.wait_for(lambda k, b: k == "snapshot_end", 10, "SnapshotEnd")
        t0 = time.monotonic_ns() // 1000
        c.send_input("ping", {"client_time": t0})
        c.wait_for(lambda k, b: k == "pong" and b["client_time"] == t0, 10, "Pong")
        print(f"[ok] logged in as {args.name}; asking for the server restart", flush=True)
        open(args.restart_drill, "w").close()
        try:
            c.idle(60)
            print("[FAILED] the server did not close the connection", flush=True)
            return 1
        except ServerClosed as closed:
            if closed.name != "SERVER_SHUTDOWN":
                raise
            print(f"[ok] told to come back: {closed}", flush=True)
            away = closed
        # An input while the server is away: kept, re-sent after the resume.
        t1 = time.monotonic_ns() // 1000
        c.drop()
        c.send_input("ping", {"client_time": t1})
        r = c.reconnect(away, within=30)
        if r.get("relogged"):
            print("[FAILED] the session was not restored: logged in again", flush=True)
            return 1
        print(f"[ok] session restored: mode={RESUME_MODES.get(r['mode'], r['mode'])} "
              f"last_input_seq={r['last_input_seq']}", flush=True)
        # Count its answers: one must come, and no second one within 2 s.
        answered = 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for k, b in c.poll(0.2):
                if k == "pong" and b["client_time"] == t1:
                    answered += 1
                    deadline = min(deadline, time.monotonic() + 2)
        if answered != 1:
            print(f"[FAILED] the ping sent while away was answered {answered} times", flush=True)
            return 1
        print("[ok] the ping sent while the server was away was answered once", flush=True)
        c.logout()
        return 0
    except Exception as e:  # noqa: BLE001 - the drill reports any failure
        print(f"[FAILED] restart drill: {e!r}", flush=True)
        return 1
    finally:
        c.drop()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--addr", default="127.0.0.1:7777",
                   help="server game address HOST:PORT; for a cluster, its servers' addresses "
                        "comma-separated (tried in turn when one cannot be reached)")
    p.add_argument("--name", default="PyBot", help="character name (dev auth): 1-24 of [A-Za-z0-9_]")
    p.add_argument("--seconds", type=float, default=5.0,
                   help="time to spend in the world (also the lower bound of each step's timeout)")
    p.add_argument("--ticket", help="log in with this ticket instead of dev auth")
    p.add_argument("--ticket-secret", help="mint a one-hour ticket for --name with this secret")
    p.add_argument("-v", "--verbose", action="store_true", help="print every counted frame")
    p.add_argument("--restart-drill", metavar="FILE",
                   help="instead of the walkthrough: play, create FILE, and resume by itself "
                        "once the caller restarted the server")
    args = p.parse_args(argv)
    if args.restart_drill:
        return restart_drill(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
