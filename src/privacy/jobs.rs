//! The scheduled jobs: retention sweep, deletion requests, expiry of sessions, keys
//! and invites, and backup rotation. Each run is recorded in the `job_runs` table and
//! in the audit log (counts per class), and observed in the metrics. At start-up a job
//! whose scheduled time passed while Easel was down runs at once.

use super::Privacy;
use super::erase::{Counts, Done};
use crate::config::Rule;
use crate::http::ApiError;
use crate::store::{Class, Decl, Reader, StoreError, Table};
use serde::{Deserialize, Serialize};
use std::time::Instant;
use utoipa::ToSchema;

const JOB_RUNS: Table<String, JobRun> = Table::new("job_runs", Class::System);
pub(super) const TABLES: [Decl; 1] = [JOB_RUNS.decl()];

/// A scheduled job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Job {
    /// Removes records older than their class's window.
    RetentionSweep,
    /// Erases accounts whose recovery window has ended.
    DeletionRequests,
    /// Removes ended sessions, expired API keys and invites.
    Expiry,
    /// Writes a backup into `[backup] dir` and keeps the newest `keep`.
    Backup,
    /// Removes asset blob files no asset refers to, and abandoned uploads.
    LibraryGc,
}

impl Job {
    /// Every job, in the order start-up catches them up.
    pub const ALL: [Job; 5] = [
        Job::Expiry,
        Job::RetentionSweep,
        Job::DeletionRequests,
        Job::Backup,
        Job::LibraryGc,
    ];

    /// The job's name in the API, the metrics and the audit log.
    pub fn name(self) -> &'static str {
        match self {
            Job::RetentionSweep => "retention_sweep",
            Job::DeletionRequests => "deletion_requests",
            Job::Expiry => "expiry",
            Job::Backup => "backup",
            Job::LibraryGc => "library_gc",
        }
    }

    /// The job named `name`.
    pub fn parse(name: &str) -> Option<Job> {
        Job::ALL.into_iter().find(|j| j.name() == name)
    }

    fn index(self) -> usize {
        Job::ALL.iter().position(|j| *j == self).unwrap_or(0)
    }

    /// The schedule from the config; `None` when the job is off (backup without a dir).
    pub fn schedule(self, c: &crate::config::Config) -> Option<String> {
        match self {
            Job::RetentionSweep => Some(c.scheduler.retention_sweep.clone()),
            Job::DeletionRequests => Some(c.scheduler.deletion_requests.clone()),
            Job::Expiry => Some(c.scheduler.expiry.clone()),
            Job::Backup => c.backup.dir.as_ref().map(|_| c.backup.schedule.clone()),
            Job::LibraryGc => Some(c.scheduler.library_gc.clone()),
        }
    }
}

/// One run of a job, as recorded.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, ToSchema)]
pub struct JobRun {
    pub job: Job,
    /// When it started, by the engine's clock (ms since the epoch).
    pub started_ms: u64,
    pub duration_ms: u64,
    pub ok: bool,
    /// What it did, per class or kind.
    pub counts: Counts,
    pub error: Option<String>,
}

fn ms_to_utc(ms: u64) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp_millis(i64::try_from(ms).ok()?)
}

/// The first time `pattern` fires after `after_ms`.
pub fn next_after(pattern: &str, after_ms: u64) -> Option<u64> {
    let cron = crate::config::cron(pattern).ok()?;
    let next = cron
        .find_next_occurrence(&ms_to_utc(after_ms)?, false)
        .ok()?;
    u64::try_from(next.timestamp_millis()).ok()
}

impl Privacy {
    /// Runs a job now and records the run. A job already running is not started
    /// twice: this waits up to 30 s for it to end, then says so.
    pub async fn run(&self, job: Job) -> Result<JobRun, ApiError> {
        let lock = &self.inner.running[job.index()];
        let Ok(_guard) =
            tokio::time::timeout(std::time::Duration::from_secs(30), lock.lock()).await
        else {
            return Err(ApiError::conflict(
                "job_running",
                format!("the {} job is running; try again when it ends", job.name()),
            ));
        };
        let p = self.parts();
        let started_ms = p.clock.now_ms();
        let began = Instant::now();
        let result = match job {
            Job::RetentionSweep => self.sweep(started_ms).await,
            Job::DeletionRequests => self.process_deletions(started_ms).await,
            Job::Expiry => self.expire(started_ms).await,
            Job::Backup => self.backup(started_ms).await,
            Job::LibraryGc => self.library_gc().await,
        };
        let elapsed = began.elapsed();
        let (ok, done, error) = match result {
            Ok(d) => (true, d, None),
            Err(e) => (false, Done::default(), Some(e.to_string())),
        };
        let run = JobRun {
            job,
            started_ms,
            duration_ms: elapsed.as_millis() as u64,
            ok,
            counts: done.counts,
            error,
        };
        p.metrics.observe_job(job.name(), ok, elapsed, done.removed);
        let rec = run.clone();
        p.store
            .write(move |tx| {
                tx.insert(&JOB_RUNS, &rec.job.name().to_string(), &rec)?;
                let detail = if rec.ok {
                    summary(&rec.counts)
                } else {
                    format!("failed: {}", rec.error.as_deref().unwrap_or("unknown"))
                };
                crate::audit::record(tx, rec.started_ms, None, rec.job.name(), None, &detail)
            })
            .await?;
        match &run.error {
            None => {
                tracing::info!(job = job.name(), ms = run.duration_ms, counts = %summary(&run.counts), "job finished")
            }
            Some(e) => tracing::error!(job = job.name(), error = %e, "job failed"),
        }
        Ok(run)
    }

    /// Waits for running jobs to end (shutdown).
    pub async fn idle(&self) {
        for lock in &self.inner.running {
            let _ = lock.lock().await;
        }
    }

    /// The last recorded run of every job.
    pub async fn last_runs(&self) -> Result<Vec<JobRun>, ApiError> {
        Ok(self
            .parts()
            .store
            .read(|r| r.scan_all(&JOB_RUNS))
            .await?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    /// Runs every job whose scheduled time passed since its last run (downtime), and
    /// every job that never ran.
    pub async fn catch_up(&self) {
        let runs = match self.last_runs().await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot read job history; skipping catch-up");
                return;
            }
        };
        let cfg = self.parts().live.get();
        let now = self.clock().now_ms();
        for job in Job::ALL {
            let Some(schedule) = job.schedule(&cfg) else {
                continue;
            };
            let last = runs.iter().find(|r| r.job == job).map(|r| r.started_ms);
            let due = match last {
                None => true,
                Some(last) => next_after(&schedule, last).is_some_and(|next| next <= now),
            };
            if due {
                tracing::info!(job = job.name(), "catching up a run missed while stopped");
                let _ = self.run(job).await;
            }
        }
    }

    /// Removes, class by class, records older than the class's window, in batches.
    async fn sweep(&self, now: u64) -> Result<Done, ApiError> {
        let cfg = self.parts().live.get();
        let mut done = Done::default();
        for (class, expiry) in super::expiring() {
            let Some(Rule::For(span)) = super::rule(&cfg.retention, class) else {
                continue;
            };
            let cutoff = now.saturating_sub(span.get().as_millis() as u64);
            let n = self
                .resumable(move |tx, limit, from| expiry.sweep(tx, cutoff, limit, from))
                .await?;
            done.counts.insert(class.name().into(), n);
            done.removed += n;
        }
        Ok(done)
    }

    /// Removes ended sessions, expired API keys and expired invites.
    async fn expire(&self, now: u64) -> Result<Done, ApiError> {
        let p = self.parts();
        let (sessions, keys, invites) = p
            .store
            .write(move |tx| {
                Ok::<_, StoreError>((
                    crate::accounts::expire_sessions_in(tx, now)?,
                    crate::keys::expire_in(tx, now)?,
                    crate::accounts::expire_invites(tx, now)?,
                ))
            })
            .await?;
        p.accounts.forget_sessions(&sessions);
        p.keys.forget(&keys);
        let counts = Counts::from([
            ("sessions".into(), sessions.len() as u64),
            ("api_keys".into(), keys.len() as u64),
            ("invites".into(), invites),
        ]);
        Ok(Done {
            removed: counts.values().sum(),
            counts,
        })
    }

    /// Writes a backup into `[backup] dir` and removes the oldest beyond `keep`.
    async fn backup(&self, now: u64) -> Result<Done, ApiError> {
        let p = self.parts();
        let cfg = p.live.get();
        let Some(dir) = cfg.backup.dir.clone() else {
            return Ok(Done::default());
        };
        crate::store::create_private_dir(&dir)?;
        let stamp = ms_to_utc(now)
            .map(|t| t.format("%Y%m%dT%H%M%S%.3fZ").to_string())
            .unwrap_or_else(|| now.to_string());
        let dest = dir.join(format!("easel-{stamp}.redb"));
        p.store.backup_to(&dest).await?;
        let keep = cfg.backup.keep as usize;
        let removed = tokio::task::spawn_blocking(move || rotate(&dir, keep))
            .await
            .map_err(|e| ApiError::internal(format!("the backup rotation task ended: {e}")))??;
        // Backup files are not records: nothing counts as removed in the metrics.
        Ok(Done {
            counts: Counts::from([("written".into(), 1), ("removed".into(), removed)]),
            removed: 0,
        })
    }
}

impl Privacy {
    /// Removes orphaned blob files and abandoned uploads of the asset library.
    async fn library_gc(&self) -> Result<Done, ApiError> {
        let r = self.parts().library.collect_garbage().await?;
        // Files are not records: nothing counts as removed in the metrics.
        Ok(Done {
            counts: Counts::from([
                ("orphan_files".into(), r.orphan_files),
                ("abandoned_uploads".into(), r.abandoned_uploads),
                ("bytes".into(), r.bytes),
            ]),
            removed: 0,
        })
    }
}

/// Deletes the oldest scheduled backups (`easel-*.redb`) in `dir` beyond `keep`.
fn rotate(dir: &std::path::Path, keep: usize) -> Result<u64, StoreError> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| StoreError::io(dir, e))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("easel-") && n.ends_with(".redb"))
        .collect();
    // The names carry a UTC timestamp, so name order is age order.
    names.sort();
    let excess = names.len().saturating_sub(keep);
    for name in &names[..excess] {
        let path = dir.join(name);
        std::fs::remove_file(&path).map_err(|e| StoreError::io(&path, e))?;
    }
    Ok(excess as u64)
}

fn summary(counts: &Counts) -> String {
    if counts.is_empty() {
        return "nothing to do".into();
    }
    counts
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The cron scheduler that starts the jobs on their schedules.
pub struct Scheduler {
    inner: tokio_cron_scheduler::JobScheduler,
}

impl Scheduler {
    /// Adds every configured job and starts the scheduler.
    pub async fn start(privacy: &Privacy) -> anyhow::Result<Scheduler> {
        let inner = tokio_cron_scheduler::JobScheduler::new().await?;
        let cfg = privacy.parts().live.get();
        for job in Job::ALL {
            let Some(schedule) = job.schedule(&cfg) else {
                continue;
            };
            let engine = privacy.downgrade();
            let cron = tokio_cron_scheduler::Job::new_async(schedule.as_str(), move |_, _| {
                let engine = engine.upgrade();
                Box::pin(async move {
                    if let Some(engine) = engine {
                        let _ = engine.run(job).await;
                    }
                })
            })
            .map_err(|e| anyhow::anyhow!("cannot schedule the {} job: {e}", job.name()))?;
            inner.add(cron).await?;
        }
        inner.start().await?;
        Ok(Scheduler { inner })
    }

    /// Stops starting jobs; a running one finishes (see [`Privacy::idle`]).
    pub async fn stop(mut self) {
        if let Err(e) = self.inner.shutdown().await {
            tracing::warn!(error = %e, "the scheduler did not stop cleanly");
        }
    }
}

/// When a class's oldest record leaves its window, for the report.
pub(super) fn window_ms(rule: Option<Rule>) -> Option<u64> {
    match rule {
        Some(Rule::For(span)) => Some(span.get().as_millis() as u64),
        _ => None,
    }
}

/// Counts records of one class over its declared tables.
pub(super) fn records(r: &impl Reader, class: Class) -> Result<u64, StoreError> {
    let mut n = 0;
    for t in super::tables() {
        if t.class == class {
            n += t.count(r)?;
        }
    }
    Ok(n)
}
