//! This process's CPU time, from `/proc/self/stat`, and its file
//! descriptor limit.

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
    match rustix::param::clock_ticks_per_second() {
        0 => 100.0,
        hz => hz as f64,
    }
}

/// Raises the soft limit on open files to the hard limit (one socket per
/// player: 10,000 players need more than the common soft default of 1024).
/// Returns the soft limit now in force (`u64::MAX`: unlimited).
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    let mut current = lim.current;
    // `None` is unlimited.
    let below_hard = match (lim.current, lim.maximum) {
        (Some(soft), Some(hard)) => soft < hard,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if below_hard {
        let raised = Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            current = lim.maximum;
        }
    }
    Some(current.unwrap_or(u64::MAX))
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
