//! A synthetic stage-topic backlog, as a long-running deployment accumulates it: for each
//! photo a `PhotoUploaded`, a `ThumbnailDone` (some failed) and, for every thumbnail, an
//! `EmbeddingDone` whose faces carry full embeddings. Used to replay a realistic backlog into a
//! fresh status-api (the replay test, `scripts/bench-sse`), with the counts status-api must
//! then show for each user.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::ClientConfig;
use schemas::{
    EmbeddingDone, Face, Failure, FailureReason, PhotoUploaded, StageStatus, Thumbnail,
    ThumbnailDone, ThumbnailTimings, SCHEMA_VERSION,
};
use std::collections::BTreeMap;
use std::time::Duration;

/// What to generate.
#[derive(Debug, Clone)]
pub struct BacklogSpec {
    /// Photos (each yields two or three events).
    pub photos: u64,
    /// Users the photos are spread over (round-robin).
    pub users: usize,
    /// Every n-th thumbnail fails (0: none).
    pub failed_every: u64,
    /// Every n-th embedded photo has faces (0: none).
    pub faces_every: u64,
    /// Faces on such a photo.
    pub faces: usize,
    /// Floats per embedding (512 for arcface112).
    pub embedding_dim: usize,
}

/// The stage topics to write to.
#[derive(Debug, Clone)]
pub struct BacklogTopics {
    pub uploaded: String,
    pub thumbnailed: String,
    pub embedded: String,
}

/// One user's counts as status-api must show them after the replay.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserCounts {
    pub uploaded: u64,
    pub thumbnails_ok: u64,
    pub thumbnails_failed: u64,
    pub embeddings_ok: u64,
}

/// What was written.
#[derive(Debug, Default)]
pub struct Produced {
    pub events: u64,
    pub bytes: u64,
    pub users: BTreeMap<String, UserCounts>,
}

/// The user id of the `i`-th user of a backlog.
pub fn user_id(prefix: &str, i: usize) -> String {
    format!("{prefix}{i}")
}

/// Create the three topics with `partitions` each (an existing topic is left as it is).
pub async fn create_topics(
    brokers: &str,
    topics: &BacklogTopics,
    partitions: i32,
) -> anyhow::Result<()> {
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let new: Vec<NewTopic> = [&topics.uploaded, &topics.thumbnailed, &topics.embedded]
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    for r in admin.create_topics(&new, &AdminOptions::new()).await? {
        match r {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => anyhow::bail!("creating {t}: {e}"),
        }
    }
    Ok(())
}

fn face(seed: u64, dim: usize) -> Face {
    let x = (seed % 1000) as f32;
    Face {
        bbox: [x, x / 2.0, 120.0, 150.0],
        score: 0.999,
        landmarks: vec![
            [x + 30.0, 40.0],
            [x + 80.0, 40.0],
            [x + 55.0, 70.0],
            [x + 35.0, 100.0],
            [x + 75.0, 100.0],
        ],
        // Values as a recognizer's (varied digits: JSON size as in production).
        embedding: (0..dim)
            .map(|i| (seed as f32 * 0.618_034 + i as f32 * 0.414_213_57).sin() * 0.1)
            .collect(),
    }
}

/// Write the backlog of `spec` to `topics` on `brokers` (keyed by user id, as the stages key).
pub async fn produce(
    brokers: &str,
    topics: &BacklogTopics,
    spec: &BacklogSpec,
    user_prefix: &str,
) -> anyhow::Result<Produced> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("message.max.bytes", "10000000")
        .create()?;
    let mut out = Produced::default();
    let now = schemas::now_ms();
    for seq in 0..spec.photos {
        let user = user_id(user_prefix, (seq % spec.users.max(1) as u64) as usize);
        let photo_id = format!("{:032x}", seq as u128 * 0x9e37_79b9_7f4a_7c15);
        let key = format!("users/{user}/photos/{seq}.jpg");
        let counts = out.users.entry(user.clone()).or_default();
        counts.uploaded += 1;
        let uploaded = PhotoUploaded {
            schema_version: SCHEMA_VERSION,
            photo_id: photo_id.clone(),
            user_id: user.clone(),
            bucket: "photos".into(),
            key: key.clone(),
            version_id: format!("v{seq}"),
            size_bytes: 2_400_000,
            event_id: format!("e{seq}"),
            uploaded_at_ms: now,
            received_at_ms: now,
        };
        let failed = spec.failed_every > 0 && seq % spec.failed_every == spec.failed_every - 1;
        let thumbnailed = ThumbnailDone {
            schema_version: SCHEMA_VERSION,
            photo_id: photo_id.clone(),
            user_id: user.clone(),
            bucket: "photos".into(),
            source_key: key.clone(),
            status: if failed {
                StageStatus::Failed
            } else {
                StageStatus::Ok
            },
            thumbnail: (!failed).then(|| Thumbnail {
                key: format!("users/{user}/thumbs/{seq}.jpg.jpg"),
                content_type: "image/jpeg".into(),
                width: 400,
                height: 300,
                size_bytes: 31_000,
            }),
            source: None,
            failure: failed.then(|| Failure {
                reason: FailureReason::CorruptImage,
                detail: "truncated JPEG".into(),
            }),
            embed_input: None,
            timings: ThumbnailTimings::default(),
            uploaded_at_ms: now,
            finished_at_ms: now,
        };
        let mut events = vec![
            (&topics.uploaded, serde_json::to_vec(&uploaded)?),
            (&topics.thumbnailed, serde_json::to_vec(&thumbnailed)?),
        ];
        if failed {
            counts.thumbnails_failed += 1;
        } else {
            counts.thumbnails_ok += 1;
            counts.embeddings_ok += 1;
            let with_faces = spec.faces_every > 0 && seq % spec.faces_every == 0;
            let embedded = EmbeddingDone {
                schema_version: SCHEMA_VERSION,
                photo_id: photo_id.clone(),
                user_id: user.clone(),
                status: StageStatus::Ok,
                profile: "arcface112".into(),
                faces: if with_faces {
                    (0..spec.faces)
                        .map(|f| face(seq * 7 + f as u64, spec.embedding_dim))
                        .collect()
                } else {
                    vec![]
                },
                faces_omitted: 0,
                failure: None,
                uploaded_at_ms: now,
                finished_at_ms: now,
            };
            events.push((&topics.embedded, serde_json::to_vec(&embedded)?));
        }
        for (topic, payload) in events {
            out.events += 1;
            out.bytes += payload.len() as u64;
            let mut record = FutureRecord::to(topic).key(&user).payload(&payload);
            loop {
                match producer.send_result(record) {
                    Ok(_) => break,
                    Err((e, r)) => {
                        if !matches!(
                            e,
                            rdkafka::error::KafkaError::MessageProduction(
                                rdkafka::types::RDKafkaErrorCode::QueueFull
                            )
                        ) {
                            anyhow::bail!("producing to {topic}: {e}");
                        }
                        record = r;
                        producer.poll(Duration::from_millis(50));
                    }
                }
            }
        }
    }
    producer.flush(Duration::from_secs(120))?;
    Ok(out)
}
