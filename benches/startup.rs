//! Start-up to ready and idle memory of the real binary. Run: cargo bench --bench startup
//! Targets (issue 2): ready <= 100 ms after exec, idle RSS <= 25 MiB.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ROUNDS: usize = 10;

fn ready(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.1 200")
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mut ready_ms = Vec::new();
    let mut rss = Vec::new();
    for round in 0..ROUNDS {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = common::free_port();
        let addr = format!("127.0.0.1:{port}");
        let fresh = round % 2 == 0;
        let data = dir.path().join("data");
        if !fresh {
            // Half the rounds start on an existing data dir and key (the common restart).
            let mut c = Command::new(env!("CARGO_BIN_EXE_easel"))
                .arg("serve")
                .current_dir(dir.path())
                .env("EASEL_SERVER__LISTEN", &addr)
                .env("EASEL_STORAGE__DATA_DIR", &data)
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn");
            while !ready(&addr) {
                std::thread::sleep(Duration::from_millis(5));
            }
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
        let started = Instant::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_easel"))
            .arg("serve")
            .current_dir(dir.path())
            .env("EASEL_SERVER__LISTEN", &addr)
            .env("EASEL_STORAGE__DATA_DIR", &data)
            .env("EASEL_SERVER__WORKERS", "2")
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn");
        while !ready(&addr) {
            assert!(started.elapsed() < Duration::from_secs(10), "never ready");
            std::thread::sleep(Duration::from_micros(500));
        }
        ready_ms.push(started.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_secs(2));
        rss.push(common::status_kib(child.id(), "VmRSS:") as f64 / 1024.0);
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let _ = child.wait();
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (r, m) = (median(&mut ready_ms), median(&mut rss));
    println!(
        "start-up to ready: median {r:.1} ms, max {:.1} ms over {ROUNDS} runs (target <= 100 ms: {})",
        ready_ms[ready_ms.len() - 1],
        if r <= 100.0 { "met" } else { "NOT met" }
    );
    println!(
        "idle RSS after 2 s: median {m:.1} MiB, max {:.1} MiB (target <= 25 MiB: {})",
        rss[rss.len() - 1],
        if m <= 25.0 { "met" } else { "NOT met" }
    );
}
