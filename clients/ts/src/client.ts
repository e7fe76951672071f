// A Tether client over WebSocket (docs/PROTOCOL.md, section 1.1): logs in,
// counts and acknowledges frames, keeps every input until the server has
// applied it, and when the connection drops, resumes the session by itself
// (backoff with full jitter, the server's retry_after_ms honoured), re-sending
// what was not applied, so that each input is applied exactly once. In a
// cluster it follows REDIRECT to the server that holds (or is to hold) the
// session, with the same Hello or Resume.

import { create, fromBinary, type MessageInitShape, toBinary } from '@bufbuild/protobuf';
import { type Close, CloseCode, ResumeMode, type Resumed } from './gen/engine_pb.js';
import {
  ChatScope,
  ClientMessageSchema,
  type Input,
  InputSchema,
  type ServerMessage,
  ServerMessageSchema,
  type WorldInfo,
  WorldInfoSchema,
} from './gen/tether_pb.js';
import { FrameReader, frame } from './frame.js';

/** How the client proves who it is (the server's `auth` setting). */
export type Auth = { devName: string } | { ticket: string };

/** The part of a WebSocket the client uses (the browser's, or `ws` in Node). */
export interface WebSocketLike {
  binaryType: string;
  readonly readyState: number;
  send(data: Uint8Array): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code?: number }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

export type WebSocketFactory = (url: string) => WebSocketLike;

export interface ClientOptions {
  /** `ws://host:port/` of the server's `ws_listen`. */
  url: string;
  /**
   * Other servers of the same game (a cluster's), tried in turn after `url`
   * when the one in use cannot be reached. Which server holds a session is
   * the servers' business: any of them redirects the client to the right
   * one (`REDIRECT`, followed by itself). Default: none.
   */
  otherUrls?: string[];
  auth: Auth;
  /** Sent in Hello for the server's logs. */
  clientName?: string;
  /** Opens a WebSocket; default: the platform's `WebSocket`. */
  webSocket?: WebSocketFactory;
  /** First reconnect delay, ms (then doubling, with full jitter); default 250. */
  reconnectInitialMs?: number;
  /** Longest reconnect delay, ms; default 5000. */
  reconnectMaxMs?: number;
  /** On RESUME_REFUSED (the session is gone), log in again; default true. */
  relogin?: boolean;
  /** Inputs kept (sent or not) until applied, at most; default 256. */
  maxPendingInputs?: number;
  /** Inputs sent per second at most (the server allows 60); default 30. */
  inputsPerSecond?: number;
}

/**
 * `connecting`: logging in. `live`: a connection carries the session.
 * `resuming`: the connection dropped; reconnecting to resume (inputs are
 * kept meanwhile). `offline`: the session is over (logout, a final close
 * code, or it was never started).
 */
export type LinkState = 'connecting' | 'live' | 'resuming' | 'offline';

export interface Welcomed {
  sessionId: bigint;
  entityId: bigint;
  world: WorldInfo;
  /** This login took over an earlier connection of the account. */
  tookOver: boolean;
  /** A login after the session was lost (RESUME_REFUSED). */
  relogin: boolean;
  /**
   * Inputs kept when the session was lost (not yet confirmed applied by an
   * InputAck): dropped, not re-sent. Those sent may or may not have been
   * applied before the session ended.
   */
  inputsDropped: number;
}

export interface ClientStats {
  /** Connections opened again after a lost one or a failed attempt. */
  reconnects: number;
  resumes: number;
  relogins: number;
  /** `REDIRECT`s followed to another server of a cluster. */
  redirects: number;
  framesReceived: bigint;
  inputsSent: number;
}

type Listener<T> = (value: T) => void;

interface Events {
  state: LinkState;
  welcome: Welcomed;
  resumed: Resumed;
  /** Every counted frame: the game's events, in order. */
  message: ServerMessage;
  /** The session ended for good: its close code and message. */
  closed: { code: CloseCode; message: string };
}

/** The input is refused on this side: too many are waiting already. */
export class TooManyPendingInputs extends Error {}

/** Codes after which the session cannot be resumed. */
const FINAL = new Set<CloseCode>([
  CloseCode.PROTOCOL_ERROR,
  CloseCode.FRAME_TOO_LARGE,
  CloseCode.UNSUPPORTED_VERSION,
  CloseCode.AUTH_FAILED,
  CloseCode.TICKET_EXPIRED,
  CloseCode.RESUME_REFUSED,
  CloseCode.SESSION_TAKEN_OVER,
  CloseCode.ALREADY_LOGGED_IN,
  CloseCode.BANNED,
  CloseCode.KICKED,
  CloseCode.INPUT_SEQ_GAP,
]);

const ACK_EVERY_FRAMES = 32n;
const ACK_WITHIN_MS = 1000;
const SERVICE_MS = 50;
const HANDSHAKE_TIMEOUT_MS = 10_000;

/**
 * `REDIRECT`s followed in a row without a Welcome or Resumed; past it the
 * client backs off as for `SERVER_BUSY` and goes back to its entry URLs.
 * Two servers of a cluster may disagree for a moment about who holds an
 * account (while one takes over a failed one's): a few hops settle it, an
 * endless ping-pong must not spin. 8, as in Tether's Rust client.
 */
export const MAX_REDIRECTS_IN_A_ROW = 8;

export class TetherClient {
  private readonly opts: Required<Omit<ClientOptions, 'webSocket'>> & { webSocket: WebSocketFactory };
  private ws: WebSocketLike | null = null;
  private reader = new FrameReader();
  private _state: LinkState = 'offline';
  private listeners: { [K in keyof Events]?: Listener<Events[K]>[] } = {};

  // The session.
  private sessionId = 0n;
  private token: Uint8Array = new Uint8Array(0);
  private restartToken: Uint8Array = new Uint8Array(0);
  private _entityId = 0n;
  private _world: WorldInfo | null = null;
  private heartbeatIntervalMs = 2000;
  private heartbeatTimeoutMs = 15000;
  private bound = false;

  // Counting and acknowledging.
  private frames = 0n;
  private ackedFrames = 0n;
  private firstUnackedAt = 0;

  // Inputs: every one not yet applied, oldest first; the first `sent` of
  // them went out on this connection.
  private nextSeq = 1;
  private kept: Input[] = [];
  private sent = 0;
  private tokens = 0;
  private tokensAt = 0;

  // Timers.
  private service: ReturnType<typeof setInterval> | null = null;
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null;
  private lastSentAt = 0;
  private lastHeardAt = 0;
  private openedAt = 0;
  private attempt = 0;
  private retryAfterMs = 0;
  private reloginPending = false;
  private dropped = 0;
  // Where the next connection goes: an entry URL (`url`, then `otherUrls`),
  // or the server a REDIRECT named.
  private target: string;
  private entry = 0;
  private redirectsInARow = 0;
  private _stats: Omit<ClientStats, 'framesReceived'> = {
    reconnects: 0,
    resumes: 0,
    relogins: 0,
    redirects: 0,
    inputsSent: 0,
  };

  constructor(options: ClientOptions) {
    const platform = (globalThis as { WebSocket?: new (url: string) => WebSocketLike }).WebSocket;
    this.opts = {
      clientName: 'tether-ts/0.1.0',
      reconnectInitialMs: 250,
      reconnectMaxMs: 5000,
      relogin: true,
      maxPendingInputs: 256,
      inputsPerSecond: 30,
      ...options,
      otherUrls: [...(options.otherUrls ?? [])],
      webSocket:
        options.webSocket ??
        ((url: string) => {
          if (!platform) throw new Error('no WebSocket on this platform: pass options.webSocket');
          return new platform(url);
        }),
    };
    this.target = this.opts.url;
  }

  // ----- public API ----------------------------------------------------

  get state(): LinkState {
    return this._state;
  }

  get entityId(): bigint {
    return this._entityId;
  }

  get world(): WorldInfo | null {
    return this._world;
  }

  /** Inputs not yet applied by the server (sent or waiting to be). */
  get pendingInputs(): number {
    return this.kept.length;
  }

  get stats(): ClientStats {
    return { ...this._stats, framesReceived: this.frames };
  }

  on<K extends keyof Events>(event: K, fn: Listener<Events[K]>): () => void {
    const list = (this.listeners[event] ??= []) as Listener<Events[K]>[];
    list.push(fn);
    return () => {
      const i = list.indexOf(fn);
      if (i >= 0) list.splice(i, 1);
    };
  }

  /** Logs in (and keeps the session up until `logout` or a final close). */
  connect(): void {
    if (this._state !== 'offline') return;
    this.sessionId = 0n;
    this.setState('connecting');
    this.open();
  }

  /**
   * Sends one game command as the next input; returns its seq. It is kept
   * until the server has applied it, and re-sent after a resume if needed.
   */
  send(cmd: Input['cmd']): number {
    if (this._state === 'offline') throw new Error('not connected: call connect() first');
    if (this.kept.length >= this.opts.maxPendingInputs) {
      throw new TooManyPendingInputs(`${this.kept.length} inputs are waiting for the server already`);
    }
    const seq = this.nextSeq++;
    this.kept.push(create(InputSchema, { seq, cmd }));
    this.pump(Date.now());
    return seq;
  }

  move(x: number, y: number): number {
    return this.send({ case: 'move', value: { $typeName: 'tether.v1.Move', x, y } });
  }

  attack(target: bigint): number {
    return this.send({ case: 'attack', value: { $typeName: 'tether.v1.Attack', target } });
  }

  chat(text: string, scope: ChatScope = ChatScope.LOCAL, to = ''): number {
    return this.send({ case: 'chat', value: { $typeName: 'tether.v1.Chat', scope, to, text } });
  }

  ping(clientTime: bigint = BigInt(Date.now())): number {
    return this.send({ case: 'ping', value: { $typeName: 'tether.v1.Ping', clientTime } });
  }

  respawn(): number {
    return this.send({ case: 'respawn', value: { $typeName: 'tether.v1.Respawn' } });
  }

  /** Ends the session (the character is saved and leaves the world). */
  logout(): void {
    if (this._state === 'live' && this.ws) {
      this.write({ case: 'logout', value: { $typeName: 'tether.v1.Logout' } });
    }
    this.finish(CloseCode.LOGOUT, 'logged out');
  }

  /** Drops the connection as a network failure would (the session resumes). */
  dropConnection(): void {
    this.ws?.close();
    this.lost();
  }

  // ----- connection ----------------------------------------------------

  private open(): void {
    this.reader.reset();
    this.bound = false;
    this.sent = 0;
    let ws: WebSocketLike;
    try {
      ws = this.opts.webSocket(this.target);
    } catch {
      this.lost();
      return;
    }
    this.ws = ws;
    ws.binaryType = 'arraybuffer';
    this.openedAt = Date.now();
    ws.onopen = () => {
      if (this.ws !== ws) return;
      this.lastHeardAt = Date.now();
      if (this.sessionId !== 0n && !this.reloginPending) {
        this.write({
          case: 'resume',
          value: {
            $typeName: 'tether.v1.Resume',
            sessionId: this.sessionId,
            token: this.token,
            framesReceived: this.frames,
            restartToken: this.restartToken,
          },
        });
      } else {
        const auth =
          'devName' in this.opts.auth
            ? ({ case: 'devName', value: this.opts.auth.devName } as const)
            : ({ case: 'ticket', value: this.opts.auth.ticket } as const);
        this.write({
          case: 'hello',
          value: { $typeName: 'tether.v1.Hello', protocolVersion: 1, auth, client: this.opts.clientName },
        });
      }
    };
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      this.onBytes(toBytes(ev.data));
    };
    ws.onclose = () => {
      if (this.ws === ws) this.lost();
    };
    ws.onerror = () => {
      // onclose follows.
    };
    this.service ??= setInterval(() => this.serviceTick(), SERVICE_MS);
  }

  /**
   * The connection is gone: resume (or log in) again after a backoff. By
   * default a connection that never carried the session is a failed
   * attempt: the server it went to may be down (a redirect's target, or one
   * of a cluster's), so the next attempt goes to the next entry URL.
   */
  private lost(failedAttempt = !this.bound): void {
    this.detach();
    this.bound = false;
    if (this._state === 'offline' || this.reconnectTimer) return;
    if (this._state === 'live') this.setState('resuming');
    if (failedAttempt) this.toEntry(this.entry + 1);
    const ceiling = Math.min(this.opts.reconnectMaxMs, this.opts.reconnectInitialMs * 2 ** this.attempt);
    const delay = Math.max(this.retryAfterMs, Math.random() * ceiling);
    this.attempt = Math.min(this.attempt + 1, 16);
    this.retryAfterMs = 0;
    this.reopenAfter(delay, true);
  }

  /** Opens the next connection after `delay` ms, unless the session ended meanwhile. */
  private reopenAfter(delay: number, countAsReconnect: boolean): void {
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      if (this._state === 'offline') return;
      if (countAsReconnect) this._stats.reconnects += 1;
      this.open();
    }, delay);
  }

  /**
   * A REDIRECT: the next connection goes to the server it names, after its
   * retry_after_ms, with the same Hello or Resume (a live session pauses and
   * resumes there). False when it is not followed: no usable `ws_url`, or
   * MAX_REDIRECTS_IN_A_ROW already (then the target goes back to the entry
   * URL); the caller handles it as a retryable close.
   */
  private redirect(c: Close): boolean {
    const url = c.redirect?.wsUrl ?? '';
    if (!/^wss?:\/\/[^/]/i.test(url)) return false;
    if (this.redirectsInARow >= MAX_REDIRECTS_IN_A_ROW) {
      this.redirectsInARow = 0;
      this.toEntry(this.entry);
      return false;
    }
    this.redirectsInARow += 1;
    this._stats.redirects += 1;
    this.target = url;
    this.detach();
    this.bound = false;
    if (this._state === 'live') this.setState('resuming');
    this.reopenAfter(c.retryAfterMs, false);
    return true;
  }

  /** The next connection goes to entry URL `i` (wrapping). */
  private toEntry(i: number): void {
    const n = 1 + this.opts.otherUrls.length;
    this.entry = i % n;
    this.target = this.entry === 0 ? this.opts.url : this.opts.otherUrls[this.entry - 1]!;
  }

  /** The session is over: no more reconnects. */
  private finish(code: CloseCode, message: string): void {
    if (this._state === 'offline') return;
    this.setState('offline');
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    if (this.service) clearInterval(this.service);
    this.service = null;
    this.detach(1000);
    this.emit('closed', { code, message });
  }

  /** Lets go of the current WebSocket: no more events from it, closed. */
  private detach(code?: number): void {
    const ws = this.ws;
    this.ws = null;
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onclose = null;
    // Kept, not cleared: Node's `ws` reports a socket closed while it
    // connects as an error event, which with no listener would throw.
    ws.onerror = () => {};
    try {
      ws.close(code);
    } catch {
      // already closed
    }
  }

  // ----- reading -------------------------------------------------------

  private onBytes(bytes: Uint8Array): void {
    this.lastHeardAt = Date.now();
    let payloads: Uint8Array[];
    try {
      payloads = this.reader.push(bytes);
    } catch {
      this.dropConnection();
      return;
    }
    for (const p of payloads) {
      let msg: ServerMessage;
      try {
        msg = fromBinary(ServerMessageSchema, p);
      } catch {
        this.dropConnection();
        return;
      }
      this.onMessage(msg);
      if (!this.ws) return; // closed meanwhile
    }
  }

  private onMessage(m: ServerMessage): void {
    switch (m.msg.case) {
      case 'welcome': {
        const w = m.msg.value;
        const relogin = this.reloginPending;
        const dropped = this.dropped;
        this.reloginPending = false;
        this.dropped = 0;
        if (relogin) this._stats.relogins += 1;
        this.sessionId = w.sessionId;
        this.token = w.resumeToken;
        this.restartToken = w.restartToken;
        this._entityId = w.entityId;
        this._world = fromBinary(WorldInfoSchema, w.game);
        this.heartbeatIntervalMs = w.heartbeatIntervalMs || 2000;
        this.heartbeatTimeoutMs = w.heartbeatTimeoutMs || 15000;
        // A new session: numbering restarts, nothing kept can be re-sent
        // (the Welcome does not say what was applied).
        this.frames = 0n;
        this.ackedFrames = 0n;
        this.firstUnackedAt = 0;
        this.nextSeq = 1;
        this.kept = [];
        this.sent = 0;
        this.bound = true;
        this.attempt = 0;
        this.redirectsInARow = 0;
        this.setState('live');
        this.emit('welcome', {
          sessionId: w.sessionId,
          entityId: w.entityId,
          world: this._world,
          tookOver: w.tookOver,
          relogin,
          inputsDropped: dropped,
        });
        return;
      }
      case 'resumed': {
        const r = m.msg.value;
        this.token = r.resumeToken;
        if (r.mode === ResumeMode.SNAPSHOT) {
          this.frames = r.framesBase;
          this.ackedFrames = r.framesBase;
        }
        this.appliedUpTo(r.lastInputSeq);
        this.sent = 0; // the rest goes again, in order
        this.bound = true;
        this.attempt = 0;
        this.redirectsInARow = 0;
        this._stats.resumes += 1;
        this.setState('live');
        this.emit('resumed', r);
        this.pump(Date.now());
        return;
      }
      case 'close': {
        const c = m.msg.value;
        if (c.code === CloseCode.LOGOUT) {
          this.finish(c.code, c.message);
        } else if (c.code === CloseCode.RESUME_REFUSED && this.opts.relogin) {
          // The session is gone (expired, or the server lost it): log in
          // again; what was not applied is lost with it.
          this.reloginPending = true;
          this.dropped = this.kept.length;
          this.kept = [];
          this.sent = 0;
          this.retryAfterMs = c.retryAfterMs;
          this.lost(false); // the same server: it knows the account
        } else if (FINAL.has(c.code)) {
          this.finish(c.code, c.message);
        } else if (c.code === CloseCode.REDIRECT && this.redirect(c)) {
          // Followed: the next connection goes there.
        } else {
          this.retryAfterMs = c.retryAfterMs;
          this.dropConnection();
        }
        return;
      }
      default:
        break;
    }
    // A counted frame.
    this.frames += 1n;
    if (this.firstUnackedAt === 0) this.firstUnackedAt = Date.now();
    if (m.msg.case === 'inputAck') this.appliedUpTo(m.msg.value.seq);
    this.emit('message', m);
    if (this.frames - this.ackedFrames >= ACK_EVERY_FRAMES) this.sendAck();
  }

  /** Inputs up to `seq` are applied: no longer kept. */
  private appliedUpTo(seq: number): void {
    let n = 0;
    while (n < this.kept.length && this.kept[n]!.seq <= seq) n += 1;
    if (n === 0) return;
    this.kept.splice(0, n);
    this.sent = Math.max(0, this.sent - n);
  }

  // ----- writing -------------------------------------------------------

  private write(msg: MessageInitShape<typeof ClientMessageSchema>['msg']): void {
    const ws = this.ws;
    if (!ws || ws.readyState !== 1) return;
    const bytes = toBinary(ClientMessageSchema, create(ClientMessageSchema, { msg }));
    ws.send(frame(bytes));
    this.lastSentAt = Date.now();
  }

  private sendAck(): void {
    if (!this.bound) return;
    this.write({ case: 'ack', value: { $typeName: 'tether.v1.Ack', framesReceived: this.frames } });
    this.ackedFrames = this.frames;
    this.firstUnackedAt = 0;
  }

  /** Sends the kept inputs not yet sent on this connection, paced. */
  private pump(now: number): void {
    if (!this.bound || this._state !== 'live') return;
    const rate = this.opts.inputsPerSecond;
    this.tokens = Math.min(rate, this.tokens + ((now - this.tokensAt) / 1000) * rate);
    this.tokensAt = now;
    while (this.sent < this.kept.length && this.tokens >= 1) {
      const input = this.kept[this.sent]!;
      input.ack = this.frames > this.ackedFrames ? this.frames : 0n;
      this.write({ case: 'input', value: input });
      if (input.ack !== 0n) {
        this.ackedFrames = this.frames;
        this.firstUnackedAt = 0;
      }
      this.sent += 1;
      this.tokens -= 1;
      this._stats.inputsSent += 1;
    }
  }

  private serviceTick(): void {
    const now = Date.now();
    if (this.ws && !this.bound && now - this.openedAt > HANDSHAKE_TIMEOUT_MS) {
      this.dropConnection();
      return;
    }
    if (!this.bound) return;
    if (now - this.lastHeardAt > this.heartbeatTimeoutMs) {
      // Nothing from the server for that long: a half-open connection.
      this.dropConnection();
      return;
    }
    this.pump(now);
    if (this.firstUnackedAt !== 0 && now - this.firstUnackedAt >= ACK_WITHIN_MS) {
      this.sendAck();
    } else if (now - this.lastSentAt >= this.heartbeatIntervalMs) {
      this.sendAck(); // keep-alive
    }
  }

  private setState(s: LinkState): void {
    if (this._state === s) return;
    this._state = s;
    this.emit('state', s);
  }

  private emit<K extends keyof Events>(event: K, value: Events[K]): void {
    for (const fn of (this.listeners[event] ?? []) as Listener<Events[K]>[]) {
      try {
        fn(value);
      } catch (e) {
        // A listener's bug must not break the session.
        console.error('tether: listener failed', e);
      }
    }
  }
}

function toBytes(data: unknown): Uint8Array {
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  throw new Error('tether: a text message from the server');
}
