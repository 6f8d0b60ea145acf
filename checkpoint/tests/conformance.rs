//! One suite for every checkpoint store: each case is an `async fn(Arc<dyn Store>)`, and
//! `conformance!` runs it against real Redis (`redis::case`), Postgres (`postgres::case`)
//! and SQLite (`sqlite::case`). See `common` for how the stores are found and isolated.
//!
//! The fence is the point: a write carrying an older epoch is refused atomically, however
//! it races the newer owner's writes.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::StreamExt;
use gaia_checkpoint::{Checkpoint, FormatError, Store, Written};

use common::{ck, forget, head, world};

/// One module per store, one `#[tokio::test]` per case in each.
macro_rules! suite {
    ($store:ident: $($case:ident),+ $(,)?) => {
        mod $store {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let Some(test) = crate::common::$store().await else { return };
                    crate::$case(test.store()).await;
                }
            )+
        }
    };
}

macro_rules! conformance {
    ($($case:ident),+ $(,)?) => {
        suite!(redis: $($case),+);
        suite!(postgres: $($case),+);
        suite!(sqlite: $($case),+);
    };
}

conformance!(
    unknown_world_reads_none,
    write_then_read_returns_the_exact_bytes,
    newer_tick_of_the_same_epoch_overwrites,
    same_tick_again_is_written,
    older_tick_of_the_same_epoch_is_stale,
    higher_epoch_overwrites,
    lower_epoch_is_fenced,
    large_batch_answers_each_checkpoint_in_order,
    batch_naming_a_world_twice_keeps_the_newest,
    racing_owners_end_with_the_higher_epoch,
    overlapping_batches_in_opposite_orders_both_succeed,
    state_of_64_kib_round_trips,
    delete_forgets_the_world_and_its_fence,
    corrupt_value_is_read_back_but_not_decoded,
);

async fn write(store: &Arc<dyn Store>, checkpoint: &Arc<Checkpoint>) -> Written {
    let answers = store.write(std::slice::from_ref(checkpoint)).await.unwrap();
    assert_eq!(answers.len(), 1, "one answer per checkpoint");
    answers[0]
}

async fn unknown_world_reads_none(store: Arc<dyn Store>) {
    assert_eq!(store.read(&world()).await.unwrap(), None);
}

async fn write_then_read_returns_the_exact_bytes(store: Arc<dyn Store>) {
    let w = world();
    let c = ck(&w, 3, 17);
    assert_eq!(write(&store, &c).await, Written::Ok);
    let bytes = store.read(&w).await.unwrap().unwrap();
    assert_eq!(&bytes, c.bytes());
    assert_eq!(Checkpoint::decode(&w, bytes).unwrap(), *c);
    forget(&store, [&w]).await;
}

async fn newer_tick_of_the_same_epoch_overwrites(store: Arc<dyn Store>) {
    let w = world();
    assert_eq!(write(&store, &ck(&w, 3, 10)).await, Written::Ok);
    assert_eq!(write(&store, &ck(&w, 3, 11)).await, Written::Ok);
    assert_eq!(head(&store, &w).await, Some((3, 11)));
    forget(&store, [&w]).await;
}

/// A retried write (the answer to the first was lost) must not look like a conflict.
async fn same_tick_again_is_written(store: Arc<dyn Store>) {
    let w = world();
    let c = ck(&w, 3, 10);
    assert_eq!(write(&store, &c).await, Written::Ok);
    assert_eq!(write(&store, &c).await, Written::Ok);
    assert_eq!(store.read(&w).await.unwrap().as_ref(), Some(c.bytes()));
    forget(&store, [&w]).await;
}

async fn older_tick_of_the_same_epoch_is_stale(store: Arc<dyn Store>) {
    let w = world();
    let newer = ck(&w, 3, 10);
    assert_eq!(write(&store, &newer).await, Written::Ok);
    assert_eq!(write(&store, &ck(&w, 3, 9)).await, Written::Stale { tick: 10 });
    assert_eq!(store.read(&w).await.unwrap().as_ref(), Some(newer.bytes()));
    forget(&store, [&w]).await;
}

async fn higher_epoch_overwrites(store: Arc<dyn Store>) {
    let w = world();
    assert_eq!(write(&store, &ck(&w, 3, 1000)).await, Written::Ok);
    // The new owner restarts from an older checkpoint: its ticks may be lower.
    assert_eq!(write(&store, &ck(&w, 4, 5)).await, Written::Ok);
    assert_eq!(head(&store, &w).await, Some((4, 5)));
    forget(&store, [&w]).await;
}

async fn lower_epoch_is_fenced(store: Arc<dyn Store>) {
    let w = world();
    let owner = ck(&w, 4, 5);
    assert_eq!(write(&store, &owner).await, Written::Ok);
    // The old owner, presumed dead, comes back with a later tick: refused.
    assert_eq!(write(&store, &ck(&w, 3, 1000)).await, Written::Fenced { epoch: 4 });
    assert_eq!(write(&store, &ck(&w, 3, 5)).await, Written::Fenced { epoch: 4 });
    assert_eq!(store.read(&w).await.unwrap().as_ref(), Some(owner.bytes()));
    forget(&store, [&w]).await;
}

/// More worlds than one Redis pipeline or one SQL statement holds, each answered in its
/// place: fenced, stale and written ones interleaved across the chunks.
async fn large_batch_answers_each_checkpoint_in_order(store: Arc<dyn Store>) {
    const WORLDS: usize = 1200;
    let worlds: Vec<String> = (0..WORLDS).map(|_| world()).collect();
    // What the store holds before, by i % 4: a later owner, a later tick of ours, an
    // earlier owner, nothing.
    let before: Vec<Arc<Checkpoint>> = worlds
        .iter()
        .enumerate()
        .filter_map(|(i, w)| match i % 4 {
            0 => Some(ck(w, 5, 100)),
            1 => Some(ck(w, 3, 100)),
            2 => Some(ck(w, 2, 999)),
            _ => None,
        })
        .collect();
    assert!(store.write(&before).await.unwrap().iter().all(|w| *w == Written::Ok));

    let batch: Vec<Arc<Checkpoint>> = worlds.iter().map(|w| ck(w, 3, 50)).collect();
    let answers = store.write(&batch).await.unwrap();
    assert_eq!(answers.len(), WORLDS);
    for (i, answer) in answers.iter().enumerate() {
        let expected = match i % 4 {
            0 => Written::Fenced { epoch: 5 },
            1 => Written::Stale { tick: 100 },
            _ => Written::Ok,
        };
        assert_eq!(*answer, expected, "answer {i}");
    }

    let heads: Vec<Option<(u64, u64)>> =
        futures_util::stream::iter(&worlds).map(|w| head(&store, w)).buffered(32).collect().await;
    for (i, stored) in heads.into_iter().enumerate() {
        let expected = match i % 4 {
            0 => (5, 100),
            1 => (3, 100),
            _ => (3, 50),
        };
        assert_eq!(stored, Some(expected), "world {i}");
    }
    forget(&store, &worlds).await;
}

/// As if only the newest of a world's checkpoints were in the batch, and the others were
/// written after it.
async fn batch_naming_a_world_twice_keeps_the_newest(store: Arc<dyn Store>) {
    let (a, b) = (world(), world());
    let answers = store.write(&[ck(&a, 3, 5), ck(&b, 3, 1), ck(&a, 3, 9), ck(&a, 3, 7)]).await.unwrap();
    assert_eq!(answers, [Written::Stale { tick: 9 }, Written::Ok, Written::Ok, Written::Stale { tick: 9 }]);
    assert_eq!(head(&store, &a).await, Some((3, 9)));

    // Two owners in one batch: the older one is fenced by the newer, whatever the order.
    let answers = store.write(&[ck(&b, 4, 1), ck(&b, 3, 50)]).await.unwrap();
    assert_eq!(answers, [Written::Ok, Written::Fenced { epoch: 4 }]);
    assert_eq!(head(&store, &b).await, Some((4, 1)));

    // Both older than what is stored: both refused as the newest of them is.
    let answers = store.write(&[ck(&a, 3, 6), ck(&a, 3, 8)]).await.unwrap();
    assert_eq!(answers, [Written::Stale { tick: 9 }, Written::Stale { tick: 9 }]);
    let answers = store.write(&[ck(&b, 2, 6), ck(&b, 3, 8)]).await.unwrap();
    assert_eq!(answers, [Written::Fenced { epoch: 4 }, Written::Fenced { epoch: 4 }]);
    // The newest is stale, the other is of an older owner still.
    let answers = store.write(&[ck(&b, 3, 70), ck(&b, 4, 0)]).await.unwrap();
    assert_eq!(answers, [Written::Fenced { epoch: 4 }, Written::Stale { tick: 1 }]);
    assert_eq!(head(&store, &b).await, Some((4, 1)));
    forget(&store, [&a, &b]).await;
}

#[derive(Debug)]
struct Attempt {
    epoch: u64,
    tick: u64,
    /// Positions on one counter, taken just before the write and just after its answer.
    started: u64,
    answered: u64,
    written: Written,
}

/// The old owner (epoch 1) and the new one (epoch 2) write one world from 50 tasks each,
/// the new owner's tasks joining over ~10 ms so that both are stored for a while.
/// What can be checked from outside: the new owner is never fenced; every old-owner
/// write that began after a new-owner write was answered `Ok` is fenced (the store held
/// epoch 2 for its whole duration); and the store ends with the new owner's last tick.
async fn racing_owners_end_with_the_higher_epoch(store: Arc<dyn Store>) {
    const TASKS: u64 = 50;
    const WRITES: u64 = 5;
    let w = world();
    assert_eq!(write(&store, &ck(&w, 1, 0)).await, Written::Ok);

    let clock = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..TASKS {
        for epoch in [1, 2] {
            let (store, clock, w) = (Arc::clone(&store), Arc::clone(&clock), w.clone());
            tasks.spawn(async move {
                if epoch == 2 {
                    tokio::time::sleep(std::time::Duration::from_micros(200 * i)).await;
                }
                let mut attempts = Vec::new();
                for k in 0..WRITES {
                    let tick = 1 + k * TASKS + i;
                    let started = clock.fetch_add(1, Ordering::SeqCst);
                    let written = store.write(&[ck(&w, epoch, tick)]).await.unwrap()[0];
                    let answered = clock.fetch_add(1, Ordering::SeqCst);
                    attempts.push(Attempt { epoch, tick, started, answered, written });
                }
                attempts
            });
        }
    }
    let attempts: Vec<Attempt> = tasks.join_all().await.into_iter().flatten().collect();

    for a in &attempts {
        match (a.epoch, a.written) {
            (_, Written::Ok) | (1, Written::Fenced { epoch: 2 }) => {}
            (_, Written::Stale { tick }) => assert!(tick > a.tick, "{a:?}"),
            _ => panic!("unexpected answer {a:?}"),
        }
    }
    let first_new = attempts.iter().filter(|a| a.epoch == 2 && a.written == Written::Ok).map(|a| a.answered).min();
    let first_new = first_new.expect("some write of the new owner was stored");
    let late_old: Vec<&Attempt> = attempts.iter().filter(|a| a.epoch == 1 && a.started > first_new).collect();
    for a in &late_old {
        assert_eq!(a.written, Written::Fenced { epoch: 2 }, "old owner written after the new one: {a:?}");
    }

    let last = ck(&w, 2, WRITES * TASKS);
    let last_attempt = attempts.iter().find(|a| a.epoch == 2 && a.tick == last.tick()).unwrap();
    assert_eq!(last_attempt.written, Written::Ok, "nothing can refuse the newest checkpoint");
    assert_eq!(store.read(&w).await.unwrap().as_ref(), Some(last.bytes()));
    // And the old owner stays out.
    assert_eq!(write(&store, &ck(&w, 1, 10_000)).await, Written::Fenced { epoch: 2 });
    let old_ok = attempts.iter().filter(|a| a.epoch == 1 && a.written == Written::Ok).count();
    eprintln!("old owner: {old_ok} writes stored, {} begun after the new owner's first was stored", late_old.len());
    forget(&store, [&w]).await;
}

/// Two writers' batches over the same worlds, in opposite orders, at once: neither may
/// fail (a database taking row locks in batch order could deadlock here).
async fn overlapping_batches_in_opposite_orders_both_succeed(store: Arc<dyn Store>) {
    let worlds: Vec<String> = (0..800).map(|_| world()).collect();
    for tick in 0..5 {
        let old: Vec<Arc<Checkpoint>> = worlds.iter().map(|w| ck(w, 1, tick)).collect();
        let new: Vec<Arc<Checkpoint>> = worlds.iter().rev().map(|w| ck(w, 2, tick)).collect();
        let (old, new) = tokio::join!(store.write(&old), store.write(&new));
        assert!(old.unwrap().iter().all(|w| matches!(w, Written::Ok | Written::Fenced { epoch: 2 })));
        assert!(new.unwrap().iter().all(|w| *w == Written::Ok));
    }
    for w in worlds.iter().step_by(50) {
        assert_eq!(head(&store, w).await, Some((2, 4)));
    }
    forget(&store, &worlds).await;
}

fn state(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// One large world, then a batch larger than one SQL statement's byte budget.
async fn state_of_64_kib_round_trips(store: Arc<dyn Store>) {
    let w = world();
    let c = Arc::new(Checkpoint::new(&w, 1, 1, 1, &state(64 << 10, 7)));
    assert_eq!(write(&store, &c).await, Written::Ok);
    let back = Checkpoint::decode(&w, store.read(&w).await.unwrap().unwrap()).unwrap();
    assert_eq!(back.state(), state(64 << 10, 7));

    let worlds: Vec<String> = (0..160).map(|_| world()).collect();
    let batch: Vec<Arc<Checkpoint>> = worlds
        .iter()
        .enumerate()
        .map(|(i, w)| Arc::new(Checkpoint::new(w, 1, 1, 1, &state(64 << 10, i as u8))))
        .collect();
    assert!(store.write(&batch).await.unwrap().iter().all(|w| *w == Written::Ok));
    for (i, w) in worlds.iter().enumerate().step_by(16) {
        assert_eq!(store.read(w).await.unwrap().as_ref(), Some(batch[i].bytes()), "world {i}");
    }
    forget(&store, worlds.iter().chain([&w])).await;
}

async fn delete_forgets_the_world_and_its_fence(store: Arc<dyn Store>) {
    let (w, other) = (world(), world());
    assert_eq!(write(&store, &ck(&w, 4, 10)).await, Written::Ok);
    assert_eq!(write(&store, &ck(&other, 4, 10)).await, Written::Ok);
    store.delete(&w).await.unwrap();
    assert_eq!(store.read(&w).await.unwrap(), None);
    assert_eq!(head(&store, &other).await, Some((4, 10)), "only the named world is deleted");
    assert_eq!(write(&store, &ck(&w, 1, 1)).await, Written::Ok);
    assert_eq!(head(&store, &w).await, Some((1, 1)));
    store.delete(&world()).await.unwrap();
    forget(&store, [&w, &other]).await;
}

async fn corrupt_value_is_read_back_but_not_decoded(store: Arc<dyn Store>) {
    let (w, cut) = (world(), world());
    let garbage = Bytes::from_static(b"\x00not a checkpoint\xff");
    assert_eq!(write(&store, &Arc::new(Checkpoint::raw(&w, 1, 1, garbage.clone()))).await, Written::Ok);
    let back = store.read(&w).await.unwrap().unwrap();
    assert_eq!(back, garbage);
    assert_eq!(Checkpoint::decode(&w, back), Err(FormatError::BadMagic));

    let good = ck(&cut, 1, 1);
    let truncated = good.bytes().slice(..good.bytes().len() - 1);
    assert_eq!(write(&store, &Arc::new(Checkpoint::raw(&cut, 1, 1, truncated))).await, Written::Ok);
    let back = store.read(&cut).await.unwrap().unwrap();
    assert!(matches!(Checkpoint::decode(&cut, back), Err(FormatError::Truncated { .. })));
    forget(&store, [&w, &cut]).await;
}

/// Heavy (~750 MB per store), so run by hand: `cargo test -p gaia-checkpoint --release
/// --test conformance -- --ignored`.
mod heavy {
    macro_rules! heavy {
        ($($store:ident),+) => {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                #[ignore = "writes ~750 MB"]
                async fn $store() {
                    let Some(test) = crate::common::$store().await else { return };
                    crate::a_batch_longer_than_the_store_timeouts_is_written(test.store()).await;
                }
            )+
        };
    }
    heavy!(redis, postgres, sqlite);
}

/// A backlog that takes longer to write than a store's request or pool timeouts (2 s)
/// still goes through: a part of it waiting behind the rest must not time out, or the
/// batch, and every retry of it, would fail.
async fn a_batch_longer_than_the_store_timeouts_is_written(store: Arc<dyn Store>) {
    let worlds: Vec<String> = (0..12_000).map(|_| world()).collect();
    let batch: Vec<Arc<Checkpoint>> =
        worlds.iter().map(|w| Arc::new(Checkpoint::new(w, 1, 1, 1, &state(64 << 10, 1)))).collect();
    let started = std::time::Instant::now();
    let answers = store.write(&batch).await.unwrap();
    eprintln!("{}: {} x 64 KiB in {:.2?}", store.kind(), batch.len(), started.elapsed());
    assert!(answers.iter().all(|w| *w == Written::Ok));
    forget(&store, &worlds).await;
}
