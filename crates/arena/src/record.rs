//! A player's standing and how storage keeps it; the rating rule.

use bytes::Bytes;
use prost::Message;
use tether_engine::{BadRecord, Record};

use crate::pb;

/// The record format [`encode_record`] writes: the protobuf
/// [`pb::StoredPlayer`].
pub const RECORD_VERSION: u32 = 1;

/// The rating of a new player (the usual Elo starting point).
pub const START_RATING: i32 = 1200;

/// How far one match moves a rating at most (Elo's K factor; 32 is the
/// common choice for players with few games).
pub const K_FACTOR: f64 = 32.0;

/// Ratings stay within these bounds, so a stored value far out of range
/// (hand-edited, or from a bug) cannot make the arithmetic misbehave.
pub const MIN_RATING: i32 = 0;
pub const MAX_RATING: i32 = 5000;

/// One player's standing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// The account, which is the player's name.
    pub name: String,
    pub rating: i32,
    pub wins: u32,
    pub losses: u32,
    pub draws: u32,
}

impl Profile {
    /// A player who has not played yet.
    pub fn new(name: impl Into<String>) -> Profile {
        Profile {
            name: name.into(),
            rating: START_RATING,
            wins: 0,
            losses: 0,
            draws: 0,
        }
    }

    /// The profile as a frame's message.
    pub fn to_pb(&self) -> pb::Profile {
        pb::Profile {
            name: self.name.clone(),
            rating: self.rating,
            wins: self.wins,
            losses: self.losses,
            draws: self.draws,
        }
    }
}

/// Encodes a profile as a version-1 record of its account.
pub fn encode_record(p: &Profile) -> Record {
    let stored = pb::StoredPlayer {
        name: p.name.clone(),
        rating: p.rating,
        wins: p.wins,
        losses: p.losses,
        draws: p.draws,
    };
    Record {
        account: p.name.clone(),
        version: RECORD_VERSION,
        data: Bytes::from(stored.encode_to_vec()),
        session: None,
    }
}

/// Reads a stored player, of any version this build knows.
pub fn decode_record(r: &Record) -> Result<Profile, BadRecord> {
    match r.version {
        RECORD_VERSION => {
            let s = pb::StoredPlayer::decode(&r.data[..]).map_err(|e| BadRecord(e.to_string()))?;
            Ok(Profile {
                name: r.account.clone(),
                rating: s.rating.clamp(MIN_RATING, MAX_RATING),
                wins: s.wins,
                losses: s.losses,
                draws: s.draws,
            })
        }
        v => Err(BadRecord(format!(
            "arena record version {v} is not one this build reads"
        ))),
    }
}

/// A's new rating after a match against B, `score` being 1 for A's win, 0
/// for its loss and 0.5 for a draw (Elo).
pub fn rate(a: i32, b: i32, score: f64) -> i32 {
    let expected = 1.0 / (1.0 + 10f64.powf(f64::from(b - a) / 400.0));
    let next = f64::from(a) + K_FACTOR * (score - expected);
    (next.round() as i32).clamp(MIN_RATING, MAX_RATING)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_unknown_versions_are_refused() {
        let p = Profile {
            name: "ann".into(),
            rating: 1234,
            wins: 3,
            losses: 2,
            draws: 1,
        };
        let r = encode_record(&p);
        assert_eq!((r.account.as_str(), r.version), ("ann", RECORD_VERSION));
        assert_eq!(decode_record(&r).unwrap(), p);
        let newer = Record {
            version: 2,
            ..r.clone()
        };
        assert!(decode_record(&newer).is_err());
        let garbage = Record {
            data: Bytes::from_static(b"\xff\xff\xff"),
            ..r
        };
        assert!(decode_record(&garbage).is_err());
    }

    #[test]
    fn an_out_of_range_rating_is_brought_back_in() {
        let mut r = encode_record(&Profile::new("bob"));
        r.data = Bytes::from(
            pb::StoredPlayer {
                name: "bob".into(),
                rating: -40,
                ..Default::default()
            }
            .encode_to_vec(),
        );
        assert_eq!(decode_record(&r).unwrap().rating, MIN_RATING);
    }

    #[test]
    fn elo_moves_ratings_by_surprise() {
        // Equal players: the winner takes half of K.
        assert_eq!(rate(1200, 1200, 1.0), 1216);
        assert_eq!(rate(1200, 1200, 0.0), 1184);
        assert_eq!(rate(1200, 1200, 0.5), 1200);
        // Beating a much stronger player pays more than beating a weaker one.
        assert!(rate(1200, 1600, 1.0) - 1200 > rate(1200, 800, 1.0) - 1200);
        // The bounds hold.
        assert_eq!(rate(MAX_RATING, 0, 1.0), MAX_RATING);
        assert_eq!(rate(MIN_RATING, MAX_RATING, 0.0), MIN_RATING);
    }
}
