//! Prometheus metrics, kept in memory and written as text at `/metrics`.

use crate::store::WriterStats;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Latency histogram bucket bounds, in seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default)]
struct Histogram {
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// Counters of one route: requests by method and status, and its latency.
#[derive(Default)]
struct RouteStats {
    requests: Vec<(String, u16, u64)>,
    latency: Histogram,
}

#[derive(Default)]
struct Http {
    routes: HashMap<String, RouteStats>,
}

/// Process-wide counters.
#[derive(Default)]
pub struct Metrics {
    http: Mutex<Http>,
    /// Content-Security-Policy violations reported by browsers.
    pub csp_violations: AtomicU64,
    /// Config reloads, by outcome.
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    jobs: Mutex<BTreeMap<&'static str, JobStats>>,
}

/// A metric family of the jobs: name, type, help, and the value of one job.
type JobFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&JobStats) -> String,
);

/// Counters of one scheduled job.
#[derive(Default, Clone, Copy)]
struct JobStats {
    runs: u64,
    failures: u64,
    removed: u64,
    last_seconds: f64,
    last_end_s: u64,
}

impl Metrics {
    /// Records one finished request. `route` is the matched pattern, never the raw path,
    /// so ids in URLs do not make the series grow without bound.
    pub fn observe(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let Ok(mut http) = self.http.lock() else {
            return;
        };
        // Allocate only the first time a route, method or status is seen.
        let stats = match http.routes.get_mut(route) {
            Some(s) => s,
            None => http.routes.entry(route.to_string()).or_default(),
        };
        match stats
            .requests
            .iter_mut()
            .find(|(m, s, _)| m == method && *s == status)
        {
            Some((_, _, n)) => *n += 1,
            None => stats.requests.push((method.to_string(), status, 1)),
        }
        let h = &mut stats.latency;
        h.count += 1;
        h.sum += secs;
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *le {
                h.buckets[i] += 1;
            }
        }
    }

    /// Records one run of a scheduled job: how it went, how long it took and how many
    /// records it removed.
    pub fn observe_job(&self, job: &'static str, ok: bool, elapsed: Duration, removed: u64) {
        let Ok(mut jobs) = self.jobs.lock() else {
            return;
        };
        let j = jobs.entry(job).or_default();
        j.runs += 1;
        j.failures += u64::from(!ok);
        j.removed += removed;
        j.last_seconds = elapsed.as_secs_f64();
        j.last_end_s = crate::store::now_ms() / 1000;
    }

    fn render_jobs(&self, out: &mut String) {
        let Ok(jobs) = self.jobs.lock() else {
            return;
        };
        let families: [JobFamily; 5] = [
            (
                "easel_job_runs_total",
                "counter",
                "Runs of each scheduled job.",
                |j| j.runs.to_string(),
            ),
            (
                "easel_job_failures_total",
                "counter",
                "Runs of each scheduled job that failed.",
                |j| j.failures.to_string(),
            ),
            (
                "easel_job_records_removed_total",
                "counter",
                "Records each job removed (swept, expired or erased).",
                |j| j.removed.to_string(),
            ),
            (
                "easel_job_last_duration_seconds",
                "gauge",
                "How long the last run of each job took.",
                |j| j.last_seconds.to_string(),
            ),
            (
                "easel_job_last_run_timestamp_seconds",
                "gauge",
                "When the last run of each job ended.",
                |j| j.last_end_s.to_string(),
            ),
        ];
        for (name, kind, help, value) in families {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (job, j) in jobs.iter() {
                let _ = writeln!(out, "{name}{{job=\"{}\"}} {}", escape(job), value(j));
            }
        }
    }

    /// Writes every metric in the Prometheus text format.
    pub fn render(&self, writer: &WriterStats, uptime: Duration) -> String {
        let mut out = String::with_capacity(4096);
        let _ = writeln!(
            out,
            "# HELP easel_build_info Build of this binary.\n# TYPE easel_build_info gauge"
        );
        let _ = writeln!(
            out,
            "easel_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        let _ = writeln!(
            out,
            "# HELP easel_uptime_seconds Seconds since start.\n# TYPE easel_uptime_seconds gauge"
        );
        let _ = writeln!(out, "easel_uptime_seconds {:.3}", uptime.as_secs_f64());
        if let Ok(http) = self.http.lock() {
            let routes: BTreeMap<&String, &RouteStats> = http.routes.iter().collect();
            let _ = writeln!(
                out,
                "# HELP easel_http_requests_total HTTP requests by method, route and status.\n# TYPE easel_http_requests_total counter"
            );
            for (route, stats) in &routes {
                let mut rows: Vec<&(String, u16, u64)> = stats.requests.iter().collect();
                rows.sort();
                for (method, status, n) in rows {
                    let _ = writeln!(
                        out,
                        "easel_http_requests_total{{method=\"{method}\",route=\"{}\",status=\"{status}\"}} {n}",
                        escape(route)
                    );
                }
            }
            let _ = writeln!(
                out,
                "# HELP easel_http_request_duration_seconds Request latency by route.\n# TYPE easel_http_request_duration_seconds histogram"
            );
            for (route, stats) in &routes {
                let h = &stats.latency;
                let route = escape(route);
                for (le, n) in LATENCY_BUCKETS.iter().zip(h.buckets) {
                    let _ = writeln!(
                        out,
                        "easel_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{le}\"}} {n}"
                    );
                }
                let _ = writeln!(
                    out,
                    "easel_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                    h.count
                );
                let _ = writeln!(
                    out,
                    "easel_http_request_duration_seconds_sum{{route=\"{route}\"}} {:.6}",
                    h.sum
                );
                let _ = writeln!(
                    out,
                    "easel_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                    h.count
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP easel_store_commit_batch_size Writes per durable commit.\n# TYPE easel_store_commit_batch_size histogram"
        );
        let mut cumulative = 0;
        for (i, le) in crate::store::BATCH_BUCKETS.iter().enumerate() {
            cumulative += writer.batch_buckets[i].load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "easel_store_commit_batch_size_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        let commits = writer.commits.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "easel_store_commit_batch_size_bucket{{le=\"+Inf\"}} {commits}"
        );
        let _ = writeln!(
            out,
            "easel_store_commit_batch_size_sum {}",
            writer.batch_sum.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "easel_store_commit_batch_size_count {commits}");
        let counters = [
            (
                "easel_store_writes_total",
                "Writes acknowledged after a durable commit.",
                writer.writes.load(Ordering::Relaxed),
            ),
            (
                "easel_store_rejected_writes_total",
                "Writes whose operation failed and were rolled back.",
                writer.rejected.load(Ordering::Relaxed),
            ),
            (
                "easel_csp_violations_total",
                "Content-Security-Policy violations reported by browsers.",
                self.csp_violations.load(Ordering::Relaxed),
            ),
            (
                "easel_config_reloads_total",
                "Config reloads applied.",
                self.reloads_ok.load(Ordering::Relaxed),
            ),
            (
                "easel_config_reload_failures_total",
                "Config reloads refused because the new file was invalid.",
                self.reloads_failed.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            counter(&mut out, name, help, value);
        }
        self.render_jobs(&mut out);
        out
    }
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
    );
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
