//! What a plain `GET` on the WebSocket listener (`ws_listen`) answers: the
//! pages a browser loads before it opens its WebSocket to the same address.

use bytes::Bytes;

use crate::ws::http_response;

const ROOT: &str = "Tether: this address is a WebSocket game endpoint \
                    (docs/PROTOCOL.md, \"WebSocket\").\n";

/// The response to a plain GET of `path` (the connection closes after it).
pub fn page(path: &str) -> Bytes {
    let path = path.split('?').next().unwrap_or("/");
    match path {
        "/" => http_response("200 OK", "text/plain; charset=utf-8", ROOT.as_bytes()),
        _ => http_response("404 Not Found", "text/plain; charset=utf-8", b"not found\n"),
    }
}
