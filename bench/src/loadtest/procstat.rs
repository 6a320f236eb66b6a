//! CPU time and resident memory of the stack's processes, read from `/proc`, so the report can
//! say what the load cost and compute the ideal completion time from the processor's CPU work.

use std::collections::BTreeMap;
use std::time::Instant;

/// One process the load test watches.
#[derive(Clone, Debug)]
pub struct Watched {
    /// What it is (`processor`, `status-api`, `devstack`, `loadtest`).
    pub name: String,
    pub pid: u32,
}

/// CPU seconds (user + system) of `pid` so far, or `None` once it is gone.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; the fields after it are fixed.
    let after = stat.rsplit(')').next()?;
    let f: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks_per_sec())
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Resident set size of `pid` in MiB, or `None` once it is gone.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = s
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// Pids whose command name (`/proc/PID/comm`) is exactly `name`, for a stack the load test did
/// not start.
pub fn find_by_name(name: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    let mut pids: Vec<u32> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim() == name)
                .unwrap_or(false)
        })
        .collect();
    pids.sort();
    pids
}

/// Usage of one process over the measured interval.
#[derive(Clone, Debug, Default)]
pub struct Usage {
    pub cpu_start: f64,
    pub cpu_end: f64,
    pub rss_peak_mib: f64,
    pub rss_end_mib: f64,
    /// (seconds since start, CPU % of one core over the last interval, RSS MiB).
    pub samples: Vec<(f64, f64, f64)>,
}

impl Usage {
    /// CPU seconds used between the first and the last sample.
    pub fn cpu_used(&self) -> f64 {
        (self.cpu_end - self.cpu_start).max(0.0)
    }
}

/// Samples every watched process; call [`Sampler::sample`] periodically.
pub struct Sampler {
    pub watched: Vec<Watched>,
    pub usage: BTreeMap<String, Usage>,
    start: Instant,
    last: Option<(Instant, Vec<f64>)>,
}

impl Sampler {
    pub fn new(watched: Vec<Watched>, start: Instant) -> Self {
        let mut usage = BTreeMap::new();
        for w in &watched {
            usage.insert(
                w.name.clone(),
                Usage {
                    cpu_start: cpu_secs(w.pid).unwrap_or(0.0),
                    cpu_end: cpu_secs(w.pid).unwrap_or(0.0),
                    ..Default::default()
                },
            );
        }
        Self {
            watched,
            usage,
            start,
            last: None,
        }
    }

    pub fn sample(&mut self) {
        let now = Instant::now();
        let cpus: Vec<f64> = self
            .watched
            .iter()
            .map(|w| cpu_secs(w.pid).unwrap_or(f64::NAN))
            .collect();
        for (i, w) in self.watched.iter().enumerate() {
            let u = self.usage.get_mut(&w.name).expect("inserted in new");
            let rss = rss_mib(w.pid).unwrap_or(0.0);
            if cpus[i].is_finite() {
                u.cpu_end = cpus[i];
            }
            u.rss_peak_mib = u.rss_peak_mib.max(rss);
            u.rss_end_mib = rss;
            if let Some((t0, prev)) = &self.last {
                let dt = now.duration_since(*t0).as_secs_f64();
                let pct = if dt > 0.0 && cpus[i].is_finite() && prev[i].is_finite() {
                    (cpus[i] - prev[i]) / dt * 100.0
                } else {
                    0.0
                };
                u.samples
                    .push((now.duration_since(self.start).as_secs_f64(), pct, rss));
            }
        }
        self.last = Some((now, cpus));
    }
}
