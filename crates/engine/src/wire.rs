//! The frames the engine writes itself: Welcome, Resumed, Close (control
//! frames, not counted) and InputAck (counted).

use bytes::Bytes;
use tether_proto::encode_frame;
use tether_proto::pb::{self, server_envelope::Msg};

fn envelope(msg: Msg) -> Bytes {
    encode_frame(&pb::ServerEnvelope { msg: Some(msg) })
}

/// A Close control frame: the last thing a connection is sent.
pub fn close_frame(code: pb::CloseCode, message: &str, retry_after_ms: u32) -> Bytes {
    envelope(Msg::Close(pb::Close {
        code: code as i32,
        message: message.to_string(),
        retry_after_ms,
        redirect: None,
    }))
}

/// A Close with `REDIRECT`: the client goes on at once at the server `to`
/// names.
pub(crate) fn redirect_frame(to: pb::Redirect, message: &str) -> Bytes {
    envelope(Msg::Close(pb::Close {
        code: pb::CloseCode::Redirect as i32,
        message: message.to_string(),
        retry_after_ms: 0,
        redirect: Some(to),
    }))
}

pub(crate) fn welcome_frame(welcome: pb::Welcome) -> Bytes {
    envelope(Msg::Welcome(welcome))
}

pub(crate) fn resumed_frame(resumed: pb::Resumed) -> Bytes {
    envelope(Msg::Resumed(resumed))
}

/// An operators' notice: one frame, encoded once for every session.
pub(crate) fn notice_frame(text: &str) -> Bytes {
    envelope(Msg::Notice(pb::Notice { text: text.into() }))
}

pub(crate) fn input_ack_frame(seq: u32) -> Bytes {
    envelope(Msg::InputAck(pb::InputAck { seq }))
}
