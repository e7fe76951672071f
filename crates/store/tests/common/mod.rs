//! Waiting helpers shared by the writer's tests: they wait for events,
//! never for fixed times (except to show that something did not happen).
#![allow(dead_code)]

use std::time::{Duration, Instant};

use tether_store::{StoreEvent, StoreEvents};

/// Long enough for a loaded two-core machine.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// Waits for the first event that `pick` accepts; other events are dropped.
pub fn wait_for<T>(events: &StoreEvents, mut pick: impl FnMut(StoreEvent) -> Option<T>) -> T {
    let end = Instant::now() + PATIENCE;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        if let Some(e) = events.recv_timeout(left) {
            if let Some(t) = pick(e) {
                return t;
            }
        }
    }
    panic!("no matching event within {PATIENCE:?}");
}

/// Waits until `cond` holds.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}
