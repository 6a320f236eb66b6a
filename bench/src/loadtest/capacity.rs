//! The capacity model: from the CPU each stage measured per photo in this run and the upload
//! rate seen, how many cores each stage needs to keep users' waits within targets, so an
//! operator can size a cluster (docs/loadtest.md).
//!
//! Per-stage CPU comes from the processor's own `cpu_job_seconds{lane}` (thread CPU time of
//! every job on its CPU worker pool); the rest of the processor's CPU (Kafka clients, S3 and
//! HTTP I/O, the webhook) is "other", split evenly between the two stages.
//!
//! With photos arriving at a steady rate over an upload lasting `T` seconds and `c` CPU seconds
//! per photo, `k` cores finish the last photo `N·c/k − T` seconds after the upload ends (when
//! that is positive: the backlog grows while uploading and drains after). A wait of at most `w`
//! thus needs `k ≥ N·c / (T + w)`, and never less than one photo's latency allows. Thumbnail
//! work runs before embed work on every core (`processor::cpu_pool`), so thumbnails need
//! `N·c_thumb / (T + w_thumb)` cores and all the work `N·(c_thumb + c_embed) / (T + w_embed)`.

use std::fmt::Write as _;

/// CPU seconds per lane, scraped from the processor's `/metrics`.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct LaneCpu {
    pub thumbnail_secs: f64,
    pub embed_secs: f64,
}

impl LaneCpu {
    /// Sum `cpu_job_seconds_sum{lane=…}` from Prometheus text.
    pub fn parse(metrics: &str) -> Option<Self> {
        let mut out = Self::default();
        let mut seen = false;
        for line in metrics.lines() {
            let Some(rest) = line.strip_prefix("cpu_job_seconds_sum{") else {
                continue;
            };
            let Some((labels, value)) = rest.split_once('}') else {
                continue;
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            if labels.contains("lane=\"thumbnail\"") {
                out.thumbnail_secs += value;
                seen = true;
            } else if labels.contains("lane=\"embed\"") {
                out.embed_secs += value;
                seen = true;
            }
        }
        seen.then_some(out)
    }
}

/// One sizing question: N photos uploaded over T seconds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Scenario {
    pub name: String,
    pub photos: f64,
    pub upload_secs: f64,
    /// Cores so that thumbnails are done ≤ `thumb_target_s` after the upload.
    pub thumb_cores: f64,
    /// Cores so that embeddings are done ≤ `embed_target_s` after the upload.
    pub total_cores: f64,
    /// Whether one partition (one user) must get these cores from one process.
    pub single_user: bool,
}

/// The model: measured costs and the scenarios sized from them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CapacityModel {
    pub photos: f64,
    pub thumb_cpu_per_photo: f64,
    pub embed_cpu_per_photo: f64,
    pub other_cpu_per_photo: f64,
    pub upload_rate_per_user: f64,
    pub users: usize,
    pub mean_photo_bytes: f64,
    pub thumb_target_s: f64,
    pub embed_target_s: f64,
    pub scenarios: Vec<Scenario>,
}

/// Inputs of [`CapacityModel::build`].
pub struct Measured {
    pub lanes: LaneCpu,
    pub processor_cpu: f64,
    /// Photos processed (thumbnail stage) in the run.
    pub photos: u64,
    pub users: usize,
    /// Mean per-user upload duration and photos per user.
    pub upload_secs_per_user: f64,
    pub photos_per_user: f64,
    pub mean_photo_bytes: f64,
}

impl CapacityModel {
    /// Build the model; `None` without the processor's lane CPU or with nothing processed.
    pub fn build(m: &Measured) -> Option<Self> {
        if m.photos == 0 || m.upload_secs_per_user <= 0.0 {
            return None;
        }
        let n = m.photos as f64;
        let other = (m.processor_cpu - m.lanes.thumbnail_secs - m.lanes.embed_secs).max(0.0);
        let c_thumb = (m.lanes.thumbnail_secs + other / 2.0) / n;
        let c_embed = (m.lanes.embed_secs + other / 2.0) / n;
        let (wt, we) = (10.0, 60.0);
        let rate = m.photos_per_user / m.upload_secs_per_user;
        let scenario = |name: String, photos: f64, secs: f64, single_user: bool| Scenario {
            name,
            photos,
            upload_secs: secs,
            thumb_cores: photos * c_thumb / (secs + wt),
            total_cores: photos * (c_thumb + c_embed) / (secs + we),
            single_user,
        };
        let mut scenarios = vec![
            scenario(
                format!(
                    "this run: {} users × {:.0} photos, uploads as measured",
                    m.users, m.photos_per_user
                ),
                n,
                m.upload_secs_per_user,
                false,
            ),
            scenario(
                "5 users × 2,000 photos at this run's per-user upload rate".into(),
                10_000.0,
                2_000.0 / rate,
                false,
            ),
            scenario(
                "1 user × 10,000 photos at this run's per-user upload rate".into(),
                10_000.0,
                10_000.0 / rate,
                true,
            ),
        ];
        if m.mean_photo_bytes > 0.0 {
            // One photo after another over a 40 Mbit/s line.
            let secs_per_photo = m.mean_photo_bytes * 8.0 / 40e6;
            scenarios.push(scenario(
                "5 users × 2,000 photos, sequential at 40 Mbit/s each".into(),
                10_000.0,
                2_000.0 * secs_per_photo,
                false,
            ));
            scenarios.push(scenario(
                "1 user × 10,000 photos, sequential at 40 Mbit/s".into(),
                10_000.0,
                10_000.0 * secs_per_photo,
                true,
            ));
        }
        Some(Self {
            photos: n,
            thumb_cpu_per_photo: c_thumb,
            embed_cpu_per_photo: c_embed,
            other_cpu_per_photo: other / n,
            upload_rate_per_user: rate,
            users: m.users,
            mean_photo_bytes: m.mean_photo_bytes,
            thumb_target_s: wt,
            embed_target_s: we,
            scenarios,
        })
    }

    /// The report's "Capacity model" section.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "## Capacity model\n");
        let _ = writeln!(
            md,
            "Measured in this run: thumbnail **{:.0} ms** CPU per photo, embed **{:.0} ms** (each including half of the processor's other CPU, {:.0} ms per photo: Kafka, S3 and HTTP I/O); upload rate {:.2} photos/s per user (mean photo {:.2} MB). Cores needed so that thumbnails are done ≤ {:.0} s and embeddings ≤ {:.0} s after a user's last upload, from `cores = N·c / (T + wait)` (see `bench/src/loadtest/capacity.rs`; other processes such as the S3 server are not counted):\n",
            self.thumb_cpu_per_photo * 1e3,
            self.embed_cpu_per_photo * 1e3,
            self.other_cpu_per_photo * 1e3,
            self.upload_rate_per_user,
            self.mean_photo_bytes / 1e6,
            self.thumb_target_s,
            self.embed_target_s
        );
        let _ = writeln!(
            md,
            "| scenario | photos | upload s | cores for thumbnails ≤ {:.0} s | cores for all work ≤ {:.0} s | one process? |\n|---|---|---|---|---|---|",
            self.thumb_target_s, self.embed_target_s
        );
        for s in &self.scenarios {
            let _ = writeln!(
                md,
                "| {} | {:.0} | {:.0} | {:.2} | {:.2} | {} |",
                s.name,
                s.photos,
                s.upload_secs,
                s.thumb_cores,
                s.total_cores,
                if s.single_user {
                    "yes: one user is one partition, served by one processor"
                } else {
                    "no: users spread over partitions and pods"
                }
            );
        }
        let _ = writeln!(md);
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lane_sums_and_sizes_scenarios() {
        let text = "# TYPE cpu_job_seconds summary\n\
            cpu_job_seconds_sum{lane=\"thumbnail\"} 50\n\
            cpu_job_seconds_count{lane=\"thumbnail\"} 1000\n\
            cpu_job_seconds_sum{lane=\"embed\"} 200\n";
        let lanes = LaneCpu::parse(text).unwrap();
        assert_eq!((lanes.thumbnail_secs, lanes.embed_secs), (50.0, 200.0));
        assert!(LaneCpu::parse("up 1\n").is_none());
        let m = CapacityModel::build(&Measured {
            lanes,
            processor_cpu: 270.0,
            photos: 1000,
            users: 5,
            upload_secs_per_user: 100.0,
            photos_per_user: 200.0,
            mean_photo_bytes: 0.0,
        })
        .unwrap();
        // 20 s of other CPU, 10 s to each stage: 60 ms and 210 ms per photo.
        assert!((m.thumb_cpu_per_photo - 0.060).abs() < 1e-9);
        assert!((m.embed_cpu_per_photo - 0.210).abs() < 1e-9);
        // This run: 1000 × 0.06 / (100 + 10) cores for thumbnails.
        assert!((m.scenarios[0].thumb_cores - 60.0 / 110.0).abs() < 1e-9);
        assert!((m.scenarios[0].total_cores - 270.0 / 160.0).abs() < 1e-9);
        // One user with 10,000 photos at 2 photos/s uploads for 5,000 s.
        assert_eq!(m.scenarios[2].upload_secs, 5000.0);
        assert!(m.scenarios[2].single_user);
    }
}
