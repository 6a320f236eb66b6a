//! The consumer side every stage shares: read a topic, process records concurrently within a
//! partition (up to `max_in_flight`), serve users round-robin ([`FairQueue`]), and advance the
//! committed offset only over the contiguous prefix of finished records ([`OffsetTracker`]).
//!
//! Round-robin can only be fair between the users whose records are buffered, and Kafka hands
//! a consumer records a partition at a time (a fetch carries up to `max.partition.fetch.bytes`
//! of one partition, about 2,000 of our events; the local broker sends a partition's whole
//! backlog). So each partition gets an equal share of the `max_buffered` lookahead, and only a
//! partition that has used its share is paused ([`PartitionIntake`]). Without that, a 5 × 2,000
//! load test buffered nothing but the one user alone on the first partition: five minutes in,
//! that user had 861 thumbnails and each of the others 111–119.
//! A record counts as finished only once its [`StageWork`] says its outputs are durably in
//! Kafka, so a crash at any point redelivers, never loses, a record; redelivery is harmless
//! because every output is keyed by the deterministic photo id.

use crate::fair_queue::FairQueue;
use crate::kafka::GroupProtocol;
use crate::offsets::{OffsetTracker, Ticket, TopicPartition};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset, Statistics, TopicPartitionList};
use serde::de::DeserializeOwned;
use service_kit::kafka::{export_consumer_lag, KafkaArgs};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
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

    /// How many records are read and waiting for a slot (0 once the stage keeps up); the
    /// thumbnail stage tells the CPU pool, which holds face work back meanwhile.
    fn backlog(&self, _waiting: usize) {}

    /// Wait for queued outputs before the final commit.
    fn flush(&self);
}

/// Consumer settings of a stage.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    pub input_topic: String,
    pub group: String,
    pub group_instance_id: Option<String>,
    pub group_protocol: GroupProtocol,
    pub max_in_flight: usize,
    pub max_buffered: usize,
    pub shutdown_grace: Duration,
}

/// Consumer context: forgets revoked partitions' in-flight offsets, notes rebalances (which
/// resume every partition) and exports consumer lag.
struct StageContext {
    tracker: Arc<Mutex<OffsetTracker>>,
    rebalanced: Arc<AtomicBool>,
}

impl ClientContext for StageContext {
    fn stats(&self, stats: Statistics) {
        export_consumer_lag(&stats);
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

    fn post_rebalance(&self, _: &BaseConsumer<Self>, _: &Rebalance<'_>) {
        self.rebalanced.store(true, Ordering::SeqCst);
    }
}

/// Each partition's share of the lookahead: how many of its records are queued or running,
/// and which partitions are paused because they used their share.
#[derive(Default)]
struct PartitionIntake {
    outstanding: HashMap<TopicPartition, usize>,
    paused: HashSet<TopicPartition>,
}

impl PartitionIntake {
    /// A record of `tp` was taken in; whether `tp` should now be paused, its `share` used
    /// (it then counts as paused).
    fn took(&mut self, tp: &TopicPartition, share: usize) -> bool {
        let n = self.outstanding.entry(tp.clone()).or_default();
        *n += 1;
        *n >= share && self.paused.insert(tp.clone())
    }

    /// The group gave us `assigned`: forget the pauses of partitions we no longer own and
    /// return the paused ones we still do (to pause them again where the rebalance resumed them).
    fn reassigned(&mut self, assigned: &HashSet<TopicPartition>) -> Vec<TopicPartition> {
        self.paused.retain(|tp| assigned.contains(tp));
        self.paused.iter().cloned().collect()
    }

    /// A record of `tp` finished; whether `tp` should now be resumed (below half its share;
    /// it then no longer counts as paused).
    fn finished(&mut self, tp: &TopicPartition, share: usize) -> bool {
        let n = self.outstanding.entry(tp.clone()).or_default();
        *n = n.saturating_sub(1);
        let resume = *n < share.div_ceil(2) && self.paused.remove(tp);
        if *n == 0 {
            self.outstanding.remove(tp);
        }
        resume
    }
}

/// A stage's consumer loop around its [`StageWork`]: construct with [`StageRunner::new`], then
/// [`StageRunner::run`] until shutdown.
pub struct StageRunner<W: StageWork> {
    cfg: RunnerConfig,
    work: Arc<W>,
    consumer_config: ClientConfig,
    consumer: StreamConsumer<StageContext>,
    tracker: Arc<Mutex<OffsetTracker>>,
    rebalanced: Arc<AtomicBool>,
}

/// How one membership of the group ended.
enum Ended {
    /// Shutdown: in-flight work finished or abandoned, offsets committed.
    Stopped,
    /// The broker refused our static instance id (still held by a dead predecessor).
    InstanceIdInUse(String),
}

/// Create the stage's consumer and subscribe it to `topic`.
fn join(
    config: &ClientConfig,
    topic: &str,
    tracker: &Arc<Mutex<OffsetTracker>>,
    rebalanced: &Arc<AtomicBool>,
) -> anyhow::Result<StreamConsumer<StageContext>> {
    let consumer: StreamConsumer<StageContext> = config.create_with_context(StageContext {
        tracker: tracker.clone(),
        rebalanced: rebalanced.clone(),
    })?;
    consumer.subscribe(&[topic])?;
    Ok(consumer)
}

struct Job<I> {
    ticket: Ticket,
    event: I,
}

/// A finished job: its ticket, and whether its record may be committed.
type Done = (Ticket, bool);

impl<W: StageWork> StageRunner<W> {
    pub fn new(cfg: RunnerConfig, kafka: &KafkaArgs, work: W) -> anyhow::Result<Self> {
        let tracker = Arc::new(Mutex::new(OffsetTracker::default()));
        let rebalanced = Arc::new(AtomicBool::new(false));
        let member = cfg.group_protocol.member_settings(Duration::from_secs(10));
        let mut defaults = vec![
            ("group.id", cfg.group.as_str()),
            ("enable.auto.commit", "true"),
            ("auto.commit.interval.ms", "1000"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            // Also the classic protocol's rebalance timeout: how long a rebalance waits for a
            // member that stopped answering. We keep polling even when busy (partitions are
            // paused, not starved), so this can be short.
            ("max.poll.interval.ms", "60000"),
            ("statistics.interval.ms", "5000"),
        ];
        defaults.extend(member.iter().map(|(k, v)| (*k, v.as_str())));
        let mut consumer_config = kafka.client_config_with(&defaults)?;
        if let Some(id) = &cfg.group_instance_id {
            consumer_config.set("group.instance.id", id);
        }
        let consumer = join(&consumer_config, &cfg.input_topic, &tracker, &rebalanced)?;
        Ok(Self {
            cfg,
            work: Arc::new(work),
            consumer_config,
            consumer,
            tracker,
            rebalanced,
        })
    }

    /// Consume and process until `shutdown` is cancelled, then finish (or abandon, after the
    /// grace period) in-flight photos and commit what finished.
    ///
    /// A static member whose instance id the group still holds (KIP-848 after a kill -9: the
    /// broker keeps the dead member until its session expires, and librdkafka makes that
    /// error fatal) joins again every 5 s in this process, instead of crash-looping.
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        loop {
            let ended = self.consume(&shutdown).await;
            // Nothing is waiting any more (the records go back to Kafka).
            self.work.backlog(0);
            match ended? {
                Ended::Stopped => return Ok(()),
                Ended::InstanceIdInUse(reason) => {
                    let stage = self.work.name();
                    tracing::warn!(stage, %reason, instance = ?self.cfg.group_instance_id,
                        "the group still holds this static member's instance id (its previous process died without leaving; the broker releases it when that session expires): joining again in 5 s");
                    metrics::counter!("kafka_group_rejoins_total", "stage" => stage).increment(1);
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    }
                    *self.tracker.lock().expect("tracker lock") = OffsetTracker::default();
                    self.consumer = join(
                        &self.consumer_config,
                        &self.cfg.input_topic,
                        &self.tracker,
                        &self.rebalanced,
                    )?;
                }
            }
        }
    }

    /// One membership of the group: consume until shutdown or a fatal consumer error.
    async fn consume(&self, shutdown: &CancellationToken) -> anyhow::Result<Ended> {
        let cfg = &self.cfg;
        let stage = self.work.name();
        let mut queue: FairQueue<Job<W::Input>> = FairQueue::default();
        let mut running: JoinSet<Done> = JoinSet::new();
        let mut intake = PartitionIntake::default();
        let mut share = self.partition_share();
        let mut fatal = None;
        tracing::info!(topic = %cfg.input_topic, group = %cfg.group, stage, "stage consuming");
        loop {
            while running.len() < cfg.max_in_flight {
                let Some(job) = queue.pop() else { break };
                let work = self.work.clone();
                running.spawn(async move { (job.ticket.clone(), work.process(job.event).await) });
            }
            metrics::gauge!("photos_in_flight", "stage" => stage).set(running.len() as f64);
            metrics::gauge!("photos_buffered", "stage" => stage).set(queue.len() as f64);
            self.work.backlog(queue.len());
            if self.rebalanced.swap(false, Ordering::SeqCst) {
                // The share depends on the assignment's size. A partition that used its share
                // stays paused if we still own it: after an eager (classic) rebalance it came
                // back unpaused, after an incremental (KIP-848) one it never stopped being
                // paused, and nothing else would resume it.
                let assigned = self.assigned();
                for tp in intake.reassigned(&assigned) {
                    self.set_paused(&tp, true);
                }
                share = self.partition_share();
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                msg = self.consumer.recv() => match msg {
                    Ok(m) => {
                        let ticket = self.tracker.lock().expect("tracker lock").begin((m.topic().to_string(), m.partition()), m.offset());
                        match m.payload().map(serde_json::from_slice::<W::Input>) {
                            Some(Ok(event)) => {
                                let user = W::user_id(&event).to_owned();
                                // Its share used: pause this partition (rather than stop
                                // polling, so the group keeps us as a live member).
                                if intake.took(&ticket.tp, share) {
                                    self.set_paused(&ticket.tp, true);
                                }
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
                            if code != RDKafkaErrorCode::UnreleasedInstanceId {
                                tracing::error!(?code, %reason, stage, "Kafka consumer failed fatally; stopping the stage");
                            }
                            fatal = Some((code, reason));
                            break;
                        }
                        tracing::warn!(%e, "Kafka consumer error");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                },
                Some(done) = running.join_next(), if !running.is_empty() => {
                    if let Ok((ticket, committable)) = done {
                        if committable {
                            self.finish(&ticket);
                        }
                        if intake.finished(&ticket.tp, share) {
                            self.set_paused(&ticket.tp, false);
                        }
                    }
                }
            }
        }

        if let Some((RDKafkaErrorCode::UnreleasedInstanceId, reason)) = fatal {
            // The consumer is gone, and our partitions with it. What runs finishes and is
            // delivered, but not committed: after the rejoin those records come again, and
            // their outputs repeat harmlessly (keyed by the photo id).
            loop {
                tokio::select! {
                    done = running.join_next() => if done.is_none() { break },
                    _ = shutdown.cancelled() => {
                        self.work.abandon();
                        running.abort_all();
                        return Ok(Ended::Stopped);
                    }
                }
            }
            self.work.flush();
            return Ok(Ended::InstanceIdInUse(reason));
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
                    Some(Ok((ticket, true))) => self.finish(&ticket),
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
        if let Some((_, reason)) = fatal {
            anyhow::bail!("{stage} stage: Kafka consumer failed: {reason}");
        }
        tracing::info!(stage, "stage stopped");
        Ok(Ended::Stopped)
    }

    /// Each assigned partition's share of the lookahead (at least `max_in_flight`, so that one
    /// busy partition can still use every worker).
    fn partition_share(&self) -> usize {
        let partitions = self
            .consumer
            .assignment()
            .map_or(1, |tpl| tpl.count())
            .max(1);
        (self.cfg.max_buffered / partitions).max(self.cfg.max_in_flight)
    }

    /// The partitions this consumer owns now.
    fn assigned(&self) -> HashSet<TopicPartition> {
        self.consumer
            .assignment()
            .map(|tpl| {
                tpl.elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn set_paused(&self, tp: &TopicPartition, pause: bool) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&tp.0, tp.1);
        let result = if pause {
            self.consumer.pause(&tpl)
        } else {
            self.consumer.resume(&tpl)
        };
        if let Err(e) = result {
            // A partition revoked meanwhile: its next assignment starts unpaused anyway.
            tracing::debug!(%e, pause, topic = %tp.0, partition = tp.1, "pausing/resuming a partition failed");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> TopicPartition {
        ("photos.uploaded".into(), p)
    }

    #[test]
    fn a_partition_is_paused_at_its_share_and_resumed_below_half() {
        let mut intake = PartitionIntake::default();
        for _ in 0..3 {
            assert!(!intake.took(&tp(0), 4));
        }
        assert!(intake.took(&tp(0), 4), "the 4th record uses the share");
        // Records already on their way still arrive; no second pause.
        assert!(!intake.took(&tp(0), 4));
        // Other partitions are not affected.
        assert!(!intake.took(&tp(1), 4));
        assert!(!intake.finished(&tp(0), 4));
        assert!(!intake.finished(&tp(0), 4));
        assert!(!intake.finished(&tp(0), 4));
        assert!(intake.finished(&tp(0), 4), "1 left of a share of 4: resume");
        assert!(!intake.finished(&tp(0), 4));
        assert!(!intake.outstanding.contains_key(&tp(0)));
        assert!(
            !intake.finished(&tp(1), 4),
            "never paused: nothing to resume"
        );
    }

    #[test]
    fn a_rebalance_keeps_the_pauses_of_partitions_still_owned() {
        let mut intake = PartitionIntake::default();
        assert!(intake.took(&tp(0), 1));
        assert!(intake.took(&tp(1), 1));
        // Partition 1 went to another member; partition 0 stayed (an incremental rebalance).
        let assigned: HashSet<_> = [tp(0), tp(2)].into_iter().collect();
        assert_eq!(intake.reassigned(&assigned), vec![tp(0)]);
        // Still counted as paused, so finishing its record resumes it.
        assert!(
            intake.finished(&tp(0), 1),
            "a kept pause is resumed when done"
        );
        assert!(
            !intake.finished(&tp(1), 1),
            "a revoked partition is not resumed"
        );
    }
}
