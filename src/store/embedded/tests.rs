//! The embedded store's tests: what a reopened file carries on, the bounds, the faults.

use super::*;
use crate::correlate::{Correlator, Inventory};
use crate::diagnose::Diagnoser;
use crate::incidents::IncidentRules;
use crate::pipeline::Pipeline;
use crate::store::Sent;

const SEED: &str = "../shared/examples/oidc-to-run-job-then-fixed";

fn pipeline() -> Pipeline {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let inventory = Inventory::load(&root.join(SEED).join("jobs")).unwrap();
    let mut p = Pipeline::new(
        IncidentRules::default(),
        1000,
        Correlator::new(Some(inventory), None),
        Diagnoser::default(),
    );
    p.track_changes();
    p
}

fn seed_lines() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(root.join(SEED).join("logs.ndjson"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// Feeds `lines` and commits their changes; returns the new outbox rows.
fn feed(p: &mut Pipeline, store: &EmbeddedStore, lines: &[String]) -> Vec<OutboxRow> {
    let mut alerts = Vec::new();
    for l in lines {
        p.process_item(l.as_bytes(), &mut alerts);
    }
    store.commit(p.take_changes(alerts)).unwrap()
}

#[test]
fn a_reopened_store_carries_incidents_dedup_keys_and_the_outbox_on() {
    let dir = tempfile::tempdir().unwrap();
    let lines = seed_lines();
    let first_success = lines
        .iter()
        .position(|l| l.contains("URL_CRAWLED"))
        .unwrap();
    {
        let store = EmbeddedStore::open(dir.path(), 1000).unwrap();
        let mut p = pipeline();
        let rows = feed(&mut p, &store, &lines[..first_success]);
        assert_eq!(rows.len(), 1, "the firing alert goes to the outbox");
        assert_eq!(rows[0].alert.event.as_str(), "firing");
    }
    // A new process: the incident is open, the keys known, the alert still undelivered.
    let store = EmbeddedStore::open(dir.path(), 1000).unwrap();
    let state = store.load().unwrap();
    assert_eq!(state.incidents.len(), 1);
    assert_eq!(state.incidents[0].0.job_id(), "commit-worker");
    assert_eq!(state.dedup_keys.len(), first_success);
    assert_eq!(state.outbox.len(), 1);

    let mut p = pipeline();
    p.restore(&state);
    p.track_changes();
    // Redelivered entries change nothing; the success resolves the same incident.
    let rows = feed(&mut p, &store, &lines);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].alert.event.as_str(), "resolved");
    assert_eq!(rows[0].alert.incident_id, state.outbox[0].alert.incident_id);
    assert_eq!(p.stats.duplicates as usize, first_success);

    // Recording both deliveries empties the outbox; the ended incident is gone.
    let sent = Changes {
        sent: vec![
            Sent::delivered(state.outbox[0].id),
            Sent::delivered(rows[0].id),
        ],
        ..Changes::default()
    };
    store.commit(sent).unwrap();
    let state = store.load().unwrap();
    assert!(state.outbox.is_empty());
    assert!(state.incidents.is_empty());
    assert_eq!(state.dedup_keys.len(), lines.len());
}

/// A 401 of `job_id` at minute `n`.
fn failure_of(job_id: &str, n: usize) -> String {
    let line = seed_lines()
        .into_iter()
        .find(|l| l.contains("UNAUTHENTICATED"))
        .unwrap();
    let mut e: serde_json::Value = serde_json::from_str(&line).unwrap();
    e["resource"]["labels"]["job_id"] = job_id.into();
    e["insertId"] = format!("{job_id}-{n}").into();
    e["timestamp"] = format!("2026-03-02T02:{n:02}:07Z").into();
    e.to_string()
}

#[test]
fn evicted_and_expired_incidents_are_deleted_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let inventory = Inventory::load(&root.join(SEED).join("jobs")).unwrap();
    let rules = IncidentRules {
        max_tracked_jobs: 2,
        pending_expiry: std::time::Duration::from_secs(600),
        ..Default::default()
    };
    let new_pipeline = || {
        let mut p = Pipeline::new(
            rules.clone(),
            1000,
            Correlator::new(Some(inventory.clone()), None),
            Diagnoser::default(),
        );
        p.track_changes();
        p
    };
    let names = |store: &EmbeddedStore| -> Vec<String> {
        let mut n: Vec<String> = store
            .load()
            .unwrap()
            .incidents
            .into_iter()
            .map(|(j, _)| j.job_id)
            .collect();
        n.sort();
        n
    };
    let store = EmbeddedStore::open(dir.path(), 1000).unwrap();
    let mut p = new_pipeline();
    // a, b, then c: over the cap, a (the oldest) goes, in the same commit.
    let lines: Vec<String> = ["a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(n, j)| failure_of(j, n))
        .collect();
    feed(&mut p, &store, &lines);
    assert_eq!(names(&store), ["b", "c"]);
    assert_eq!(p.stats.incidents_evicted, 1);
    // Restarted: b and c only; d 15 minutes later expires both (10 minutes' expiry).
    drop(p);
    let mut p = new_pipeline();
    p.restore(&store.load().unwrap());
    feed(&mut p, &store, &[failure_of("d", 17)]);
    assert_eq!(names(&store), ["d"]);
    assert_eq!(p.stats.incidents_expired, 2);
}

#[test]
fn a_cap_lowered_since_the_state_was_written_trims_it_at_the_first_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), 1000).unwrap();
    let mut p = pipeline();
    let lines: Vec<String> = (0..3).map(|n| failure_of(&format!("j{n}"), n)).collect();
    feed(&mut p, &store, &lines);
    assert_eq!(store.load().unwrap().incidents.len(), 3);
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut p = Pipeline::new(
        IncidentRules {
            max_tracked_jobs: 1,
            ..Default::default()
        },
        1000,
        Correlator::new(
            Some(Inventory::load(&root.join(SEED).join("jobs")).unwrap()),
            None,
        ),
        Diagnoser::default(),
    );
    p.restore(&store.load().unwrap());
    p.track_changes();
    store.commit(p.take_changes(Vec::new())).unwrap();
    let state = store.load().unwrap();
    assert_eq!(state.incidents.len(), 1);
    assert_eq!(state.incidents[0].0.job_id, "j2");
}

#[test]
fn dedup_keys_are_bounded_and_the_oldest_go_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), 3).unwrap();
    for keys in [vec![1u128, 2], vec![3, 4], vec![4, 5]] {
        store
            .commit(Changes {
                dedup_keys: keys,
                ..Changes::default()
            })
            .unwrap();
    }
    assert_eq!(store.load().unwrap().dedup_keys, vec![3, 4, 5]);
}

/// "No space left on device" (28 on Linux).
const ENOSPC: i32 = 28;

#[test]
fn io_errors_mean_reopen_damage_means_give_up_and_a_held_lock_means_wait() {
    use redb::{DatabaseError, Error as E, StorageError};
    let os = |code| E::Io(std::io::Error::from_raw_os_error(code));
    let cases: Vec<(E, Fault)> = vec![
        (os(ENOSPC), Fault::Reopen),
        (os(5 /* EIO */), Fault::Reopen),
        (os(13 /* EACCES */), Fault::Reopen),
        (E::PreviousIo, Fault::Reopen),
        (E::DatabaseClosed, Fault::Reopen),
        (E::TransactionPoisoned, Fault::Reopen),
        (StorageError::PreviousIo.into(), Fault::Reopen),
        (E::Corrupted("Invalid magic number".into()), Fault::Damaged),
        (
            E::Io(std::io::Error::new(
                ErrorKind::InvalidData,
                "not a redb file",
            )),
            Fault::Damaged,
        ),
        (E::UpgradeRequired(2), Fault::Damaged),
        (E::TableIsMultimap("incidents".into()), Fault::Damaged),
        (DatabaseError::DatabaseAlreadyOpen.into(), Fault::Retry),
        (E::WouldBlock, Fault::Retry),
    ];
    for (e, want) in cases {
        assert_eq!(classify(&e), want, "{e}");
    }
    let path = Path::new("/state/schedwatch.redb");
    assert!(store_error(path, E::PreviousIo).needs_reopen());
    assert!(store_error(path, os(ENOSPC)).is_retryable());
    let damaged = store_error(path, E::Corrupted("Invalid magic number".into()));
    assert!(!damaged.is_retryable() && !damaged.needs_reopen());
    assert!(damaged.to_string().contains("move it aside"), "{damaged}");
    let busy = store_error(path, DatabaseError::DatabaseAlreadyOpen);
    assert!(busy.is_retryable() && !busy.needs_reopen());
}

#[test]
fn a_reopened_store_keeps_every_commit_and_takes_more() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = EmbeddedStore::open(dir.path(), 10).unwrap();
    let keys = |keys: Vec<u128>| Changes {
        dedup_keys: keys,
        ..Changes::default()
    };
    store.commit(keys(vec![1, 2])).unwrap();
    store.reopen().unwrap();
    assert_eq!(store.load().unwrap().dedup_keys, vec![1, 2]);
    store.commit(keys(vec![3])).unwrap();
    // Reopened again, and by another process after that: the lock was released each time.
    store.reopen().unwrap();
    drop(store);
    let store = EmbeddedStore::open(dir.path(), 10).unwrap();
    assert_eq!(store.load().unwrap().dedup_keys, vec![1, 2, 3]);
}

#[test]
fn a_file_replaced_by_garbage_or_removed_is_damaged_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = EmbeddedStore::open(dir.path(), 10).unwrap();
    let file = dir.path().join(FILE_NAME);
    // Replaced while open (as another program would: a new file renamed over it).
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, b"this is not a redb file\n".repeat(1000)).unwrap();
    std::fs::rename(&garbage, &file).unwrap();
    let err = store.reopen().expect_err("garbage is refused");
    assert!(matches!(err, StoreError::Damaged { .. }), "{err:?}");
    assert!(err.to_string().contains(FILE_NAME), "{err}");
    // Closed now: every call says so, and asks for a reopen.
    let closed = store.load().expect_err("closed");
    assert!(closed.needs_reopen(), "{closed:?}");
    assert!(matches!(
        EmbeddedStore::open(dir.path(), 10).err(),
        Some(StoreError::Damaged { .. })
    ));

    std::fs::remove_file(&file).unwrap();
    let gone = store.reopen().expect_err("a missing file is not made anew");
    assert!(matches!(gone, StoreError::Damaged { .. }), "{gone:?}");
    assert!(!file.exists());
}

#[test]
fn a_second_opener_of_the_same_file_is_refused_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let _owner = EmbeddedStore::open(dir.path(), 10).unwrap();
    let err = EmbeddedStore::open(dir.path(), 10).err().expect("refused");
    assert!(err.to_string().contains(FILE_NAME), "{err}");
}

#[test]
fn an_incident_stored_for_a_job_the_grammar_refuses_is_left_behind() {
    let dir = tempfile::tempdir().unwrap();
    let store = EmbeddedStore::open(dir.path(), 1000).unwrap();
    let lines = seed_lines();
    let first_success = lines
        .iter()
        .position(|l| l.contains("URL_CRAWLED"))
        .unwrap();
    feed(&mut pipeline(), &store, &lines[..first_success]);
    // A version that took any label stored the same incident for a forged job id.
    let tx = store.db().unwrap().begin_write().unwrap();
    {
        let mut incidents = tx.open_table(INCIDENTS).unwrap();
        let (name, value) = {
            let (k, v) = incidents.iter().unwrap().next().unwrap().unwrap();
            (
                k.value().to_owned(),
                String::from_utf8(v.value().to_vec()).unwrap(),
            )
        };
        let forged_name = name.replace("commit-worker", "x\n# forged");
        let forged = value.replace("commit-worker", "x\\n# forged");
        incidents
            .insert(forged_name.as_str(), forged.as_bytes())
            .unwrap();
    }
    tx.commit().unwrap();
    let state = store.load().expect("starts");
    assert_eq!(state.incidents.len(), 1);
    assert_eq!(state.incidents[0].0.job_id(), "commit-worker");
}
