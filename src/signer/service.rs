//! The one signing service, for OCSP responses and CRLs alike.
//!
//! A [`SigningService`] owns one signer and a fixed set of named threads, started once, that
//! take jobs from two bounded queues (status changes first). Callers `await` the signature;
//! nothing spawns a thread or a blocking task per signature. Under load a signing thread goes
//! from one job to the next without sleeping: a `spawn_blocking` per signature cost several
//! context switches, more CPU than a P-256 signature (nonce-echo throughput 1.9x `openssl ocsp`
//! instead of 3.2x).
//!
//! ```text
//!  sign(tbs, priority).await ──► [status changes | routine]  ──► thread 0 ─┐
//!   (full queue: Shed at once)     bounded, `queue` each        thread 1 ─┼─► Signer::sign
//!                                                               …        ─┘
//! ```
//!
//! Deadlines: a signer with a [`Signer::timeout`] (an HSM pool) gets that long per call, from
//! the moment a thread starts the call. A call past its deadline is abandoned and asked once
//! more, which a pool sends to another HSM (by then the stuck one is taken out); a second miss
//! is [`ServiceError::TimedOut`]. The thread of the abandoned call may stay stuck inside the
//! HSM: it is replaced by a new thread, so the service keeps its capacity, and when the stuck
//! call returns that thread stops. At most [`MAX_STUCK_SIGNING_THREADS`] threads per service
//! are replaced at once; past that a stuck thread is waited for, and the queues shed.
//! A job that does not start within [`MAX_SIGNING_QUEUE_WAIT`] (every thread stuck) times out.
//! A call is abandoned at its deadline even when its caller went away before (a client that
//! disconnected), so no thread stays stuck unreplaced because nobody was waiting for it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use tokio::sync::oneshot;

use super::{SignError, Signer};
use crate::limits::{MAX_SIGNING_QUEUE_WAIT, MAX_STUCK_SIGNING_THREADS};

/// Which queue a signature waits in when every signing thread is busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// A certificate's status changed: its new response goes first.
    StatusChange,
    /// Everything else: first answers, refreshes, nonce and multi-CertID responses, CRLs.
    Routine,
}

/// Why the service gave no signature.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The queue of this priority is full: shed at once (OCSP answers `tryLater`).
    #[error("signing queue full")]
    Shed,
    /// No signature within the signer's deadline, twice.
    #[error("no signature within {0:?}, twice")]
    TimedOut(Duration),
    /// No signing thread took the job within [`MAX_SIGNING_QUEUE_WAIT`] (every thread stuck).
    #[error("no signing thread free within {0:?}")]
    NotStarted(Duration),
    /// The signer refused or failed.
    #[error(transparent)]
    Failed(SignError),
    /// The service has no running signing thread.
    #[error("the signing threads of {0} stopped")]
    Stopped(String),
}

/// A signature, and how long the signer took to make it.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The signature as it goes into the BIT STRING.
    pub signature: Vec<u8>,
    /// The signer's time for this call (not the time in the queue).
    pub took: Duration,
}

/// How many threads and how long a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceLimits {
    /// Signing threads (at least one).
    pub threads: usize,
    /// Jobs waiting per priority before more are shed; a routine job also counts the status
    /// changes ahead of it.
    pub queue: usize,
}

/// A signer behind a fixed set of signing threads and two bounded queues. Cheap to share
/// behind an `Arc`; its threads stop when it is dropped and their queues are empty.
pub struct SigningService {
    shared: Arc<Shared>,
    status_change: Sender<Job>,
    routine: Sender<Job>,
    max_waiting: usize,
}

/// What the signing threads share: the signer and the receiving ends of the queues (no
/// sender, so the queues close when the service is dropped).
struct Shared {
    signer: Arc<dyn Signer>,
    name: String,
    status_change: Receiver<Job>,
    routine: Receiver<Job>,
    /// Replacements that may still be started for threads stuck past their deadline.
    spares: AtomicUsize,
    /// Threads taking jobs (a stuck thread that was replaced no longer counts).
    serving: AtomicUsize,
    /// Threads started, for their names.
    started: AtomicUsize,
}

/// What a signing thread hands back.
struct Reply {
    result: Result<Vec<u8>, SignError>,
    took: Duration,
}

/// One signature for a signing thread to make.
struct Job {
    tbs: Bytes,
    reply: oneshot::Sender<Reply>,
    /// For signers with a deadline: told when the call starts, and where the caller marks a
    /// call it gave up on.
    deadline: Option<(oneshot::Sender<()>, Arc<Mutex<Phase>>)>,
}

/// Where a call with a deadline is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a thread.
    Queued,
    /// A thread is making the call, since then.
    Running { since: Instant },
    /// The call returned, or was skipped.
    Done,
    /// The caller gave up on it; `replaced`: a new thread took this one's place, so this one
    /// stops when the call returns.
    Abandoned { replaced: bool },
}

/// A call with a deadline, watched for as long as its caller waits. Dropped while the call
/// runs (the caller went away), it leaves a task that abandons the call at its deadline if it
/// is still running then. Dropped while the job is queued, the thread skips the job.
struct Watch {
    shared: Arc<Shared>,
    phase: Arc<Mutex<Phase>>,
    limit: Duration,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let Phase::Running { since } = *lock(&self.phase) else {
            return;
        };
        let deadline = tokio::time::Instant::from_std(since + self.limit);
        let (shared, phase) = (self.shared.clone(), self.phase.clone());
        // Dropped by a runtime (the caller's future); without one there is nothing to wait on.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                tokio::time::sleep_until(deadline).await;
                shared.abandon(&phase);
            });
        }
    }
}

fn lock(phase: &Mutex<Phase>) -> std::sync::MutexGuard<'_, Phase> {
    // A plain enum: consistent even if a holder panicked.
    phase.lock().unwrap_or_else(|e| e.into_inner())
}

impl SigningService {
    /// Starts `limits.threads` signing threads for `signer`, named `{name}-{i}` (keep `name`
    /// short: Linux shows 15 bytes of a thread name).
    pub fn new(signer: Arc<dyn Signer>, name: &str, limits: ServiceLimits) -> Self {
        let queue = limits.queue.max(1);
        let (status_change, change_rx) = crossbeam_channel::bounded(queue);
        let (routine, routine_rx) = crossbeam_channel::bounded(queue);
        let shared = Arc::new(Shared {
            signer,
            name: name.to_owned(),
            status_change: change_rx,
            routine: routine_rx,
            spares: AtomicUsize::new(MAX_STUCK_SIGNING_THREADS),
            serving: AtomicUsize::new(0),
            started: AtomicUsize::new(0),
        });
        for _ in 0..limits.threads.max(1) {
            if let Err(e) = shared.start_thread() {
                tracing::error!(error = %e, service = name, "could not start a signing thread");
            }
        }
        SigningService {
            shared,
            status_change,
            routine,
            max_waiting: limits.queue,
        }
    }

    /// The signer behind the service.
    pub fn signer(&self) -> &Arc<dyn Signer> {
        &self.shared.signer
    }

    /// Jobs waiting now, (status changes, routine).
    pub fn queued(&self) -> (usize, usize) {
        (self.status_change.len(), self.routine.len())
    }

    /// Threads taking jobs now (started threads less those stuck past their deadline and
    /// replaced).
    pub fn serving_threads(&self) -> usize {
        self.shared.serving.load(Ordering::SeqCst)
    }

    /// Replacements for stuck threads that may still be started (at most
    /// [`MAX_STUCK_SIGNING_THREADS`]; one comes back when a stuck call returns).
    pub fn spare_threads(&self) -> usize {
        self.shared.spares.load(Ordering::SeqCst)
    }

    /// Signs `tbs` on a signing thread. A signer with a deadline that misses it is asked once
    /// more (see the module docs).
    pub async fn sign(&self, tbs: Bytes, priority: Priority) -> Result<Signed, ServiceError> {
        let Some(limit) = self.shared.signer.timeout() else {
            let (reply, answer) = oneshot::channel();
            self.enqueue(
                Job {
                    tbs,
                    reply,
                    deadline: None,
                },
                priority,
            )?;
            return self.finished(answer.await);
        };
        for _ in 0..2 {
            let (reply, mut answer) = oneshot::channel();
            let (started_tx, started) = oneshot::channel();
            let phase = Arc::new(Mutex::new(Phase::Queued));
            self.enqueue(
                Job {
                    tbs: tbs.clone(),
                    reply,
                    deadline: Some((started_tx, phase.clone())),
                },
                priority,
            )?;
            // If this caller goes away while the call runs, the watch still abandons the call
            // at its deadline, so a stuck thread is replaced whoever waited for it.
            let _watch = Watch {
                shared: self.shared.clone(),
                phase: phase.clone(),
                limit,
            };
            // Dropping the receivers on the way out makes a thread skip the job.
            match tokio::time::timeout(MAX_SIGNING_QUEUE_WAIT, started).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return self.finished(answer.try_recv()),
                Err(_) => return Err(ServiceError::NotStarted(MAX_SIGNING_QUEUE_WAIT)),
            }
            if let Ok(r) = tokio::time::timeout(limit, &mut answer).await {
                return self.finished(r);
            }
            if let Ok(r) = answer.try_recv() {
                return self.finished(Ok::<_, ()>(r));
            }
            self.shared.abandon(&phase);
            tracing::warn!(signer = %self.shared.signer.describe(), ?limit, "a signature did not finish in time; asking again");
        }
        Err(ServiceError::TimedOut(limit))
    }

    fn enqueue(&self, job: Job, priority: Priority) -> Result<(), ServiceError> {
        let urgent = self.status_change.len();
        let (queue, waiting) = match priority {
            Priority::StatusChange => (&self.status_change, urgent),
            Priority::Routine => (&self.routine, urgent + self.routine.len()),
        };
        if waiting >= self.max_waiting {
            return Err(ServiceError::Shed);
        }
        if self.shared.serving.load(Ordering::SeqCst) == 0 {
            return Err(ServiceError::Stopped(self.shared.name.clone()));
        }
        queue.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => ServiceError::Shed,
            TrySendError::Disconnected(_) => ServiceError::Stopped(self.shared.name.clone()),
        })
    }

    fn finished<E>(&self, r: Result<Reply, E>) -> Result<Signed, ServiceError> {
        let reply = r.map_err(|_| ServiceError::Stopped(self.shared.name.clone()))?;
        reply
            .result
            .map(|signature| Signed {
                signature,
                took: reply.took,
            })
            .map_err(ServiceError::Failed)
    }
}

// === impl Shared ===

impl Shared {
    fn start_thread(self: &Arc<Self>) -> std::io::Result<()> {
        let i = self.started.fetch_add(1, Ordering::SeqCst);
        let shared = self.clone();
        self.serving.fetch_add(1, Ordering::SeqCst);
        let spawned = std::thread::Builder::new()
            .name(format!("{}-{i}", self.name))
            .spawn(move || shared.serve());
        if spawned.is_err() {
            self.serving.fetch_sub(1, Ordering::SeqCst);
        }
        spawned.map(drop)
    }

    /// The caller gave up on a running call: start a thread in its place while spares last.
    fn abandon(self: &Arc<Self>, phase: &Mutex<Phase>) {
        let mut p = lock(phase);
        if !matches!(*p, Phase::Running { .. }) {
            return;
        }
        let spare = self
            .spares
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let replaced = spare
            && {
                // This thread stops serving when its call returns; the new one serves instead.
                self.serving.fetch_sub(1, Ordering::SeqCst);
                match self.start_thread() {
                    Ok(()) => true,
                    Err(e) => {
                        self.serving.fetch_add(1, Ordering::SeqCst);
                        self.spares.fetch_add(1, Ordering::SeqCst);
                        tracing::error!(error = %e, service = %self.name, "could not replace a stuck signing thread");
                        false
                    }
                }
            };
        if !replaced {
            tracing::warn!(service = %self.name, limit = MAX_STUCK_SIGNING_THREADS, "a signing thread is stuck past its deadline and not replaced");
        }
        *p = Phase::Abandoned { replaced };
    }

    /// Signs jobs, status changes first, until the service is gone or this thread was
    /// replaced. A job whose caller went away is skipped; a panicking signer fails its job, not
    /// the thread.
    fn serve(&self) {
        loop {
            let job = match self.status_change.try_recv() {
                Ok(job) => job,
                Err(_) => {
                    let next = crossbeam_channel::select_biased! {
                        recv(self.status_change) -> j => j,
                        recv(self.routine) -> j => j,
                    };
                    match next {
                        Ok(job) => job,
                        Err(_) => break,
                    }
                }
            };
            if job.reply.is_closed() {
                continue;
            }
            let phase = match job.deadline {
                Some((started, phase)) => {
                    *lock(&phase) = Phase::Running {
                        since: Instant::now(),
                    };
                    if started.send(()).is_err() {
                        // The caller stopped waiting before the call began.
                        *lock(&phase) = Phase::Done;
                        continue;
                    }
                    Some(phase)
                }
                None => None,
            };
            let began = Instant::now();
            let tbs = &job.tbs;
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.signer.sign(tbs)))
                    .unwrap_or_else(|_| Err(SignError::Failed("the signer panicked".into())));
            let took = began.elapsed();
            let replaced = phase.is_some_and(|phase| {
                let mut p = lock(&phase);
                let replaced = *p == Phase::Abandoned { replaced: true };
                if matches!(*p, Phase::Running { .. }) {
                    *p = Phase::Done;
                }
                replaced
            });
            let _ = job.reply.send(Reply { result, took });
            if replaced {
                self.spares.fetch_add(1, Ordering::SeqCst);
                tracing::info!(service = %self.name, ?took, "a stuck signing call returned; its thread stops, the replacement stays");
                return;
            }
        }
        self.serving.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Signs only when handed a ticket, so a test decides when signatures finish; tells the
    /// test each time a call begins and ends.
    struct Ticketed {
        tickets: Mutex<mpsc::Receiver<()>>,
        began: mpsc::SyncSender<Vec<u8>>,
        returned: mpsc::SyncSender<Vec<u8>>,
        timeout: Option<Duration>,
    }

    impl Signer for Ticketed {
        fn algorithm(&self) -> crate::alg::SignatureAlgorithm {
            crate::alg::SignatureAlgorithm::EcdsaP256Sha256
        }
        fn public_key(&self) -> &[u8] {
            &[]
        }
        fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
            let _ = self.began.send(message.to_vec());
            // A poisoned lock or a dropped sender: sign at once.
            if let Ok(t) = self.tickets.lock() {
                let _ = t.recv();
            }
            let _ = self.returned.send(message.to_vec());
            Ok([b"sig:", message].concat())
        }
        fn describe(&self) -> String {
            "ticketed".into()
        }
        fn timeout(&self) -> Option<Duration> {
            self.timeout
        }
    }

    struct Harness {
        service: Arc<SigningService>,
        tickets: mpsc::Sender<()>,
        began: mpsc::Receiver<Vec<u8>>,
        returned: mpsc::Receiver<Vec<u8>>,
    }

    fn harness(threads: usize, queue: usize, timeout: Option<Duration>) -> Harness {
        let (tickets, rx) = mpsc::channel();
        let (began_tx, began) = mpsc::sync_channel(64);
        let (returned_tx, returned) = mpsc::sync_channel(64);
        let signer = Ticketed {
            tickets: Mutex::new(rx),
            began: began_tx,
            returned: returned_tx,
            timeout,
        };
        let service = SigningService::new(
            Arc::new(signer),
            "test-sign",
            ServiceLimits { threads, queue },
        );
        Harness {
            service: Arc::new(service),
            tickets,
            began,
            returned,
        }
    }

    const WAIT: Duration = Duration::from_secs(10);

    impl Harness {
        fn sign(
            &self,
            tbs: &'static [u8],
            p: Priority,
        ) -> tokio::task::JoinHandle<Result<Signed, ServiceError>> {
            let s = self.service.clone();
            tokio::spawn(async move { s.sign(Bytes::from_static(tbs), p).await })
        }

        /// Blocks until the signer began a call, and returns its message.
        async fn began(&self) -> Vec<u8> {
            let rx = &self.began;
            tokio::task::block_in_place(|| rx.recv_timeout(WAIT)).expect("a call began")
        }

        /// Waits until the queues hold `want` (they are read as the callers fill them; each
        /// caller enqueues before it first waits, so this cannot pass early).
        async fn queued(&self, want: (usize, usize)) {
            let until = Instant::now() + WAIT;
            while self.service.queued() != want {
                assert!(Instant::now() < until, "queues never reached {want:?}");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn status_changes_are_signed_before_routine_jobs_that_queued_first() {
        let h = harness(1, 10, None);
        let busy = h.sign(b"busy", Priority::Routine);
        assert_eq!(h.began().await, b"busy");
        let r1 = h.sign(b"routine-1", Priority::Routine);
        h.queued((0, 1)).await;
        let r2 = h.sign(b"routine-2", Priority::Routine);
        h.queued((0, 2)).await;
        let change = h.sign(b"change", Priority::StatusChange);
        h.queued((1, 2)).await;
        for _ in 0..4 {
            h.tickets.send(()).expect("ticket");
        }
        for (t, tbs) in [
            (busy, &b"busy"[..]),
            (r1, b"routine-1"),
            (r2, b"routine-2"),
            (change, b"change"),
        ] {
            let signed = t.await.expect("task").expect("signed");
            assert_eq!(signed.signature, [b"sig:", tbs].concat());
        }
        let began: Vec<Vec<u8>> = h.began.try_iter().collect();
        assert_eq!(
            began,
            [
                b"change".to_vec(),
                b"routine-1".to_vec(),
                b"routine-2".to_vec()
            ]
        );
        assert_eq!(h.service.queued(), (0, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_sheds_at_once_but_keeps_room_for_status_changes() {
        let h = harness(1, 1, None);
        let busy = h.sign(b"busy", Priority::Routine);
        h.began().await;
        let queued = h.sign(b"queued", Priority::Routine);
        h.queued((0, 1)).await;
        let shed = h
            .service
            .sign(Bytes::from_static(b"shed"), Priority::Routine)
            .await;
        assert!(matches!(shed, Err(ServiceError::Shed)), "{shed:?}");
        let change = h.sign(b"change", Priority::StatusChange);
        h.queued((1, 1)).await;
        let second = h
            .service
            .sign(Bytes::from_static(b"change-2"), Priority::StatusChange)
            .await;
        assert!(matches!(second, Err(ServiceError::Shed)), "{second:?}");
        for _ in 0..3 {
            h.tickets.send(()).expect("ticket");
        }
        for t in [busy, queued, change] {
            t.await.expect("task").expect("signed");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_whose_caller_went_away_is_skipped() {
        let h = harness(1, 10, None);
        let busy = h.sign(b"busy", Priority::Routine);
        h.began().await;
        let gone = h.sign(b"gone", Priority::Routine);
        h.queued((0, 1)).await;
        gone.abort();
        assert!(gone.await.is_err_and(|e| e.is_cancelled()));
        let next = h.sign(b"next", Priority::Routine);
        h.queued((0, 2)).await;
        h.tickets.send(()).expect("ticket");
        h.tickets.send(()).expect("ticket");
        busy.await.expect("task").expect("signed");
        let signed = next.await.expect("task").expect("signed");
        assert_eq!(signed.signature, b"sig:next");
        assert_eq!(h.began.try_iter().collect::<Vec<_>>(), [b"next".to_vec()]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stuck_call_is_asked_again_and_its_thread_replaced() {
        let h = harness(1, 10, Some(Duration::from_millis(200)));
        let first = h.sign(b"m", Priority::Routine);
        assert_eq!(h.began().await, b"m"); // the first call hangs: no ticket yet
        // The caller gives up after 200 ms and asks again; a new thread takes the second call
        // while the first still hangs.
        assert_eq!(h.began().await, b"m");
        assert_eq!(h.service.spare_threads(), MAX_STUCK_SIGNING_THREADS - 1);
        assert_eq!(h.service.serving_threads(), 1);
        h.tickets.send(()).expect("ticket");
        let rx = &h.returned;
        tokio::task::block_in_place(|| rx.recv_timeout(WAIT)).expect("a call returned");
        h.tickets.send(()).expect("ticket");
        let signed = first.await.expect("task").expect("signed the second time");
        assert_eq!(signed.signature, b"sig:m");
        // Both calls returned: the stuck thread stops and its spare comes back.
        tokio::task::block_in_place(|| rx.recv_timeout(WAIT)).expect("a call returned");
        let until = Instant::now() + WAIT;
        while h.service.spare_threads() != MAX_STUCK_SIGNING_THREADS {
            assert!(Instant::now() < until, "the spare never came back");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(h.service.serving_threads(), 1);
        // Still serving.
        let again = h.sign(b"again", Priority::Routine);
        h.began().await;
        h.tickets.send(()).expect("ticket");
        assert!(again.await.expect("task").is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stuck_call_whose_caller_went_away_is_still_replaced_at_its_deadline() {
        let h = harness(1, 10, Some(Duration::from_millis(100)));
        let gone = h.sign(b"m", Priority::Routine);
        h.began().await;
        gone.abort(); // before the deadline: nobody waits for this call any more
        assert!(gone.await.is_err_and(|e| e.is_cancelled()));
        let until = Instant::now() + WAIT;
        while h.service.spare_threads() != MAX_STUCK_SIGNING_THREADS - 1 {
            assert!(
                Instant::now() < until,
                "the stuck thread was never replaced"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // The replacement serves while the stuck call still hangs.
        let next = h.sign(b"next", Priority::Routine);
        assert_eq!(h.began().await, b"next");
        h.tickets.send(()).expect("ticket");
        h.tickets.send(()).expect("ticket");
        assert!(next.await.expect("task").is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stuck_threads_are_replaced_only_up_to_the_limit() {
        let h = harness(1, 64, Some(Duration::from_millis(50)));
        // Every call hangs: each timed-out call is replaced while spares last, then
        // the service runs out of threads and callers time out without new threads.
        let callers: Vec<_> = (0..MAX_STUCK_SIGNING_THREADS + 2)
            .map(|_| h.sign(b"m", Priority::Routine))
            .collect();
        let until = Instant::now() + WAIT;
        while h.service.spare_threads() != 0 {
            assert!(Instant::now() < until, "the spares were never used");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // 1 thread + the spares, each stuck in one call; with no spare left no thread can be
        // started (only `abandon` starts one, and only by taking a spare).
        for _ in 0..=MAX_STUCK_SIGNING_THREADS {
            h.began().await;
        }
        assert_eq!(
            h.service.shared.started.load(Ordering::SeqCst),
            1 + MAX_STUCK_SIGNING_THREADS
        );
        assert_eq!(h.service.serving_threads(), 1);
        drop(h.tickets);
        for c in callers {
            let _ = c.await.expect("task");
        }
    }

    #[tokio::test]
    async fn a_signer_failure_is_typed() {
        struct Refuses;
        impl Signer for Refuses {
            fn algorithm(&self) -> crate::alg::SignatureAlgorithm {
                crate::alg::SignatureAlgorithm::EcdsaP256Sha256
            }
            fn public_key(&self) -> &[u8] {
                &[]
            }
            fn sign(&self, _: &[u8]) -> Result<Vec<u8>, SignError> {
                Err(SignError::Failed("no".into()))
            }
            fn describe(&self) -> String {
                "refuses".into()
            }
        }
        let s = SigningService::new(
            Arc::new(Refuses),
            "t",
            ServiceLimits {
                threads: 1,
                queue: 1,
            },
        );
        let r = s.sign(Bytes::from_static(b"m"), Priority::Routine).await;
        assert!(
            matches!(r, Err(ServiceError::Failed(SignError::Failed(_)))),
            "{r:?}"
        );
    }
}
