//! The update cycle.

use crate::support::*;

/// The update contract (DESIGN.md §2, execution model): an update must be
/// advanced before the next one is taken (otherwise the same entries
/// would be persisted twice or lost).
#[test]
#[should_panic(expected = "get_update called twice without advance")]
fn get_update_twice_without_advance_panics() {
    let mut f = replica(cfg(1), &[1], 1, 1);
    f.campaign();
    let _ = f.get_update();
    let _ = f.get_update();
}

/// The update contract (DESIGN.md §2): `advance` records that the update is durable, so
/// its entries and hard state are not handed out again; an idle replica
/// has no update.
#[test]
fn advance_marks_update_durable_and_idle_replica_has_no_update() {
    let mut f = replica(cfg(2), &[1, 1, 1], 1, 3);
    assert!(!f.has_update(), "nothing to do after start");
    f.tick();
    assert!(!f.has_update(), "a tick below the timeout changes nothing");
    f.step(append(1, 2, 2, (3, 1), vec![ent(4, 2)], 4));
    assert!(f.has_update());
    let u = f.get_update();
    assert_eq!(u.entries, vec![ent(4, 2)]);
    assert!(u.hard_state.is_some());
    assert!(
        u.committed_entries.is_empty(),
        "not durable yet, not applied yet"
    );
    f.log_reader_mut().append(&u.entries);
    f.advance(&u);
    assert_eq!(f.log().stable_last_index(), Index(4));
    let u = f.get_update();
    assert!(u.entries.is_empty() && u.hard_state.is_none());
    assert_eq!(u.committed_entries, vec![ent(4, 2)]);
    f.advance(&u);
    f.applied_to(Index(4));
    assert!(!f.has_update());
}
