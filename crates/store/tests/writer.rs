//! The writer thread end to end, against the fake backend: what a shard
//! sees through its handle and its events channel.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
mod common;

use common::{wait_for, wait_until, PATIENCE};
use tether_engine::{Record, SessionMark, Tx};
use tether_store::fake::{FakeBackend, FakeControl};
use tether_store::{
    Health, StoreError, StoreEvent, StoreEvents, StoreHandle, StoreWriter, SubmitError,
    WriterConfig,
};

/// A record whose bytes are the text `data`.
fn rec(account: &str, data: &str) -> Record {
    Record::new(account, 3, Bytes::from(data.to_string()))
}

/// `rec(account, data)` in session `session_id`, inputs up to `last`
/// applied.
fn in_session(account: &str, data: &str, session_id: u64, last: u32) -> Record {
    Record {
        session: Some(SessionMark {
            session_id,
            restart_token: [session_id as u8; 16],
            last_input: last,
        }),
        ..rec(account, data)
    }
}

/// A transaction leaving `account`'s record as `data`.
fn tx(tx_id: u64, account: &str, data: &str) -> Tx {
    Tx {
        tx_id,
        record: rec(account, data),
        entry: Bytes::from(format!("loot {tx_id}")),
    }
}

/// The stored bytes of `account`, as text.
fn stored(ctl: &FakeControl, account: &str) -> Option<String> {
    ctl.record(account)
        .map(|r| String::from_utf8(r.data.to_vec()).unwrap())
}

/// Quick retries, a long flush interval (tests of the interval say so).
fn cfg() -> WriterConfig {
    WriterConfig {
        flush_interval: Duration::from_secs(60),
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        load_timeout: Duration::from_secs(5),
        ..WriterConfig::default()
    }
}

fn start(cfg: WriterConfig) -> (StoreWriter, FakeControl, StoreHandle, StoreEvents) {
    let (db, ctl) = FakeBackend::new();
    let writer = StoreWriter::start(db, cfg).unwrap();
    let (handle, events) = writer.client(None);
    (writer, ctl, handle, events)
}

fn loaded(events: &StoreEvents) -> (String, u64, Result<Option<Record>, StoreError>) {
    wait_for(events, |e| match e {
        StoreEvent::Loaded {
            account,
            tag,
            result,
        } => Some((account, tag, result)),
        _ => None,
    })
}

fn session_loaded(events: &StoreEvents) -> (u64, u64, Result<Option<Record>, StoreError>) {
    wait_for(events, |e| match e {
        StoreEvent::SessionLoaded {
            session_id,
            tag,
            result,
        } => Some((session_id, tag, result)),
        _ => None,
    })
}

fn committed(events: &StoreEvents) -> Tx {
    wait_for(events, |e| match e {
        StoreEvent::Committed(tx) => Some(tx),
        _ => None,
    })
}

fn health(events: &StoreEvents, want: Health) {
    wait_for(events, |e| (e == StoreEvent::Health(want)).then_some(()));
}

#[test]
fn load_save_and_commit_round_trip() {
    let (writer, ctl, h, ev) = start(cfg());
    h.load("ann", 42).unwrap();
    assert_eq!(loaded(&ev), ("ann".into(), 42, Ok(None)));

    h.save_now(rec("ann", "new"));
    wait_until("the logout save", || ctl.record("ann").is_some());
    assert_eq!(ctl.record("ann"), Some(rec("ann", "new")), "stored whole");

    h.commit(tx(1, "ann", "after loot 1")).unwrap();
    let t = committed(&ev);
    assert_eq!(t, tx(1, "ann", "after loot 1"), "given back unchanged");
    assert_eq!(
        ctl.ledger_entries(),
        vec![(1, "ann".to_string(), Bytes::from_static(b"loot 1"))],
        "committed before it was acknowledged"
    );
    assert_eq!(stored(&ctl, "ann").unwrap(), "after loot 1");

    ctl.insert(rec("bob", "5"));
    h.load("bob", 1).unwrap();
    assert_eq!(loaded(&ev).2, Ok(Some(rec("bob", "5"))));
    let report = writer.shutdown(PATIENCE);
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(report.stats.tx_committed, 1);
}

#[test]
fn dirty_records_wait_for_the_interval_then_are_written() {
    let (writer, ctl, h, _ev) = start(WriterConfig {
        flush_interval: Duration::from_millis(300),
        ..cfg()
    });
    let t = Instant::now();
    h.mark_dirty(rec("ann", "first"));
    h.mark_dirty_all((0..50).map(|i| rec("ann", &i.to_string())));
    wait_until("the flush", || ctl.record("ann").is_some());
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "written after {:?}, before the interval",
        t.elapsed()
    );
    assert_eq!(stored(&ctl, "ann").unwrap(), "49", "latest wins");
    assert_eq!(ctl.calls().len(), 1, "one batch for fifty updates");
    writer.shutdown(PATIENCE);
}

#[test]
fn an_older_record_never_overwrites_a_commit_of_the_same_account() {
    let (writer, ctl, h, ev) = start(cfg()); // 60 s interval
                                             // Queued before the transactions: written after them (at the next
                                             // flush, here the shutdown), they would take the transactions back.
    h.mark_dirty(rec("ann", "ann before"));
    h.save_now(rec("bob", "bob before"));
    h.commit(tx(1, "ann", "ann after tx")).unwrap();
    h.commit(tx(2, "bob", "bob after tx")).unwrap();
    committed(&ev);
    committed(&ev);
    let report = writer.shutdown(PATIENCE);
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(stored(&ctl, "ann").unwrap(), "ann after tx");
    assert_eq!(stored(&ctl, "bob").unwrap(), "bob after tx");
    assert_eq!(ctl.ledger(), vec![1, 2]);

    // Queued after the transaction: it includes it, and wins.
    let (writer, ctl, h, ev) = start(cfg());
    h.commit(tx(3, "ann", "ann after tx 3")).unwrap();
    h.mark_dirty(rec("ann", "ann later"));
    committed(&ev);
    let report = writer.shutdown(PATIENCE);
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(stored(&ctl, "ann").unwrap(), "ann later");
}

#[test]
fn an_older_record_from_another_shard_never_overwrites_a_commit() {
    let (db, ctl) = FakeBackend::new();
    let writer = StoreWriter::start(db, cfg()).unwrap();
    let (h0, _ev0) = writer.client(None);
    let (h1, ev1) = writer.client(None);
    h0.mark_dirty(rec("ann", "stale, from shard 0"));
    h1.commit(tx(1, "ann", "after tx")).unwrap();
    committed(&ev1);
    let report = writer.shutdown(PATIENCE);
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(stored(&ctl, "ann").unwrap(), "after tx");
}

#[test]
fn transactions_are_acknowledged_only_after_the_database_returns() {
    let (writer, ctl, h, ev) = start(cfg());
    ctl.set_down(true);
    h.commit(tx(1, "ann", "10")).unwrap();
    h.commit(tx(2, "ann", "20")).unwrap();
    health(&ev, Health::Degraded);
    assert_eq!(h.health(), Health::Degraded);
    assert!(h.stats().degraded);
    // Retried while down, never acknowledged.
    std::thread::sleep(Duration::from_millis(200));
    assert!(ev
        .try_iter()
        .all(|e| !matches!(e, StoreEvent::Committed(_))));
    assert!(h.stats().failures >= 2, "retried: {:?}", h.stats());
    assert!(ctl.ledger().is_empty());

    ctl.set_down(false);
    let first = committed(&ev);
    let second = committed(&ev);
    assert_eq!((first.tx_id, second.tx_id), (1, 2), "in order");
    assert_eq!(ctl.ledger(), vec![1, 2]);
    assert_eq!(stored(&ctl, "ann").unwrap(), "20");
    wait_until("healthy", || h.health() == Health::Healthy);
    writer.shutdown(PATIENCE);
}

#[test]
fn a_rejected_transaction_comes_back_rejected() {
    let (writer, ctl, h, ev) = start(cfg());
    ctl.reject_account("bad");
    h.commit(tx(1, "bad", "x")).unwrap();
    let (t, error) = wait_for(&ev, |e| match e {
        StoreEvent::Rejected { tx, error } => Some((tx, error)),
        _ => None,
    });
    assert_eq!(t.tx_id, 1);
    assert!(!error.is_retryable());
    assert!(ctl.ledger().is_empty());
    assert_eq!(h.stats().rejected, 1);
    assert_eq!(h.health(), Health::Healthy);
    writer.shutdown(PATIENCE);
}

#[test]
fn queue_caps_refuse_with_store_full_and_movement_is_never_refused() {
    let (writer, ctl, h, ev) = start(WriterConfig {
        max_pending_tx: 2,
        max_pending_loads: 1,
        max_pending_saves: 1,
        ..cfg()
    });
    ctl.set_down(true);
    h.commit(tx(1, "ann", "1")).unwrap();
    h.commit(tx(2, "ann", "2")).unwrap();
    assert!(!h.accepts_value());
    match h.commit(tx(3, "ann", "3")) {
        Err(SubmitError::StoreFull(t)) => assert_eq!(t.tx_id, 3, "given back"),
        other => panic!("expected StoreFull, got {other:?}"),
    }

    h.load("x", 1).unwrap();
    assert_eq!(h.load("y", 2), Err(SubmitError::StoreFull(())));
    assert!(!h.accepts_logins());

    // Movement is served whatever the queues hold.
    for i in 0..1_000 {
        h.mark_dirty(rec(&format!("p{}", i % 10), &i.to_string()));
    }
    assert_eq!(h.stats().refused, 2);

    ctl.set_down(false);
    assert_eq!(loaded(&ev).0, "x", "the waiting load is served");
    wait_until("everything written", || {
        let s = h.stats();
        s.tx_pending == 0 && s.loads_pending == 0
    });
    assert!(h.accepts_value() && h.accepts_logins());
    h.commit(tx(3, "ann", "3")).unwrap();
    writer.shutdown(PATIENCE);
}

#[test]
fn unsaved_logouts_past_their_cap_refuse_logins() {
    let (writer, ctl, h, _ev) = start(WriterConfig {
        max_pending_saves: 2,
        ..cfg()
    });
    ctl.set_down(true);
    h.save_now(rec("a", "1"));
    h.save_now(rec("b", "1"));
    wait_until("both held", || h.stats().saves_pending == 2);
    assert!(!h.accepts_logins());
    assert_eq!(h.load("c", 0), Err(SubmitError::StoreFull(())));
    ctl.set_down(false);
    wait_until("written", || h.stats().saves_pending == 0);
    assert!(h.accepts_logins());
    writer.shutdown(PATIENCE);
}

#[test]
fn each_shard_gets_its_own_answers_and_everyone_gets_health() {
    let (db, ctl) = FakeBackend::new();
    let writer = StoreWriter::start(db, cfg()).unwrap();
    let wakes = [Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0))];
    let w0 = wakes[0].clone();
    let w1 = wakes[1].clone();
    let (h0, ev0) = writer.client(Some(Box::new(move || {
        w0.fetch_add(1, Ordering::SeqCst);
    })));
    let (h1, ev1) = writer.client(Some(Box::new(move || {
        w1.fetch_add(1, Ordering::SeqCst);
    })));
    h0.commit(tx(1, "ann", "1")).unwrap();
    h1.commit(tx((1 << 56) | 1, "bob", "1")).unwrap();
    assert_eq!(committed(&ev0).account(), "ann");
    assert_eq!(committed(&ev1).account(), "bob");
    assert!(ev0.try_recv().is_none() && ev1.try_recv().is_none());
    // The wake comes right after the events are pushed.
    wait_until("both shards woken", || {
        wakes.iter().all(|w| w.load(Ordering::SeqCst) >= 1)
    });

    ctl.set_down(true);
    h0.save_now(rec("ann", "1"));
    health(&ev0, Health::Degraded);
    health(&ev1, Health::Degraded);
    ctl.set_down(false);
    health(&ev0, Health::Healthy);
    health(&ev1, Health::Healthy);
    writer.shutdown(PATIENCE);
}

#[test]
fn a_login_on_another_shard_sees_a_logout_not_yet_written() {
    let (db, ctl) = FakeBackend::new();
    let writer = StoreWriter::start(db, cfg()).unwrap();
    let (h0, _ev0) = writer.client(None);
    let (h1, ev1) = writer.client(None);
    ctl.set_down(true);
    h0.save_now(rec("ann", "77"));
    h1.load("ann", 5).unwrap();
    assert_eq!(loaded(&ev1).2, Ok(Some(rec("ann", "77"))));
    ctl.set_down(false);
    writer.shutdown(PATIENCE);
    assert_eq!(ctl.record("ann"), Some(rec("ann", "77")));
}

#[test]
fn shutdown_flushes_everything_held() {
    let (writer, ctl, h, _ev) = start(cfg()); // 60 s interval: nothing flushed yet
    for i in 0..20 {
        h.mark_dirty(rec(&format!("p{i}"), &i.to_string()));
    }
    h.commit(tx(1, "p0", "p0 after tx")).unwrap();
    let report = writer.shutdown(PATIENCE);
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(ctl.record_count(), 20);
    assert_eq!(stored(&ctl, "p0").unwrap(), "p0 after tx");
    assert_eq!(stored(&ctl, "p19").unwrap(), "19");
    assert_eq!(ctl.ledger(), vec![1]);
    // Closed afterwards.
    assert_eq!(h.load("a", 0), Err(SubmitError::Closed(())));
    assert!(matches!(
        h.commit(tx(2, "a", "1")),
        Err(SubmitError::Closed(_))
    ));
    assert!(!h.accepts_logins() && !h.accepts_value());
}

#[test]
fn shutdown_during_an_outage_reports_what_was_not_written() {
    let (writer, ctl, h, _ev) = start(cfg());
    ctl.set_down(true);
    h.mark_dirty(rec("ann", "1"));
    h.save_now(rec("bob", "2"));
    h.commit(tx(1, "ann", "ann after tx")).unwrap();
    let t = Instant::now();
    let report = writer.shutdown(Duration::from_millis(300));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "bounded by the deadline"
    );
    assert!(!report.is_complete());
    assert_eq!(
        report.unwritten,
        vec![rec("ann", "ann after tx"), rec("bob", "2")],
        "by account; ann's record carries the transaction"
    );
    assert_eq!(report.uncommitted, vec![tx(1, "ann", "ann after tx")]);
    assert!(ctl.ledger().is_empty());
}

#[test]
fn a_slow_database_never_blocks_the_handle() {
    let (writer, ctl, h, ev) = start(cfg());
    ctl.set_latency(Duration::from_millis(1_000));
    h.save_now(rec("ann", "1")); // the writer is now inside a one-second call
    std::thread::sleep(Duration::from_millis(20));
    let t = Instant::now();
    for i in 0..1_000 {
        h.mark_dirty(rec("ann", &i.to_string()));
        h.save_now(rec("bob", &i.to_string()));
    }
    h.load("ann", 1).unwrap();
    h.commit(tx(1, "ann", "5")).unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "handle calls waited: {:?}",
        t.elapsed()
    );
    let _ = loaded(&ev);
    ctl.set_latency(Duration::ZERO);
    writer.shutdown(PATIENCE);
}

/// Random outages under a steady stream of work: whatever was acknowledged
/// is in the database, and at the end every account's last state is.
#[test]
fn nothing_acknowledged_is_lost_across_outages() {
    let (writer, ctl, h, ev) = start(WriterConfig {
        flush_interval: Duration::from_millis(20),
        ..cfg()
    });
    // A small deterministic generator: no seed from the OS.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut last = std::collections::HashMap::new();
    for i in 0..5 {
        let c = rec(&format!("p{i}"), "created");
        h.save_now(c.clone());
        last.insert(c.account.clone(), c);
    }
    let mut acked = vec![];
    for step in 0..600u64 {
        let r = rand();
        if r % 50 == 0 {
            ctl.set_down(true);
        } else if r % 50 == 1 {
            ctl.set_down(false);
        }
        if r % 7 == 0 {
            ctl.fail_next(1);
        }
        if r % 11 == 0 {
            ctl.lose_next_commit_answer();
        }
        let name = format!("p{}", r % 5);
        if step % 3 == 0 {
            let t = tx(step + 1, &name, &format!("{name} tx at step {step}"));
            let after = t.record.clone();
            if h.commit(t).is_ok() {
                last.insert(name.clone(), after);
            }
        } else {
            let c = rec(&name, &format!("{name} at step {step}"));
            if step % 10 == 0 {
                h.save_now(c.clone());
            } else {
                h.mark_dirty(c.clone());
            }
            last.insert(name, c);
        }
        for e in ev.try_iter() {
            if let StoreEvent::Committed(t) = e {
                acked.push(t.tx_id);
            }
        }
        if step % 50 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    ctl.set_down(false);
    let report = writer.shutdown(PATIENCE);
    assert!(report.is_complete(), "{report:?}");
    for e in ev.try_iter() {
        if let StoreEvent::Committed(t) = e {
            acked.push(t.tx_id);
        }
    }
    let ledger = ctl.ledger();
    for id in &acked {
        assert!(
            ledger.contains(id),
            "acknowledged tx {id} not in the ledger"
        );
    }
    let mut sorted = ledger.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), ledger.len(), "a tx applied twice");
    assert!(!acked.is_empty());
    for (name, c) in &last {
        assert_eq!(ctl.record(name).as_ref(), Some(c), "{name}");
    }
}

#[test]
fn a_writer_dropped_without_shutdown_still_flushes() {
    let (writer, ctl, h, _ev) = start(cfg());
    h.mark_dirty(rec("ann", "3"));
    drop(writer);
    assert_eq!(ctl.record("ann"), Some(rec("ann", "3")));
}

/// Collects events until every one of `want` has been seen (in any order);
/// the others are dropped.
fn wait_all(events: &StoreEvents, want: &[StoreEvent]) {
    let mut left: Vec<&StoreEvent> = want.iter().collect();
    while !left.is_empty() {
        wait_for(events, |e| {
            let i = left.iter().position(|w| **w == e)?;
            left.remove(i);
            Some(())
        });
    }
}

#[test]
fn a_database_that_stops_answering_is_reported_degraded_until_it_answers() {
    let (writer, ctl, h, ev) = start(WriterConfig {
        stall_after: Duration::from_millis(20),
        ..cfg()
    });
    // The database keeps the call and never answers: no error comes back.
    ctl.set_hold(true);
    h.commit(tx(1, "ann", "10")).unwrap();
    health(&ev, Health::Degraded);
    assert_eq!(h.health(), Health::Degraded);
    assert!(ctl.ledger().is_empty(), "nothing committed while it hangs");

    // It answers again: the transaction is committed and acknowledged, and
    // the store says so.
    ctl.set_hold(false);
    wait_all(
        &ev,
        &[
            StoreEvent::Committed(tx(1, "ann", "10")),
            StoreEvent::Health(Health::Healthy),
        ],
    );
    assert_eq!(h.health(), Health::Healthy);
    assert_eq!(ctl.ledger(), vec![1]);
    assert!(writer.shutdown(PATIENCE).is_complete());
}

#[test]
fn a_hung_call_that_then_fails_stays_degraded_until_the_database_is_back() {
    let (writer, ctl, h, ev) = start(WriterConfig {
        stall_after: Duration::from_millis(20),
        ..cfg()
    });
    ctl.set_hold(true);
    h.commit(tx(1, "ann", "10")).unwrap();
    health(&ev, Health::Degraded);
    // The hung call ends in an error (the connection finally dropped) and
    // the database stays away for a while: still degraded, the transaction
    // held.
    ctl.set_down(true);
    ctl.set_hold(false);
    wait_until("the failed call was retried", || ctl.calls().len() >= 3);
    assert_eq!(h.health(), Health::Degraded);
    assert!(ctl.ledger().is_empty());
    ctl.set_down(false);
    wait_all(
        &ev,
        &[
            StoreEvent::Committed(tx(1, "ann", "10")),
            StoreEvent::Health(Health::Healthy),
        ],
    );
    assert_eq!(h.health(), Health::Healthy);
    assert!(writer.shutdown(PATIENCE).is_complete());
}

#[test]
fn a_load_by_session_sees_what_was_handed_over_before_it() {
    let (db, ctl) = FakeBackend::new();
    let writer = StoreWriter::start(db, cfg()).unwrap(); // 60 s interval
    let (h0, _ev0) = writer.client(None);
    let (h1, ev1) = writer.client(None);
    ctl.insert(in_session("ann", "ann saved", 11, 5));
    ctl.insert(in_session("bob", "bob saved", 12, 5));

    // Not written yet, handed over by another shard: the newer mark.
    h0.mark_dirty(in_session("ann", "ann later", 11, 9));
    h1.load_session(11, 7).unwrap();
    assert_eq!(
        session_loaded(&ev1),
        (11, 7, Ok(Some(in_session("ann", "ann later", 11, 9))))
    );
    // From the database.
    h1.load_session(12, 8).unwrap();
    assert_eq!(
        session_loaded(&ev1),
        (12, 8, Ok(Some(in_session("bob", "bob saved", 12, 5))))
    );
    h1.load_session(13, 9).unwrap();
    assert_eq!(session_loaded(&ev1), (13, 9, Ok(None)));

    // bob's session ended; the logout is held (the database is away), so
    // the database still has the session when the load reaches it.
    ctl.set_down(true);
    h0.save_now(rec("bob", "bob out"));
    h1.load_session(12, 10).unwrap();
    wait_until("the outage", || h1.health() == Health::Degraded);
    ctl.set_down(false);
    assert_eq!(session_loaded(&ev1), (12, 10, Ok(None)));
    let report = writer.shutdown(PATIENCE);
    assert!(report.is_complete(), "{report:?}");
    assert_eq!(ctl.session("bob"), None);
    assert_eq!(ctl.session("ann").map(|m| m.last_input), Some(9));
    assert_eq!(report.stats.loads_served, 4);
}

#[test]
fn a_load_by_session_in_an_outage_waits_then_fails_and_is_capped_like_a_load() {
    let (writer, ctl, h, ev) = start(WriterConfig {
        load_timeout: Duration::from_millis(200),
        max_pending_loads: 2,
        ..cfg()
    });
    ctl.insert(in_session("ann", "ann saved", 11, 5));
    ctl.set_down(true);
    h.load_session(11, 1).unwrap();
    h.load("bob", 2).unwrap();
    assert_eq!(h.load_session(12, 3), Err(SubmitError::StoreFull(())));
    assert!(!h.accepts_logins());
    let (id, tag, result) = session_loaded(&ev);
    assert_eq!((id, tag), (11, 1));
    match result {
        Err(e) => assert!(e.is_retryable(), "{e:?}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    // Held in memory: answered during the outage.
    h.mark_dirty(in_session("cat", "cat", 14, 1));
    h.load_session(14, 4).unwrap();
    assert_eq!(
        session_loaded(&ev),
        (14, 4, Ok(Some(in_session("cat", "cat", 14, 1))))
    );
    ctl.set_down(false);
    wait_until("loads answered", || h.stats().loads_pending == 0);
    let s = h.stats();
    assert_eq!((s.loads_failed, s.refused), (2, 1), "{s:?}");
    writer.shutdown(PATIENCE);
    assert_eq!(h.load_session(11, 5), Err(SubmitError::Closed(())));
}
