//! Server metrics, served by the admin endpoint in Prometheus / OpenMetrics text.
//!
//! Counters are atomics shared by every thread. Hot paths (I/O threads) count
//! into plain locals and add them once per event-loop iteration, so a frame
//! costs no atomic operation of its own.

use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, &'static str)>;

/// Writes more lines into a render.
type ExtraLines = Box<dyn Fn(&mut String) + Send + Sync>;

pub struct Metrics {
    registry: Registry,
    /// Lines of a part that keeps its own counters (cluster mode), written
    /// at each render.
    extra: std::sync::OnceLock<ExtraLines>,
    /// Open game connections (any phase).
    pub connections: Gauge,
    /// Sessions by state: active (a connection attached) and zombie.
    pub sessions: Family<Labels, Gauge>,
    pub frames_in: Counter,
    pub frames_out: Counter,
    pub bytes_in: Counter,
    pub bytes_out: Counter,
    /// Gathering writes issued (frames_out / writes = frames per syscall).
    pub writes: Counter,
    pub accepted: Counter,
    /// WebSocket upgrades completed (browser connections).
    pub ws_upgrades: Counter,
    /// Connections refused or closed by the server, by reason.
    pub closed_by_server: Family<Labels, Counter>,
    pub logins: Counter,
    pub logouts: Counter,
    /// Successful resumes, by mode (replay, snapshot).
    pub resumes: Family<Labels, Counter>,
    /// Refused resumes, by reason.
    pub resumes_refused: Family<Labels, Counter>,
    pub replayed_frames: Counter,
    pub takeovers: Counter,
    pub zombie_expiries: Counter,
    pub duplicate_inputs: Counter,
    /// Duration of a world tick (monster AI, timers), seconds.
    pub tick_seconds: Histogram,
    /// 1 while storage is unreachable (writes held and retried), else 0.
    pub storage_degraded: Gauge,
    /// Logins and resumes waiting to be sent to storage (held during an
    /// upgrade in place, or storage's queue full), all shards.
    pub loads_deferred: Gauge,
    /// Connections closed at accept by the guard, by reason.
    pub refused_connections: Family<Labels, Counter>,
    /// Hello / Resume refused before reaching a shard, by reason.
    pub logins_refused: Family<Labels, Counter>,
    /// Misbehaviour counted against a source address, by kind.
    pub strikes: Family<Labels, Counter>,
    pub bans: Counter,
    /// Addresses banned now.
    pub banned_ips: Gauge,
    /// Banned addresses whose SYNs the kernel drops now.
    pub kernel_filtered_ips: Gauge,
    /// Shards in protect mode now (0 normally).
    pub protect_mode: Gauge,
    /// Protect mode entered / left, by direction (`to="on"|"off"`).
    pub protect_transitions: Family<Labels, Counter>,
    /// Client messages dropped over their connection's allowance, by reason.
    pub inputs_dropped: Family<Labels, Counter>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            extra: std::sync::OnceLock::new(),
            connections: Gauge::default(),
            sessions: Family::default(),
            frames_in: Counter::default(),
            frames_out: Counter::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            writes: Counter::default(),
            accepted: Counter::default(),
            ws_upgrades: Counter::default(),
            closed_by_server: Family::default(),
            logins: Counter::default(),
            logouts: Counter::default(),
            resumes: Family::default(),
            resumes_refused: Family::default(),
            replayed_frames: Counter::default(),
            takeovers: Counter::default(),
            zombie_expiries: Counter::default(),
            duplicate_inputs: Counter::default(),
            tick_seconds: Histogram::new([
                0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1,
            ]),
            storage_degraded: Gauge::default(),
            loads_deferred: Gauge::default(),
            refused_connections: Family::default(),
            logins_refused: Family::default(),
            strikes: Family::default(),
            bans: Counter::default(),
            banned_ips: Gauge::default(),
            kernel_filtered_ips: Gauge::default(),
            protect_mode: Gauge::default(),
            protect_transitions: Family::default(),
            inputs_dropped: Family::default(),
            registry: Registry::default(),
        };
        macro_rules! reg {
            ($name:literal, $help:literal, $field:ident) => {
                registry.register($name, $help, m.$field.clone());
            };
        }
        reg!("tether_connections", "Open game connections", connections);
        reg!(
            "tether_sessions",
            "Sessions by state (active, zombie)",
            sessions
        );
        reg!("tether_frames_in", "Client frames decoded", frames_in);
        reg!(
            "tether_frames_out",
            "Frames delivered to clients",
            frames_out
        );
        reg!("tether_bytes_in", "Bytes read from clients", bytes_in);
        reg!("tether_bytes_out", "Bytes written to clients", bytes_out);
        reg!("tether_writes", "Gathering write syscalls", writes);
        reg!("tether_accepted", "Connections accepted", accepted);
        reg!(
            "tether_websocket_upgrades",
            "WebSocket upgrades completed on ws_listen",
            ws_upgrades
        );
        reg!(
            "tether_closed_by_server",
            "Connections the server closed, by reason",
            closed_by_server
        );
        reg!("tether_logins", "Successful logins", logins);
        reg!(
            "tether_logouts",
            "Sessions ended (logout or expiry)",
            logouts
        );
        reg!("tether_resumes", "Successful resumes by mode", resumes);
        reg!(
            "tether_resumes_refused",
            "Refused resumes by reason",
            resumes_refused
        );
        reg!(
            "tether_replayed_frames",
            "Frames re-sent by resumes",
            replayed_frames
        );
        reg!(
            "tether_takeovers",
            "Logins that took over an existing session",
            takeovers
        );
        reg!(
            "tether_zombie_expiries",
            "Zombie sessions logged out at the end of their grace",
            zombie_expiries
        );
        reg!(
            "tether_duplicate_inputs",
            "Re-sent inputs dropped as already applied",
            duplicate_inputs
        );
        reg!(
            "tether_storage_degraded",
            "1 while storage is unreachable and writes are held",
            storage_degraded
        );
        reg!(
            "tether_loads_deferred",
            "Logins and resumes waiting to be sent to storage (upgrade in place, or its queue full)",
            loads_deferred
        );
        reg!(
            "tether_refused_connections",
            "Connections closed at accept by the guard, by reason",
            refused_connections
        );
        reg!(
            "tether_logins_refused",
            "Hello / Resume refused by rate limits or protect mode, by reason",
            logins_refused
        );
        reg!(
            "tether_strikes",
            "Misbehaviour counted against a source address, by kind",
            strikes
        );
        reg!("tether_bans", "Source addresses banned", bans);
        reg!(
            "tether_banned_ips",
            "Source addresses banned now",
            banned_ips
        );
        reg!(
            "tether_kernel_filtered_ips",
            "Banned source addresses whose SYNs the kernel drops now",
            kernel_filtered_ips
        );
        reg!(
            "tether_protect_mode",
            "Shards in protect mode (new logins refused, zombie timers frozen)",
            protect_mode
        );
        reg!(
            "tether_protect_transitions",
            "Protect mode entered (to=on) or left (to=off)",
            protect_transitions
        );
        reg!(
            "tether_inputs_dropped",
            "Client messages dropped over their connection's allowance",
            inputs_dropped
        );
        reg!(
            "tether_world_tick_seconds",
            "World tick duration",
            tick_seconds
        );
        // The series dashboards and alerts use exist from the start, at 0,
        // so that a rate over them is 0 rather than absent.
        for state in ["active", "zombie"] {
            let _ = m.sessions.get_or_create(&labels(&[("state", state)]));
        }
        for mode in ["replay", "snapshot", "restored"] {
            let _ = m.resumes.get_or_create(&labels(&[("mode", mode)]));
        }
        for reason in ["rate_ip", "rate_global", "protect", "drain"] {
            let _ = m
                .logins_refused
                .get_or_create(&labels(&[("reason", reason)]));
        }
        for to in ["on", "off"] {
            let _ = m.protect_transitions.get_or_create(&labels(&[("to", to)]));
        }
        Metrics { registry, ..m }
    }

    /// Adds lines to every render (once; later calls are ignored).
    pub fn set_extra(&self, f: impl Fn(&mut String) + Send + Sync + 'static) {
        let _ = self.extra.set(Box::new(f));
    }

    /// Moves `tether_sessions{state}` (`"active"` or `"zombie"`) by `delta`.
    pub fn add_sessions(&self, state: &'static str, delta: i64) {
        self.sessions
            .get_or_create(&labels(&[("state", state)]))
            .inc_by(delta);
    }

    /// The whole exposition, process metrics included.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        encode_registry(&mut out, &self.registry).expect("writing to a String");
        let p = ProcessStats::read();
        out.push_str(&format!(
            "# HELP process_cpu_seconds_total User and system CPU time of the server.\n\
             # TYPE process_cpu_seconds_total counter\n\
             process_cpu_seconds_total {:.3}\n\
             # HELP process_resident_memory_bytes Resident memory of the server.\n\
             # TYPE process_resident_memory_bytes gauge\n\
             process_resident_memory_bytes {}\n\
             # HELP process_open_fds Open file descriptors of the server.\n\
             # TYPE process_open_fds gauge\n\
             process_open_fds {}\n",
            p.cpu_seconds, p.rss_bytes, p.open_fds
        ));
        if let Some(extra) = self.extra.get() {
            extra(&mut out);
        }
        encode_eof(&mut out).expect("writing to a String");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Resident memory of this process in bytes, from /proc (0 if unreadable).
/// Cheaper than [`ProcessStats::read`]: one small file.
pub fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| vm_rss_kib(&s))
        .map_or(0, |kib| kib * 1024)
}

/// The `VmRSS:` line of /proc/self/status, in KiB.
fn vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Clock ticks per second of the CPU times in /proc/PID/stat: the kernel
/// reports them in USER_HZ, which is 100 on every architecture Linux
/// exports to user space (the value `sysconf(_SC_CLK_TCK)` returns).
const USER_HZ: f64 = 100.0;

/// CPU time, resident memory and descriptors of this process, from /proc.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub rss_bytes: u64,
    pub open_fds: u64,
}

impl ProcessStats {
    pub fn read() -> ProcessStats {
        let mut s = ProcessStats::default();
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the parenthesised command name; utime and stime are
            // the 14th and 15th fields of the whole line.
            if let Some(rest) = stat.rsplit(')').next() {
                let f: Vec<&str> = rest.split_whitespace().collect();
                if f.len() > 13 {
                    let ut: f64 = f[11].parse().unwrap_or(0.0);
                    let st: f64 = f[12].parse().unwrap_or(0.0);
                    s.cpu_seconds = (ut + st) / USER_HZ;
                }
            }
        }
        s.rss_bytes = rss_bytes();
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            s.open_fds = dir.count() as u64;
        }
        s
    }
}

pub fn labels(pairs: &[(&'static str, &'static str)]) -> Labels {
    pairs.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_comes_from_the_vmrss_line() {
        let status = "Name:\ttether\nVmPeak:\t  9000 kB\nVmRSS:\t    1234 kB\nThreads:\t4\n";
        assert_eq!(vm_rss_kib(status), Some(1234));
        assert_eq!(vm_rss_kib("Name:\tx\n"), None);
        assert!(rss_bytes() > 0, "this process has resident memory");
        assert!(ProcessStats::read().open_fds > 0);
    }
}
