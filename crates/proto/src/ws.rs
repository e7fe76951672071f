//! WebSocket (RFC 6455) carriage of the Tether byte stream, sans IO, for
//! both ends: the server's HTTP upgrade and its decoder of masked client
//! frames, the client's request, answer check and masked frames, and the
//! server frames' headers.
//!
//! A WebSocket connection carries exactly the byte stream a TCP connection
//! does (docs/PROTOCOL.md section 1.1): the client's binary messages,
//! concatenated, are the client's Tether frames; each server frame travels
//! as one binary message. Message boundaries mean nothing, so a client may
//! put several frames in a message or split one over several, and neither
//! end buffers a message: payload bytes are unmasked in place as they
//! arrive and handed to the same frame splitter as TCP bytes. Only control
//! frames (at most 125 bytes) are buffered.
//!
//! On the server, a plain `GET` (no upgrade) asks for a page:
//! [`Request::Page`], which the server answers from the pages compiled in
//! (the browser demo).

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};
use sha1::{Digest, Sha1};

/// The longest HTTP request head accepted.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// The longest data frame accepted (its payload is streamed, never held;
/// the bound only keeps lengths sane).
pub const MAX_FRAME_PAYLOAD: u64 = 1 << 24;

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// The subprotocol a client may ask for (`Sec-WebSocket-Protocol`).
pub const SUBPROTOCOL: &str = "tether";

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// WebSocket close codes the server sends.
pub mod code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    pub const TOO_BIG: u16 = 1009;
}

/// Which end decodes: a server reads the client's masked frames, a client
/// the server's unmasked ones (RFC 6455, section 5.1: anything else is an
/// error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// A server connection's WebSocket side: the upgrade, then [`Deframer`].
#[derive(Debug)]
pub struct WsConn {
    phase: Phase,
    frames: Deframer,
}

#[derive(Debug)]
enum Phase {
    /// Reading the HTTP request head.
    Head(Vec<u8>),
    Open,
    /// A Close was received or sent: nothing more is read.
    Closed,
}

/// Decodes WebSocket frames in place, for either end: data payloads are
/// unmasked (server) and moved over the headers, control frames answered.
#[derive(Debug)]
pub struct Deframer {
    role: Role,
    /// The frame being read.
    header: [u8; 14],
    header_len: usize,
    opcode: u8,
    fin: bool,
    remaining: u64,
    mask: [u8; 4],
    mask_pos: usize,
    /// A binary message is open (its continuations may follow).
    in_message: bool,
    control: Vec<u8>,
    closed: bool,
    /// Masks for a client's control replies (xorshift; the data frames'
    /// masks are the caller's).
    mask_state: u32,
}

/// What the I/O thread does after [`WsConn::input`].
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    /// Write these bytes as they are (an HTTP response, a pong, a close).
    Send(Bytes),
    /// The upgrade is done: Tether frames may flow.
    Opened,
    /// A page was asked for (a plain GET): answer it and close.
    Page { path: String },
    /// The peer closed (its Close was answered): close when flushed.
    Closed,
}

/// Why a connection is refused or cut, with the WebSocket close code (or,
/// before the upgrade, the HTTP status) that says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsError {
    /// An HTTP status before the upgrade, a WebSocket close code after.
    pub code: u16,
    pub reason: &'static str,
}

impl std::fmt::Display for WsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "websocket: {} ({})", self.reason, self.code)
    }
}

impl std::error::Error for WsError {}

fn fail(code: u16, reason: &'static str) -> WsError {
    WsError { code, reason }
}

impl Default for WsConn {
    fn default() -> WsConn {
        WsConn {
            phase: Phase::Head(Vec::new()),
            frames: Deframer::new(Role::Server, 0),
        }
    }
}

impl WsConn {
    /// Whether the upgrade is done (Tether frames go as binary messages).
    pub fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open)
    }

    /// Marks the connection closed by the server (its Close was queued).
    pub fn close(&mut self) {
        self.phase = Phase::Closed;
    }

    /// Takes `buf` as read from the socket and leaves the Tether bytes it
    /// carried at `buf[..n]`, returning `n`; what else must happen is
    /// pushed to `actions`. An error ends the connection: before the
    /// upgrade with an HTTP status ([`http_error`]), after it with a Close
    /// ([`close_frame`]).
    pub fn input(&mut self, buf: &mut [u8], actions: &mut Vec<Action>) -> Result<usize, WsError> {
        match &mut self.phase {
            Phase::Closed => Ok(0),
            Phase::Open => self.deframe(buf, 0, actions),
            Phase::Head(head) => {
                let before = head.len();
                let take = buf
                    .len()
                    .min(MAX_REQUEST_HEAD + 1 - before.min(MAX_REQUEST_HEAD));
                head.extend_from_slice(&buf[..take]);
                let Some((request, used)) = parse_request(head)? else {
                    if head.len() > MAX_REQUEST_HEAD {
                        return Err(fail(431, "request head too large"));
                    }
                    return Ok(0);
                };
                match request {
                    Request::Page { path } => {
                        self.phase = Phase::Closed;
                        actions.push(Action::Page { path });
                        Ok(0)
                    }
                    Request::Upgrade { key, subprotocol } => {
                        actions.push(Action::Send(upgrade_response(&key, subprotocol)));
                        actions.push(Action::Opened);
                        self.phase = Phase::Open;
                        // The bytes behind the head, in this read, are
                        // already frames.
                        let behind = used - before;
                        if behind >= buf.len() {
                            return Ok(0);
                        }
                        self.deframe(buf, behind, actions)
                    }
                }
            }
        }
    }

    fn deframe(
        &mut self,
        buf: &mut [u8],
        from: usize,
        actions: &mut Vec<Action>,
    ) -> Result<usize, WsError> {
        let n = self.frames.feed(buf, from, actions)?;
        if self.frames.is_closed() {
            self.phase = Phase::Closed;
        }
        Ok(n)
    }
}

impl Deframer {
    /// A decoder for `role`; `seed` varies a client's control-reply masks.
    pub fn new(role: Role, seed: u32) -> Deframer {
        Deframer {
            role,
            header: [0; 14],
            header_len: 0,
            opcode: 0,
            fin: false,
            remaining: 0,
            mask: [0; 4],
            mask_pos: 0,
            in_message: false,
            control: Vec::new(),
            closed: false,
            mask_state: seed | 1,
        }
    }

    /// Whether the peer's Close arrived (nothing more is decoded).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Decodes the frames in `buf[from..]`, leaving the data payloads'
    /// bytes, unmasked, at `buf[..n]`; returns `n`.
    pub fn feed(
        &mut self,
        buf: &mut [u8],
        from: usize,
        actions: &mut Vec<Action>,
    ) -> Result<usize, WsError> {
        let mut rd = from;
        let mut wr = 0;
        while rd < buf.len() && !self.closed {
            if self.header_len < 2 || self.header_len < self.header_size() {
                self.header[self.header_len] = buf[rd];
                self.header_len += 1;
                rd += 1;
                if self.header_len >= 2 && self.header_len == self.header_size() {
                    self.start_frame()?;
                    if self.remaining == 0 {
                        self.end_frame(actions);
                    }
                }
                continue;
            }
            let take = (buf.len() - rd).min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
            if self.opcode == OP_BINARY || self.opcode == OP_CONTINUATION {
                if self.role == Role::Server {
                    for i in 0..take {
                        buf[wr + i] = buf[rd + i] ^ self.mask[(self.mask_pos + i) & 3];
                    }
                } else {
                    buf.copy_within(rd..rd + take, wr);
                }
                wr += take;
            } else {
                for i in 0..take {
                    self.control
                        .push(buf[rd + i] ^ self.mask[(self.mask_pos + i) & 3]);
                }
            }
            rd += take;
            self.mask_pos = (self.mask_pos + take) & 3;
            self.remaining -= take as u64;
            if self.remaining == 0 {
                self.end_frame(actions);
            }
        }
        Ok(wr)
    }

    /// The size of the header being read, once its first two bytes are in.
    fn header_size(&self) -> usize {
        let ext = match self.header[1] & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        2 + ext + mask
    }

    fn start_frame(&mut self) -> Result<(), WsError> {
        let (b0, b1) = (self.header[0], self.header[1]);
        if b0 & 0x70 != 0 {
            return Err(fail(
                code::PROTOCOL_ERROR,
                "reserved bits set (no extension was agreed)",
            ));
        }
        let masked = b1 & 0x80 != 0;
        match (self.role, masked) {
            (Role::Server, false) => {
                return Err(fail(code::PROTOCOL_ERROR, "client frames must be masked"))
            }
            (Role::Client, true) => {
                return Err(fail(
                    code::PROTOCOL_ERROR,
                    "server frames must not be masked",
                ))
            }
            _ => {}
        }
        self.fin = b0 & 0x80 != 0;
        self.opcode = b0 & 0x0F;
        let len = match b1 & 0x7F {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => u64::from_be_bytes(self.header[2..10].try_into().unwrap_or([0xFF; 8])),
            n => u64::from(n),
        };
        self.mask = [0; 4];
        if masked {
            let at = self.header_size() - 4;
            self.mask.copy_from_slice(&self.header[at..at + 4]);
        }
        self.mask_pos = 0;
        self.remaining = len;
        match self.opcode {
            OP_BINARY if self.in_message => Err(fail(
                code::PROTOCOL_ERROR,
                "a new message inside a fragmented one",
            )),
            OP_CONTINUATION if !self.in_message => Err(fail(
                code::PROTOCOL_ERROR,
                "a continuation with no message open",
            )),
            OP_BINARY | OP_CONTINUATION => {
                if len > MAX_FRAME_PAYLOAD {
                    return Err(fail(code::TOO_BIG, "frame too large"));
                }
                self.in_message = !self.fin;
                Ok(())
            }
            OP_TEXT => Err(fail(
                code::UNSUPPORTED_DATA,
                "text messages are not spoken here: send binary",
            )),
            OP_CLOSE | OP_PING | OP_PONG => {
                if len > 125 || !self.fin {
                    return Err(fail(
                        code::PROTOCOL_ERROR,
                        "control frames are short and whole",
                    ));
                }
                self.control.clear();
                Ok(())
            }
            _ => Err(fail(code::PROTOCOL_ERROR, "unknown opcode")),
        }
    }

    fn end_frame(&mut self, actions: &mut Vec<Action>) {
        self.header_len = 0;
        match self.opcode {
            OP_PING => {
                let pong = self.reply(OP_PONG, &self.control.clone());
                actions.push(Action::Send(pong));
            }
            OP_CLOSE => {
                // Echo its code (a Close with none is answered with none).
                let code = self
                    .control
                    .get(..2)
                    .map(<[u8]>::to_vec)
                    .unwrap_or_default();
                let reply = self.reply(OP_CLOSE, &code);
                actions.push(Action::Send(reply));
                actions.push(Action::Closed);
                self.closed = true;
            }
            _ => {}
        }
    }

    /// A control frame to the peer: plain from a server, masked from a
    /// client.
    fn reply(&mut self, opcode: u8, payload: &[u8]) -> Bytes {
        match self.role {
            Role::Server => control_frame(opcode, payload),
            Role::Client => {
                // xorshift32: masks need not be secret here, only varied.
                let mut x = self.mask_state;
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                self.mask_state = x;
                let mut out = BytesMut::new();
                masked_frame_into(opcode, payload, x.to_be_bytes(), &mut out);
                out.freeze()
            }
        }
    }
}

/// An HTTP request head, parsed.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// `GET` with `Upgrade: websocket`.
    Upgrade { key: String, subprotocol: bool },
    /// A plain `GET`.
    Page { path: String },
}

/// Parses a complete request head: `None` while incomplete; the request and
/// the head's length otherwise.
pub fn parse_request(head: &[u8]) -> Result<Option<(Request, usize)>, WsError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let used = match req.parse(head) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(fail(431, "too many headers")),
        Err(_) => return Err(fail(400, "not an HTTP request")),
    };
    if req.method != Some("GET") {
        return Err(fail(405, "only GET"));
    }
    let path = req.path.unwrap_or("/").to_string();
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("upgrade", "websocket") {
        return Ok(Some((Request::Page { path }, used)));
    }
    if !has_token("connection", "upgrade") {
        return Err(fail(400, "an upgrade needs Connection: Upgrade"));
    }
    if header("sec-websocket-version").map(str::trim) != Some("13") {
        return Err(fail(426, "WebSocket version 13 only"));
    }
    let key = header("sec-websocket-key").map(str::trim).unwrap_or("");
    let decoded = base64::engine::general_purpose::STANDARD.decode(key);
    if decoded.map(|k| k.len()) != Ok(16) {
        return Err(fail(400, "Sec-WebSocket-Key must be 16 bytes in base64"));
    }
    let subprotocol = has_token("sec-websocket-protocol", SUBPROTOCOL);
    Ok(Some((
        Request::Upgrade {
            key: key.to_string(),
            subprotocol,
        },
        used,
    )))
}

/// `Sec-WebSocket-Accept` for a key.
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

fn upgrade_response(key: &str, subprotocol: bool) -> Bytes {
    let protocol = if subprotocol {
        format!("Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n")
    } else {
        String::new()
    };
    Bytes::from(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n{protocol}\r\n",
        accept_key(key)
    ))
}

/// An HTTP error response that ends the connection.
pub fn http_error(e: &WsError) -> Bytes {
    let status = match e.code {
        400 => "400 Bad Request",
        405 => "405 Method Not Allowed",
        426 => "426 Upgrade Required",
        431 => "431 Request Header Fields Too Large",
        _ => "400 Bad Request",
    };
    let version: &[(&str, &str)] = if e.code == 426 {
        &[("Sec-WebSocket-Version", "13")]
    } else {
        &[]
    };
    let body = format!("{}\n", e.reason);
    http_response_with(status, "text/plain", version, body.as_bytes())
}

/// An HTTP response with a body (a page) and extra headers, ending the
/// connection.
pub fn http_response_with(
    status: &str,
    content_type: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Bytes {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    Bytes::from(out)
}

/// The two-byte headers of binary messages shorter than 126 bytes, so that
/// the common frame costs no allocation.
static SHORT_HEADERS: [[u8; 2]; 126] = {
    let mut t = [[0u8; 2]; 126];
    let mut i = 0;
    while i < 126 {
        t[i] = [0x80 | OP_BINARY, i as u8];
        i += 1;
    }
    t
};

/// The header of a server binary message (unmasked) of `len` bytes.
pub fn binary_header(len: usize) -> Bytes {
    if len < 126 {
        return Bytes::from_static(&SHORT_HEADERS[len]);
    }
    let mut h = BytesMut::with_capacity(10);
    header_into(OP_BINARY, len, false, &mut h);
    h.freeze()
}

/// A frame's header without its mask key: FIN, `opcode`, the mask bit when
/// `masked`, the payload length in 7, 16 or 64 bits.
fn header_into(opcode: u8, len: usize, masked: bool, out: &mut BytesMut) {
    let mask_bit = if masked { 0x80 } else { 0 };
    out.put_u8(0x80 | opcode);
    match len {
        n if n < 126 => out.put_u8(mask_bit | n as u8),
        n if n <= 0xFFFF => {
            out.put_u8(mask_bit | 126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(mask_bit | 127);
            out.put_u64(n as u64);
        }
    }
}

/// A server control frame (unmasked).
fn control_frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut f = BytesMut::with_capacity(2 + payload.len());
    header_into(opcode, payload.len(), false, &mut f);
    f.put_slice(payload);
    f.freeze()
}

/// A client frame: FIN, `opcode`, masked with `mask`, appended to `out`.
fn masked_frame_into(opcode: u8, payload: &[u8], mask: [u8; 4], out: &mut BytesMut) {
    out.reserve(14 + payload.len());
    header_into(opcode, payload.len(), true, out);
    out.put_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

/// A client's binary message carrying `payload` (Tether frames), masked
/// with `mask`, appended to `out`.
pub fn client_binary_into(payload: &[u8], mask: [u8; 4], out: &mut BytesMut) {
    masked_frame_into(OP_BINARY, payload, mask, out);
}

/// A client's Close (1000), masked with `mask`.
pub fn client_close(mask: [u8; 4]) -> Bytes {
    let mut out = BytesMut::new();
    masked_frame_into(OP_CLOSE, &code::NORMAL.to_be_bytes(), mask, &mut out);
    out.freeze()
}

/// `Sec-WebSocket-Key` from 16 random bytes.
pub fn client_key(random: [u8; 16]) -> String {
    base64::engine::general_purpose::STANDARD.encode(random)
}

/// A client's upgrade request for `path` on `host` (`host:port`).
pub fn client_request(host: &str, path: &str, key: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\r\n"
    )
}

/// Checks a server's answer to [`client_request`]: `None` while its head is
/// incomplete, the head's length once it is a valid `101` for `key`.
pub fn check_upgrade(head: &[u8], key: &str) -> Result<Option<usize>, WsError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let used = match resp.parse(head) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if head.len() <= MAX_REQUEST_HEAD => return Ok(None),
        Ok(httparse::Status::Partial) => return Err(fail(431, "answer head too large")),
        Err(_) => return Err(fail(400, "the answer is not HTTP")),
    };
    if resp.code != Some(101) {
        return Err(fail(
            resp.code.unwrap_or(400),
            "the server did not switch to WebSocket",
        ));
    }
    let accept = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
        .map(|h| h.value);
    if accept != Some(accept_key(key).as_bytes()) {
        return Err(fail(400, "wrong Sec-WebSocket-Accept"));
    }
    Ok(Some(used))
}

/// A server Close with a code.
pub fn close_frame(code: u16) -> Bytes {
    control_frame(OP_CLOSE, &code.to_be_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn upgrade_head() -> Vec<u8> {
        format!(
            "GET /play HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: tether\r\n\r\n"
        )
        .into_bytes()
    }

    /// A client frame: masked, as a browser sends it.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    fn open() -> WsConn {
        let mut ws = WsConn::default();
        let mut head = upgrade_head();
        let mut actions = Vec::new();
        assert_eq!(ws.input(&mut head, &mut actions), Ok(0));
        assert!(ws.is_open());
        ws
    }

    #[test]
    fn the_rfc_example_key_is_accepted() {
        // RFC 6455, section 1.3.
        assert_eq!(accept_key(KEY), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn an_upgrade_is_answered_and_frames_behind_it_are_read() {
        let mut ws = WsConn::default();
        let mut input = upgrade_head();
        input.extend(client_frame(true, OP_BINARY, b"hello", [1, 2, 3, 4]));
        let mut actions = Vec::new();
        let n = ws.input(&mut input, &mut actions).unwrap();
        assert_eq!(&input[..n], b"hello");
        let Action::Send(resp) = &actions[0] else {
            panic!("{actions:?}")
        };
        let resp = std::str::from_utf8(resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 101 "), "{resp}");
        assert!(resp.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(resp.contains("Sec-WebSocket-Protocol: tether\r\n"));
        assert_eq!(actions[1], Action::Opened);
    }

    #[test]
    fn a_plain_get_asks_for_a_page() {
        let mut ws = WsConn::default();
        let mut head = b"GET /demo/app.js HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        let mut actions = Vec::new();
        assert_eq!(ws.input(&mut head, &mut actions), Ok(0));
        assert_eq!(
            actions,
            [Action::Page {
                path: "/demo/app.js".into()
            }]
        );
    }

    #[test]
    fn bad_heads_are_refused_with_a_status() {
        let cases: [(&[u8], u16); 4] = [
            (b"POST / HTTP/1.1\r\nHost: x\r\n\r\n", 405),
            (b"\x16\x03\x01 not http\r\n\r\n", 400),
            (
                b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\n\r\n",
                426,
            ),
            (
                b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n\r\n",
                400,
            ),
        ];
        for (head, status) in cases {
            let mut ws = WsConn::default();
            let err = ws.input(&mut head.to_vec(), &mut Vec::new()).unwrap_err();
            assert_eq!(err.code, status, "{}", String::from_utf8_lossy(head));
            assert!(std::str::from_utf8(&http_error(&err))
                .unwrap()
                .starts_with(&format!("HTTP/1.1 {status}")));
        }
        // A head that never ends is cut at the bound.
        let mut ws = WsConn::default();
        let mut chunk = b"GET / HTTP/1.1\r\n".to_vec();
        let mut actions = Vec::new();
        ws.input(&mut chunk, &mut actions).unwrap();
        let err = loop {
            let mut more = b"X-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n".to_vec();
            match ws.input(&mut more, &mut actions) {
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert!(err.code == 431, "{err:?}");
    }

    #[test]
    fn pings_are_answered_and_a_close_is_echoed() {
        let mut ws = open();
        let mut input = client_frame(true, OP_PING, b"abc", [9, 9, 9, 9]);
        input.extend(client_frame(true, OP_BINARY, b"x", [0, 0, 0, 1]));
        input.extend(client_frame(
            true,
            OP_CLOSE,
            &1000u16.to_be_bytes(),
            [5, 6, 7, 8],
        ));
        input.extend(client_frame(true, OP_BINARY, b"ignored", [0, 0, 0, 0]));
        let mut actions = Vec::new();
        let n = ws.input(&mut input, &mut actions).unwrap();
        assert_eq!(&input[..n], b"x");
        assert_eq!(
            actions,
            [
                Action::Send(Bytes::from_static(&[0x8A, 3, b'a', b'b', b'c'])),
                Action::Send(Bytes::from_static(&[0x88, 2, 0x03, 0xE8])),
                Action::Closed,
            ]
        );
    }

    #[test]
    fn protocol_breaches_are_refused_with_their_close_code() {
        let unmasked = vec![0x82, 1, b'x'];
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (unmasked, code::PROTOCOL_ERROR),
            (
                client_frame(true, OP_TEXT, b"hi", [1; 4]),
                code::UNSUPPORTED_DATA,
            ),
            (client_frame(true, 0x3, b"", [1; 4]), code::PROTOCOL_ERROR),
            (
                client_frame(true, OP_CONTINUATION, b"x", [1; 4]),
                code::PROTOCOL_ERROR,
            ),
            (
                client_frame(false, OP_PING, b"x", [1; 4]),
                code::PROTOCOL_ERROR,
            ),
            (
                client_frame(true, OP_PING, &[0; 126], [1; 4]),
                code::PROTOCOL_ERROR,
            ),
            (
                {
                    let mut f = client_frame(false, OP_BINARY, b"a", [1; 4]);
                    f.extend(client_frame(true, OP_BINARY, b"b", [1; 4]));
                    f
                },
                code::PROTOCOL_ERROR,
            ),
            (
                {
                    let mut f = vec![0x82, 0x80 | 127];
                    f.extend_from_slice(&(MAX_FRAME_PAYLOAD + 1).to_be_bytes());
                    f.extend_from_slice(&[1; 4]);
                    f
                },
                code::TOO_BIG,
            ),
            (vec![0xC2, 0x81, 0, 0, 0, 0, 0], code::PROTOCOL_ERROR),
        ];
        for (mut input, want) in cases {
            let err = open().input(&mut input, &mut Vec::new()).unwrap_err();
            assert_eq!(err.code, want, "{err:?}");
        }
    }

    #[test]
    fn server_headers_give_the_length() {
        assert_eq!(&binary_header(5)[..], [0x82, 5]);
        assert_eq!(&binary_header(125)[..], [0x82, 125]);
        assert_eq!(&binary_header(126)[..], [0x82, 126, 0, 126]);
        assert_eq!(
            &binary_header(70_000)[..],
            [0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]
        );
        assert_eq!(&close_frame(code::GOING_AWAY)[..], [0x88, 2, 0x03, 0xE9]);
    }

    #[test]
    fn a_client_speaks_to_the_server_side() {
        // The client's request is what the server side upgrades...
        let key = client_key([7; 16]);
        let mut ws = WsConn::default();
        let mut head = client_request("127.0.0.1:7781", "/", &key).into_bytes();
        let mut actions = Vec::new();
        ws.input(&mut head, &mut actions).unwrap();
        let Action::Send(answer) = &actions[0] else {
            panic!("{actions:?}")
        };
        // ... and the server's answer is what the client accepts.
        let mut answer = answer.to_vec();
        let used = check_upgrade(&answer, &key).unwrap().unwrap();
        assert_eq!(used, answer.len());
        assert!(check_upgrade(&answer[..10], &key).unwrap().is_none());
        assert!(check_upgrade(&answer, &client_key([8; 16])).is_err());
        answer.clear();

        // Client frames go through the server's decoder.
        let mut out = BytesMut::new();
        client_binary_into(b"tether bytes", [1, 2, 3, 4], &mut out);
        let mut buf = out.to_vec();
        let n = ws.input(&mut buf, &mut Vec::new()).unwrap();
        assert_eq!(&buf[..n], b"tether bytes");

        // Server frames through a client's decoder; its pong is masked.
        let mut client = Deframer::new(Role::Client, 42);
        let mut stream = binary_header(5).to_vec();
        stream.extend_from_slice(b"hello");
        stream.extend_from_slice(&[0x89, 1, b'p']);
        let mut actions = Vec::new();
        let n = client.feed(&mut stream, 0, &mut actions).unwrap();
        assert_eq!(&stream[..n], b"hello");
        let Action::Send(pong) = &actions[0] else {
            panic!("{actions:?}")
        };
        let mut pong = pong.to_vec();
        let mut server = Deframer::new(Role::Server, 0);
        assert_eq!(server.feed(&mut pong, 0, &mut Vec::new()), Ok(0));
        // A masked frame from a server is refused.
        let mut masked = BytesMut::new();
        client_binary_into(b"x", [1; 4], &mut masked);
        let err = Deframer::new(Role::Client, 1)
            .feed(&mut masked.to_vec(), 0, &mut Vec::new())
            .unwrap_err();
        assert_eq!(err.code, code::PROTOCOL_ERROR);
    }

    proptest! {
        /// However the messages are fragmented and however the reads cut the
        /// stream, the Tether bytes come out whole and in order.
        #[test]
        fn payload_survives_any_fragmentation_and_read_boundaries(
            data in proptest::collection::vec(any::<u8>(), 0..3000),
            pieces in proptest::collection::vec(1usize..400, 1..20),
            reads in proptest::collection::vec(1usize..700, 1..40),
            mask in any::<[u8; 4]>(),
            pings in any::<bool>(),
        ) {
            // Split `data` into messages of fragments.
            let mut stream = Vec::new();
            let mut pos = 0;
            let mut i = 0;
            let mut open_message = false;
            while pos < data.len() {
                let len = pieces[i % pieces.len()].min(data.len() - pos);
                let last_of_message = i % 3 == 2 || pos + len == data.len();
                let opcode = if open_message { OP_CONTINUATION } else { OP_BINARY };
                stream.extend(client_frame(last_of_message, opcode, &data[pos..pos + len], mask));
                open_message = !last_of_message;
                if pings && !open_message {
                    stream.extend(client_frame(true, OP_PING, b"p", mask));
                }
                pos += len;
                i += 1;
            }
            let mut ws = open();
            let mut out = Vec::new();
            let mut actions = Vec::new();
            let mut at = 0;
            let mut r = 0;
            while at < stream.len() {
                let n = reads[r % reads.len()].min(stream.len() - at);
                let mut chunk = stream[at..at + n].to_vec();
                let k = ws.input(&mut chunk, &mut actions).unwrap();
                out.extend_from_slice(&chunk[..k]);
                at += n;
                r += 1;
            }
            prop_assert_eq!(out, data);
            prop_assert!(actions.iter().all(|a| matches!(a, Action::Send(_))));
        }
    }
}
