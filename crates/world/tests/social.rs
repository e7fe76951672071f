//! Chat scopes, ping, link state, and the join / leave / save life cycle.

mod common;

use common::{decode, Sim};
use tether_proto::pb::{self, server_message::Msg, ChatScope, CommandErrorCode as Code};
use tether_world::{CharacterRecord, World, WorldConfig};

fn chats(sim: &mut Sim, id: u64) -> Vec<pb::ChatMessage> {
    pick!(sim.inbox(id), Chat)
}

#[test]
fn local_chat_reaches_exactly_those_who_see_the_speaker() {
    let mut sim = Sim::small();
    let r = sim.world.config().view_radius;
    let speaker = sim.join("speaker", Some((100.0, 100.0)));
    let near = sim.join("near", Some((100.0 + r, 100.0)));
    let far = sim.join("far", Some((100.0 + r + 0.5, 100.0)));
    sim.clear_inboxes();
    sim.chat(speaker, ChatScope::Local, "", "hello");
    let expected = pb::ChatMessage {
        scope: ChatScope::Local as i32,
        from_id: speaker,
        from_name: "speaker".into(),
        text: "hello".into(),
    };
    assert_eq!(
        chats(&mut sim, speaker),
        vec![expected.clone()],
        "the speaker's echo"
    );
    assert_eq!(chats(&mut sim, near), vec![expected]);
    assert!(chats(&mut sim, far).is_empty());
    assert!(sim.world_chat.is_empty() && sim.remote_whispers.is_empty());
}

#[test]
fn whispers_reach_only_their_target() {
    let mut sim = Sim::small();
    let a = sim.join("a", Some((100.0, 100.0)));
    let b = sim.join("b", Some((101.0, 100.0)));
    let c = sim.join("c", Some((390.0, 390.0)));
    sim.clear_inboxes();
    sim.chat(a, ChatScope::Whisper, "c", "psst");
    let got = chats(&mut sim, c);
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].scope, got[0].from_id, got[0].text.as_str()),
        (ChatScope::Whisper as i32, a, "psst")
    );
    assert!(sim.inbox(a).is_empty(), "no echo to the sender");
    assert!(sim.inbox(b).is_empty());

    // Not on this world: handed to the server to route.
    let seq = sim.chat(a, ChatScope::Whisper, "elsewhere", "hi");
    assert_eq!(sim.remote_whispers.len(), 1);
    let w = sim.remote_whispers[0].clone();
    assert_eq!(
        (w.from, w.from_seq, w.to_name.as_str()),
        (a, seq, "elsewhere")
    );
    let Msg::Chat(m) = decode(&w.frame) else {
        panic!("a ChatMessage frame")
    };
    assert_eq!((m.from_name.as_str(), m.text.as_str()), ("a", "hi"));
    assert!(sim.inbox(a).is_empty());

    // A name that cannot exist is refused here.
    for bad in [String::new(), "x".repeat(25)] {
        let seq = sim.chat(a, ChatScope::Whisper, &bad, "hi");
        let e = pick!(sim.inbox(a), CommandError);
        assert_eq!(
            (e[0].seq, e[0].code),
            (seq, Code::CommandErrorNoSuchPlayer as i32)
        );
    }
    assert_eq!(sim.remote_whispers.len(), 1);
}

#[test]
fn world_chat_goes_to_the_server_for_every_shard() {
    let mut sim = Sim::small();
    let a = sim.join("a", Some((100.0, 100.0)));
    let b = sim.join("b", Some((101.0, 100.0)));
    sim.clear_inboxes();
    sim.chat(a, ChatScope::World, "", "all hear");
    assert_eq!(sim.world_chat.len(), 1);
    let Msg::Chat(m) = &sim.world_chat[0] else {
        panic!("a ChatMessage")
    };
    assert_eq!(
        (m.scope, m.from_id, m.text.as_str()),
        (ChatScope::World as i32, a, "all hear")
    );
    assert!(
        sim.inbox(a).is_empty() && sim.inbox(b).is_empty(),
        "the server fans it out"
    );
}

#[test]
fn chat_text_is_bounded() {
    let mut sim = Sim::small();
    let a = sim.join("a", Some((100.0, 100.0)));
    sim.clear_inboxes();
    for text in [String::new(), "é".repeat(129)] {
        let seq = sim.chat(a, ChatScope::Local, "", &text);
        let e = pick!(sim.inbox(a), CommandError);
        assert_eq!(
            (e[0].seq, e[0].code),
            (seq, Code::CommandErrorBadText as i32)
        );
    }
    sim.chat(a, ChatScope::Local, "", &"x".repeat(256));
    assert_eq!(chats(&mut sim, a).len(), 1);
    let seq = sim.apply(
        a,
        pb::input::Cmd::Chat(pb::Chat {
            scope: 99,
            to: String::new(),
            text: "?".into(),
        }),
    );
    let e = pick!(sim.inbox(a), CommandError);
    assert_eq!(
        (e[0].seq, e[0].code),
        (seq, Code::CommandErrorUnspecified as i32)
    );
}

#[test]
fn ping_is_answered_with_pong_to_the_sender_only() {
    let mut sim = Sim::small();
    let a = sim.join("a", Some((100.0, 100.0)));
    let b = sim.join("b", Some((101.0, 100.0)));
    sim.clear_inboxes();
    sim.apply(
        a,
        pb::input::Cmd::Ping(pb::Ping {
            client_time: 123_456,
        }),
    );
    assert_eq!(
        sim.inbox(a),
        vec![Msg::Pong(pb::Pong {
            client_time: 123_456
        })]
    );
    assert!(sim.inbox(b).is_empty());
}

#[test]
fn link_state_reaches_viewers_and_shows_in_appear() {
    let mut sim = Sim::small();
    let a = sim.join("a", Some((100.0, 100.0)));
    let b = sim.join("b", Some((101.0, 100.0)));
    sim.clear_inboxes();
    sim.set_link_dead(a, true);
    assert!(sim.inbox(a).is_empty(), "not to itself");
    assert_eq!(
        pick!(sim.inbox(b), Link),
        vec![pb::LinkState {
            id: a,
            link_dead: true
        }]
    );
    sim.set_link_dead(a, true);
    assert!(sim.inbox(b).is_empty(), "no change, no frame");
    let c = sim.join("c", Some((102.0, 100.0)));
    let seen: Vec<_> = pick!(sim.inbox(c), Appear)
        .into_iter()
        .filter(|e| e.id == a)
        .collect();
    assert!(seen[0].link_dead);
    sim.check_views();
}

#[test]
fn join_sends_a_snapshot_and_normalises_the_record() {
    let mut sim = Sim::small();
    let a = sim.join("a", Some((100.0, 100.0)));
    let b = sim.join_record(CharacterRecord {
        pos: Some((101.0, 100.0)),
        hp: -5,
        level: 0,
        ..CharacterRecord::new("b")
    });
    let inbox = sim.inbox(b);
    let Msg::SelfState(s) = &inbox[0] else {
        panic!("SelfState first")
    };
    assert_eq!(
        (s.entity_id, s.name.as_str(), s.level, s.x, s.y),
        (b, "b", 1, 101.0, 100.0)
    );
    assert_eq!(s.hp, s.max_hp);
    assert!(!s.dead);
    assert_eq!(inbox.last(), Some(&Msg::SnapshotEnd(pb::SnapshotEnd {})));
    assert!(inbox[1..inbox.len() - 1]
        .iter()
        .all(|m| matches!(m, Msg::Appear(_))));
    assert!(pick!(inbox, Appear).iter().any(|e| e.id == a));
    assert!(pick!(sim.inbox(a), Appear).iter().any(|e| e.id == b));

    // A position off the map is replaced by a spawn point; a new character
    // lands somewhere on the map.
    let (w, h) = (sim.world.config().width, sim.world.config().height);
    for pos in [
        Some((-1.0, 5.0)),
        Some((f32::NAN, 1.0)),
        Some((w, 1.0)),
        None,
    ] {
        let id = sim.join_record(CharacterRecord {
            pos,
            ..CharacterRecord::new(format!("n{}", sim.clients.len()))
        });
        let e = sim.entity(id);
        assert!(e.x >= 0.0 && e.x < w && e.y >= 0.0 && e.y < h);
    }
    sim.check_views();
}

#[test]
fn snapshot_repeats_the_current_view() {
    let mut sim = Sim::small();
    let a = sim.join("a", Some((100.0, 100.0)));
    let _b = sim.join("b", Some((110.0, 100.0)));
    let before = sim.clients[&a].view.clone();
    sim.clear_inboxes();
    sim.snapshot(a);
    assert_eq!(sim.clients[&a].view, before);
    let inbox = sim.inbox(a);
    assert!(matches!(inbox[0], Msg::SelfState(_)));
    assert_eq!(inbox.last(), Some(&Msg::SnapshotEnd(pb::SnapshotEnd {})));
    sim.world.snapshot(0xdead, &mut sim.out); // unknown: nothing
    assert!(sim.out.frames.is_empty());
}

#[test]
fn ids_records_dirty_tracking_and_leaving() {
    let mut sim = Sim::small();
    let a = sim.join("a", Some((100.0, 100.0)));
    let b = sim.join("b", Some((300.0, 300.0)));
    assert_eq!(a >> 56, 3, "the shard is in the top bits");
    assert!(b > a);
    assert_eq!(sim.world.player_count(), 2);
    assert_eq!(sim.world.monster_count(), 8);
    assert_eq!(sim.world.find_player("a"), Some(a));
    assert_eq!(sim.world.find_player("nobody"), None);

    let mut dirty = Vec::new();
    sim.world.take_dirty(&mut dirty);
    assert_eq!(dirty.len(), 2, "joins are saved once");
    dirty.clear();
    sim.world.take_dirty(&mut dirty);
    assert!(dirty.is_empty(), "nothing changed since");
    sim.now += 1_000;
    sim.move_to(a, 101.0, 100.0);
    sim.world.take_dirty(&mut dirty);
    assert_eq!(dirty.len(), 1);
    assert_eq!(dirty[0].pos, Some((101.0, 100.0)));
    assert_eq!(sim.world.character(a), Some(dirty[0].clone()));

    let rec = sim.leave(a).unwrap();
    assert_eq!(rec.name, "a");
    assert_eq!(sim.world.find_player("a"), None);
    assert_eq!(sim.world.character(a), None);
    assert_eq!(sim.world.player_count(), 1);
    // Inputs for a player who left are ignored; ids are never reused.
    sim.move_to(a, 102.0, 100.0);
    assert!(sim.out.frames.is_empty());
    let again = sim.join_record(rec);
    assert!(again > b);
    assert_eq!(sim.entity(again).x, 101.0);
    assert!(sim.leave(0xdead).is_none());
    sim.check_views();
}

#[test]
fn same_seed_same_inputs_same_frames() {
    let run = || {
        let mut w = World::new(
            WorldConfig {
                width: 300.0,
                height: 300.0,
                monsters: 30,
                ..WorldConfig::default()
            },
            1,
        );
        let mut out = tether_world::Outbox::default();
        let ids: Vec<_> = (0..10)
            .map(|i| w.join(0, CharacterRecord::new(format!("p{i}")), &mut out))
            .collect();
        for t in 1..200u64 {
            let id = ids[(t % 10) as usize];
            let e = w.entity(id).unwrap();
            w.apply(
                t * 100,
                id,
                t as u32,
                pb::input::Cmd::Move(pb::Move {
                    x: e.x + 0.5,
                    y: e.y,
                }),
                &mut out,
            );
            w.tick(t * 100, &mut out);
        }
        out.frames
    };
    assert_eq!(run(), run());
}
