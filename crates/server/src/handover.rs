//! Listener handover for upgrades in place (`tether --replace PID`).
//!
//! A running server offers its listening sockets on a Unix socket in its
//! data directory ([`socket_path`], mode 0600). The process that replaces it
//! connects, receives both listeners (game, admin) as file descriptors
//! (`SCM_RIGHTS`), starts on them with storage loads held, stops the old
//! process and releases the loads once it is gone:
//!
//! ```text
//!  new: check settings + store --> take listeners --> start (loads held)
//!       --> SIGTERM old --> old: stop accepting, save sessions, Close{SERVER_SHUTDOWN}, flush, exit
//!       --> release loads --> the resumes queued meanwhile restore from storage
//! ```
//!
//! Between the two, the listening sockets never close: a client that comes
//! back early is accepted by the new process and waits for its session to
//! be saved by the old one, instead of being refused and backing off. The
//! loads wait because the old process writes every session on its way out,
//! and a load before that could read an older copy.
//!
//! A running server of a build without the offer (or one whose socket
//! cannot be reached) is replaced the plain way: stopped first, then the
//! new process binds.

use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::net::TcpListener;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

/// The first bytes of an offer: the format, so that a newer build that
/// hands over more can refuse an older one clearly.
const MAGIC: &[u8] = b"tether-handover/1";

/// How often the offer thread looks at the shutdown flag.
const POLL: Duration = Duration::from_millis(50);

/// How long a taker waits for the offer.
const TAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a server with this data directory offers its listeners.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("handover.sock")
}

/// The listening sockets a server serves on.
#[derive(Debug)]
pub struct Listeners {
    pub game: TcpListener,
    pub admin: TcpListener,
    /// The WebSocket game listener (`ws_listen`), when there is one.
    pub ws: Option<TcpListener>,
}

/// Offers `listeners` at `path` until `shutdown` is set (then removes the
/// socket file). A stale file from an earlier process is replaced.
pub(crate) fn offer(
    path: PathBuf,
    listeners: Listeners,
    shutdown: Arc<AtomicBool>,
) -> io::Result<JoinHandle<()>> {
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let socket = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    socket.set_nonblocking(true)?;
    // The file is removed at the end only if it is still this one: the
    // process that replaced this one has put its own there by then.
    let ours = std::fs::metadata(&path)?.ino();
    std::thread::Builder::new()
        .name("tether-handover".into())
        .spawn(move || {
            while !shutdown.load(Ordering::Relaxed) {
                match socket.accept() {
                    Ok((stream, _)) => match send(&stream, &listeners) {
                        Ok(()) => tracing::warn!(
                            "listeners handed over to a replacing process; expect SIGTERM"
                        ),
                        Err(e) => tracing::warn!(error = %e, "listener handover failed"),
                    },
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(POLL),
                    Err(e) => {
                        tracing::warn!(error = %e, "handover socket failed; upgrades will stop this server first");
                        break;
                    }
                }
            }
            if std::fs::metadata(&path).is_ok_and(|m| m.ino() == ours) {
                let _ = std::fs::remove_file(&path);
            }
        })
}

fn send(stream: &UnixStream, listeners: &Listeners) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(TAKE_TIMEOUT))?;
    let mut fds = vec![listeners.game.as_fd(), listeners.admin.as_fd()];
    fds.extend(listeners.ws.as_ref().map(|l| l.as_fd()));
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("ancillary buffer too small"));
    }
    let sent = rustix::net::sendmsg(
        stream,
        &[IoSlice::new(MAGIC)],
        &mut control,
        SendFlags::empty(),
    )?;
    if sent != MAGIC.len() {
        return Err(io::Error::other("short write of the handover message"));
    }
    Ok(())
}

/// Why no listeners could be taken.
#[derive(Debug)]
pub enum TakeError {
    /// Nobody offers at that path: the running server predates the offer,
    /// or runs on another data directory.
    NotOffered(PathBuf),
    /// The socket is there but the exchange failed.
    Io { path: PathBuf, source: io::Error },
    /// The offer is not one this build understands.
    Invalid { path: PathBuf, why: String },
}

impl std::fmt::Display for TakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TakeError::NotOffered(path) => write!(f, "no handover offered at {}", path.display()),
            TakeError::Io { path, source } => {
                write!(f, "listener handover at {}: {source}", path.display())
            }
            TakeError::Invalid { path, why } => {
                write!(f, "listener handover at {}: {why}", path.display())
            }
        }
    }
}

impl std::error::Error for TakeError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TakeError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Takes the listeners offered at `path`.
pub fn take(path: &Path) -> Result<Listeners, TakeError> {
    let io_err = |source| TakeError::Io {
        path: path.to_path_buf(),
        source,
    };
    let invalid = |why: String| TakeError::Invalid {
        path: path.to_path_buf(),
        why,
    };
    let stream = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(TakeError::NotOffered(path.to_path_buf()))
        }
        Err(e) => return Err(io_err(e)),
    };
    stream
        .set_read_timeout(Some(TAKE_TIMEOUT))
        .map_err(io_err)?;
    let mut buf = [0u8; 64];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        &stream,
        &mut [IoSliceMut::new(&mut buf)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )
    .map_err(|e| io_err(e.into()))?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = msg {
            fds.extend(received);
        }
    }
    if &buf[..got.bytes] != MAGIC {
        return Err(invalid(format!(
            "unknown offer {:?} (expected {:?}): a newer or older build",
            String::from_utf8_lossy(&buf[..got.bytes]),
            String::from_utf8_lossy(MAGIC)
        )));
    }
    // Game, admin, and the WebSocket listener when the server has one.
    if !(2..=3).contains(&fds.len()) {
        return Err(invalid(format!(
            "{} descriptors, expected 2 or 3",
            fds.len()
        )));
    }
    let mut fds = fds.into_iter();
    let (game, admin, ws) = (fds.next(), fds.next(), fds.next());
    let listener = |fd: OwnedFd, what: &str| -> Result<TcpListener, TakeError> {
        if !rustix::net::sockopt::socket_acceptconn(&fd).map_err(|e| io_err(e.into()))? {
            return Err(invalid(format!(
                "the {what} descriptor is not a listening socket"
            )));
        }
        let l = TcpListener::from(fd);
        l.set_nonblocking(true).map_err(io_err)?;
        Ok(l)
    };
    let (Some(game), Some(admin)) = (game, admin) else {
        return Err(invalid("descriptors missing".into()));
    };
    Ok(Listeners {
        game: listener(game, "game")?,
        admin: listener(admin, "admin")?,
        ws: ws.map(|fd| listener(fd, "WebSocket")).transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system's temporary one.
    fn tempdir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tether-handover-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn listeners_cross_to_a_taker_and_still_accept() {
        let dir = tempdir("cross");
        let path = socket_path(&dir);
        let game = TcpListener::bind("127.0.0.1:0").unwrap();
        let admin = TcpListener::bind("127.0.0.1:0").unwrap();
        let (game_addr, admin_addr) = (game.local_addr().unwrap(), admin.local_addr().unwrap());
        let shutdown = Arc::new(AtomicBool::new(false));
        let ws = TcpListener::bind("127.0.0.1:0").unwrap();
        let ws_addr = ws.local_addr().unwrap();
        let listeners = Listeners {
            game,
            admin,
            ws: Some(ws),
        };
        let t = offer(path.clone(), listeners, shutdown.clone()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let taken = take(&path).unwrap();
        assert_eq!(taken.game.local_addr().unwrap(), game_addr);
        assert_eq!(taken.admin.local_addr().unwrap(), admin_addr);
        assert_eq!(taken.ws.unwrap().local_addr().unwrap(), ws_addr);
        // The taken descriptor is the same socket: a connection to the
        // address is accepted through it.
        let _c = std::net::TcpStream::connect(game_addr).unwrap();
        taken.game.set_nonblocking(false).unwrap();
        taken.game.accept().unwrap();

        shutdown.store(true, Ordering::Relaxed);
        t.join().unwrap();
        assert!(!path.exists(), "the offer removes its socket file");
        assert!(matches!(take(&path), Err(TakeError::NotOffered(_))));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_foreign_socket_is_refused() {
        let dir = tempdir("foreign");
        let path = socket_path(&dir);
        let l = UnixListener::bind(&path).unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            std::io::Write::write_all(&mut s, b"hello").unwrap();
        });
        let err = take(&path).unwrap_err();
        assert!(err.to_string().contains("unknown offer"), "{err}");
        t.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
