//! Items and inventories: the item table and the bounded inventory every
//! character carries.
//!
//! An inventory is a list of stacks, at most [`MAX_STACKS`] of them, each
//! holding at most [`MAX_STACK`] of one item. Items that do not fit are
//! dropped (the policy when full): a character's record, its save and its
//! `SelfState` frame stay a fixed, small size whatever a player farms.

use tether_proto::pb::ItemStack;

/// Stacks in one inventory. 64 stacks of 10 bytes encode to under 1 KiB, so a
/// full `SelfState` stays far below the frame cap.
pub const MAX_STACKS: usize = 64;

/// Items in one stack: four digits fit every client's slot label.
pub const MAX_STACK: u32 = 9_999;

/// Item ids, as stored in records and sent on the wire.
pub mod ids {
    /// Rat tail: junk, sold to vendors.
    pub const RAT_TAIL: u32 = 1;
    /// Wolf pelt: crafting material.
    pub const WOLF_PELT: u32 = 2;
    /// Health potion.
    pub const HEALTH_POTION: u32 = 3;
    /// Iron sword.
    pub const IRON_SWORD: u32 = 4;
    /// Bandit mask: quest item.
    pub const BANDIT_MASK: u32 = 5;
    /// Leather boots.
    pub const LEATHER_BOOTS: u32 = 6;
    /// Ogre tooth: crafting material.
    pub const OGRE_TOOTH: u32 = 7;
    /// Gold ring: the rare drop.
    pub const GOLD_RING: u32 = 8;
}

/// The item table: (id, name).
pub static ITEMS: &[(u32, &str)] = &[
    (ids::RAT_TAIL, "Rat Tail"),
    (ids::WOLF_PELT, "Wolf Pelt"),
    (ids::HEALTH_POTION, "Health Potion"),
    (ids::IRON_SWORD, "Iron Sword"),
    (ids::BANDIT_MASK, "Bandit Mask"),
    (ids::LEATHER_BOOTS, "Leather Boots"),
    (ids::OGRE_TOOTH, "Ogre Tooth"),
    (ids::GOLD_RING, "Gold Ring"),
];

/// The display name of an item, `None` for an id the table does not know.
pub fn item_name(id: u32) -> Option<&'static str> {
    ITEMS.iter().find(|(i, _)| *i == id).map(|(_, n)| *n)
}

/// Adds `count` of `item_id` to `inv`: first onto existing stacks of that
/// item, then into new stacks while there is room. Returns how many were
/// added; the rest is dropped.
pub fn add_item(inv: &mut Vec<ItemStack>, item_id: u32, count: u32) -> u32 {
    let mut left = count;
    for stack in inv.iter_mut().filter(|s| s.item_id == item_id) {
        if left == 0 {
            break;
        }
        let room = MAX_STACK.saturating_sub(stack.count);
        let put = room.min(left);
        stack.count += put;
        left -= put;
    }
    while left > 0 && inv.len() < MAX_STACKS {
        let put = left.min(MAX_STACK);
        inv.push(ItemStack {
            item_id,
            count: put,
        });
        left -= put;
    }
    count - left
}

/// A stored inventory brought within the bounds (merged stacks, empty stacks
/// removed, overflow dropped), so a record edited by hand or saved by an older
/// version cannot break them.
pub fn normalized(stored: &[ItemStack]) -> Vec<ItemStack> {
    let mut inv = Vec::with_capacity(stored.len().min(MAX_STACKS));
    for s in stored {
        add_item(&mut inv, s.item_id, s.count);
    }
    inv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_item_has_a_name() {
        for (id, name) in ITEMS {
            assert_eq!(item_name(*id), Some(*name));
        }
        assert_eq!(item_name(0), None);
        assert_eq!(item_name(9_999), None);
    }

    #[test]
    fn stacks_fill_up_then_overflow_is_dropped() {
        let mut inv = Vec::new();
        assert_eq!(add_item(&mut inv, 1, 5), 5);
        assert_eq!(add_item(&mut inv, 1, MAX_STACK), MAX_STACK);
        assert_eq!(inv.len(), 2);
        assert_eq!(inv[0].count, MAX_STACK);
        assert_eq!(inv[1].count, 5);
        for id in 100..200 {
            add_item(&mut inv, id, 1);
        }
        assert_eq!(inv.len(), MAX_STACKS);
        // Full: a new item is dropped, an existing stack with room still grows.
        assert_eq!(add_item(&mut inv, 500, 1), 0);
        assert_eq!(add_item(&mut inv, 1, 3), 3);
        assert_eq!(add_item(&mut inv, 1, u32::MAX), MAX_STACK - 8);
        assert!(inv.iter().all(|s| s.count <= MAX_STACK && s.count > 0));
    }

    #[test]
    fn stored_inventories_are_brought_within_bounds() {
        let stored: Vec<_> = (0..200)
            .map(|i| ItemStack {
                item_id: i % 3,
                count: if i == 5 { 0 } else { 60_000 },
            })
            .collect();
        let inv = normalized(&stored);
        assert_eq!(inv.len(), MAX_STACKS);
        assert!(inv.iter().all(|s| s.count <= MAX_STACK && s.count > 0));
    }
}
