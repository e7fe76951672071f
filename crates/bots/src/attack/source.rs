//! `--attack-source`: the local addresses the attackers bind before they
//! connect, so the server sees them come from other sources than the legit
//! players (who connect from the kernel's default, 127.0.0.1 on loopback).
//!
//! Syntax: a comma-separated list of addresses and IPv4 ranges,
//! `127.0.0.2`, `127.0.0.2-127.0.0.50`, `127.0.0.2,127.0.1.1-127.0.1.9`.
//! Every address of 127.0.0.0/8 is local on Linux without any setup.

use std::net::{IpAddr, Ipv4Addr};

/// Most addresses one list may expand to: a /16, far more than one bots
/// process can use (each needs open sockets to matter).
pub const MAX_SOURCES: usize = 65_536;

/// The attackers' source addresses, used in turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    addrs: Vec<IpAddr>,
}

impl Sources {
    /// Parses the `--attack-source` syntax (see the module docs).
    pub fn parse(text: &str) -> Result<Sources, String> {
        let mut addrs = Vec::new();
        for part in text.split(',').map(str::trim) {
            if part.is_empty() {
                return Err(format!("empty entry in {text:?}"));
            }
            match part.split_once('-') {
                None => addrs.push(one(part)?),
                Some((a, b)) => {
                    let (a, b) = (v4(a.trim())?, v4(b.trim())?);
                    let (a, b) = (u32::from(a), u32::from(b));
                    if a > b {
                        return Err(format!("range {part:?} runs backwards"));
                    }
                    let n = (b - a) as usize + 1;
                    if addrs.len() + n > MAX_SOURCES {
                        return Err(format!("more than {MAX_SOURCES} source addresses"));
                    }
                    addrs.extend((a..=b).map(|x| IpAddr::V4(Ipv4Addr::from(x))));
                }
            }
            if addrs.len() > MAX_SOURCES {
                return Err(format!("more than {MAX_SOURCES} source addresses"));
            }
        }
        let v4s = addrs.iter().filter(|a| a.is_ipv4()).count();
        if v4s != 0 && v4s != addrs.len() {
            return Err("mixes IPv4 and IPv6 addresses".into());
        }
        Ok(Sources { addrs })
    }

    /// The address for the `i`-th connection: round robin.
    pub fn pick(&self, i: u64) -> IpAddr {
        self.addrs[(i % self.addrs.len() as u64) as usize]
    }

    pub fn len(&self) -> usize {
        self.addrs.len()
    }

    pub fn is_ipv4(&self) -> bool {
        self.addrs[0].is_ipv4()
    }

    /// Whether `ip` is one of them.
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.addrs.contains(&ip)
    }
}

fn one(s: &str) -> Result<IpAddr, String> {
    let ip: IpAddr = s
        .parse()
        .map_err(|_| format!("{s:?} is not an IP address"))?;
    if ip.is_unspecified() || ip.is_multicast() {
        return Err(format!("{s} cannot be a source address"));
    }
    Ok(ip)
}

fn v4(s: &str) -> Result<Ipv4Addr, String> {
    match one(s)? {
        IpAddr::V4(ip) => Ok(ip),
        IpAddr::V6(_) => Err(format!("ranges are IPv4 only: {s}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_address() {
        let s = Sources::parse("127.0.0.2").unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s.pick(0), ip("127.0.0.2"));
        assert_eq!(s.pick(7), ip("127.0.0.2"));
        assert!(s.is_ipv4());
    }

    #[test]
    fn ranges_and_lists_expand_in_order() {
        let s = Sources::parse("127.0.0.2-127.0.0.4, 127.0.1.9").unwrap();
        assert_eq!(s.len(), 4);
        let picked: Vec<_> = (0..5).map(|i| s.pick(i)).collect();
        assert_eq!(
            picked,
            [
                ip("127.0.0.2"),
                ip("127.0.0.3"),
                ip("127.0.0.4"),
                ip("127.0.1.9"),
                ip("127.0.0.2")
            ]
        );
        assert!(s.contains(ip("127.0.0.3")));
        assert!(!s.contains(ip("127.0.0.1")));
        // Ranges cross octet boundaries.
        assert_eq!(Sources::parse("127.0.0.255-127.0.1.1").unwrap().len(), 3);
        assert_eq!(Sources::parse("::1").unwrap().pick(0), ip("::1"));
    }

    #[test]
    fn bad_lists_are_refused() {
        for bad in [
            "",
            "127.0.0.2,",
            "localhost",
            "127.0.0.9-127.0.0.2",
            "0.0.0.0",
            "::1-::2",
            "127.0.0.2,::1",
            "127.0.0.0-127.1.0.0",
        ] {
            assert!(Sources::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Sources::parse("127.0.0.0-127.0.255.255").unwrap().len(),
            MAX_SOURCES
        );
    }
}
