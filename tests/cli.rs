//! The admin command line against the real binary, with the server stopped and running.

mod common;

use common::{Process, run, write_config};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn s(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

#[test]
fn init_creates_a_private_key_and_never_overwrites() {
    let dir = tempfile::tempdir().expect("tempdir");
    let target = dir.path().join("site");
    let (code, out, err) = run(&["init", "--dir", s(&target)], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("master key") && out.contains("easel.toml"),
        "{out}"
    );
    let key = target.join("master.key");
    assert_eq!(
        std::fs::metadata(&key).expect("key").permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(target.join("easel-data"))
            .expect("data")
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
    let before = std::fs::read(&key).expect("read key");

    let (code, _, err) = run(&["init", "--dir", s(&target)], &[]);
    assert_ne!(code, 0);
    assert!(
        err.contains("already exists") && err.contains("never overwrites"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&key).expect("read key"),
        before,
        "the key is untouched"
    );

    // The written config is valid and points at the new files.
    let cfg = target.join("easel.toml");
    let (code, out, err) = run(&["--config", s(&cfg), "config", "check"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("key file {}", target.join("master.key").display())),
        "{out}"
    );
}

#[test]
fn a_world_readable_master_key_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, _, err) = run(&["init", "--dir", s(dir.path())], &[]);
    assert_eq!(code, 0, "{err}");
    let key = dir.path().join("master.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let cfg = dir.path().join("easel.toml");
    let (code, _, err) = run(
        &["--config", s(&cfg), "serve"],
        &[("EASEL_SERVER__LISTEN", "127.0.0.1:0")],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("chmod 600") && err.contains("mode 644"),
        "{err}"
    );
}

fn burst(cfg: &Path, count: u64) {
    let (code, out, err) = run(
        &[
            "--config",
            s(cfg),
            "debug",
            "write-burst",
            "--count",
            &count.to_string(),
            "--writers",
            "8",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("ack ")).count() as u64,
        count
    );
}

async fn count_records(data_dir: &Path) -> u64 {
    let store = easel::store::Store::open(data_dir, &Default::default(), &easel::app::migrations())
        .expect("open");
    let n = store
        .read(|r| {
            use easel::store::Reader;
            r.count(&easel::store::burst::BURST)
        })
        .await
        .expect("count");
    store.close().await;
    n
}

#[tokio::test]
async fn backup_and_restore_work_on_a_stopped_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), "");
    burst(&cfg, 300);
    let backup = dir.path().join("snap.redb");
    let (code, out, err) = run(&["--config", s(&cfg), "backup", s(&backup)], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("opened the database directly") && out.contains("records"),
        "{out}"
    );

    let (code, _, err) = run(&["--config", s(&cfg), "backup", s(&backup)], &[]);
    assert_eq!(code, 1, "an existing backup file is never overwritten");
    assert!(err.contains("already exists"), "{err}");

    burst(&cfg, 500); // more data after the backup
    assert_eq!(count_records(&dir.path().join("data")).await, 500);
    let (code, out, err) = run(&["--config", s(&cfg), "restore", s(&backup)], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("restored") && out.contains("kept at"), "{out}");
    assert_eq!(count_records(&dir.path().join("data")).await, 300);
}

#[tokio::test]
async fn with_the_server_running_commands_go_through_the_admin_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), "");
    let socket = dir.path().join("data").join(easel::control::SOCKET_FILE);
    let server = Process::serve(&cfg, &[]);
    assert_eq!(
        std::fs::metadata(&socket)
            .expect("socket")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    let backup = dir.path().join("live.redb");
    let (code, out, err) = run(&["--config", s(&cfg), "backup", s(&backup)], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("admin socket"), "{out}");
    assert!(backup.is_file());

    let (code, _, err) = run(&["--config", s(&cfg), "restore", s(&backup)], &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("server is running") && err.contains("stop it"),
        "{err}"
    );

    let key_before = std::fs::read_to_string(dir.path().join("master.key")).expect("key");
    let (code, out, err) = run(&["--config", s(&cfg), "keys", "rotate-master"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("master key rotated") && out.contains("admin socket"),
        "{out}"
    );
    let key_after = std::fs::read_to_string(dir.path().join("master.key")).expect("key");
    assert_ne!(key_before, key_after);

    assert!(server.stop().success());
    assert!(!socket.exists(), "the socket is removed on shutdown");
    // The rotated key opens the database on the next start.
    let again = Process::serve(&cfg, &[]);
    let ready = common::http()
        .get(again.url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    assert!(again.stop().success());

    // The hidden load tool never writes into a data dir that belongs to a server.
    let (code, _, err) = run(
        &["--config", s(&cfg), "debug", "write-burst", "--count", "1"],
        &[],
    );
    assert_eq!(code, 1);
    assert!(err.contains("scratch data dir"), "{err}");
}
