//! The processor's CPU workers: a fixed set of threads that run every stage's CPU work
//! (decoding, resizing, encoding, the face models), a thumbnail job always before an embed job.
//!
//! Why a pool of our own rather than `spawn_blocking` behind a semaphore per stage: with one
//! semaphore per stage both stages ran side by side on the same cores, so thumbnails moved in
//! lockstep with the (ten times costlier) face work and a user waited half an hour for
//! thumbnails under the 5 × 2,000 load test. Here the thumbnail lane is served first and the
//! embed lane gets the capacity thumbnails leave; embed work cannot starve once uploads stop,
//! since thumbnails then run out. The threads are also fixed, so the per-thread state (a JPEG
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
use std::time::Instant;

/// Which lane a job waits in; lower runs first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Thumbnail work: what the user is waiting to see.
    Thumbnail = 0,
    /// Face work: runs on what thumbnails leave.
    Embed = 1,
}

impl Lane {
    const ALL: [Lane; 2] = [Lane::Thumbnail, Lane::Embed];

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
    stopping: bool,
}

impl Lanes {
    fn next(&mut self) -> Option<(Lane, Instant, Job)> {
        Lane::ALL.into_iter().find_map(|lane| {
            self.queued[lane as usize]
                .pop_front()
                .map(|(at, job)| (lane, at, job))
        })
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
            lanes: Mutex::new(Lanes::default()),
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
            lanes.queued[lane as usize].push_back((Instant::now(), job));
            set_queued_gauge(lane, lanes.queued[lane as usize].len());
        }
        self.shared.wake.notify_one();
        rx.await.map_err(|_| CpuJobError::Stopped)?
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
                if let Some(next) = lanes.next() {
                    set_queued_gauge(next.0, lanes.queued[next.0 as usize].len());
                    break next;
                }
                if lanes.stopping {
                    return;
                }
                lanes = shared.wake.wait(lanes).expect("cpu pool lock");
            }
        };
        metrics::histogram!("cpu_queue_wait_seconds", "lane" => lane.name())
            .record(queued_at.elapsed().as_secs_f64());
        job();
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
