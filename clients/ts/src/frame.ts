// Framing (docs/PROTOCOL.md section 2): every message travels as
// [u16 little-endian payload length][payload], length 1..=65535.

/** The longest client frame payload the server accepts. */
export const MAX_CLIENT_PAYLOAD = 1024;

/** Why the server's byte stream cannot be read. */
export class FrameError extends Error {}

/** One frame: the header before `payload`. */
export function frame(payload: Uint8Array): Uint8Array {
  if (payload.length === 0 || payload.length > MAX_CLIENT_PAYLOAD) {
    throw new FrameError(`a client frame holds 1 to ${MAX_CLIENT_PAYLOAD} bytes, not ${payload.length}`);
  }
  const out = new Uint8Array(2 + payload.length);
  out[0] = payload.length & 0xff;
  out[1] = payload.length >> 8;
  out.set(payload, 2);
  return out;
}

/**
 * Collects the server's bytes (however the transport cut them) and gives
 * back whole frames' payloads. Holds at most one partial frame.
 */
export class FrameReader {
  private buf: Uint8Array = new Uint8Array(0);

  /** Adds `bytes` and returns the payloads of the frames now complete. */
  push(bytes: Uint8Array): Uint8Array[] {
    const joined = new Uint8Array(this.buf.length + bytes.length);
    joined.set(this.buf, 0);
    joined.set(bytes, this.buf.length);
    const out: Uint8Array[] = [];
    let pos = 0;
    while (joined.length - pos >= 2) {
      const len = joined[pos]! | (joined[pos + 1]! << 8);
      if (len === 0) throw new FrameError('a frame of length 0');
      if (joined.length - pos - 2 < len) break;
      out.push(joined.subarray(pos + 2, pos + 2 + len));
      pos += 2 + len;
    }
    this.buf = joined.slice(pos);
    return out;
  }

  /** Forgets a partial frame (the connection it came on is gone). */
  reset(): void {
    this.buf = new Uint8Array(0);
  }
}
