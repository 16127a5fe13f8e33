//! Known linearizable and non-linearizable histories.

use super::kv::{KvInput, KvModel, KvOutput};
use super::register::{RegisterInput, RegisterModel, RegisterOutput};
use super::{Budget, Operation, Verdict, check};

type KvOp = Operation<KvInput, KvOutput>;

fn put(client: u64, key: &str, value: &str, call: u64, ret: u64) -> KvOp {
    let input = KvInput::Put {
        key: key.into(),
        value: value.into(),
    };
    Operation::returned(client, input, call, KvOutput::Done, ret)
}

fn append(client: u64, key: &str, value: &str, call: u64, ret: u64) -> KvOp {
    let input = KvInput::Append {
        key: key.into(),
        value: value.into(),
    };
    Operation::returned(client, input, call, KvOutput::Done, ret)
}

fn get(client: u64, key: &str, seen: &str, call: u64, ret: u64) -> KvOp {
    let input = KvInput::Get { key: key.into() };
    Operation::returned(client, input, call, KvOutput::Value(seen.into()), ret)
}

fn put_unknown(client: u64, key: &str, value: &str, call: u64) -> KvOp {
    let input = KvInput::Put {
        key: key.into(),
        value: value.into(),
    };
    Operation::unknown(client, input, call)
}

fn kv(history: &[KvOp]) -> Verdict<String> {
    check(&KvModel, history, Budget::default())
}

#[test]
fn stale_read_is_rejected() {
    // The second write finished before the read began, yet the read saw the
    // first.
    let history = [
        put(1, "x", "a", 0, 1),
        put(1, "x", "b", 2, 3),
        get(2, "x", "a", 4, 5),
    ];
    assert!(kv(&history).is_violation());
}

#[test]
fn stale_read_after_newer_read_is_rejected() {
    // A concurrent write may be seen or not, but once one read saw it a
    // later read must too.
    let history = [
        put(1, "x", "a", 0, 10),
        get(2, "x", "a", 1, 2),
        get(3, "x", "", 3, 4),
    ];
    assert!(kv(&history).is_violation());
}

#[test]
fn lost_write_is_rejected() {
    // An acknowledged write that a later read does not see.
    let history = [put(1, "x", "a", 0, 1), get(2, "x", "", 2, 3)];
    assert!(kv(&history).is_violation());
    let history = [
        append(1, "x", "a", 0, 1),
        append(1, "x", "b", 2, 3),
        get(2, "x", "b", 4, 5),
    ];
    assert!(kv(&history).is_violation());
}

#[test]
fn duplicated_apply_is_rejected() {
    // One append, applied twice.
    let history = [append(1, "x", "a", 0, 1), get(2, "x", "aa", 2, 3)];
    assert!(kv(&history).is_violation());
    // Even when the append's outcome is unknown it may apply at most once.
    let history = [
        Operation::unknown(
            1,
            KvInput::Append {
                key: "x".into(),
                value: "a".into(),
            },
            0,
        ),
        get(2, "x", "aa", 2, 3),
    ];
    assert!(kv(&history).is_violation());
}

#[test]
fn concurrent_operations_are_accepted() {
    // A read concurrent with a write may see the old or the new value.
    let history = [
        put(1, "x", "a", 0, 10),
        get(2, "x", "", 1, 2),
        get(3, "x", "a", 3, 4),
        get(2, "x", "a", 11, 12),
    ];
    assert_eq!(kv(&history), Verdict::Linearizable);
    // Concurrent appends may land in either order; reads agree on one.
    let history = [
        append(1, "x", "a", 0, 5),
        append(2, "x", "b", 1, 6),
        get(3, "x", "b", 2, 3),
        get(3, "x", "ba", 7, 8),
    ];
    assert_eq!(kv(&history), Verdict::Linearizable);
}

#[test]
fn unknown_outcome_may_apply_late_or_never() {
    // Took effect, long after its call.
    let history = [
        put_unknown(1, "x", "a", 0),
        get(2, "x", "", 5, 6),
        get(2, "x", "a", 7, 8),
    ];
    assert_eq!(kv(&history), Verdict::Linearizable);
    // Never took effect.
    let history = [put_unknown(1, "x", "a", 0), get(2, "x", "", 5, 6)];
    assert_eq!(kv(&history), Verdict::Linearizable);
    // But once seen it stays.
    let history = [
        put_unknown(1, "x", "a", 0),
        get(2, "x", "a", 5, 6),
        get(2, "x", "", 7, 8),
    ];
    assert!(kv(&history).is_violation());
    // And it cannot take effect before its call.
    let history = [get(2, "x", "a", 0, 1), put_unknown(1, "x", "a", 2)];
    assert!(kv(&history).is_violation());
}

#[test]
fn violation_names_its_key() {
    let history = [
        put(1, "x", "a", 0, 1),
        put(1, "y", "a", 2, 3),
        get(2, "x", "a", 4, 5),
        get(2, "y", "", 6, 7),
    ];
    match kv(&history) {
        Verdict::NotLinearizable { key, ops, .. } => {
            assert_eq!(key, "y");
            assert_eq!(ops, vec![1, 3]);
        }
        other => panic!("expected a violation, got {other:?}"),
    }
}

#[test]
fn register_cas_semantics() {
    let cas = |from, to| RegisterInput::Cas { from, to };
    let history = [
        Operation::returned(1, RegisterInput::Write(1), 0, RegisterOutput::Write, 1),
        // Failed comparison: the register was not 2.
        Operation::returned(2, cas(2, 3), 2, RegisterOutput::Cas(false), 3),
        Operation::returned(2, cas(1, 3), 4, RegisterOutput::Cas(true), 5),
        Operation::returned(3, RegisterInput::Read, 6, RegisterOutput::Read(Some(3)), 7),
    ];
    assert_eq!(
        check(&RegisterModel, &history, Budget::default()),
        Verdict::Linearizable
    );
    // A "failed" cas whose comparison would have held is a violation.
    let history = [
        Operation::returned(1, RegisterInput::Write(1), 0, RegisterOutput::Write, 1),
        Operation::returned(2, cas(1, 3), 2, RegisterOutput::Cas(false), 3),
    ];
    assert!(check(&RegisterModel, &history, Budget::default()).is_violation());
    // A read of nil after a write is a lost write.
    let history = [
        Operation::returned(1, RegisterInput::Write(1), 0, RegisterOutput::Write, 1),
        Operation::returned(3, RegisterInput::Read, 2, RegisterOutput::Read(None), 3),
    ];
    assert!(check(&RegisterModel, &history, Budget::default()).is_violation());
}

#[test]
fn exhausted_budget_says_unknown() {
    // Many concurrent appends and a read that fits no order: proving that
    // takes more than a handful of steps.
    let mut history: Vec<KvOp> = (0..6)
        .map(|i| append(i, "x", &i.to_string(), 0, 100))
        .collect();
    history.push(get(99, "x", "nope", 101, 102));
    let tiny = Budget {
        steps_max: 50,
        time_max: None,
    };
    assert_eq!(check(&KvModel, &history, tiny), Verdict::Unknown);
    assert!(check(&KvModel, &history, Budget::default()).is_violation());
}

#[test]
fn unknown_writes_nobody_saw_are_pruned() {
    use super::kv::prune_invisible_unknowns;
    let unknown_append = |client, value: &str, call| {
        Operation::unknown(
            client,
            KvInput::Append {
                key: "x".into(),
                value: value.into(),
            },
            call,
        )
    };
    let history = [
        unknown_append(1, "a", 0),
        unknown_append(2, "b", 1),
        put_unknown(3, "x", "c", 2),
        get(4, "x", "b", 5, 6),
    ];
    let pruned = prune_invisible_unknowns(&history);
    assert_eq!(pruned.len(), 2, "only the append of b and the get stay");
    assert_eq!(kv(&pruned), Verdict::Linearizable);
    assert_eq!(kv(&history), Verdict::Linearizable);
    // Known outcomes always stay, seen or not.
    let history = [append(1, "x", "a", 0, 1), get(2, "x", "", 2, 3)];
    assert_eq!(prune_invisible_unknowns(&history).len(), 2);
    assert!(kv(&prune_invisible_unknowns(&history)).is_violation());
}

#[test]
fn unknown_reads_cost_the_search_nothing() {
    // Thirty reads whose outcome is unknown, concurrent with everything,
    // then two concurrent appends that a later read shows in the order the
    // search tries second. Were the unknown reads worth linearizing, the
    // backtracking over the appends would revisit every subset of them
    // (2^30 configurations); they are not, so a small budget suffices.
    let mut history: Vec<KvOp> = (0..30)
        .map(|i| Operation::unknown(i, KvInput::Get { key: "x".into() }, 0))
        .collect();
    history.push(append(40, "x", "a", 1, 3));
    history.push(append(41, "x", "b", 2, 4));
    history.push(get(42, "x", "ba", 5, 6));
    let small = Budget {
        steps_max: 10_000,
        time_max: None,
    };
    assert_eq!(check(&KvModel, &history, small), Verdict::Linearizable);
    // And they still cannot make a violation go away.
    history.push(get(43, "x", "ab", 7, 8));
    assert!(check(&KvModel, &history, small).is_violation());
}
