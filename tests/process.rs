//! The server as a process: signals, crashes and what it logs.

mod common;

use common::{Process, bin, wait_exit, write_config};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

#[test]
fn sigterm_lets_an_in_flight_request_finish_before_exit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), "");
    let mut server = Process::serve(&cfg, &[]);
    let body = br#"{"csp-report":{"blocked-uri":"inline"}}"#;
    let mut conn = TcpStream::connect(&server.addr).expect("connect");
    write!(
        conn,
        "POST /api/csp-report HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .expect("headers");
    conn.write_all(&body[..10]).expect("first half");
    std::thread::sleep(Duration::from_millis(200));

    server.signal(libc::SIGTERM);
    assert!(
        server.wait_for_log("draining", Duration::from_secs(5)),
        "{}",
        server.log_text()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        server.child.try_wait().expect("try_wait").is_none(),
        "exited with a request in flight"
    );

    conn.write_all(&body[10..]).expect("second half");
    let mut answer = String::new();
    conn.read_to_string(&mut answer).expect("answer");
    assert!(answer.starts_with("HTTP/1.1 204"), "{answer}");

    let status = wait_exit(&mut server.child, Duration::from_secs(10));
    assert!(status.success(), "{status}");
    assert!(
        server.wait_for_log("the database is closed", Duration::from_secs(2)),
        "{}",
        server.log_text()
    );
    // New connections were refused once draining began.
    assert!(TcpStream::connect(&server.addr).is_err());
}

fn post_report(url: &str, size: usize) -> u16 {
    let body = format!(
        r#"{{"csp-report":{{"blocked-uri":"{}"}}}}"#,
        "b".repeat(size)
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        common::http()
            .post(url)
            .body(body)
            .send()
            .await
            .expect("post")
            .status()
            .as_u16()
    })
}

#[test]
fn sighup_applies_a_valid_config_and_keeps_the_old_one_when_the_new_is_broken() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), "");
    let text = std::fs::read_to_string(&cfg).expect("read");
    let server = Process::serve(&cfg, &[]);
    let url = server.url("/api/csp-report");
    assert_eq!(post_report(&url, 3000), 204);

    // Lower the body limit and ask for a different port: the first applies live,
    // the second is logged as needing a restart.
    let changed = text
        .replace("workers = 2", "workers = 2\nmax_body_bytes = 2048")
        .replace("127.0.0.1:0", "127.0.0.1:1");
    std::fs::write(&cfg, changed).expect("write");
    server.signal(libc::SIGHUP);
    assert!(
        server.wait_for_log("config reloaded", Duration::from_secs(5)),
        "{}",
        server.log_text()
    );
    assert!(
        server.log_text().contains("server.listen"),
        "{}",
        server.log_text()
    );
    assert_eq!(post_report(&url, 3000), 413);
    assert_eq!(post_report(&url, 500), 204, "the old listener still serves");

    std::fs::write(&cfg, "[server\nbroken").expect("write");
    server.signal(libc::SIGHUP);
    assert!(
        server.wait_for_log("config reload refused", Duration::from_secs(5)),
        "{}",
        server.log_text()
    );
    assert_eq!(
        post_report(&url, 3000),
        413,
        "the last good config stays in force"
    );
    assert_eq!(post_report(&url, 500), 204);
    assert!(server.stop().success());
}

#[test]
fn every_acknowledged_write_survives_sigkill() {
    for round in 0..12u64 {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = write_config(dir.path(), "");
        let mut child = Command::new(bin())
            .args([
                "--config",
                cfg.to_str().expect("utf8"),
                "debug",
                "write-burst",
                "--writers",
                "32",
                "--count",
                "10000000",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        let stdout = child.stdout.take().expect("stdout");
        let kill_after = 200 + round * 400;
        let mut acked = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("line");
            if let Some(n) = line.strip_prefix("ack ") {
                acked.push(n.parse::<u64>().expect("number"));
            }
            if acked.len() as u64 >= kill_after {
                child.kill().expect("SIGKILL");
                break;
            }
        }
        let status = child.wait().expect("wait");
        assert!(
            !status.success(),
            "round {round}: the writer was killed, not finished"
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        let missing = rt.block_on(async {
            let store = easel::store::Store::open(
                &dir.path().join("data"),
                &Default::default(),
                &easel::app::migrations(),
            )
            .expect("reopens after the crash");
            let missing = easel::store::burst::missing(&store, acked.clone())
                .await
                .expect("reads");
            store.close().await;
            missing
        });
        assert!(
            missing.is_empty(),
            "round {round}: {} of {} acknowledged writes lost: {:?}",
            missing.len(),
            acked.len(),
            &missing[..missing.len().min(10)]
        );
    }
}

#[test]
fn secrets_never_appear_in_logs_or_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(
        dir.path(),
        "\n[providers.openai]\nkind = \"openai\"\napi_key_env = \"OPENAI_API_KEY\"\n",
    );
    let master = "c2VjcmV0LW1hc3Rlci1rZXktMzItYnl0ZXMtbG9uZyE=";
    let provider_key = "sk-live-PROVIDERSECRET123456";
    let api_key = "easel_sk_pub123_APIKEYSECRET987654";
    let password = "hunter2-correct-horse-battery";
    let env = [
        ("EASEL_MASTER_KEY", master),
        ("OPENAI_API_KEY", provider_key),
        ("EASEL_LOG__LEVEL", "trace"),
    ];
    let server = Process::serve(&cfg, &env);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let c = common::http();
        for path in ["/healthz", "/v1/chat/completions", "/api/status"] {
            let _ = c
                .get(server.url(path))
                .bearer_auth(api_key)
                .send()
                .await
                .expect("get");
        }
        let body = format!(r#"{{"password":"{password}","api_key":"{api_key}"}}"#);
        let _ = c
            .post(server.url("/api/csp-report"))
            .bearer_auth(api_key)
            .body(body.clone())
            .send()
            .await
            .expect("post");
        let _ = c
            .post(server.url(&format!("/nowhere?key={api_key}")))
            .body(body)
            .send()
            .await
            .expect("post");
    });
    let (_, check_out, check_err) = common::run(
        &["--config", cfg.to_str().expect("utf8"), "config", "check"],
        &env,
    );
    let (status, log) = server.stop_with_log();
    assert!(status.success());
    assert!(log.contains("request"), "the test saw request logs: {log}");
    for secret in [
        master,
        provider_key,
        api_key,
        password,
        "APIKEYSECRET",
        "PROVIDERSECRET",
    ] {
        assert!(!log.contains(secret), "{secret} leaked into the server log");
        assert!(
            !check_out.contains(secret) && !check_err.contains(secret),
            "{secret} leaked into config check"
        );
    }
    assert!(
        check_out.contains("OPENAI_API_KEY is set (********)"),
        "{check_out}"
    );
}

#[test]
fn json_logs_are_one_json_object_per_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = write_config(dir.path(), "");
    let server = Process::serve(&cfg, &[("EASEL_LOG__FORMAT", "json")]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        common::http()
            .get(server.url("/api/status"))
            .send()
            .await
            .expect("get")
    });
    assert!(server.wait_for_log("/api/status", Duration::from_secs(5)));
    let log = server.log_text();
    assert!(server.stop().success());
    let mut lines = 0;
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        lines += 1;
    }
    assert!(lines >= 3, "{log}");
    assert!(log.contains(r#""route":"/api/status""#), "{log}");
}
