//! Bounded exponential backoff for transient failures (object storage, the DB hook, Kafka).

use std::future::Future;
use std::time::{Duration, Instant};

/// Retry schedule: exponential backoff with jitter, bounded by a total time budget.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// Stop retrying once this much time has passed since the first attempt.
    pub budget: Duration,
}

impl RetryPolicy {
    pub fn with_budget(budget: Duration) -> Self {
        Self {
            first_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            budget,
        }
    }
}

/// An attempt's failure: retry it, or give up at once.
#[derive(Debug)]
pub enum Attempt<E> {
    Transient(E),
    Permanent(E),
}

/// Run `op` until it succeeds, fails permanently, or the budget is spent; the last error is
/// returned along with the number of attempts made.
pub async fn retry<T, E, F, Fut>(policy: RetryPolicy, what: &str, mut op: F) -> Result<T, (E, u32)>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Attempt<E>>>,
    E: std::fmt::Display,
{
    let start = Instant::now();
    let mut delay = policy.first_delay;
    let mut attempts = 0;
    loop {
        attempts += 1;
        match op().await {
            Ok(v) => return Ok(v),
            Err(Attempt::Permanent(e)) => return Err((e, attempts)),
            Err(Attempt::Transient(e)) => {
                if start.elapsed() + delay > policy.budget {
                    return Err((e, attempts));
                }
                tracing::warn!(%e, attempts, ?delay, "{what} failed; retrying");
                metrics::counter!("retries_total", "op" => what.to_string()).increment(1);
                let jitter = rand::random_range(0.5..1.0);
                tokio::time::sleep(delay.mul_f64(jitter)).await;
                delay = (delay * 2).min(policy.max_delay);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn fast(budget_ms: u64) -> RetryPolicy {
        RetryPolicy {
            first_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(4),
            budget: Duration::from_millis(budget_ms),
        }
    }

    #[tokio::test]
    async fn retries_transient_then_succeeds() {
        let n = AtomicU32::new(0);
        let r: Result<u32, (String, u32)> = retry(fast(1000), "t", || async {
            let i = n.fetch_add(1, Ordering::SeqCst);
            if i < 3 {
                Err(Attempt::Transient("flaky".to_string()))
            } else {
                Ok(i)
            }
        })
        .await;
        assert_eq!(r.unwrap(), 3);
    }

    #[tokio::test]
    async fn permanent_stops_and_budget_bounds() {
        let r: Result<(), (String, u32)> = retry(fast(1000), "t", || async {
            Err(Attempt::Permanent("no".to_string()))
        })
        .await;
        assert_eq!(r.unwrap_err().1, 1);
        let r: Result<(), (String, u32)> = retry(fast(30), "t", || async {
            Err(Attempt::Transient("down".to_string()))
        })
        .await;
        let (_, attempts) = r.unwrap_err();
        assert!(attempts > 1 && attempts < 100, "attempts={attempts}");
    }
}
