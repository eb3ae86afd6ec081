//! What the gateway adds over calling a provider directly. Run: cargo bench --bench gateway
//! Targets (issue 4, 2 cores shared by load generator, mock and Easel): CPU <= 40 µs per
//! proxied request, p99 overhead <= 0.5 ms at concurrency 1 and <= 2 ms at 64, RSS <= 40 MiB.
//!
//! A minimal OpenAI-shaped upstream runs in this process on 127.0.0.1 (hand-written
//! HTTP/1.1, so the mock costs as little as possible). The real `easel` binary runs as a
//! child process with a catalog model routed to that upstream, an API key, credits, and
//! its default logging. For each mode (whole answer, SSE stream) and concurrency
//! (1, 16, 64), the same load generator first calls the upstream directly, then calls
//! it through Easel; the latency difference is Easel's overhead. The load generator is
//! hand-written too (one keep-alive HTTP/1.1 connection per client, wrk's way), so
//! that the cores it shares go to what is measured. Easel's CPU time comes
//! from /proc/PID/stat (user + system, all threads, background settlements included)
//! divided by the requests it served; RSS is its peak (VmHWM).
//!
//! Each client sends again as soon as it is answered (a closed loop), so every cell runs
//! at what the machine can take, and at 16 and 64 clients most of the latency is queue.
//! `EASEL_BENCH_RATE=10000` paces the load instead (wrk2's way, coordinated omission
//! corrected): the same cells at a fixed number of requests a second, the overhead at a
//! load the machine has room for. One client cannot keep a high rate; run the paced
//! load with `EASEL_BENCH_CELLS=whole:16,whole:64,stream:16,stream:64`.
//!
//! For scale, the same cells run through two more proxies, each this bench binary
//! started again as a child. The bare proxy: an actix-web server forwarding the body
//! with hyper's pooled client (the client Easel's provider calls used until 2026-12-06)
//! and relaying the answer, with no authentication, metering, catalog or logging:
//! actix-web with the usual Rust HTTP client, and nothing of Easel's. The raw proxy:
//! hand-written HTTP/1.1 like the mock, on one thread, relaying each request and answer
//! as they came with nothing parsed but the framing: the least any proxy can cost on
//! the machine.

mod common;

use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SECONDS: u64 = 4;
const WARMUP_MS: u64 = 500;
const LEVELS: [usize; 3] = [1, 16, 64];
/// `mode:clients` pairs to run, comma-separated (for example `whole:64` while
/// profiling); all cells when unset.
const CELLS: &str = "EASEL_BENCH_CELLS";
/// Seconds each measured load runs (default [`SECONDS`]).
const SECONDS_VAR: &str = "EASEL_BENCH_SECONDS";
/// Another `easel` binary to measure instead of this build's (an earlier commit's,
/// for a before-and-after comparison on the same machine).
const BIN: &str = "EASEL_BENCH_BIN";
/// Set: the tail of every run in more detail after the tables.
const DETAIL: &str = "EASEL_BENCH_DETAIL";
/// With `EASEL_BENCH_DETAIL`: a path prefix; every run's requests are written to
/// `PREFIX-direct`, `PREFIX-via-Easel`, `PREFIX-bare-proxy` and `PREFIX-raw-proxy` (each
/// cell's runs replace the last cell's): a first line with when the run began (ns since
/// the Unix epoch, to line it up with a trace of the same minutes), then a line a
/// request: its start (ns since the run began) and its latency (ns).
const TIMELINE: &str = "EASEL_BENCH_TIMELINE";
/// Requests a second, all clients together: each client sends on a fixed schedule
/// instead of as soon as its last answer came (wrk2's way). Unset: as fast as answered.
const RATE: &str = "EASEL_BENCH_RATE";
const MODEL: &str = "bench-model";

// ---- the upstream ----------------------------------------------------------------

fn whole_answer() -> Vec<u8> {
    let body = json!({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "up",
        "choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": "A red bicycle leans against a blue door in the afternoon sun."}}],
        "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
    })
    .to_string();
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Ten content chunks, a usage chunk and `[DONE]`, each its own HTTP chunk.
fn stream_answer() -> Vec<u8> {
    let mut events = Vec::new();
    for word in "A red bicycle leans against a blue door in sunlight.".split(' ') {
        let chunk = json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0,
            "model": "up", "choices": [{"index": 0, "delta": {"content": format!("{word} ")}, "finish_reason": null}]});
        events.push(format!("data: {chunk}\n\n"));
    }
    let usage = json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 0,
        "model": "up", "choices": [], "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120}});
    events.push(format!("data: {usage}\n\n"));
    events.push("data: [DONE]\n\n".into());
    let mut out = String::from(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
    );
    for e in events {
        out.push_str(&format!("{:x}\r\n{e}\r\n", e.len()));
    }
    out.push_str("0\r\n\r\n");
    out.into_bytes()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The value of header `name` in an HTTP head (its first line included), if present.
fn header<'a>(head: &'a [u8], name: &str) -> Option<&'a str> {
    std::str::from_utf8(head)
        .ok()?
        .split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

fn content_length(head: &[u8]) -> usize {
    header(head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Reads one request (its head and a `content-length` body) into `buf`, after what is
/// already there, and returns its length; `None` when the connection ends first.
async fn read_request(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    let mut chunk = [0u8; 8192];
    let mut whole = None;
    loop {
        if whole.is_none()
            && let Some(i) = find(buf, b"\r\n\r\n")
        {
            whole = Some(i + 4 + content_length(&buf[..i]));
        }
        if whole.is_some_and(|n| buf.len() >= n) {
            return whole;
        }
        match sock.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

async fn serve_connection(mut sock: TcpStream, whole: Arc<Vec<u8>>, stream: Arc<Vec<u8>>) {
    let _ = sock.set_nodelay(true);
    let mut buf = Vec::with_capacity(8192);
    while let Some(n) = read_request(&mut sock, &mut buf).await {
        let answer = if find(&buf[..n], b"\"stream\":true").is_some() {
            &stream
        } else {
            &whole
        };
        if sock.write_all(answer).await.is_err() {
            return;
        }
        buf.drain(..n);
    }
}

async fn upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("addr");
    let (whole, stream) = (Arc::new(whole_answer()), Arc::new(stream_answer()));
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(serve_connection(sock, whole.clone(), stream.clone()));
        }
    });
    format!("http://{addr}/v1")
}

// ---- Easel -------------------------------------------------------------------------

fn config(upstream: &str, port: u16) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:{port}"

[storage]
data_dir = "data"

[crypto]
master_key_file = "master.key"

[auth]
argon2_memory_kib = 1024
argon2_iterations = 1

[providers.up]
kind = "openai-compatible"
base_url = "{upstream}"
api_key_env = "BENCH_UPSTREAM_KEY"

[[models]]
id = "{MODEL}"
capabilities = ["chat"]
routes = [{{ provider = "up", model = "up" }}]
price = {{ input_per_mtok = 1.0, output_per_mtok = 2.0 }}
"#
    )
}

/// Creates the account, its key and its credits with the server's own services, then
/// stops; the measured server is the binary, started afterwards on the same files.
async fn prepare(file: &std::path::Path) -> (String, String) {
    let loaded = easel::config::load_from(Some(file), Vec::new()).expect("config");
    let log = easel::app::logging::init(&loaded.config.log);
    let running = easel::app::start(&loaded, log).await.expect("server");
    let services = running.services().clone();
    let (account, key) = common::member_with_key(&services).await;
    services
        .ledger
        .post(
            &account,
            easel::ledger::EntryKind::Grant,
            1_000_000 * easel::ledger::MICRO,
            easel::ledger::Posting::default(),
        )
        .await
        .expect("grant");
    drop(services);
    running.shutdown().await;
    (account, key)
}

/// A child process serving HTTP on 127.0.0.1.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn easel(dir: &std::path::Path, file: &std::path::Path, port: u16) -> Server {
        let bin = std::env::var_os(BIN).unwrap_or_else(|| env!("CARGO_BIN_EXE_easel").into());
        let child = Command::new(bin)
            .arg("--config")
            .arg(file)
            .arg("serve")
            .current_dir(dir)
            .env("BENCH_UPSTREAM_KEY", "sk-bench-upstream")
            .env_remove("EASEL_MASTER_KEY")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("easel.log")).expect("log file"))
            .spawn()
            .expect("spawn easel");
        Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// This bench binary again, as the bare proxy or (`kind` "raw") the raw one.
    fn bare(upstream: &str, port: u16, kind: &str) -> Server {
        let child = Command::new(std::env::current_exe().expect("own path"))
            .env(BARE_UPSTREAM, upstream)
            .env(BARE_PORT, port.to_string())
            .env(BARE_KIND, kind)
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn the bare proxy");
        Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    /// User plus system CPU time by thread name, in microseconds.
    fn threads_us(&self) -> std::collections::BTreeMap<String, u64> {
        let mut by_name = std::collections::BTreeMap::new();
        let tasks = format!("/proc/{}/task", self.child.id());
        for task in std::fs::read_dir(tasks).into_iter().flatten().flatten() {
            let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            *by_name.entry(name.trim().to_string()).or_insert(0) += stat_us(&stat);
        }
        by_name
    }

    /// User plus system CPU time of every thread, in microseconds.
    fn cpu_us(&self) -> u64 {
        stat_us(
            &std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default(),
        )
    }

    /// A `/proc/PID/status` figure in MiB.
    fn mib(&self, field: &str) -> f64 {
        common::status_kib(self.child.id(), field) as f64 / 1024.0
    }
}

/// User plus system CPU time in a `/proc/.../stat` line, in microseconds.
fn stat_us(stat: &str) -> u64 {
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) * 1_000_000 / hz
}

/// User plus system CPU time of this process (the load generator and the mock), in
/// microseconds.
fn own_cpu_us() -> u64 {
    stat_us(&std::fs::read_to_string("/proc/self/stat").unwrap_or_default())
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

// ---- load --------------------------------------------------------------------------

struct Run {
    latencies: Vec<u64>,
    /// (start in ns since the run began, latency in ns) of every request, unsorted.
    timeline: Vec<(u64, u64)>,
    /// Each client's mean latency in ns, sorted.
    client_means: Vec<u64>,
    seconds: f64,
    /// Requests that would have waited for the answer before had every request gone
    /// out on time (paced loads only): a server that keeps up has next to none.
    late: u64,
    /// When the run began, in ns since the Unix epoch (to line the timeline up with
    /// other records of the same minutes).
    began_unix: u64,
}

impl Run {
    /// The latency at percentile `p` (0 to 1), in ns.
    fn at(&self, p: f64) -> u64 {
        self.latencies[((self.latencies.len() as f64 - 1.0) * p).round() as usize]
    }
    /// The same in ms.
    fn pct(&self, p: f64) -> f64 {
        self.at(p) as f64 / 1_000_000.0
    }
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.seconds
    }

    /// The tail in more detail (`EASEL_BENCH_DETAIL=1`): percentiles; how the
    /// requests slower than the p99 spread over time (in how many 10 ms windows they
    /// began), which tells a tail made of stalls (few windows) from one spread thin;
    /// and how evenly the clients were served (the least, median and largest of their
    /// mean latencies), which tells a tail some connections always pay from one all
    /// share.
    fn detail(&self, what: &str) -> String {
        let p99 = self.at(0.99);
        if let Ok(prefix) = std::env::var(TIMELINE) {
            let mut out = format!("# began {} ns after the Unix epoch\n", self.began_unix);
            for (start, latency) in &self.timeline {
                out.push_str(&format!("{start} {latency}\n"));
            }
            let file = format!("{prefix}-{}", what.trim().replace(' ', "-"));
            std::fs::write(&file, out).unwrap_or_else(|e| panic!("writing {file}: {e}"));
        }
        let mut slow = 0;
        let mut windows = std::collections::BTreeSet::new();
        for (start, _) in self.timeline.iter().filter(|(_, l)| *l > p99) {
            slow += 1;
            windows.insert(start / 10_000_000);
        }
        format!(
            "{what}: p50 {:.3} p90 {:.3} p95 {:.3} p99 {:.3} p99.9 {:.3} max {:.3} ms; {} requests over the p99 began in {} of {:.0} 10-ms windows; client means {:.3} / {:.3} / {:.3} ms",
            self.pct(0.5),
            self.pct(0.9),
            self.pct(0.95),
            self.pct(0.99),
            self.pct(0.999),
            self.pct(1.0),
            slow,
            windows.len(),
            self.seconds * 100.0,
            self.client_means[0] as f64 / 1e6,
            self.client_means[self.client_means.len() / 2] as f64 / 1e6,
            self.client_means[self.client_means.len() - 1] as f64 / 1e6,
        )
    }
}

/// `clients` connections, each sending one request at a time until `for_ms` has passed;
/// every answer must be a 200 whose body ends as expected.
///
/// Without a `rate` each client sends again as soon as it is answered (a closed loop:
/// the load is as much as the server takes). With one, the `rate` requests a second are
/// spread over the clients, each on a fixed schedule a slice of the period apart from
/// the next client's. When an answer takes longer than the period, the client's next
/// request is charged the time it would have waited for it had every request gone out
/// on time (wrk2's correction for coordinated omission), so a server that falls behind
/// pays for the queue it makes; a turn the pacing thread gives late (it was not given a
/// core in time) is charged to nobody.
async fn load(
    url: &str,
    key: &str,
    stream: bool,
    clients: usize,
    for_ms: u64,
    rate: Option<f64>,
) -> Run {
    let (addr, path) = host_and_path(url);
    let body = json!({"model": MODEL, "stream": stream,
        "messages": [{"role": "user", "content": "Describe this scene for someone who cannot see it, in one sentence."}]})
    .to_string();
    let request: Arc<[u8]> = format!(
        "POST /{path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
    .into();
    let failures = Arc::new(AtomicU64::new(0));
    let began = Instant::now();
    let began_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let deadline = began + Duration::from_millis(for_ms);
    let every = rate.map(|r| Duration::from_secs_f64(clients as f64 / r));
    // The pace is kept by a thread of its own that gives the clients their turns in
    // order, 1/rate apart, with a microsecond's timer slack: tokio's timers tick in
    // milliseconds and would send the requests in bursts. A client that is behind
    // finds its turns waiting and sends at once.
    let turns: Option<Vec<Arc<tokio::sync::Semaphore>>> = rate.map(|_| {
        (0..clients)
            .map(|_| Arc::new(tokio::sync::Semaphore::new(0)))
            .collect()
    });
    let pacer = rate.zip(turns.clone()).map(|(rate, turns)| {
        std::thread::spawn(move || {
            // SAFETY: prctl with PR_SET_TIMERSLACK only sets this thread's timer slack.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1) };
            for n in 0.. {
                let due = began + Duration::from_secs_f64(n as f64 / rate);
                if due >= deadline {
                    break;
                }
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                turns[n % clients].add_permits(1);
            }
            turns.iter().for_each(|t| t.close());
        })
    });
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let (addr, request, failures) = (addr.to_string(), request.clone(), failures.clone());
            let turn = turns.as_ref().map(|t| t[i].clone());
            tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut late = 0u64;
                let mut conn = None;
                // What this client's next request would wait for the answers before it
                // had they all gone out on time.
                let mut queued = Duration::ZERO;
                loop {
                    match &turn {
                        Some(turn) => match turn.acquire().await {
                            Ok(permit) => permit.forget(),
                            Err(_) => break,
                        },
                        None if Instant::now() >= deadline => break,
                        None => {}
                    }
                    // A new connection is made outside the timing, as a pooled
                    // client's would be before the requests measured.
                    if conn.is_none() {
                        conn = Conn::open(&addr).await.ok();
                    }
                    let t = Instant::now();
                    let start = (t - began).as_nanos() as u64;
                    let ok = match conn.as_mut() {
                        Some(c) => match c.call(&request).await {
                            Ok(a) if a.status == 200 && stream => {
                                a.body.ends_with(b"data: [DONE]\n\n")
                            }
                            Ok(a) if a.status == 200 => {
                                a.body.starts_with(b"{") && find(&a.body, b"\"choices\"").is_some()
                            }
                            _ => false,
                        },
                        None => false,
                    };
                    let took = t.elapsed() + queued;
                    if let Some(every) = every {
                        queued = took.saturating_sub(every);
                        late += u64::from(!queued.is_zero());
                    }
                    if ok {
                        samples.push((start, took.as_nanos() as u64));
                    } else {
                        failures.fetch_add(1, Ordering::Relaxed);
                        conn = None;
                    }
                }
                (samples, late)
            })
        })
        .collect();
    let mut timeline = Vec::new();
    let mut client_means = Vec::new();
    let mut late = 0;
    for t in tasks {
        let (samples, behind) = t.await.expect("load task");
        late += behind;
        let sum: u64 = samples.iter().map(|(_, l)| l).sum();
        client_means.push(sum / samples.len().max(1) as u64);
        timeline.extend(samples);
    }
    // The clients end when the pacer closes their turns, so it has ended by now.
    if let Some(pacer) = pacer {
        pacer.join().expect("pacer");
    }
    client_means.sort_unstable();
    let mut latencies: Vec<u64> = timeline.iter().map(|(_, l)| *l).collect();
    let seconds = began.elapsed().as_secs_f64();
    let failed = failures.load(Ordering::Relaxed);
    assert_eq!(failed, 0, "{failed} requests to {url} failed");
    latencies.sort_unstable();
    Run {
        latencies,
        timeline,
        client_means,
        seconds,
        late,
        began_unix,
    }
}

/// One HTTP/1.1 keep-alive connection of the load generator, sending the same request
/// again and again and reading each answer with as little work as the mock does (wrk's
/// way): the cores the generator does not use go to what is measured.
struct Conn {
    sock: TcpStream,
    buf: Vec<u8>,
}

/// A whole answer read off a connection: its status and its body (de-chunked).
struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl Conn {
    async fn open(addr: &str) -> std::io::Result<Conn> {
        let sock = TcpStream::connect(addr).await?;
        sock.set_nodelay(true)?;
        Ok(Conn {
            sock,
            buf: Vec::with_capacity(16 * 1024),
        })
    }

    /// Sends `request` and reads its answer.
    async fn call(&mut self, request: &[u8]) -> std::io::Result<Answer> {
        let (used, answer) = self.exchange(request).await?;
        self.buf.drain(..used);
        Ok(answer)
    }

    /// Sends `request` and reads its answer, which is left at the start of `buf` as
    /// it came (the bytes it took are returned with it).
    async fn exchange(&mut self, request: &[u8]) -> std::io::Result<(usize, Answer)> {
        self.sock.write_all(request).await?;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if let Some(found) = parse_answer(&self.buf)? {
                return Ok(found);
            }
            match self.sock.read(&mut chunk).await? {
                0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                n => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

/// The `host:port` and the path (without its leading `/`) of an `http://` URL.
fn host_and_path(url: &str) -> (&str, &str) {
    url.strip_prefix("http://")
        .and_then(|rest| rest.split_once('/'))
        .expect("an http:// URL with a path")
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string())
}

/// The first complete answer in `buf` and the bytes it took, or `None` while it is
/// incomplete. Bodies are framed by `content-length` or chunked.
fn parse_answer(buf: &[u8]) -> std::io::Result<Option<(usize, Answer)>> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = &buf[..head_end];
    let status = std::str::from_utf8(head.get(9..12).unwrap_or_default())
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    let chunked =
        header(head, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let mut at = head_end + 4;
    if !chunked {
        let length = content_length(head);
        if buf.len() < at + length {
            return Ok(None);
        }
        let body = buf[at..at + length].to_vec();
        return Ok(Some((at + length, Answer { status, body })));
    }
    let mut body = Vec::new();
    loop {
        let Some(line_end) = find(&buf[at..], b"\r\n") else {
            return Ok(None);
        };
        let size = std::str::from_utf8(&buf[at..at + line_end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .ok_or_else(|| bad("chunk size"))?;
        let data = at + line_end + 2;
        if buf.len() < data + size + 2 {
            return Ok(None);
        }
        if size == 0 {
            return Ok(Some((data + 2, Answer { status, body })));
        }
        body.extend_from_slice(&buf[data..data + size]);
        at = data + size + 2;
    }
}

async fn balance(client: &reqwest::Client, base: &str, key: &str) -> f64 {
    let v: Value = client
        .get(format!("{base}/api/credits"))
        .bearer_auth(key)
        .send()
        .await
        .expect("credits")
        .json()
        .await
        .expect("credits json");
    v["balance"]["balance"].as_f64().expect("balance")
}

const BARE_UPSTREAM: &str = "EASEL_BENCH_BARE_UPSTREAM";
const BARE_PORT: &str = "EASEL_BENCH_BARE_PORT";
/// `raw` for the raw proxy; the bare proxy otherwise.
const BARE_KIND: &str = "EASEL_BENCH_BARE_KIND";

/// The raw proxy: the least a proxy can do here. Hand-written HTTP/1.1 like the mock,
/// on one thread (as Easel's one worker here), each client connection with an upstream
/// connection of its own; a request goes up as it came and its answer back as it came,
/// one write each way, with nothing parsed but the framing.
fn raw_proxy(upstream: String, port: u16) {
    let upstream: Arc<str> = host_and_path(&upstream).0.into();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("bind");
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(relay(sock, upstream.clone()));
        }
    });
}

/// One client connection of the raw proxy.
async fn relay(mut client: TcpStream, upstream: Arc<str>) {
    let _ = client.set_nodelay(true);
    let Ok(mut up) = Conn::open(&upstream).await else {
        return;
    };
    let mut buf = Vec::with_capacity(8192);
    while let Some(n) = read_request(&mut client, &mut buf).await {
        let Ok((used, _)) = up.exchange(&buf[..n]).await else {
            return;
        };
        buf.drain(..n);
        if client.write_all(&up.buf[..used]).await.is_err() {
            return;
        }
        up.buf.drain(..used);
    }
}

/// The bare proxy: forward the body, relay the answer (streamed when it is a stream).
/// Its upstream client is hyper's pooled client (Easel's until 2026-12-06), a pool per
/// worker.
fn bare_proxy(upstream: String, port: u16) {
    use actix_web::{App, HttpResponse, HttpServer, web};
    use futures_util::StreamExt;
    use http_body_util::{BodyExt, BodyStream, Full};
    use hyper_util::client::legacy::{Client, connect::HttpConnector};
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind");
    easel::http::no_delay(&listener);
    let url: http::Uri = format!("{upstream}/chat/completions").parse().expect("url");
    actix_web::rt::System::new().block_on(async move {
        HttpServer::new(move || {
            let mut http = HttpConnector::new();
            http.set_nodelay(true);
            let client: Client<HttpConnector, Full<web::Bytes>> =
                Client::builder(hyper_util::rt::TokioExecutor::new()).build(http);
            let url = url.clone();
            App::new().route(
                "/v1/chat/completions",
                web::post().to(move |body: web::Bytes| {
                    let (client, url) = (client.clone(), url.clone());
                    async move {
                        let req = http::Request::post(url)
                            .header("content-type", "application/json")
                            .body(Full::new(body))
                            .expect("request");
                        let Ok(res) = client.request(req).await else {
                            return HttpResponse::BadGateway().finish();
                        };
                        let ct = res
                            .headers()
                            .get("content-type")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("application/json")
                            .to_string();
                        if ct.starts_with("text/event-stream") {
                            let data = BodyStream::new(res.into_body()).filter_map(|f| async {
                                match f {
                                    Ok(frame) => frame.into_data().ok().map(Ok),
                                    Err(e) => Some(Err(e)),
                                }
                            });
                            HttpResponse::Ok().content_type(ct).streaming(data)
                        } else {
                            let bytes = match res.into_body().collect().await {
                                Ok(b) => b.to_bytes(),
                                Err(_) => return HttpResponse::BadGateway().finish(),
                            };
                            HttpResponse::Ok().content_type(ct).body(bytes)
                        }
                    }
                }),
            )
        })
        .workers(easel::http::default_workers())
        .listen(listener)
        .expect("listen")
        .run()
        .await
        .expect("bare proxy runs");
    });
}

async fn commits(client: &reqwest::Client, base: &str) -> u64 {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|l| l.strip_prefix("easel_store_commit_batch_size_count "))
        .and_then(|v| v.trim().parse().ok())
        .expect("commit count")
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let (Ok(up), Ok(port)) = (std::env::var(BARE_UPSTREAM), std::env::var(BARE_PORT)) {
        let port = port.parse().expect("port");
        return match std::env::var(BARE_KIND).as_deref() {
            Ok("raw") => raw_proxy(up, port),
            _ => bare_proxy(up, port),
        };
    }
    let rt = common::runtime();
    rt.block_on(async {
        let up = upstream().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let port = common::free_port();
        let file = dir.path().join("easel.toml");
        std::fs::write(&file, config(&up, port)).expect("config");
        let (_, key) = prepare(&file).await;
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()
            .expect("client");
        // The stopped in-process server's last handles close in the background; the
        // binary refuses a database still held, so it is started again until it runs.
        let mut easel = Server::easel(dir.path(), &file, port);
        let ready = Instant::now();
        while client
            .get(format!("{}/readyz", easel.base))
            .send()
            .await
            .map(|r| !r.status().is_success())
            .unwrap_or(true)
        {
            assert!(
                ready.elapsed() < Duration::from_secs(20),
                "easel never ready; its log:\n{}",
                std::fs::read_to_string(dir.path().join("easel.log")).unwrap_or_default()
            );
            if matches!(easel.child.try_wait(), Ok(Some(_))) {
                easel = Server::easel(dir.path(), &file, port);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let bare = Server::bare(&up, common::free_port(), "actix");
        let raw = Server::bare(&up, common::free_port(), "raw");
        let bare_url = format!("{}/v1/chat/completions", bare.base);
        let raw_url = format!("{}/v1/chat/completions", raw.base);
        for proxy in [&bare, &raw] {
            while client.get(&proxy.base).send().await.is_err() {
                assert!(ready.elapsed() < Duration::from_secs(20), "a proxy never came up");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let before = balance(&client, &easel.base, &key).await;
        let direct_url = format!("{up}/chat/completions");
        let easel_url = format!("{}/v1/chat/completions", easel.base);
        let mut proxied = 0u64;
        let mut bare_rows = Vec::new();
        let detail = std::env::var_os(DETAIL).is_some();
        let mut details = Vec::new();
        let cells = std::env::var(CELLS).ok();
        let seconds: u64 = std::env::var(SECONDS_VAR)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(SECONDS);
        let rate: Option<f64> = std::env::var(RATE).ok().map(|v| {
            v.parse()
                .ok()
                .filter(|r: &f64| *r > 0.0)
                .unwrap_or_else(|| panic!("{RATE} must be a positive number of requests a second, not {v:?}"))
        });
        if let Some(rate) = rate {
            println!("Paced: {rate:.0} requests a second in all, spread over the clients.\n");
        }
        let mut behind = Vec::new();
        println!(
            "| mode | clients | direct p50 / p99 (ms) | via Easel p50 / p99 (ms) | overhead p50 / p99 (ms) | req/s direct / via Easel | Easel CPU per request | requests per commit |"
        );
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        for stream in [false, true] {
            let mode = if stream { "stream" } else { "whole" };
            for clients in LEVELS {
                let wanted = format!("{mode}:{clients}");
                if cells.as_ref().is_some_and(|c| !c.split(',').any(|w| w.trim() == wanted)) {
                    continue;
                }
                load(&direct_url, "sk", stream, clients, WARMUP_MS, rate).await;
                let direct = load(&direct_url, "sk", stream, clients, seconds * 1000, rate).await;
                let warm = load(&easel_url, &key, stream, clients, WARMUP_MS, rate).await;
                proxied += warm.latencies.len() as u64;
                let commits0 = commits(&client, &easel.base).await;
                let threads0 = easel.threads_us();
                let cpu0 = easel.cpu_us();
                let own0 = own_cpu_us();
                let via = load(&easel_url, &key, stream, clients, seconds * 1000, rate).await;
                let own = (own_cpu_us() - own0) as f64 / via.latencies.len() as f64;
                // Settlements finish in the background; give them a moment to count.
                tokio::time::sleep(Duration::from_millis(200)).await;
                let cpu = (easel.cpu_us() - cpu0) as f64 / via.latencies.len() as f64;
                let threads: Vec<String> = easel
                    .threads_us()
                    .into_iter()
                    // Saturating: a thread that ended since takes its time with it.
                    .map(|(name, us)| {
                        let before = threads0.get(&name).copied().unwrap_or(0);
                        (name, us.saturating_sub(before))
                    })
                    .filter(|(_, us)| *us > 0)
                    .map(|(name, us)| format!("{name} {:.1}", us as f64 / via.latencies.len() as f64))
                    .collect();
                let made = commits(&client, &easel.base).await - commits0;
                proxied += via.latencies.len() as u64;
                println!(
                    "| {mode} | {clients} | {:.3} / {:.3} | {:.3} / {:.3} | {:+.3} / {:+.3} | {:.0} / {:.0} | {cpu:.1} µs | {:.1} |",
                    direct.pct(0.5),
                    direct.pct(0.99),
                    via.pct(0.5),
                    via.pct(0.99),
                    via.pct(0.5) - direct.pct(0.5),
                    via.pct(0.99) - direct.pct(0.99),
                    direct.rate(),
                    via.rate(),
                    via.latencies.len() as f64 / made.max(1) as f64,
                );
                let mut row = format!("| {mode} | {clients} |");
                let mut others = Vec::new();
                for (who, proxy, url) in [("bare proxy", &bare, &bare_url), ("raw proxy", &raw, &raw_url)] {
                    load(url, "", stream, clients, WARMUP_MS, rate).await;
                    let cpu0 = proxy.cpu_us();
                    let run = load(url, "", stream, clients, seconds * 1000, rate).await;
                    let cpu = (proxy.cpu_us() - cpu0) as f64 / run.latencies.len() as f64;
                    row.push_str(&format!(
                        " {:+.3} / {:+.3} | {:.0} | {cpu:.1} µs |",
                        run.pct(0.5) - direct.pct(0.5),
                        run.pct(0.99) - direct.pct(0.99),
                        run.rate(),
                    ));
                    others.push((who, run));
                }
                bare_rows.push(row);
                let runs = [("direct", &direct), ("via Easel", &via)]
                    .into_iter()
                    .chain(others.iter().map(|(who, run)| (*who, run)));
                for (who, run) in runs {
                    if run.late * 100 > run.latencies.len() as u64 {
                        behind.push(format!(
                            "{mode}:{clients} {who}: {} of {} requests waited for the answer before (had they gone out on time): the rate is more than it keeps up with",
                            run.late,
                            run.latencies.len()
                        ));
                    }
                }
                if detail {
                    details.push(format!("{mode}:{clients}"));
                    details.push(direct.detail("  direct"));
                    details.push(via.detail("  via Easel"));
                    details.push(format!("  Easel CPU per request by thread (µs): {}", threads.join(", ")));
                    details.push(format!("  load generator and mock CPU per request via Easel: {own:.1} µs"));
                    for (who, run) in &others {
                        details.push(run.detail(&format!("  {who}")));
                    }
                }
            }
        }
        println!(
            "\nFor scale, against the same direct runs: the bare proxy (actix-web and hyper's client, nothing else) and the raw proxy (hand-written, bytes relayed as they came):\n"
        );
        println!(
            "| mode | clients | bare proxy overhead p50 / p99 (ms) | req/s | CPU per request | raw proxy overhead p50 / p99 (ms) | req/s | CPU per request |"
        );
        println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        for row in bare_rows {
            println!("{row}");
        }
        println!(
            "RSS: peak (VmHWM) of the bare proxy {:.1} MiB, of the raw proxy {:.1} MiB",
            bare.mib("VmHWM:"),
            raw.mib("VmHWM:")
        );
        for line in behind {
            println!("{line}");
        }
        for line in details {
            println!("{line}");
        }
        let after = balance(&client, &easel.base, &key).await;
        println!(
            "Easel RSS: peak (VmHWM) {:.1} MiB, now {:.1} MiB",
            easel.mib("VmHWM:"),
            easel.mib("VmRSS:")
        );
        // Metering was on: every proxied request (warm-ups included) was charged
        // 100 input and 20 output tokens at $1 and $2 per million, 1000 credits per USD.
        let charged = before - after;
        let expected = proxied as f64 * 0.14;
        println!("metering: {proxied} proxied requests, {charged:.2} credits charged ({expected:.2} expected)");
        assert!((charged - expected).abs() < 0.01, "metering is off");
    });
}
