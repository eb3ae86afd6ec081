//! Helpers shared by the integration tests: an in-process server on port 0 with a
//! temporary data dir, and the real binary as a child process.
#![allow(dead_code)]

pub mod api;
pub mod mock;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Cheap password hashing, so tests that sign in stay quick.
pub const FAST: &str = "\n[auth]\nargon2_memory_kib = 1024\nargon2_iterations = 1\n";

/// A valid PNG header declaring `w`×`h` pixels (its CRC fixed), and no pixel data:
/// a decompression bomb that a decoder must refuse from the header alone.
pub fn png_bomb(w: u32, h: u32) -> Vec<u8> {
    let mut bomb = Vec::new();
    image::DynamicImage::ImageRgb8(image::RgbImage::new(1, 1))
        .write_to(
            &mut std::io::Cursor::new(&mut bomb),
            image::ImageFormat::Png,
        )
        .expect("encode");
    bomb[16..20].copy_from_slice(&w.to_be_bytes());
    bomb[20..24].copy_from_slice(&h.to_be_bytes());
    let mut crc = 0xFFFF_FFFFu32;
    for &b in &bomb[12..29] {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    bomb[29..33].copy_from_slice(&(!crc).to_be_bytes());
    bomb
}

/// An HTTP client for tests. Easel builds reqwest with rustls and ring, which must
/// be installed as the process's crypto provider before the first client.
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

/// The compiled `easel` binary.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_easel")
}

/// A config file for tests: port 0, paths inside `dir`, plus `extra` TOML.
pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("easel.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nworkers = 2\n\n[storage]\ndata_dir = \"data\"\n\n[crypto]\nmaster_key_file = \"master.key\"\n\n[log]\nlevel = \"info\"\n{extra}"
    );
    std::fs::write(&path, text).expect("write config");
    path
}

async fn boot(loaded: &easel::config::Loaded, clock: &easel::store::Clock) -> easel::app::Running {
    // A restart in the same process: the stopped server's last handles on the database
    // (held by its HTTP workers' apps) can drop a moment after its shutdown returns, and
    // until then redb refuses a second open. A separate process never meets this: the
    // lock goes with the process. So a restart waits for it, up to 5 s.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut running = loop {
        let log = easel::app::logging::init(&loaded.config.log);
        match easel::app::start_with_clock(loaded, log, clock.clone()).await {
            Ok(r) => break r,
            Err(e) if e.to_string().contains("in use") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("server starts: {e:?}"),
        }
    };
    running.caught_up().await;
    running
}

/// An in-process server.
pub struct TestServer {
    pub running: Option<easel::app::Running>,
    pub base: String,
    pub dir: tempfile::TempDir,
    /// The clock the privacy engine goes by; move it forward to let windows pass.
    pub clock: easel::store::Clock,
    loaded: easel::config::Loaded,
}

impl TestServer {
    /// Starts a server with the test config plus `extra` TOML.
    pub async fn start(extra: &str) -> TestServer {
        Self::start_with(extra, &[]).await
    }

    /// Starts a server with `EASEL_*` overrides too.
    pub async fn start_with(extra: &str, env: &[(&str, &str)]) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = write_config(dir.path(), extra);
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let loaded = easel::config::load_from(Some(&file), env).expect("config");
        let clock = easel::store::Clock::default();
        let running = boot(&loaded, &clock).await;
        let base = format!("http://{}", running.addr);
        TestServer {
            running: Some(running),
            base,
            dir,
            clock,
            loaded,
        }
    }

    /// Stops the server and starts it again on the same data dir and config (and
    /// clock: move it forward in between to play downtime).
    pub async fn restart(&mut self) {
        self.pause().await;
        self.resume().await;
    }

    /// Stops the server, keeping its data dir and config for [`TestServer::resume`].
    pub async fn pause(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    /// Starts a paused server again.
    pub async fn resume(&mut self) {
        let running = boot(&self.loaded, &self.clock).await;
        self.base = format!("http://{}", running.addr);
        self.running = Some(running);
    }

    /// The data dir.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The running server.
    pub fn app(&self) -> &easel::app::Running {
        self.running.as_ref().expect("running")
    }

    /// A URL on this server.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The value of one series on the /metrics page, if it is there.
    pub async fn metric(&self, series: &str) -> Option<u64> {
        let text = http()
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    /// Creates an active account that has confirmed being 18+; returns its id.
    pub async fn make_account(
        &self,
        email: &str,
        role: easel::auth::Role,
        password: &str,
    ) -> String {
        let running = self.running.as_ref().expect("running");
        running
            .services()
            .accounts
            .create(
                easel::accounts::NewAccount {
                    email: email.into(),
                    name: email.split('@').next().unwrap_or("x").into(),
                    company: None,
                    password: easel::crypto::Secret::new(password.into()),
                    role,
                    adult: true,
                    must_change_password: false,
                },
                easel::accounts::Actor::Cli,
            )
            .await
            .expect("account created")
            .id
    }

    /// Creates a member (see [`TestServer::make_account`]) with one API key of the
    /// default scopes; returns the account id and the key.
    pub async fn member_with_key(&self, email: &str, password: &str) -> (String, String) {
        let account = self
            .make_account(email, easel::auth::Role::Member, password)
            .await;
        let running = self.running.as_ref().expect("running");
        let (_, key) = running
            .services()
            .keys
            .create(
                &account,
                easel::auth::Role::Member,
                easel::keys::NewKey {
                    name: "test".into(),
                    ..Default::default()
                },
                None,
            )
            .await
            .expect("key");
        (account, key.expose().clone())
    }

    /// Stops the server cleanly.
    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }
}

/// The real binary running `serve`, with its stderr collected.
pub struct Process {
    pub child: Child,
    pub addr: String,
    pub log: Arc<Mutex<Vec<String>>>,
    /// Reads stderr into `log` until the process closes it.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Process {
    /// Runs `easel --config FILE serve` with extra environment and waits until it is ready.
    pub fn serve(config: &Path, env: &[(&str, &str)]) -> Process {
        let mut cmd = Command::new(bin());
        cmd.arg("--config")
            .arg(config)
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd.env_remove("EASEL_MASTER_KEY")
            .env_remove("CREDENTIALS_DIRECTORY");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn easel serve");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("is ready")
                    && let Some(addr) = ready_addr(&line)
                {
                    let _ = tx.send(addr);
                }
                sink.lock().expect("log lock").push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "server did not become ready; log:\n{}",
                    log.lock().expect("log").join("\n")
                );
            }
        };
        Process {
            child,
            addr,
            log,
            reader: Some(reader),
        }
    }

    /// A URL on this server.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits until a log line contains `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.log_text().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Everything logged so far.
    pub fn log_text(&self) -> String {
        self.log.lock().expect("log").join("\n")
    }

    /// SIGTERM, then wait for the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        wait_exit(&mut self.child, Duration::from_secs(20))
    }

    /// [`Process::stop`], then everything it logged, to its last line (access lines
    /// are written in batches, the last ones at shutdown).
    pub fn stop_with_log(mut self) -> (std::process::ExitStatus, String) {
        self.signal(libc::SIGTERM);
        let status = wait_exit(&mut self.child, Duration::from_secs(20));
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        (status, self.log_text())
    }
}

/// The listen address in the "is ready" log line, pretty (`addr=...`) or JSON (`"addr":"..."`).
fn ready_addr(line: &str) -> Option<String> {
    if let Some(rest) = line.split("\"addr\":\"").nth(1) {
        return rest.split('"').next().map(str::to_string);
    }
    line.split("addr=")
        .nth(1)?
        .split_whitespace()
        .next()
        .map(str::to_string)
}

/// Waits for a child to exit, killing it after `timeout`.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit in time");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the binary with arguments; returns (status code, stdout, stderr).
pub fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env_remove("EASEL_MASTER_KEY")
        .env_remove("EASEL_CONFIG")
        .env_remove("CREDENTIALS_DIRECTORY");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run easel");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Creates an API key for `email` with `easel key create` on the config `cfg` and
/// returns it (the command prints it alone on stdout).
pub fn cli_key(cfg: &str, email: &str) -> String {
    let (code, key, err) = run(
        &[
            "--config", cfg, "key", "create", "--email", email, "--name", "test",
        ],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    key.trim().to_string()
}

/// Runs the binary with arguments and `stdin` as its standard input.
pub fn run_with_stdin(args: &[&str], stdin: &str) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(bin())
        .args(args)
        .env_remove("EASEL_MASTER_KEY")
        .env_remove("EASEL_CONFIG")
        .env_remove("CREDENTIALS_DIRECTORY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run easel");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the client script `tests/clients/{script}` with python3 and `env`, and checks
/// that it succeeds and prints `ok`. Returns false (after saying so) when python3 or
/// its package `module` is missing, which fails instead when `EASEL_REQUIRE_CLIENTS`
/// is set, as in CI (`.ci/run` installs the packages).
pub async fn python_client(module: &str, script: &str, env: Vec<(&'static str, String)>) -> bool {
    let probe = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        assert!(
            std::env::var_os("EASEL_REQUIRE_CLIENTS").is_none(),
            "python3 with the {module} package is required (pip install {module})"
        );
        eprintln!("skipped: python3 with the {module} package is not installed");
        return false;
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(script);
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(path)
            .envs(env)
            .output()
            .expect("run python3")
    })
    .await
    .expect("the client task");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(stdout.trim(), "ok", "{stderr}");
    true
}
