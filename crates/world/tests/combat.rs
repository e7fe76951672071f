//! Combat: attacks, errors, deaths, experience, loot (durable before the
//! player is told), PvP on and off, respawn.

mod common;

use common::Sim;
use tether_proto::pb::{server_message::Msg, CommandErrorCode as Code, CorrectionReason};
use tether_world::items::{MAX_STACK, MAX_STACKS};
use tether_world::{CharacterRecord, EntityView, WorldConfig};

/// A player standing next to a live monster (the world is not ticked, so
/// the monster does not fight back unless a test ticks it).
fn next_to_monster(sim: &mut Sim, rec: CharacterRecord) -> (u64, EntityView) {
    let m = sim.monster_inland(20.0);
    let id = sim.join_record(CharacterRecord {
        pos: Some((m.x + 3.0, m.y)),
        ..rec
    });
    (id, m)
}

/// Attacks `target` once a cooldown until it dies; returns the attacks made.
fn kill(sim: &mut Sim, attacker: u64, target: u64) -> usize {
    let cooldown = sim.world.config().attack_cooldown_ms;
    for n in 1..=200 {
        sim.now += cooldown;
        sim.attack(attacker, target);
        if sim.entity(target).dead {
            return n;
        }
    }
    panic!("target never died");
}

fn errors(sim: &mut Sim, id: u64) -> Vec<(u32, i32)> {
    pick!(sim.inbox(id), CommandError)
        .into_iter()
        .map(|e| (e.seq, e.code))
        .collect()
}

#[test]
fn killing_a_monster_pays_the_killer() {
    let mut sim = Sim::small();
    let (hero, m) = next_to_monster(&mut sim, CharacterRecord::new("hero"));
    let watcher = sim.join("watcher", Some((m.x - 3.0, m.y)));
    sim.clear_inboxes();
    let hits = kill(&mut sim, hero, m.id);

    let hero_inbox = sim.inbox(hero);
    let damage = pick!(hero_inbox, Damage);
    assert_eq!(damage.len(), hits, "one Damage per hit, to the attacker");
    assert!(damage
        .iter()
        .all(|d| d.attacker == hero && d.target == m.id && d.amount > 0));
    assert_eq!(damage.last().unwrap().target_hp, 0);
    let deaths = pick!(hero_inbox, Death);
    assert_eq!(deaths.len(), 1);
    assert_eq!((deaths[0].id, deaths[0].killer), (m.id, hero));
    // Bystanders in view see the fight too.
    let watched = sim.inbox(watcher);
    assert_eq!(pick!(watched, Damage).len(), hits);
    assert_eq!(pick!(watched, Death), deaths);
    assert!(pick!(watched, Stats).is_empty(), "stats are private");

    // Experience, gold and items, to the killer.
    let stats = pick!(hero_inbox, Stats);
    assert_eq!(stats.len(), 1);
    let after = sim.world.character(hero).unwrap();
    assert!(after.xp > 0);
    assert_eq!(stats[0].xp, after.xp);
    assert_eq!(sim.loot.len(), 1);
    let tx = sim.loot[0].clone();
    assert_eq!((tx.entity, tx.character.as_str()), (hero, "hero"));
    assert!(tx.gold > 0);
    assert_eq!((tx.total_gold, after.gold), (tx.gold, tx.gold));
    assert_eq!(tx.inventory, after.inventory);
    assert_eq!(tx.tx_id >> 56, 3, "tx ids carry the shard");

    // Not told until the loot is durable.
    assert!(pick!(hero_inbox, Loot).is_empty());
    sim.loot_committed(&tx);
    let granted = pick!(sim.inbox(hero), Loot);
    assert_eq!(granted.len(), 1);
    assert_eq!(
        (
            granted[0].tx_id,
            granted[0].gold,
            granted[0].total_gold,
            &granted[0].items
        ),
        (tx.tx_id, tx.gold, tx.total_gold, &tx.items)
    );
    assert!(sim.inbox(watcher).is_empty());
}

#[test]
fn loot_fills_the_inventory_and_tx_ids_increase() {
    // Kill monster after monster (rejoining next to each with the saved
    // record) until some items dropped.
    let mut sim = Sim::new(WorldConfig {
        width: 600.0,
        height: 600.0,
        monsters: 60,
        ..WorldConfig::default()
    });
    let mut rec = CharacterRecord {
        level: 40,
        ..CharacterRecord::new("farmer")
    };
    let live: Vec<_> = sim.monsters();
    let mut gold = 0;
    for m in live.iter().take(30) {
        let id = sim.join_record(CharacterRecord {
            pos: Some((m.x, m.y)),
            ..rec.clone()
        });
        kill(&mut sim, id, m.id);
        rec = sim.leave(id).unwrap();
    }
    let txs = sim.loot.clone();
    assert_eq!(txs.len(), 30);
    assert!(txs.windows(2).all(|w| w[0].tx_id < w[1].tx_id));
    for tx in &txs {
        gold += tx.gold;
        assert_eq!(tx.total_gold, gold);
    }
    assert_eq!(rec.gold, gold);
    let dropped: u32 = txs.iter().flat_map(|t| &t.items).map(|s| s.count).sum();
    let held: u32 = rec.inventory.iter().map(|s| s.count).sum();
    assert!(dropped > 0, "30 kills drop something");
    assert_eq!(held, dropped);
    assert_eq!(&rec.inventory, &txs.last().unwrap().inventory);
    // A player who left is not told about its loot (the server tells it
    // on its next login, from storage).
    sim.loot_committed(&txs[0]);
    assert!(sim.out.frames.is_empty());
}

#[test]
fn a_full_inventory_drops_the_overflow() {
    let mut sim = Sim::new(WorldConfig {
        width: 600.0,
        height: 600.0,
        monsters: 60,
        ..WorldConfig::default()
    });
    let full: Vec<_> = (1..=MAX_STACKS as u32)
        .map(|item_id| tether_proto::pb::ItemStack {
            item_id,
            count: MAX_STACK,
        })
        .collect();
    let mut rec = CharacterRecord {
        level: 40,
        inventory: full.clone(),
        ..CharacterRecord::new("hoarder")
    };
    for m in sim.monsters().iter().take(20) {
        let id = sim.join_record(CharacterRecord {
            pos: Some((m.x, m.y)),
            ..rec.clone()
        });
        kill(&mut sim, id, m.id);
        rec = sim.leave(id).unwrap();
    }
    assert_eq!(rec.inventory, full, "nothing fits, nothing changes");
    assert!(sim.loot.iter().all(|t| t.items.is_empty()));
    assert!(rec.gold > 0, "gold is not an item: it always fits");
}

#[test]
fn attack_errors() {
    let mut sim = Sim::small();
    let (a, m) = next_to_monster(&mut sim, CharacterRecord::new("a"));
    let b = sim.join("b", Some((m.x + 4.0, m.y)));
    sim.clear_inboxes();

    let s = sim.attack(a, 0xdead);
    assert_eq!(
        errors(&mut sim, a),
        vec![(s, Code::CommandErrorNoSuchTarget as i32)]
    );
    let s = sim.attack(a, a);
    assert_eq!(
        errors(&mut sim, a),
        vec![(s, Code::CommandErrorNoSuchTarget as i32)]
    );
    let s = sim.attack(a, b);
    assert_eq!(
        errors(&mut sim, a),
        vec![(s, Code::CommandErrorPvpDisabled as i32)]
    );
    let far = sim
        .monsters()
        .into_iter()
        .find(|f| ((f.x - m.x).powi(2) + (f.y - m.y).powi(2)).sqrt() > 20.0)
        .unwrap();
    let s = sim.attack(a, far.id);
    assert_eq!(
        errors(&mut sim, a),
        vec![(s, Code::CommandErrorOutOfRange as i32)]
    );

    sim.attack(a, m.id);
    assert!(errors(&mut sim, a).is_empty());
    sim.now += sim.world.config().attack_cooldown_ms - 1;
    let s = sim.attack(a, m.id);
    assert_eq!(
        errors(&mut sim, a),
        vec![(s, Code::CommandErrorCooldown as i32)]
    );
    sim.now += 1;
    sim.attack(a, m.id);
    assert!(errors(&mut sim, a).is_empty());

    // A corpse is no target.
    kill(&mut sim, a, m.id);
    sim.now += 10_000 - 1;
    let s = sim.attack(a, m.id);
    assert_eq!(
        errors(&mut sim, a),
        vec![(s, Code::CommandErrorNoSuchTarget as i32)]
    );
    assert!(
        errors(&mut sim, b).is_empty(),
        "errors go to the attacker only"
    );
}

#[test]
fn pvp_on_kills_and_the_dead_respawn() {
    let mut sim = Sim::new(WorldConfig {
        width: 400.0,
        height: 400.0,
        monsters: 8,
        pvp: true,
        ..WorldConfig::default()
    });
    let killer = sim.join_record(CharacterRecord {
        level: 30,
        pos: Some((200.0, 200.0)),
        ..CharacterRecord::new("killer")
    });
    let victim = sim.join("victim", Some((205.0, 200.0)));
    let watcher = sim.join("watcher", Some((200.0, 230.0)));
    sim.clear_inboxes();
    kill(&mut sim, killer, victim);

    // The victim hears its own damage and death.
    let inbox = sim.inbox(victim);
    assert!(pick!(inbox, Damage).iter().all(|d| d.target == victim));
    assert_eq!(pick!(inbox, Death)[0].killer, killer);
    assert_eq!(pick!(sim.inbox(watcher), Death).len(), 1);
    assert!(sim.loot.is_empty(), "PvP kills pay nothing");
    assert_eq!(sim.world.character(victim).unwrap().hp, 0);

    // Dead: no moving, no attacking, chat still works.
    sim.now += 1_000;
    let s = sim.move_to(victim, 206.0, 200.0);
    let c = pick!(sim.inbox(victim), Correction);
    assert_eq!((c[0].seq, c[0].reason), (s, CorrectionReason::Dead as i32));
    let s = sim.attack(victim, killer);
    assert_eq!(
        errors(&mut sim, victim),
        vec![(s, Code::CommandErrorDead as i32)]
    );
    // Alive players cannot respawn.
    let s = sim.respawn(killer);
    assert_eq!(
        errors(&mut sim, killer),
        vec![(s, Code::CommandErrorNotDead as i32)]
    );

    sim.clear_inboxes();
    sim.respawn(victim);
    let after = sim.entity(victim);
    assert!(!after.dead);
    assert_eq!(after.hp, after.max_hp);
    let inbox = sim.inbox(victim);
    let first_self = inbox
        .iter()
        .position(|m| matches!(m, Msg::SelfState(_)))
        .expect("a SelfState after respawn");
    let Msg::SelfState(state) = &inbox[first_self] else {
        unreachable!()
    };
    assert!(!state.dead);
    assert_eq!(
        (state.x, state.y, state.hp),
        (after.x, after.y, after.max_hp)
    );
    // Everything after the SelfState is the new view arriving.
    assert!(inbox[first_self + 1..]
        .iter()
        .all(|m| matches!(m, Msg::Appear(_))));
    // The killer saw the corpse go (and, if near the spawn point, come back).
    assert!(pick!(sim.inbox(killer), Disappear)
        .iter()
        .any(|d| d.id == victim));
    sim.check_views();
}

#[test]
fn a_monster_fights_back_and_can_kill() {
    let mut sim = Sim::small();
    let (weak, m) = next_to_monster(
        &mut sim,
        CharacterRecord {
            hp: 1,
            ..CharacterRecord::new("weak")
        },
    );
    sim.now += 1_000;
    sim.attack(weak, m.id);
    sim.run_for(5_000);
    let inbox = sim.inbox(weak);
    let deaths = pick!(inbox, Death);
    assert_eq!(deaths.len(), 1);
    assert_eq!((deaths[0].id, deaths[0].killer), (weak, m.id));
    assert!(sim.entity(weak).dead);
    sim.check_views();
}

#[test]
fn regeneration_heals_out_of_combat_with_stat_changes() {
    let mut sim = Sim::small();
    // Out of reach of every monster (a chase ends at the leash).
    let spot = sim.quiet_spot();
    let id = sim.join_record(CharacterRecord {
        hp: 10,
        pos: Some(spot),
        ..CharacterRecord::new("hurt")
    });
    sim.run_for(60_000);
    let stats = pick!(sim.inbox(id), Stats);
    assert!(stats.len() >= 10, "{stats:?}");
    assert!(stats.windows(2).all(|w| w[0].hp < w[1].hp));
    let e = sim.entity(id);
    assert_eq!(e.hp, e.max_hp);
    assert_eq!(stats.last().unwrap().hp, e.max_hp);
    assert_eq!(sim.world.character(id).unwrap().hp, e.max_hp);
    // Full now: regeneration goes quiet.
    sim.run_for(10_000);
    assert!(pick!(sim.inbox(id), Stats).is_empty());
}

#[test]
fn no_regeneration_in_combat() {
    let mut sim = Sim::small();
    let (a, m) = next_to_monster(
        &mut sim,
        CharacterRecord {
            hp: 50,
            level: 30,
            ..CharacterRecord::new("fighter")
        },
    );
    // Attack every second: regeneration must wait for a quiet spell.
    for _ in 0..4 {
        sim.now += 1_000;
        sim.attack(a, m.id);
        sim.tick(0);
    }
    assert!(pick!(sim.inbox(a), Stats).iter().all(|s| s.hp <= 50));
}
