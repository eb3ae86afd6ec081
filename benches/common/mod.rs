//! Helpers shared by the benches (each uses some).
#![allow(dead_code)]

/// Creates a member account and an API key for it with the server's own services;
/// returns the account id and the key's token.
pub async fn member_with_key(services: &easel::app::Services) -> (String, String) {
    let account = services
        .accounts
        .create(
            easel::accounts::NewAccount {
                email: "bench@example.com".into(),
                name: "Bench".into(),
                company: None,
                password: easel::crypto::Secret::new("bench password long".into()),
                role: easel::auth::Role::Member,
                adult: true,
                must_change_password: false,
            },
            easel::accounts::Actor::Cli,
        )
        .await
        .expect("account");
    let (_, key) = services
        .keys
        .create(
            &account.id,
            easel::auth::Role::Member,
            easel::keys::NewKey {
                name: "bench".into(),
                ..Default::default()
            },
            None,
        )
        .await
        .expect("key");
    (account.id, key.expose().clone())
}

/// Starts Easel in this process on 127.0.0.1 (port 0) with its data in `dir`, quiet
/// logs and cheap password hashing; `server` adds lines to `[server]`, `extra` adds
/// sections after it.
pub async fn start(dir: &std::path::Path, server: &str, extra: &str) -> easel::app::Running {
    let file = dir.join("easel.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{server}\n[storage]\ndata_dir = \"data\"\n[crypto]\nmaster_key_file = \"master.key\"\n[log]\nlevel = \"warn\"\n[auth]\nargon2_memory_kib = 1024\nargon2_iterations = 1\n{extra}"
        ),
    )
    .expect("config");
    let loaded = easel::config::load_from(Some(&file), Vec::new()).expect("config");
    let log = easel::app::logging::init(&loaded.config.log);
    easel::app::start(&loaded, log).await.expect("server")
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A figure of `/proc/PID/status` (`VmRSS:`, `VmHWM:`), in KiB; 0 when unreadable.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A multi-threaded tokio runtime for a bench's async part.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The middle one of `v` (the upper middle for an even count).
pub fn median(mut v: Vec<std::time::Duration>) -> std::time::Duration {
    v.sort();
    v[v.len() / 2]
}
