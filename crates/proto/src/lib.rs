//! Tether's wire protocol.
//!
//! Every message is defined once, in `proto/engine.proto` (the session layer
//! every game shares) and `proto/tether.proto` (the MMO reference game); the
//! Rust types in [`pb`] are generated from them at build time. This crate adds the frame codec:
//! how messages are cut out of a byte stream and put back into one.
//!
//! # Layout
//!
//! - [`pb`]: the generated messages (`ClientMessage`, `ServerMessage`, ...).
//! - [`codec`]: framing (`[u16 LE length][protobuf payload]`), encode and a
//!   decoder that never panics and never allocates past the frame cap.
//! - [`ws`]: the same byte stream carried over WebSocket (RFC 6455), sans
//!   IO, for both ends: the server's upgrade and decoder, the client's
//!   request and masked frames.
//!
//! # Data flow
//!
//! ```text
//!  socket bytes --> FrameSplitter::next_frame --> decode_client --> ClientMessage
//!  ServerMessage --> encode_frame --> Bytes (shared by every recipient) --> socket
//! ```
#![forbid(unsafe_code)]

pub mod codec;
pub mod ws;

/// Generated protobuf messages (package `tether.v1`).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/tether.v1.rs"));
}

pub use codec::{
    decode_client, decode_envelope, decode_server, encode_frame, encode_frame_into,
    encode_input_frame_into, split_frame, DecodeError, FRAME_HEADER_LEN, MAX_PAYLOAD_LEN,
};

/// The protocol version this crate speaks (`Hello.protocol_version`).
pub const PROTOCOL_VERSION: u32 = 1;

/// Whether a server message is a *counted* frame: numbered per session,
/// acknowledged by the client and replayed after a resume. Control frames
/// (`Welcome`, `Resumed`, `Close`) are not counted.
pub fn is_counted(msg: &pb::ServerMessage) -> bool {
    use pb::server_message::Msg;
    !matches!(
        msg.msg,
        None | Some(Msg::Welcome(_)) | Some(Msg::Resumed(_)) | Some(Msg::Close(_))
    )
}

impl pb::Welcome {
    /// The MMO's welcome information, carried in `game` (an unreadable or
    /// missing one reads as the defaults).
    pub fn world_info(&self) -> pb::WorldInfo {
        use prost::Message;
        pb::WorldInfo::decode(&self.game[..]).unwrap_or_default()
    }
}
