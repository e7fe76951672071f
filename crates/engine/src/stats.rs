//! The engine's counters, as plain numbers: the server copies them into its
//! metrics registry; tests read them directly.

use tether_proto::pb::CloseCode;

/// Close codes have small numbers; one counter slot each.
pub const CLOSE_CODE_SLOTS: usize = 32;

/// Why a resume was refused (the client only ever hears RESUME_REFUSED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusedResume {
    UnknownSession,
    BadToken,
    BadFrameCount,
}

impl RefusedResume {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RefusedResume::UnknownSession => "unknown_session",
            RefusedResume::BadToken => "bad_token",
            RefusedResume::BadFrameCount => "bad_frame_count",
        }
    }

    pub const ALL: [RefusedResume; 3] = [
        RefusedResume::UnknownSession,
        RefusedResume::BadToken,
        RefusedResume::BadFrameCount,
    ];
}

/// Counters (monotonic) and gauges (current values) of one engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineStats {
    /// Sessions with a connection now.
    pub active: u64,
    /// Sessions without one now (zombies).
    pub zombies: u64,
    pub logins: u64,
    pub logouts: u64,
    pub takeovers: u64,
    pub resumes_replay: u64,
    pub resumes_snapshot: u64,
    /// Sessions brought back from storage by a resume (after a restart,
    /// an upgrade or a crash).
    pub resumes_restored: u64,
    pub resumes_refused: [u64; 3],
    pub replayed_frames: u64,
    pub duplicate_inputs: u64,
    pub zombie_expiries: u64,
    /// Sessions an operator ended ([`Engine::kick`](crate::Engine::kick)).
    pub kicks: u64,
    /// Logins and resumes sent to another server of the cluster
    /// ([`Engine::redirected`](crate::Engine::redirected)).
    pub redirects: u64,
    /// Sessions moved to another server
    /// ([`Engine::transfer`](crate::Engine::transfer)).
    pub transfers: u64,
    /// Transactions refused because the commit backlog was full.
    pub commits_refused: u64,
    /// Connections the engine closed, by close code.
    pub closed: [u64; CLOSE_CODE_SLOTS],
}

impl Default for EngineStats {
    fn default() -> Self {
        EngineStats {
            active: 0,
            zombies: 0,
            logins: 0,
            logouts: 0,
            takeovers: 0,
            resumes_replay: 0,
            resumes_snapshot: 0,
            resumes_restored: 0,
            resumes_refused: [0; 3],
            replayed_frames: 0,
            duplicate_inputs: 0,
            zombie_expiries: 0,
            kicks: 0,
            redirects: 0,
            transfers: 0,
            commits_refused: 0,
            closed: [0; CLOSE_CODE_SLOTS],
        }
    }
}

impl EngineStats {
    pub(crate) fn count_close(&mut self, code: CloseCode) {
        let i = (code as usize).min(CLOSE_CODE_SLOTS - 1);
        self.closed[i] += 1;
    }

    pub(crate) fn count_refused(&mut self, why: RefusedResume) {
        self.resumes_refused[why as usize] += 1;
    }

    /// Connections closed with `code` so far.
    pub fn closed_with(&self, code: CloseCode) -> u64 {
        self.closed[(code as usize).min(CLOSE_CODE_SLOTS - 1)]
    }

    /// Resumes refused for `why` so far.
    pub fn refused(&self, why: RefusedResume) -> u64 {
        self.resumes_refused[why as usize]
    }
}
