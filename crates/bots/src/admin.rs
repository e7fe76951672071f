//! Reading the server's admin `/metrics`: one HTTP/1.1 GET over a plain
//! `TcpStream`, and a parser for the Prometheus / OpenMetrics text format
//! that keeps only the samples the summary needs.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A metrics page larger than this is refused: the server's is a few KiB.
const MAX_RESPONSE: usize = 4 * 1024 * 1024;

/// How long one scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);

/// The server figures the summary uses, at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ServerSample {
    pub frames_in: f64,
    pub frames_out: f64,
    pub bytes_in: f64,
    pub bytes_out: f64,
    pub cpu_seconds: f64,
    pub rss_bytes: f64,
    pub open_fds: f64,
    pub connections: f64,
    pub sessions_active: f64,
    pub sessions_zombie: f64,
}

impl ServerSample {
    pub fn from_metrics(m: &Metrics) -> ServerSample {
        let get = |k: &str| m.get(k).unwrap_or(0.0);
        ServerSample {
            frames_in: get("tether_frames_in_total"),
            frames_out: get("tether_frames_out_total"),
            bytes_in: get("tether_bytes_in_total"),
            bytes_out: get("tether_bytes_out_total"),
            cpu_seconds: get("process_cpu_seconds_total"),
            rss_bytes: get("process_resident_memory_bytes"),
            open_fds: get("process_open_fds"),
            connections: get("tether_connections"),
            sessions_active: get("tether_sessions{state=\"active\"}"),
            sessions_zombie: get("tether_sessions{state=\"zombie\"}"),
        }
    }
}

/// The admin token every request carries (`--admin-token`), once set.
static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Sets the admin token for every later request (once per process).
pub fn set_token(token: String) {
    let _ = TOKEN.set(token);
}

/// Scrapes `GET /metrics` from `addr`.
pub async fn scrape(addr: SocketAddr) -> anyhow::Result<ServerSample> {
    let body = tokio::time::timeout(SCRAPE_TIMEOUT, get(addr, "/metrics"))
        .await
        .context("scrape timed out")??;
    Ok(ServerSample::from_metrics(&Metrics::parse(&body)))
}

/// A minimal HTTP/1.1 GET: `Connection: close`, read to EOF, handle both
/// `Content-Length` and chunked bodies.
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect to admin {addr}"))?;
    let auth = TOKEN
        .get()
        .map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}\r\n");
    stream.write_all(req.as_bytes()).await?;
    let mut raw = Vec::with_capacity(16 * 1024);
    let mut chunk = [0u8; 8192];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        if raw.len() + n > MAX_RESPONSE {
            bail!("admin response over {MAX_RESPONSE} bytes");
        }
        raw.extend_from_slice(&chunk[..n]);
    }
    parse_response(&raw)
}

/// Splits an HTTP/1.1 response into status and body; the body as text.
pub fn parse_response(raw: &[u8]) -> anyhow::Result<String> {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!("no HTTP header end in the admin response");
    };
    let head = std::str::from_utf8(&raw[..split]).context("admin header is not UTF-8")?;
    let body = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let code = status.split_whitespace().nth(1).unwrap_or_default();
    if code != "200" {
        bail!("admin answered {status:?}");
    }
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    String::from_utf8(body).context("admin body is not UTF-8")
}

fn dechunk(mut body: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len());
    loop {
        let Some(eol) = body.windows(2).position(|w| w == b"\r\n") else {
            bail!("truncated chunk header");
        };
        let size_text = std::str::from_utf8(&body[..eol])?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).context("bad chunk size")?;
        body = &body[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&body[..size]);
        body = body.get(size + 2..).unwrap_or_default();
    }
}

/// Samples by series: `name` or `name{labels}` exactly as the server prints
/// them, so `tether_sessions{state="zombie"}` is one key.
#[derive(Debug, Default)]
pub struct Metrics {
    series: HashMap<String, f64>,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let mut series = HashMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // The series ends at the closing brace if there are labels (label
            // values may hold spaces), else at the first space.
            let key_end = match (line.find('{'), line.find(' ')) {
                (Some(b), Some(s)) if b < s => match line[b..].find('}') {
                    Some(close) => b + close + 1,
                    None => continue,
                },
                (_, Some(s)) => s,
                _ => continue,
            };
            let key = &line[..key_end];
            let mut rest = line[key_end..].split_whitespace();
            let Some(value) = rest.next().and_then(parse_value) else {
                continue;
            };
            series.insert(key.to_string(), value);
        }
        Metrics { series }
    }

    pub fn get(&self, key: &str) -> Option<f64> {
        self.series.get(key).copied()
    }
}

fn parse_value(v: &str) -> Option<f64> {
    match v {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => v.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAGE: &str = "# HELP tether_frames_in_total Frames decoded.\n\
        # TYPE tether_frames_in_total counter\n\
        tether_frames_in_total 12345\n\
        tether_frames_out_total 6.5e4\n\
        tether_sessions{state=\"active\"} 10\n\
        tether_sessions{state=\"zombie\"} 2\n\
        tether_connections 10\n\
        process_cpu_seconds_total 1.25\n\
        process_resident_memory_bytes 52428800\n\
        weird{label=\"a b\"} 7 1700000000\n\
        # EOF\n";

    #[test]
    fn parses_the_series_the_summary_needs() {
        let m = Metrics::parse(PAGE);
        let s = ServerSample::from_metrics(&m);
        assert_eq!(s.frames_in, 12345.0);
        assert_eq!(s.frames_out, 65000.0);
        assert_eq!(s.sessions_active, 10.0);
        assert_eq!(s.sessions_zombie, 2.0);
        assert_eq!(s.cpu_seconds, 1.25);
        assert_eq!(s.rss_bytes, 52428800.0);
        assert_eq!(s.open_fds, 0.0);
        assert_eq!(m.get("weird{label=\"a b\"}"), Some(7.0));
    }

    #[test]
    fn http_bodies_plain_and_chunked() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(parse_response(plain).unwrap(), "hello");
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), "hello world");
        assert!(parse_response(b"HTTP/1.1 404 Not Found\r\n\r\n").is_err());
        assert!(parse_response(b"garbage").is_err());
    }

    #[tokio::test]
    async fn scrapes_over_a_socket() {
        use tokio::net::TcpListener;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await.unwrap();
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{}",
                PAGE.len(),
                PAGE
            );
            s.write_all(resp.as_bytes()).await.unwrap();
        });
        let s = scrape(addr).await.unwrap();
        assert_eq!(s.frames_in, 12345.0);
    }
}
