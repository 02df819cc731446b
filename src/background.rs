//! Work that must not compete with answering: building, checking and verifying CRLs, and
//! writing checkpoints.
//!
//! A CRL of a million entries takes seconds of CPU to build, lint and check against the previous
//! one, and during a mass revocation it is rebuilt every `crl.publish_delay`. On the tokio
//! blocking pool it ran at the same priority as the threads answering OCSP, and cached answers'
//! p99 rose with every rebuild. Here such work runs on [`BACKGROUND_THREADS`] dedicated threads
//! whose scheduling priority is lowered by [`BACKGROUND_NICE`] (Linux `setpriority` on the
//! thread; elsewhere, or where the kernel refuses, at normal priority): when the machine is
//! busy the answering threads go first, and when it is idle the work runs at full speed.
//!
//! The jobs queue in order; each one's result (or its panic, as an error) comes back through a
//! oneshot channel, as from `spawn_blocking`.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{Sender, channel};
use std::sync::{LazyLock, Mutex};

use crate::limits::{BACKGROUND_NICE, BACKGROUND_THREADS, JOIN_NICE};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A job that could not run to completion: the pool is gone or the job panicked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("background task: {0}")]
pub struct BackgroundError(String);

struct Pool {
    jobs: Mutex<Sender<Job>>,
}

impl Pool {
    fn start(name: &'static str, threads: usize, nice: i32) -> Pool {
        let (tx, rx) = channel::<Job>();
        let rx = std::sync::Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || {
                    lower_priority(nice);
                    loop {
                        let job = {
                            let guard = rx.lock().unwrap_or_else(|p| p.into_inner());
                            guard.recv()
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, thread = name, "could not start a background thread");
            }
        }
        Pool {
            jobs: Mutex::new(tx),
        }
    }

    async fn run<T, F>(&self, f: F) -> Result<T, BackgroundError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let out = catch_unwind(AssertUnwindSafe(f))
                .map_err(|_| BackgroundError("the task panicked".into()));
            let _ = tx.send(out);
        });
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job)
            .map_err(|_| BackgroundError("no background thread is running".into()))?;
        rx.await
            .map_err(|_| BackgroundError("the task was dropped".into()))?
    }
}

static POOL: LazyLock<Pool> =
    LazyLock::new(|| Pool::start("vigil-bg", BACKGROUND_THREADS, BACKGROUND_NICE));

static JOIN: LazyLock<Pool> = LazyLock::new(|| Pool::start("vigil-join", 1, JOIN_NICE));

#[cfg(target_os = "linux")]
fn lower_priority(by: i32) {
    use rustix::process::{getpriority_process, setpriority_process};
    // On Linux a thread id names the thread alone. Relative to the process's own niceness (19
    // is the lowest priority there is).
    let me = Some(rustix::thread::gettid());
    let set = getpriority_process(me).and_then(|now| setpriority_process(me, (now + by).min(19)));
    if let Err(e) = set {
        tracing::debug!(error = %e, "background thread keeps normal priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority(_: i32) {}

/// Runs `f` on a background thread; resolves to its result.
pub async fn run<T, F>(f: F) -> Result<T, BackgroundError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    POOL.run(f).await
}

/// Runs `f` on the thread that joins large feed reads into the view
/// ([`crate::apply::Applier::events_owned`]): its own thread, so a join never waits behind a CRL
/// build, at [`JOIN_NICE`] so that answering goes first when the machine is busy.
pub async fn join<T, F>(f: F) -> Result<T, BackgroundError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    JOIN.run(f).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_and_reports_panics() {
        assert_eq!(run(|| 6 * 7).await, Ok(42));
        let e = run(|| -> u8 { panic!("boom") })
            .await
            .expect_err("panicked");
        assert!(e.to_string().contains("panicked"), "{e}");
        // The pool survives a panicking job.
        assert_eq!(run(|| "still here").await, Ok("still here"));
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn background_threads_run_at_lower_priority() {
        use rustix::process::getpriority_process;
        let nice = run(|| getpriority_process(Some(rustix::thread::gettid())))
            .await
            .expect("ran")
            .expect("getpriority");
        let here = getpriority_process(Some(rustix::thread::gettid())).expect("getpriority");
        assert!(
            nice > here || here == 19,
            "background nice {nice}, caller {here}"
        );
        let (joiner, name) = join(|| {
            (
                getpriority_process(Some(rustix::thread::gettid())),
                std::thread::current().name().map(str::to_owned),
            )
        })
        .await
        .expect("ran");
        let joiner = joiner.expect("getpriority");
        assert!(
            joiner > here || here == 19,
            "join nice {joiner}, caller {here}"
        );
        assert!(joiner <= nice, "the join thread is above the CRL threads");
        assert_eq!(name.as_deref(), Some("vigil-join-0"));
    }
}
