//! Online backup taken while writers keep writing, then restored.

use easel::store::burst::{BURST, burst};
use easel::store::{Reader, Store, StoreError, StoreOptions, restore};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_during_writes_restores_to_a_consistent_equal_copy() {
    let dir = tempfile::tempdir().expect("tempdir");
    let live_dir = dir.path().join("live");
    let store = Store::open(
        &live_dir,
        &StoreOptions::default(),
        &easel::app::migrations(),
    )
    .expect("open");
    let acked = Arc::new(AtomicU64::new(0));
    let counter = acked.clone();
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            burst(
                &store,
                16,
                6000,
                128,
                None,
                Arc::new(move |_| {
                    counter.fetch_add(1, Ordering::Relaxed);
                }),
            )
            .await
        })
    };
    while acked.load(Ordering::Relaxed) < 1000 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let before = acked.load(Ordering::Relaxed);
    let file = dir.path().join("backup.redb");
    let report = store.backup_to(&file).await.expect("backup");
    let after = acked.load(Ordering::Relaxed);
    writer.await.expect("join").expect("burst");
    assert!(after > before, "writes went on during the backup");

    // Restore into a fresh data dir and compare record by record with the live store.
    let restored_dir = dir.path().join("restored");
    let restored = restore(
        &file,
        &restored_dir,
        easel::app::schema_version(),
        &easel::privacy::restore_carry(),
    )
    .expect("restore");
    assert_eq!(restored.records, report.records);
    let copy = Store::open(
        &restored_dir,
        &StoreOptions::default(),
        &easel::app::migrations(),
    )
    .expect("open copy");
    let rows = copy
        .read(|r| r.scan(&BURST, None, usize::MAX))
        .await
        .expect("scan copy");
    assert!(
        rows.len() as u64 >= before,
        "every write acknowledged before the backup is in it"
    );
    assert!(
        (rows.len() as u64) < 6000,
        "the backup is a snapshot, not the final state"
    );
    let originals = store
        .read(move |r| {
            rows.iter()
                .map(|(k, v)| Ok::<_, StoreError>((r.get(&BURST, k)?, v.clone())))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .expect("read live");
    for (live, backed_up) in originals {
        assert_eq!(live.as_ref(), Some(&backed_up));
    }
    copy.close().await;
    store.close().await;
}
