//! Runtime settings changed from the console's Settings page, carried on the compacted topic
//! `photos.settings` (key = the setting group, so compaction keeps the latest value of each
//! group): status-api writes a [`SettingsChange`] after validating it, and every processor
//! follows the topic and applies the latest values to the next photo, without a restart.

use serde::{Deserialize, Serialize};

/// The compacted settings topic.
pub const TOPIC: &str = "photos.settings";

/// Thumbnail geometry and quality (overrides `THUMB_MAX_WIDTH`, `THUMB_MAX_HEIGHT`,
/// `THUMB_QUALITY`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThumbnailSettings {
    pub max_width: u32,
    pub max_height: u32,
    /// JPEG quality, 1–100.
    pub quality: u8,
}

/// Post-filter on the faces the embedder returns. Only tightens: a face the model profile's
/// own thresholds dropped is never brought back.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaceSettings {
    /// Minimum detection score, 0–1.
    pub min_score: f32,
    /// Minimum face box side (the smaller of width and height), original pixels.
    pub min_size_px: u32,
}

/// Thresholds the Dashboard flags in red.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSettings {
    /// Consumer lag (records) above which a stage is flagged.
    pub max_lag_records: u64,
    /// p95 upload-to-done latency (ms) above which a stage is flagged.
    pub max_latency_ms: u64,
}

/// One group's values; the group name is the record key.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "group", content = "values", rename_all = "snake_case")]
pub enum GroupSettings {
    Thumbnail(ThumbnailSettings),
    Faces(FaceSettings),
    Alerts(AlertSettings),
}

/// Why settings were refused.
#[derive(Debug, Clone, PartialEq)]
pub struct InvalidSetting {
    pub field: &'static str,
    pub why: String,
}

impl std::fmt::Display for InvalidSetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.why)
    }
}

impl std::error::Error for InvalidSetting {}

fn check(ok: bool, field: &'static str, why: &str) -> Result<(), InvalidSetting> {
    if ok {
        Ok(())
    } else {
        Err(InvalidSetting {
            field,
            why: why.to_string(),
        })
    }
}

impl GroupSettings {
    /// The record key: `thumbnail`, `faces` or `alerts`.
    pub fn group(&self) -> &'static str {
        match self {
            Self::Thumbnail(_) => "thumbnail",
            Self::Faces(_) => "faces",
            Self::Alerts(_) => "alerts",
        }
    }

    /// Refuse values no stage could honour.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        match self {
            Self::Thumbnail(t) => {
                check(
                    (16..=4096).contains(&t.max_width),
                    "max_width",
                    "must be 16–4096",
                )?;
                check(
                    (16..=4096).contains(&t.max_height),
                    "max_height",
                    "must be 16–4096",
                )?;
                check((1..=100).contains(&t.quality), "quality", "must be 1–100")
            }
            Self::Faces(f) => {
                check(
                    f.min_score.is_finite() && (0.0..=1.0).contains(&f.min_score),
                    "min_score",
                    "must be 0–1",
                )?;
                check(f.min_size_px <= 4096, "min_size_px", "must be 0–4096")
            }
            Self::Alerts(a) => {
                check(
                    a.max_lag_records >= 1,
                    "max_lag_records",
                    "must be at least 1",
                )?;
                check(
                    a.max_latency_ms >= 1,
                    "max_latency_ms",
                    "must be at least 1",
                )
            }
        }
    }
}

/// A record of `photos.settings`: who set a group to what, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsChange {
    pub schema_version: u32,
    pub settings: GroupSettings,
    /// Console user who made the change.
    pub changed_by: String,
    pub changed_at_ms: i64,
}

/// The latest value of each group (absent: the service's own configuration applies).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RuntimeSettings {
    pub thumbnail: Option<ThumbnailSettings>,
    pub faces: Option<FaceSettings>,
    pub alerts: Option<AlertSettings>,
}

impl RuntimeSettings {
    /// Apply a change (the latest record of a group wins, as after compaction).
    pub fn apply(&mut self, change: &SettingsChange) {
        match change.settings {
            GroupSettings::Thumbnail(t) => self.thumbnail = Some(t),
            GroupSettings::Faces(f) => self.faces = Some(f),
            GroupSettings::Alerts(a) => self.alerts = Some(a),
        }
    }

    /// Whether a detected face passes the face post-filter (`bbox` = x, y, w, h).
    pub fn keeps_face(&self, bbox: [f32; 4], score: f32) -> bool {
        match self.faces {
            None => true,
            Some(f) => score >= f.min_score && bbox[2].min(bbox[3]) >= f.min_size_px as f32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_and_validation() {
        let c = SettingsChange {
            schema_version: 1,
            settings: GroupSettings::Faces(FaceSettings {
                min_score: 0.9,
                min_size_px: 40,
            }),
            changed_by: "alice".into(),
            changed_at_ms: 5,
        };
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["settings"]["group"], "faces");
        assert_eq!(v["settings"]["values"]["min_size_px"], 40);
        assert_eq!(serde_json::from_value::<SettingsChange>(v).unwrap(), c);
        assert!(c.settings.validate().is_ok());
        let bad = GroupSettings::Thumbnail(ThumbnailSettings {
            max_width: 0,
            max_height: 400,
            quality: 80,
        });
        assert_eq!(bad.validate().unwrap_err().field, "max_width");
        let mut r = RuntimeSettings::default();
        assert!(r.keeps_face([0.0, 0.0, 10.0, 10.0], 0.5));
        r.apply(&c);
        assert!(!r.keeps_face([0.0, 0.0, 100.0, 100.0], 0.5));
        assert!(!r.keeps_face([0.0, 0.0, 100.0, 30.0], 0.95));
        assert!(r.keeps_face([0.0, 0.0, 40.0, 40.0], 0.95));
    }
}
