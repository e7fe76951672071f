//! This process's CPU time, from `/proc/self/stat`, and its file
//! descriptor limit. The only `unsafe` of the crate lives here: two libc
//! calls that take no pointers or only a pointer to a local.

/// User + system CPU seconds used by this process so far; `None` where
/// `/proc` is not available.
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let ticks = cpu_ticks(&stat)?;
    Some(ticks as f64 / clock_ticks_per_second())
}

/// utime + stime, in clock ticks, from the text of a `/proc/PID/stat`.
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    // Field 2 (comm) is in parentheses and may itself hold spaces or
    // parentheses: fields are counted after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After comm: state is field 3, so utime (14) and stime (15) are the
    // 12th and 13th here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value; it takes no
    // pointers and is safe to call from any thread.
    #[allow(unsafe_code)]
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// Raises the soft limit on open files to the hard limit (one socket per
/// player: 10,000 players need more than the common soft default of 1024).
/// Returns the soft limit now in force.
pub fn raise_fd_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, exclusively borrowed rlimit for the call.
    #[allow(unsafe_code)]
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if got != 0 {
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit that outlives the call.
        #[allow(unsafe_code)]
        let set = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) };
        if set == 0 {
            lim = raised;
        }
    }
    // `rlim_t` is not `u64` on every target.
    #[allow(clippy::unnecessary_cast)]
    Some(lim.rlim_cur as u64)
}

/// CPU use over a window in % of one core.
pub fn cpu_pct(start_s: f64, end_s: f64, window_s: f64) -> f64 {
    if window_s <= 0.0 {
        return 0.0;
    }
    ((end_s - start_s).max(0.0) / window_s) * 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utime_and_stime() {
        let stat = "1234 (tether bots) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 100 1000 200 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some(300));
        let tricky = "1 (a) b) (c) R 1 1 1 0 -1 0 0 0 0 0 7 8 0 0";
        assert_eq!(cpu_ticks(tricky), Some(15));
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn reads_own_cpu_time() {
        let t = cpu_seconds().expect("/proc is mounted on the machines Tether runs on");
        assert!(t >= 0.0);
    }

    #[test]
    fn fd_limit_is_readable() {
        assert!(raise_fd_limit().unwrap() > 0);
    }

    #[test]
    fn percentage_of_one_core() {
        assert_eq!(cpu_pct(10.0, 25.0, 30.0), 50.0);
        assert_eq!(cpu_pct(10.0, 9.0, 30.0), 0.0);
        assert_eq!(cpu_pct(0.0, 1.0, 0.0), 0.0);
    }
}
