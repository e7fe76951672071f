//! The writer in a cluster: loads wait for the cluster's yes, and an
//! account is let go only once its records are written.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{wait_for, wait_until, PATIENCE};

use bytes::Bytes;
use tether_engine::{Record, SessionMark};
use tether_store::fake::{FakeBackend, FakeControl};
use tether_store::{
    Ownership, Redirect, StoreError, StoreEvent, StoreEvents, StoreHandle, StoreWriter,
    WriterConfig,
};

/// What the fake cluster was asked, in order, and who owns what.
#[derive(Default)]
struct Log {
    calls: Vec<String>,
    /// Accounts another server holds.
    elsewhere: Vec<String>,
}

struct FakeOwnership(Arc<Mutex<Log>>);

impl Ownership for FakeOwnership {
    fn acquire(&mut self, account: &str) -> Result<(), StoreError> {
        let mut log = self.0.lock().unwrap();
        log.calls.push(format!("acquire {account}"));
        if log.elsewhere.iter().any(|a| a == account) {
            return Err(StoreError::Elsewhere(Redirect {
                node: "b".into(),
                address: "127.0.0.2:7000".into(),
                ws_url: String::new(),
            }));
        }
        Ok(())
    }

    fn route_session(&mut self, session_id: u64) -> Result<(), StoreError> {
        self.0
            .lock()
            .unwrap()
            .calls
            .push(format!("route {session_id}"));
        if session_id == 77 {
            return Err(StoreError::Elsewhere(Redirect {
                node: "b".into(),
                address: "127.0.0.2:7000".into(),
                ws_url: String::new(),
            }));
        }
        Ok(())
    }

    fn release(&mut self, account: &str, to: Option<&str>) -> bool {
        let to = to.map(|t| format!(" to {t}")).unwrap_or_default();
        self.0
            .lock()
            .unwrap()
            .calls
            .push(format!("release {account}{to}"));
        true
    }
}

fn rec(account: &str, data: &str, session: Option<u64>) -> Record {
    Record {
        session: session.map(|id| SessionMark {
            session_id: id,
            restart_token: [7; 16],
            last_input: 3,
        }),
        ..Record::new(account, 1, Bytes::from(data.to_string()))
    }
}

/// A writer over the fake database, with the fake cluster's say.
fn start(
    log: Log,
) -> (
    Arc<Mutex<Log>>,
    FakeControl,
    StoreWriter,
    StoreHandle,
    StoreEvents,
) {
    let log = Arc::new(Mutex::new(log));
    let (db, ctl) = FakeBackend::new();
    let writer =
        StoreWriter::start_with(db, cfg(), Some(Box::new(FakeOwnership(log.clone())))).unwrap();
    let (handle, events) = writer.client(None);
    (log, ctl, writer, handle, events)
}

fn cfg() -> WriterConfig {
    WriterConfig {
        flush_interval: Duration::from_secs(60),
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        ..WriterConfig::default()
    }
}

#[test]
fn a_load_is_answered_only_after_the_cluster_said_yes_and_elsewhere_is_a_redirect() {
    let log = Arc::new(Mutex::new(Log {
        elsewhere: vec!["bob".into()],
        ..Log::default()
    }));
    let (db, ctl) = FakeBackend::new();
    ctl.insert(rec("bob", "bob's", Some(42)));
    let writer =
        StoreWriter::start_with(db, cfg(), Some(Box::new(FakeOwnership(log.clone())))).unwrap();
    let (handle, events) = writer.client(None);

    handle.load("ann", 1).unwrap();
    let result = wait_for(&events, |e| match e {
        StoreEvent::Loaded { tag: 1, result, .. } => Some(result),
        _ => None,
    });
    assert_eq!(result, Ok(None));

    handle.load("bob", 2).unwrap();
    let result = wait_for(&events, |e| match e {
        StoreEvent::Loaded { tag: 2, result, .. } => Some(result),
        _ => None,
    });
    assert!(
        matches!(result, Err(StoreError::Elsewhere(ref r)) if r.node == "b"),
        "{result:?}"
    );

    // A resume names its account only through the record: the same rule.
    handle.load_session(42, 3).unwrap();
    let result = wait_for(&events, |e| match e {
        StoreEvent::SessionLoaded { tag: 3, result, .. } => Some(result),
        _ => None,
    });
    assert!(
        matches!(result, Err(StoreError::Elsewhere(_))),
        "{result:?}"
    );
    assert_eq!(
        log.lock().unwrap().calls,
        vec!["acquire ann", "acquire bob", "acquire bob"]
    );
    writer.shutdown(PATIENCE);
}

#[test]
fn an_account_is_let_go_only_after_its_last_record_is_written() {
    let (log, ctl, writer, handle, events) = start(Log::default());

    // The database is away: the record saved for the move waits, and so
    // does the hand-over asked after it.
    ctl.set_down(true);
    handle.save_now(rec("ann", "final", Some(9)));
    handle.hand_over("ann", "c", 5);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        log.lock().unwrap().calls.is_empty(),
        "released before written"
    );
    assert_eq!(ctl.record("ann"), None);

    ctl.set_down(false);
    wait_until("the release", || !log.lock().unwrap().calls.is_empty());
    assert_eq!(
        ctl.record("ann").map(|r| r.data),
        Some(Bytes::from("final"))
    );
    assert_eq!(log.lock().unwrap().calls, vec!["release ann to c"]);
    let answer = wait_for(&events, |e| match e {
        StoreEvent::HandedOver { account, tag, ok } => Some((account, tag, ok)),
        _ => None,
    });
    assert_eq!(answer, ("ann".to_string(), 5, true));
    writer.shutdown(PATIENCE);
}

#[test]
fn a_login_here_before_the_write_cancels_the_release() {
    let (log, ctl, writer, handle, events) = start(Log::default());

    ctl.set_down(true);
    handle.save_now(rec("ann", "final", None));
    handle.release("ann");
    // The player is back on this server before the record is written: the
    // load is served from the queue and the account stays here.
    handle.load("ann", 1).unwrap();
    let result = wait_for(&events, |e| match e {
        StoreEvent::Loaded { tag: 1, result, .. } => Some(result),
        _ => None,
    });
    assert!(matches!(result, Ok(Some(_))), "{result:?}");
    ctl.set_down(false);
    wait_until("the write", || ctl.record("ann").is_some());
    writer.shutdown(PATIENCE);
    assert_eq!(log.lock().unwrap().calls, vec!["acquire ann"]);
}

#[test]
fn a_resume_not_saved_yet_asks_which_server_handed_out_the_session() {
    let (log, ctl, writer, handle, events) = start(Log::default());
    // Saved under another session: not this resume's record.
    ctl.insert(rec("ann", "old", Some(5)));
    for (id, tag) in [(77, 1), (78, 2), (5, 3)] {
        handle.load_session(id, tag).unwrap();
    }
    let mut answers = Vec::new();
    while answers.len() < 3 {
        answers.push(wait_for(&events, |e| match e {
            StoreEvent::SessionLoaded { tag, result, .. } => Some((tag, result)),
            _ => None,
        }));
    }
    answers.sort_by_key(|(tag, _)| *tag);
    // 77: a live server handed it out and holds it: sent there.
    assert!(
        matches!(answers[0].1, Err(StoreError::Elsewhere(_))),
        "{answers:?}"
    );
    // 78: nobody claims it: no record, as storage said.
    assert_eq!(answers[1].1, Ok(None));
    // 5: saved under that session: the account decides, not the id.
    assert!(matches!(answers[2].1, Ok(Some(_))), "{answers:?}");
    assert_eq!(
        log.lock().unwrap().calls,
        vec!["route 77", "route 78", "acquire ann"]
    );
    writer.shutdown(PATIENCE);
}
