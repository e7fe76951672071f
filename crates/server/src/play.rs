//! What a plain `GET` on the WebSocket listener (`ws_listen`) answers: the
//! browser demo, a top-down view of the world on the TypeScript client
//! (`play/tether-client.js` is `clients/ts` bundled by `npm run bundle`;
//! CI checks it is current). Compiled in: nothing to deploy.

use bytes::Bytes;

use tether_proto::ws::http_response_with;

const INDEX_HTML: &[u8] = include_bytes!("../play/index.html");
const PLAY_JS: &[u8] = include_bytes!("../play/play.js");
const PLAY_CSS: &[u8] = include_bytes!("../play/play.css");
const CLIENT_JS: &[u8] = include_bytes!("../play/tether-client.js");

/// The page's own script and style; WebSockets to any server (`?server=`).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
                   connect-src 'self' ws: wss:; img-src 'self'; base-uri 'none'; \
                   form-action 'none'; frame-ancestors 'none'";

/// The response to a plain GET of `path` (the connection closes after it).
pub fn page(path: &str) -> Bytes {
    let path = path.split('?').next().unwrap_or("/");
    let (content_type, body) = match path {
        "/" | "/index.html" => ("text/html; charset=utf-8", INDEX_HTML),
        "/play.js" => ("text/javascript; charset=utf-8", PLAY_JS),
        "/play.css" => ("text/css; charset=utf-8", PLAY_CSS),
        "/tether-client.js" => ("text/javascript; charset=utf-8", CLIENT_JS),
        _ => {
            return http_response_with(
                "404 Not Found",
                "text/plain; charset=utf-8",
                &[],
                b"not found\n",
            )
        }
    };
    http_response_with(
        "200 OK",
        content_type,
        &[("Content-Security-Policy", CSP)],
        body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_is_served_and_loads_only_its_own_files() {
        let index = page("/?name=x");
        let text = std::str::from_utf8(&index).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Security-Policy: "));
        assert!(text.contains("play.js") && text.contains("play.css"));
        assert!(!text.contains("http://") && !text.contains("https://"));
        assert!(std::str::from_utf8(&page("/nope"))
            .unwrap()
            .starts_with("HTTP/1.1 404"));
        let js = page("/play.js");
        assert!(std::str::from_utf8(&js)
            .unwrap()
            .contains("./tether-client.js"));
    }
}
