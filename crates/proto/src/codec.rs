//! Framing: `[u16 little-endian payload length][payload]`.
//!
//! Decoding is check-then-parse: [`split_frame`] looks at the header and only
//! hands out a payload once all of it is buffered, so nothing is allocated for
//! a frame that has not fully arrived, and nothing larger than the caller's cap
//! is ever accepted. The protobuf decoder allocates at most what the payload
//! holds (strings and repeated fields are bounded by its length).

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

use crate::pb::{ClientEnvelope, ClientMessage, ServerMessage};

/// Bytes in a frame header.
pub const FRAME_HEADER_LEN: usize = 2;

/// The largest payload the format can carry. Peers enforce smaller caps of
/// their own (the server's `max_frame_len`).
pub const MAX_PAYLOAD_LEN: usize = u16::MAX as usize;

/// Why a frame could not be decoded. Every variant means the peer broke the
/// protocol: close the connection (the server sends `Close` with the code from
/// [`DecodeError::close_code`] first).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// A header announced a zero-length payload.
    EmptyFrame,
    /// A header announced more than the receiver's cap.
    TooLarge { len: usize, max: usize },
    /// The payload is not a valid protobuf message of the expected type.
    Malformed(String),
    /// The payload decoded, but carries no message (empty `oneof`).
    MissingBody,
}

impl DecodeError {
    /// The close code a server sends for this error.
    pub fn close_code(&self) -> crate::pb::CloseCode {
        match self {
            DecodeError::TooLarge { .. } => crate::pb::CloseCode::FrameTooLarge,
            _ => crate::pb::CloseCode::ProtocolError,
        }
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::EmptyFrame => write!(f, "empty frame"),
            DecodeError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the cap of {max}")
            }
            DecodeError::Malformed(e) => write!(f, "malformed payload: {e}"),
            DecodeError::MissingBody => write!(f, "message has no body"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Looks for one whole frame at the start of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, `Ok(Some((payload, used)))`
/// when a frame is complete (`used` bytes of `buf` belong to it), and an error
/// when the header is invalid or announces more than `max_payload` bytes; the
/// error is reported as soon as the header is in, before the payload arrives.
pub fn split_frame(buf: &[u8], max_payload: usize) -> Result<Option<(&[u8], usize)>, DecodeError> {
    let Some(header) = buf.get(..FRAME_HEADER_LEN) else {
        return Ok(None);
    };
    let len = u16::from_le_bytes([header[0], header[1]]) as usize;
    if len == 0 {
        return Err(DecodeError::EmptyFrame);
    }
    if len > max_payload {
        return Err(DecodeError::TooLarge {
            len,
            max: max_payload,
        });
    }
    let end = FRAME_HEADER_LEN + len;
    Ok(buf.get(FRAME_HEADER_LEN..end).map(|payload| (payload, end)))
}

/// Decodes a client frame's payload.
pub fn decode_client(payload: &[u8]) -> Result<ClientMessage, DecodeError> {
    let msg = ClientMessage::decode(payload).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if msg.msg.is_none() {
        return Err(DecodeError::MissingBody);
    }
    Ok(msg)
}

/// Decodes what the engine reads of a client frame's payload: the session
/// messages whole, and of an `Input` only its sequence number and ack (the
/// game decodes the same payload with its own schema).
pub fn decode_envelope(payload: &[u8]) -> Result<ClientEnvelope, DecodeError> {
    let msg = ClientEnvelope::decode(payload).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if msg.msg.is_none() {
        return Err(DecodeError::MissingBody);
    }
    Ok(msg)
}

/// Decodes a server frame's payload.
pub fn decode_server(payload: &[u8]) -> Result<ServerMessage, DecodeError> {
    let msg = ServerMessage::decode(payload).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if msg.msg.is_none() {
        return Err(DecodeError::MissingBody);
    }
    Ok(msg)
}

/// Appends `msg` as one frame to `out`.
///
/// # Panics
///
/// If the encoded message is larger than [`MAX_PAYLOAD_LEN`]. Every message the
/// project builds is far below it (names, chat text and inventories are capped
/// where they are created), so this is a bug, not a runtime condition.
pub fn encode_frame_into<M: Message>(msg: &M, out: &mut BytesMut) {
    let len = msg.encoded_len();
    assert!(
        len <= MAX_PAYLOAD_LEN,
        "message of {len} bytes does not fit a frame"
    );
    out.reserve(FRAME_HEADER_LEN + len);
    out.put_u16_le(len as u16);
    msg.encode(out)
        .expect("reserved capacity covers the encoded length");
}

/// The key of `ClientMessage.input` (field 3, length-delimited) on the wire.
const INPUT_FIELD_KEY: u8 = (3 << 3) | 2;

/// Appends one client `Input` frame whose command is already encoded in a
/// game's own schema.
///
/// `cmd` is the game's `Input` message encoded with `seq` and `ack` left at
/// 0, so that it holds only the game's fields (3 and up, see
/// `proto/engine.proto`). The engine's fields are written in front of it;
/// a protobuf message is the concatenation of its fields, so the result
/// decodes as the game's `Input` with `seq` and `ack` set. This lets a
/// client that knows nothing of a game's schema number, keep and re-send
/// its inputs.
///
/// # Panics
///
/// If the frame would be larger than [`MAX_PAYLOAD_LEN`] (as
/// [`encode_frame_into`]); callers bound `cmd` far below it.
pub fn encode_input_frame_into(seq: u32, ack: u64, cmd: &[u8], out: &mut BytesMut) {
    let header = crate::pb::InputHeader { seq, ack };
    let input_len = header.encoded_len() + cmd.len();
    let len = 1 + prost::encoding::encoded_len_varint(input_len as u64) + input_len;
    assert!(
        len <= MAX_PAYLOAD_LEN,
        "input of {len} bytes does not fit a frame"
    );
    out.reserve(FRAME_HEADER_LEN + len);
    out.put_u16_le(len as u16);
    out.put_u8(INPUT_FIELD_KEY);
    prost::encoding::encode_varint(input_len as u64, out);
    header
        .encode(out)
        .expect("reserved capacity covers the encoded length");
    out.put_slice(cmd);
}

/// Encodes `msg` as one frame. The returned `Bytes` is cheap to clone, so one
/// encoded event is shared by every recipient.
pub fn encode_frame<M: Message>(msg: &M) -> Bytes {
    let mut out = BytesMut::with_capacity(FRAME_HEADER_LEN + msg.encoded_len());
    encode_frame_into(msg, &mut out);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{client_message, input, ClientMessage, Input, Move};
    use proptest::prelude::*;

    #[test]
    fn an_input_with_a_pre_encoded_command_decodes_as_the_typed_one() {
        // The command part alone: an Input with seq and ack at 0.
        let cmd = Input {
            seq: 0,
            ack: 0,
            cmd: Some(input::Cmd::Move(Move { x: 1.5, y: 2.5 })),
        }
        .encode_to_vec();
        for (seq, ack) in [(7, 42), (1, 0), (u32::MAX, u64::MAX)] {
            let mut out = BytesMut::new();
            encode_input_frame_into(seq, ack, &cmd, &mut out);
            let (payload, used) = split_frame(&out, MAX_PAYLOAD_LEN).unwrap().unwrap();
            assert_eq!(used, out.len());
            let mut typed = sample();
            if let Some(client_message::Msg::Input(i)) = &mut typed.msg {
                (i.seq, i.ack) = (seq, ack);
            }
            assert_eq!(decode_client(payload).unwrap(), typed);
            assert_eq!(payload, &typed.encode_to_vec()[..], "the same bytes");
        }
    }

    fn sample() -> ClientMessage {
        ClientMessage {
            msg: Some(client_message::Msg::Input(Input {
                seq: 7,
                ack: 42,
                cmd: Some(input::Cmd::Move(Move { x: 1.5, y: 2.5 })),
            })),
        }
    }

    #[test]
    fn round_trip() {
        let frame = encode_frame(&sample());
        let (payload, used) = split_frame(&frame, 1024).unwrap().unwrap();
        assert_eq!(used, frame.len());
        assert_eq!(decode_client(payload).unwrap(), sample());
    }

    #[test]
    fn partial_frames_wait_for_more() {
        let frame = encode_frame(&sample());
        for cut in 0..frame.len() {
            assert_eq!(
                split_frame(&frame[..cut], 1024).unwrap(),
                None,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn oversized_header_is_refused_before_the_payload_arrives() {
        let buf = [0xff, 0x00];
        assert_eq!(
            split_frame(&buf, 100),
            Err(DecodeError::TooLarge { len: 255, max: 100 })
        );
    }

    #[test]
    fn empty_frame_and_empty_message_are_errors() {
        assert_eq!(split_frame(&[0, 0], 100), Err(DecodeError::EmptyFrame));
        assert_eq!(decode_client(&[]), Err(DecodeError::MissingBody));
    }

    proptest! {
        /// Any bytes: the splitter and decoder return a value or an error, never
        /// panic, and never hand out a payload over the cap.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096), cap in 1usize..2048) {
            let mut rest: &[u8] = &bytes;
            while let Ok(Some((payload, used))) = split_frame(rest, cap) {
                prop_assert!(payload.len() <= cap);
                let _ = decode_client(payload);
                let _ = decode_server(payload);
                rest = &rest[used..];
            }
        }

        /// Valid frames split at arbitrary points still decode to the same messages.
        #[test]
        fn stream_of_frames_survives_any_chunking(seqs in proptest::collection::vec(1u32..1_000_000, 1..20), chunk in 1usize..64) {
            let mut stream = BytesMut::new();
            for &seq in &seqs {
                let msg = ClientMessage { msg: Some(client_message::Msg::Input(Input { seq, ack: 0, cmd: Some(input::Cmd::Ping(crate::pb::Ping { client_time: seq as u64 })) })) };
                encode_frame_into(&msg, &mut stream);
            }
            let mut buffered = Vec::new();
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                buffered.extend_from_slice(piece);
                while let Some((payload, used)) = split_frame(&buffered, 1024).unwrap() {
                    let m = decode_client(payload).unwrap();
                    if let Some(client_message::Msg::Input(i)) = m.msg { got.push(i.seq); }
                    buffered.drain(..used);
                }
            }
            prop_assert_eq!(got, seqs);
        }
    }
}
