//! Prometheus metrics of the processor (logging is `service_kit::service`).
//!
//! Metric names (all exported at `GET /metrics`):
//! - `thumbnail_step_seconds{step}`: download, decode, resize, encode, upload, hook latency
//! - `thumbnail_photo_seconds`: upload event → ThumbnailDone, end to end
//! - `photos_in_flight`: photos being processed now
//! - `photos_buffered`: records read ahead, waiting for a worker (per stage)
//! - `photos_processed_total{stage,status}`, `photos_failed_total{stage,reason}`
//! - `kafka_consumer_lag{topic,partition}`: from librdkafka statistics
//! - `webhook_requests_total{outcome}`, `webhook_events_rejected_total`, `photos_uploaded_total`
//! - `retries_total{op}`, `duplicates_skipped_total`
//! - `cpu_job_seconds{lane}`, `cpu_queue_wait_seconds{lane}`, `cpu_jobs_queued{lane}`: the CPU
//!   worker pool (thumbnail lane before embed lane); the load test's capacity model reads
//!   `cpu_job_seconds_sum`

use metrics_exporter_prometheus::PrometheusHandle;

/// Install the global Prometheus recorder and return the handle that renders `/metrics`.
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = service_kit::service::prometheus_builder()?.install_recorder()?;
    metrics::describe_histogram!(
        "thumbnail_step_seconds",
        metrics::Unit::Seconds,
        "Time per thumbnail step"
    );
    metrics::describe_histogram!(
        "thumbnail_photo_seconds",
        metrics::Unit::Seconds,
        "Upload event to ThumbnailDone"
    );
    metrics::describe_gauge!("photos_in_flight", "Photos being processed now");
    metrics::describe_gauge!(
        "photos_buffered",
        "Records read ahead from Kafka, waiting for a worker"
    );
    metrics::describe_histogram!(
        "embed_step_seconds",
        metrics::Unit::Seconds,
        "Time per embed step (decode, detect, align, embed)"
    );
    metrics::describe_histogram!(
        "embed_photo_seconds",
        metrics::Unit::Seconds,
        "Embed stage time per photo"
    );
    metrics::describe_histogram!("faces_per_photo", "Faces found per photo");
    metrics::describe_histogram!(
        "cpu_job_seconds",
        metrics::Unit::Seconds,
        "CPU time of each job on the CPU worker pool, by lane (thumbnail runs before embed)"
    );
    metrics::describe_histogram!(
        "cpu_queue_wait_seconds",
        metrics::Unit::Seconds,
        "Time a job waited for a CPU worker, by lane"
    );
    metrics::describe_gauge!("cpu_jobs_queued", "Jobs waiting for a CPU worker, by lane");
    metrics::describe_counter!(
        "embed_handoff_total",
        "Embed inputs handed to the embed stage, by result (memory, derivative, skipped_cache_full, failed)"
    );
    metrics::describe_counter!(
        "photos_processed_total",
        "Photos finished by a stage, by status"
    );
    metrics::describe_counter!("photos_failed_total", "Photos failed by a stage, by reason");
    metrics::describe_gauge!(
        "kafka_consumer_lag",
        "Records behind the partition end, per partition"
    );
    metrics::describe_counter!("webhook_requests_total", "B2 webhook requests by outcome");
    metrics::describe_counter!(
        "webhook_events_read_back_total",
        "PhotoUploaded events read back from the topic (any replica's), for webhook de-duplication"
    );
    metrics::describe_counter!(
        "events_rejected_total",
        "Result events Kafka refused for good (too large, not authorised), by topic; their photos fail as output_rejected"
    );
    metrics::describe_counter!(
        "faces_omitted_total",
        "Faces left out of EmbeddingDone events to keep them within 512 KiB (the DB hook gets them all)"
    );
    metrics::describe_counter!(
        "webhook_events_rejected_total",
        "B2 events refused (key outside the photo pattern, missing fields)"
    );
    metrics::describe_counter!(
        "photos_uploaded_total",
        "Photos accepted by the upload stage"
    );
    metrics::describe_counter!("retries_total", "Retried operations, by operation");
    metrics::describe_counter!(
        "duplicates_skipped_total",
        "Redelivered photos acknowledged without redoing the work"
    );
    metrics::describe_counter!(
        "records_malformed_total",
        "Records that are not our event schema, skipped"
    );
    Ok(handle)
}
