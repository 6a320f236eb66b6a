//! The processor's CPU workers: a fixed set of threads that run every stage's CPU work
//! (decoding, resizing, encoding, the face models), a thumbnail job always before an embed job.
//!
//! Why a pool of our own rather than `spawn_blocking` behind a semaphore per stage: with one
//! semaphore per stage both stages ran side by side on the same cores, so thumbnails moved in
//! lockstep with the (ten times costlier) face work and a user waited half an hour for
//! thumbnails under the 5 × 2,000 load test. Here the thumbnail lane is served first and the
//! embed lane gets the capacity thumbnails leave; embed work cannot starve once uploads stop,
//! since thumbnails then run out. Serving queued thumbnail jobs first is not enough on its own:
//! a thumbnail job is only queued once its original is downloaded, and every moment the
//! thumbnail lane is empty a worker takes a quarter-second embed job, until every worker is in
//! one and the next thumbnail waits. So while the thumbnail stage is saturated (records read
//! that have no slot yet: [`CpuPool::set_backlog`]) and its jobs keep coming, embed jobs may
//! occupy all workers but one: a thumbnail never waits for a worker behind face work, and the
//! cores thumbnails leave idle while they wait for downloads still do face work. A pool of one
//! worker holds embed jobs back altogether then ([`EMBED_HOLD_LIMIT`] bounds that wait when
//! thumbnail work stalls on I/O). The threads are also fixed, so the per-thread state (a JPEG
//! codec, an ONNX Runtime session set with its arenas) exists once per worker, not once per
//! blocking thread tokio happened to start.
//!
//! Within a lane, jobs run in the order they were submitted: the stages submit in their
//! [`FairQueue`](crate::fair_queue::FairQueue) order, so fairness between users carries over.
//! Each job's thread CPU time is recorded (`cpu_job_seconds{lane}`), which is what the load
//! test's capacity model divides by the photos processed.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// How long after the last thumbnail job was queued a thumbnail backlog still holds back embed
/// jobs: thumbnails that stall on downloads must not leave the cores idle.
pub const EMBED_HOLD_LIMIT: Duration = Duration::from_secs(1);

/// Which lane a job waits in; lower runs first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Thumbnail work: what the user is waiting to see.
    Thumbnail = 0,
    /// Face work: runs on what thumbnails leave.
    Embed = 1,
}

impl Lane {
    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            Lane::Thumbnail => "thumbnail",
            Lane::Embed => "embed",
        }
    }
}

/// A job that could not run to completion.
#[derive(Debug, thiserror::Error)]
pub enum CpuJobError {
    /// The job panicked (the worker thread survives).
    #[error("the CPU job panicked: {0}")]
    Panicked(String),
    /// The pool stopped before the job ran.
    #[error("the CPU worker pool has stopped")]
    Stopped,
}

type Job = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Lanes {
    queued: [VecDeque<(Instant, Job)>; 2],
    /// Thumbnail records read but not yet started by their stage ([`CpuPool::set_backlog`]).
    thumbnail_backlog: usize,
    /// When the last thumbnail job was queued.
    last_thumbnail: Option<Instant>,
    /// Embed jobs running now.
    embed_running: usize,
    workers: usize,
    stopping: bool,
}

/// What a worker found.
enum Next {
    Run(Lane, Instant, Job),
    /// Only embed jobs are queued and they are held back until this instant at the latest.
    Held(Instant),
    Idle,
}

impl Lanes {
    fn next(&mut self) -> Next {
        if let Some((at, job)) = self.queued[Lane::Thumbnail as usize].pop_front() {
            return Next::Run(Lane::Thumbnail, at, job);
        }
        if self.queued[Lane::Embed as usize].is_empty() {
            return Next::Idle;
        }
        if let Some(until) = self.embed_held_until() {
            return Next::Held(until);
        }
        match self.queued[Lane::Embed as usize].pop_front() {
            Some((at, job)) => {
                self.embed_running += 1;
                Next::Run(Lane::Embed, at, job)
            }
            None => Next::Idle,
        }
    }

    /// While the thumbnail stage is saturated and its jobs keep coming, embed work keeps off
    /// the last free worker.
    fn embed_held_until(&self) -> Option<Instant> {
        if self.thumbnail_backlog == 0 || self.embed_running + 1 < self.workers {
            return None;
        }
        let until = self.last_thumbnail? + EMBED_HOLD_LIMIT;
        (Instant::now() < until).then_some(until)
    }
}

struct Shared {
    lanes: Mutex<Lanes>,
    wake: Condvar,
}

/// A fixed pool of CPU worker threads with a priority lane per stage; shared by the stages of
/// one process. Dropping the last handle stops the workers once the queued jobs are done.
pub struct CpuPool {
    shared: Arc<Shared>,
    workers: usize,
}

impl CpuPool {
    /// Start `workers` threads (at least one).
    pub fn new(workers: usize) -> Arc<Self> {
        let workers = workers.max(1);
        let shared = Arc::new(Shared {
            lanes: Mutex::new(Lanes {
                workers,
                ..Lanes::default()
            }),
            wake: Condvar::new(),
        });
        for i in 0..workers {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name(format!("cpu-worker-{i}"))
                .spawn(move || work(&shared))
                .expect("spawning a CPU worker thread");
        }
        tracing::info!(workers, "CPU worker pool started");
        Arc::new(Self { shared, workers })
    }

    /// The number of worker threads.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Run `f` on a worker when its lane's turn comes; resolves to its result.
    pub async fn run<F, R>(&self, lane: Lane, f: F) -> Result<R, CpuJobError>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let cpu = ThreadCpu::now();
            let result = std::panic::catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
                let msg = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                CpuJobError::Panicked(msg)
            });
            metrics::histogram!("cpu_job_seconds", "lane" => lane.name()).record(cpu.elapsed());
            let _ = tx.send(result);
        });
        {
            let mut lanes = self.shared.lanes.lock().expect("cpu pool lock");
            if lanes.stopping {
                return Err(CpuJobError::Stopped);
            }
            let now = Instant::now();
            if lane == Lane::Thumbnail {
                lanes.last_thumbnail = Some(now);
            }
            lanes.queued[lane as usize].push_back((now, job));
            set_queued_gauge(lane, lanes.queued[lane as usize].len());
        }
        self.shared.wake.notify_one();
        rx.await.map_err(|_| CpuJobError::Stopped)?
    }

    /// How many records of `lane`'s stage are read and waiting for a slot (the stage is
    /// saturated). A thumbnail backlog holds embed jobs back while thumbnail jobs keep coming;
    /// the embed backlog changes nothing.
    pub fn set_backlog(&self, lane: Lane, waiting: usize) {
        if lane != Lane::Thumbnail {
            return;
        }
        let released = {
            let mut lanes = self.shared.lanes.lock().expect("cpu pool lock");
            let released = lanes.thumbnail_backlog > 0 && waiting == 0;
            lanes.thumbnail_backlog = waiting;
            released
        };
        if released {
            self.shared.wake.notify_all();
        }
    }
}

impl Drop for CpuPool {
    fn drop(&mut self) {
        self.shared.lanes.lock().expect("cpu pool lock").stopping = true;
        self.shared.wake.notify_all();
    }
}

fn set_queued_gauge(lane: Lane, n: usize) {
    metrics::gauge!("cpu_jobs_queued", "lane" => lane.name()).set(n as f64);
}

/// A worker: the highest-priority queued job, until stopped and drained.
fn work(shared: &Shared) {
    loop {
        let (lane, queued_at, job) = {
            let mut lanes = shared.lanes.lock().expect("cpu pool lock");
            loop {
                match lanes.next() {
                    Next::Run(lane, at, job) => {
                        set_queued_gauge(lane, lanes.queued[lane as usize].len());
                        break (lane, at, job);
                    }
                    // Stopping drains the queue, held embed jobs included.
                    Next::Held(_) if lanes.stopping => lanes.thumbnail_backlog = 0,
                    Next::Held(until) => {
                        let wait = until.saturating_duration_since(Instant::now());
                        lanes = shared
                            .wake
                            .wait_timeout(lanes, wait)
                            .expect("cpu pool lock")
                            .0;
                    }
                    Next::Idle if lanes.stopping => return,
                    Next::Idle => lanes = shared.wake.wait(lanes).expect("cpu pool lock"),
                }
            }
        };
        metrics::histogram!("cpu_queue_wait_seconds", "lane" => lane.name())
            .record(queued_at.elapsed().as_secs_f64());
        job();
        if lane == Lane::Embed {
            shared.lanes.lock().expect("cpu pool lock").embed_running -= 1;
            // A worker may be waiting for the embed slot this job held.
            shared.wake.notify_one();
        }
    }
}

/// This thread's CPU time at a point, to measure a job's own CPU use (not wall time, which
/// includes waiting for a core).
struct ThreadCpu(f64);

impl ThreadCpu {
    fn now() -> Self {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes into the timespec we own; the clock id is valid on Linux.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        if rc != 0 {
            return Self(0.0);
        }
        Self(ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9)
    }

    fn elapsed(&self) -> f64 {
        (Self::now().0 - self.0).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn thumbnail_jobs_run_before_queued_embed_jobs() {
        let pool = CpuPool::new(1);
        // Hold the only worker until every job below is queued.
        let gate = Arc::new(AtomicBool::new(false));
        let g = gate.clone();
        let blocker = tokio::spawn({
            let pool = pool.clone();
            async move {
                pool.run(Lane::Embed, move || {
                    while !g.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                })
                .await
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = vec![];
        for (i, lane) in [Lane::Embed, Lane::Thumbnail, Lane::Embed, Lane::Thumbnail]
            .into_iter()
            .enumerate()
        {
            let (pool, order) = (pool.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                pool.run(lane, move || order.lock().unwrap().push((i, lane)))
                    .await
            }));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        gate.store(true, Ordering::SeqCst);
        blocker.await.unwrap().unwrap();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let order = order.lock().unwrap().clone();
        assert_eq!(
            order,
            vec![
                (1, Lane::Thumbnail),
                (3, Lane::Thumbnail),
                (0, Lane::Embed),
                (2, Lane::Embed)
            ],
            "thumbnails first, each lane in submission order"
        );
    }

    /// Queue an embed job that records when it ran.
    fn embed_job(pool: &Arc<CpuPool>) -> tokio::task::JoinHandle<Instant> {
        let pool = pool.clone();
        tokio::spawn(async move { pool.run(Lane::Embed, Instant::now).await.unwrap() })
    }

    #[tokio::test]
    async fn a_thumbnail_backlog_holds_embed_jobs_until_it_is_gone() {
        let pool = CpuPool::new(1);
        pool.set_backlog(Lane::Thumbnail, 3);
        pool.run(Lane::Thumbnail, || ()).await.unwrap();
        let embed = embed_job(&pool);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !embed.is_finished(),
            "the embed job ran beside a thumbnail backlog"
        );
        // Another thumbnail job keeps the hold on past the first job's limit.
        tokio::time::sleep(Duration::from_millis(300)).await;
        pool.run(Lane::Thumbnail, || ()).await.unwrap();
        tokio::time::sleep(EMBED_HOLD_LIMIT - Duration::from_millis(400)).await;
        assert!(
            !embed.is_finished(),
            "thumbnail jobs kept coming; embed must wait"
        );
        let released = Instant::now();
        pool.set_backlog(Lane::Thumbnail, 0);
        let ran = embed.await.unwrap();
        assert!(
            ran.duration_since(released) < Duration::from_millis(500),
            "released embed job waited {:?}",
            ran.duration_since(released)
        );
        // The embed stage's own backlog holds nothing back.
        pool.set_backlog(Lane::Embed, 10);
        embed_job(&pool).await.unwrap();
    }

    #[tokio::test]
    async fn beside_a_thumbnail_backlog_face_work_keeps_one_worker_free() {
        let pool = CpuPool::new(2);
        pool.set_backlog(Lane::Thumbnail, 3);
        pool.run(Lane::Thumbnail, || ()).await.unwrap();
        // The first embed job gets a worker (thumbnails still have the other one)...
        let release = Arc::new(AtomicBool::new(false));
        let r = release.clone();
        let first = tokio::spawn({
            let pool = pool.clone();
            async move {
                pool.run(Lane::Embed, move || {
                    while !r.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                })
                .await
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        // ...a second one does not take the last worker...
        let second = embed_job(&pool);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!second.is_finished(), "face work took the last worker");
        // ...which runs thumbnails at once.
        tokio::time::timeout(Duration::from_millis(500), pool.run(Lane::Thumbnail, || ()))
            .await
            .expect("a thumbnail waited behind face work")
            .unwrap();
        // Once the first is done, the second takes its place.
        release.store(true, Ordering::SeqCst);
        first.await.unwrap().unwrap();
        tokio::time::timeout(Duration::from_millis(500), second)
            .await
            .expect("the second embed job did not take the freed worker")
            .unwrap();
    }

    #[tokio::test]
    async fn a_stalled_thumbnail_stage_holds_embed_jobs_no_longer_than_the_limit() {
        let pool = CpuPool::new(1);
        pool.set_backlog(Lane::Thumbnail, 3);
        let last = Instant::now();
        pool.run(Lane::Thumbnail, || ()).await.unwrap();
        let ran = tokio::time::timeout(EMBED_HOLD_LIMIT * 3, embed_job(&pool))
            .await
            .expect("embed job held for good")
            .unwrap();
        assert!(ran.duration_since(last) >= EMBED_HOLD_LIMIT - Duration::from_millis(50));
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_and_the_worker_survives() {
        let pool = CpuPool::new(1);
        let err = pool
            .run(Lane::Thumbnail, || -> u32 { panic!("bad photo") })
            .await
            .unwrap_err();
        assert!(matches!(err, CpuJobError::Panicked(ref m) if m.contains("bad photo")));
        assert_eq!(pool.run(Lane::Embed, || 7).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn the_pool_runs_jobs_in_parallel_on_its_workers() {
        // Each job waits for the other to have started: only two workers can finish both.
        let pool = CpuPool::new(2);
        let started = Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
        let job = |me: usize| {
            let started = started.clone();
            move || {
                started[me].store(true, Ordering::SeqCst);
                let t = Instant::now();
                while !started[1 - me].load(Ordering::SeqCst) {
                    if t.elapsed() > Duration::from_secs(10) {
                        return false;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                true
            }
        };
        let (a, b) = tokio::join!(pool.run(Lane::Embed, job(0)), pool.run(Lane::Embed, job(1)));
        assert!(a.unwrap() && b.unwrap(), "both jobs ran at the same time");
    }
}
