//! The consumer side every stage shares: read a topic, process records concurrently within a
//! partition (up to `max_in_flight`), serve users round-robin ([`FairQueue`]), and advance the
//! committed offset only over the contiguous prefix of finished records ([`OffsetTracker`]).
//! A record counts as finished only once its [`StageWork`] says its outputs are durably in
//! Kafka, so a crash at any point redelivers, never loses, a record; redelivery is harmless
//! because every output is keyed by the deterministic photo id.

use crate::fair_queue::FairQueue;
use crate::kafka::KafkaConfig;
use crate::offsets::{OffsetTracker, Ticket};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};
use serde::de::DeserializeOwned;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// What a stage does with one record.
pub trait StageWork: Send + Sync + 'static {
    /// The event type of the input topic.
    type Input: DeserializeOwned + Send + 'static;

    /// The stage's name, for logs and metric labels.
    fn name(&self) -> &'static str;

    /// Whose record this is (fair sharing is between users).
    fn user_id(input: &Self::Input) -> &str;

    /// Process one record and deliver its outputs; resolves to whether the record may be
    /// committed (false only when delivery was abandoned at shutdown).
    fn process(self: Arc<Self>, input: Self::Input) -> impl Future<Output = bool> + Send + 'static;

    /// Called when shutdown's grace period is over: pending deliveries must give up.
    fn abandon(&self);

    /// Wait for queued outputs before the final commit.
    fn flush(&self);
}

/// Consumer settings of a stage.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub input_topic: String,
    pub group: String,
    pub group_instance_id: Option<String>,
    pub max_in_flight: usize,
    pub max_buffered: usize,
    pub shutdown_grace: Duration,
}

/// Consumer context: forgets revoked partitions' in-flight offsets and exports consumer lag.
struct StageContext {
    tracker: Arc<Mutex<OffsetTracker>>,
}

impl ClientContext for StageContext {
    fn stats(&self, stats: Statistics) {
        for (topic, t) in stats.topics {
            for (partition, p) in t.partitions {
                if partition >= 0 && p.consumer_lag >= 0 {
                    metrics::gauge!("kafka_consumer_lag", "topic" => topic.clone(), "partition" => partition.to_string())
                        .set(p.consumer_lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for StageContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut tracker = self.tracker.lock().expect("tracker lock");
            for e in tpl.elements() {
                tracing::info!(
                    topic = e.topic(),
                    partition = e.partition(),
                    "partition revoked"
                );
                tracker.revoke(&(e.topic().to_string(), e.partition()));
            }
        }
    }
}

/// A stage's consumer loop around its [`StageWork`]: construct with [`StageRunner::new`], then
/// [`StageRunner::run`] until shutdown.
pub struct StageRunner<W: StageWork> {
    cfg: RunnerConfig,
    work: Arc<W>,
    consumer: StreamConsumer<StageContext>,
    tracker: Arc<Mutex<OffsetTracker>>,
}

struct Job<I> {
    ticket: Ticket,
    event: I,
}

impl<W: StageWork> StageRunner<W> {
    pub fn new(cfg: RunnerConfig, kafka: &KafkaConfig, work: W) -> anyhow::Result<Self> {
        let tracker = Arc::new(Mutex::new(OffsetTracker::default()));
        let mut consumer_config = kafka.client_config_with(&[
            ("group.id", &cfg.group),
            ("enable.auto.commit", "true"),
            ("auto.commit.interval.ms", "1000"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("session.timeout.ms", "10000"),
            // Also the rebalance timeout: how long a rebalance waits for a member that
            // stopped answering. We keep polling even when busy (partitions are paused, not
            // starved), so this can be short.
            ("max.poll.interval.ms", "60000"),
            ("statistics.interval.ms", "5000"),
        ])?;
        if let Some(id) = &cfg.group_instance_id {
            consumer_config.set("group.instance.id", id);
        }
        let consumer: StreamConsumer<StageContext> =
            consumer_config.create_with_context(StageContext {
                tracker: tracker.clone(),
            })?;
        consumer.subscribe(&[&cfg.input_topic])?;
        Ok(Self {
            cfg,
            work: Arc::new(work),
            consumer,
            tracker,
        })
    }

    /// Consume and process until `shutdown` is cancelled, then finish (or abandon, after the
    /// grace period) in-flight photos and commit what finished.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let cfg = &self.cfg;
        let stage = self.work.name();
        let mut queue: FairQueue<Job<W::Input>> = FairQueue::default();
        let mut running: JoinSet<Option<Ticket>> = JoinSet::new();
        let mut paused = false;
        let mut fatal = None;
        tracing::info!(topic = %cfg.input_topic, group = %cfg.group, stage, "stage consuming");
        loop {
            while running.len() < cfg.max_in_flight {
                let Some(job) = queue.pop() else { break };
                let work = self.work.clone();
                running.spawn(async move { work.process(job.event).await.then_some(job.ticket) });
            }
            metrics::gauge!("photos_in_flight", "stage" => stage).set(running.len() as f64);
            // Full: pause fetching rather than stop polling, so the group keeps us as a live member.
            let room = queue.len() + running.len() < cfg.max_buffered;
            if room == paused {
                self.set_paused(!room);
                paused = !room;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                msg = self.consumer.recv() => match msg {
                    Ok(m) => {
                        let ticket = self.tracker.lock().expect("tracker lock").begin((m.topic().to_string(), m.partition()), m.offset());
                        match m.payload().map(serde_json::from_slice::<W::Input>) {
                            Some(Ok(event)) => {
                                let user = W::user_id(&event).to_owned();
                                queue.push(&user, Job { ticket, event });
                            }
                            other => {
                                // Not our schema: nothing to process or re-drive; log and move on.
                                tracing::error!(topic = m.topic(), partition = m.partition(), offset = m.offset(), error = ?other.map(|r| r.err()), "skipping malformed record");
                                metrics::counter!("records_malformed_total", "topic" => m.topic().to_string()).increment(1);
                                self.finish(&ticket);
                            }
                        }
                    }
                    Err(e) => {
                        // A fatal error (e.g. this static member fenced by the group) leaves the
                        // consumer dead for good: stop, so the process exits and is restarted,
                        // instead of staying up and processing nothing.
                        if let Some((code, reason)) = self.consumer.client().fatal_error() {
                            tracing::error!(?code, %reason, stage, "Kafka consumer failed fatally; stopping the stage");
                            fatal = Some(reason);
                            break;
                        }
                        tracing::warn!(%e, "Kafka consumer error");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                },
                Some(done) = running.join_next(), if !running.is_empty() => {
                    if let Ok(Some(ticket)) = done {
                        self.finish(&ticket);
                    }
                }
            }
        }

        tracing::info!(
            in_flight = running.len(),
            queued = queue.len(),
            stage,
            "stage stopping"
        );
        let deadline = tokio::time::sleep(cfg.shutdown_grace);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                done = running.join_next() => match done {
                    Some(Ok(Some(ticket))) => self.finish(&ticket),
                    Some(_) => {}
                    None => break,
                },
                _ = &mut deadline => {
                    tracing::warn!(abandoned = running.len(), "grace period over; abandoning in-flight photos (they will be redelivered)");
                    self.work.abandon();
                    running.abort_all();
                    break;
                }
            }
        }
        self.work.flush();
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                tracing::warn!(%e, "final offset commit failed (records since the last commit will be redelivered)")
            }
        }
        if let Some(reason) = fatal {
            anyhow::bail!("{stage} stage: Kafka consumer failed: {reason}");
        }
        tracing::info!(stage, "stage stopped");
        Ok(())
    }

    fn set_paused(&self, pause: bool) {
        let result = self.consumer.assignment().and_then(|tpl| {
            if pause {
                self.consumer.pause(&tpl)
            } else {
                self.consumer.resume(&tpl)
            }
        });
        if let Err(e) = result {
            tracing::warn!(%e, pause, "pausing/resuming partitions failed");
        }
    }

    /// A record is done: advance its partition's stored offset if the finished prefix grew.
    fn finish(&self, ticket: &Ticket) {
        let commit = self.tracker.lock().expect("tracker lock").complete(ticket);
        if let Some(offset) = commit {
            let mut tpl = TopicPartitionList::new();
            let stored = tpl
                .add_partition_offset(&ticket.tp.0, ticket.tp.1, Offset::Offset(offset))
                .and_then(|_| self.consumer.store_offsets(&tpl));
            if let Err(e) = stored {
                tracing::debug!(%e, "storing offset failed (partition likely revoked)");
            }
        }
    }
}
