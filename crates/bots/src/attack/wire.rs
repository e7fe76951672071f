//! The few frames the attackers write, and a small reader for what the
//! server answers. Attackers do not use the client SDK: they must be free
//! to break the protocol, and cheap enough to hold thousands of sockets.

use bytes::BytesMut;
use tether_proto::pb::{self, client_message::Msg as C, server_message::Msg as S};
use tether_proto::{decode_server, encode_frame_into, split_frame, MAX_PAYLOAD_LEN};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Bytes asked of the socket per read. Attackers mostly read a `Close`, a
/// `Welcome` or pongs; 2 KiB keeps thousands of held sockets cheap.
const READ_CHUNK: usize = 2 * 1024;

/// `Hello` with a dev name.
pub fn hello(out: &mut BytesMut, name: &str) {
    let msg = pb::ClientMessage {
        msg: Some(C::Hello(pb::Hello {
            protocol_version: tether_proto::PROTOCOL_VERSION,
            auth: Some(pb::hello::Auth::DevName(name.to_string())),
            client: "tether-bots-attack".to_string(),
        })),
    };
    encode_frame_into(&msg, out);
}

/// `Input{seq, ack, Ping}`: a valid input that goes through the world.
pub fn ping(out: &mut BytesMut, seq: u32, ack: u64, client_time: u64) {
    let msg = pb::ClientMessage {
        msg: Some(C::Input(pb::Input {
            seq,
            ack,
            cmd: Some(pb::input::Cmd::Ping(pb::Ping { client_time })),
        })),
    };
    encode_frame_into(&msg, out);
}

/// `Ack{frames_received}`: the keep-alive of a held session.
pub fn ack(out: &mut BytesMut, frames_received: u64) {
    let msg = pb::ClientMessage {
        msg: Some(C::Ack(pb::Ack { frames_received })),
    };
    encode_frame_into(&msg, out);
}

/// What one server frame was, as far as an attacker cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Welcome,
    Resumed,
    /// `Close{code, retry_after_ms}`.
    Close {
        code: i32,
        retry_after_ms: u32,
    },
    /// A counted frame (to be acknowledged).
    Counted,
    /// Bytes that are not a server frame: the connection is useless.
    Broken,
}

/// The short name of a close code: `RATE_LIMITED` for 13, the number for a
/// code this build does not know.
pub fn close_name(code: i32) -> String {
    match pb::CloseCode::try_from(code) {
        Ok(c) => c
            .as_str_name()
            .trim_start_matches("CLOSE_CODE_")
            .to_string(),
        Err(_) => format!("CODE_{code}"),
    }
}

/// Buffers server bytes and cuts them into frames. Holds at most one frame
/// plus one read.
#[derive(Debug, Default)]
pub struct Reader {
    buf: Vec<u8>,
}

impl Reader {
    /// Reads once; `Ok(0)` at EOF. Cancel-safe (nothing is buffered
    /// until the read completes), so it can sit in a `select!`.
    pub async fn read_from<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> std::io::Result<usize> {
        let mut chunk = [0u8; READ_CHUNK];
        let n = r.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Feeds bytes (tests, or bytes read elsewhere).
    #[cfg(test)]
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, if one is buffered.
    pub fn next_frame(&mut self) -> Option<Seen> {
        let (seen, used) = match split_frame(&self.buf, MAX_PAYLOAD_LEN) {
            Ok(None) => return None,
            Err(_) => (Seen::Broken, self.buf.len()),
            Ok(Some((payload, used))) => {
                let seen = match decode_server(payload) {
                    Ok(m) => match m.msg {
                        Some(S::Welcome(_)) => Seen::Welcome,
                        Some(S::Resumed(_)) => Seen::Resumed,
                        Some(S::Close(c)) => Seen::Close {
                            code: c.code,
                            retry_after_ms: c.retry_after_ms,
                        },
                        Some(_) => Seen::Counted,
                        None => Seen::Broken,
                    },
                    Err(_) => Seen::Broken,
                };
                (seen, used)
            }
        };
        self.buf.drain(..used);
        Some(seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tether_proto::encode_frame;

    #[test]
    fn frames_come_out_whole_and_in_order() {
        let close = encode_frame(&pb::ServerMessage {
            msg: Some(S::Close(pb::Close {
                code: pb::CloseCode::RateLimited as i32,
                message: "slow down".into(),
                retry_after_ms: 500,
                redirect: None,
            })),
        });
        let pong = encode_frame(&pb::ServerMessage {
            msg: Some(S::Pong(pb::Pong { client_time: 7 })),
        });
        let mut r = Reader::default();
        r.push(&pong);
        r.push(&close[..3]);
        assert_eq!(r.next_frame(), Some(Seen::Counted));
        assert_eq!(r.next_frame(), None);
        r.push(&close[3..]);
        assert_eq!(
            r.next_frame(),
            Some(Seen::Close {
                code: 13,
                retry_after_ms: 500
            })
        );
        assert_eq!(r.next_frame(), None);
        r.push(&[0, 0]);
        assert_eq!(r.next_frame(), Some(Seen::Broken));
        assert_eq!(r.next_frame(), None);
    }

    #[test]
    fn client_frames_decode_on_the_server_side() {
        let mut out = BytesMut::new();
        hello(&mut out, "x1");
        ping(&mut out, 1, 0, 42);
        ack(&mut out, 3);
        let mut buf = &out[..];
        let mut kinds = Vec::new();
        while let Some((payload, used)) = split_frame(buf, 1024).unwrap() {
            let m = tether_proto::decode_client(payload).unwrap();
            kinds.push(match m.msg.unwrap() {
                C::Hello(h) => {
                    assert_eq!(h.auth, Some(pb::hello::Auth::DevName("x1".into())));
                    "hello"
                }
                C::Input(i) => {
                    assert_eq!(i.seq, 1);
                    "input"
                }
                C::Ack(a) => {
                    assert_eq!(a.frames_received, 3);
                    "ack"
                }
                _ => "other",
            });
            buf = &buf[used..];
        }
        assert_eq!(kinds, ["hello", "input", "ack"]);
    }

    #[test]
    fn close_codes_have_short_names() {
        assert_eq!(close_name(13), "RATE_LIMITED");
        assert_eq!(close_name(10), "HANDSHAKE_TIMEOUT");
        assert_eq!(close_name(999), "CODE_999");
    }
}
