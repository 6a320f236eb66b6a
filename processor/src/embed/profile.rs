//! Model profiles (`processor/profiles/*.json`): serde types, loading and validation.
//!
//! A profile is the single description of what the embed stage does to a photo: detector and
//! its settings, alignment template, recognizer and its input normalisation, face filter. The
//! format is documented in `processor/profiles/README.md`; the arithmetic behind each field in
//! `bench/embed/README.md`. Validation happens once, at load time, so that a bad profile stops
//! the stage at start-up with a message naming the file and the field, instead of producing
//! wrong embeddings (or a panic) on the first photo.

use super::EmbedError;
use serde::Deserialize;
use std::path::Path;

/// The only `format_version` this code understands; bumped on incompatible format changes.
pub const FORMAT_VERSION: u32 = 1;

/// MTCNN's landmark names, in the order O-Net produces them ("left" = image left).
pub const MTCNN_LANDMARKS: [&str; 5] =
    ["left_eye", "right_eye", "nose", "mouth_left", "mouth_right"];

/// BlazeFace's keypoint names, in the order the model produces them.
pub const BLAZEFACE_LANDMARKS: [&str; 6] = [
    "left_eye",
    "right_eye",
    "nose",
    "mouth_center",
    "left_ear",
    "right_ear",
];

/// One profile file. Embeddings are only comparable within one profile, so `name` is stored
/// with every embedding.
#[derive(Debug, Clone, Deserialize)]
pub struct Profile {
    /// Format version of the file; must be [`FORMAT_VERSION`].
    pub format_version: u32,
    /// Profile name (= file name without `.json`); stored with the embeddings.
    pub name: String,
    /// Free text for humans.
    #[serde(default)]
    pub description: String,
    /// Face detector family and settings.
    pub detector: DetectorConfig,
    /// How a detected face is turned into a chip.
    pub alignment: AlignmentConfig,
    /// The recognition model and its input convention.
    pub recognizer: RecognizerConfig,
    /// Keep a face only if `min(box w, box h) >=` this, in oriented-photo pixels.
    pub min_face_size: f64,
    /// ... and its detector score `>=` this.
    pub min_det_score: f64,
    /// The image the stage works on (detection and alignment); absent = the full photo.
    #[serde(default)]
    pub embed_input: Option<EmbedInputConfig>,
}

/// How the embed input is made from the upright photo (`embed::input`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EmbedInputConfig {
    /// Area-shrink the photo so that its longer side is at most this (never enlarged).
    pub max_side: u32,
}

impl Profile {
    /// `embed_input.max_side`, if the profile reduces its input.
    pub fn embed_input_max_side(&self) -> Option<u32> {
        self.embed_input.map(|c| c.max_side)
    }
}

/// Detector settings, tagged by `family`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "family", rename_all = "lowercase")]
pub enum DetectorConfig {
    /// The MTCNN cascade (P-, R-, O-Net).
    Mtcnn(MtcnnConfig),
    /// MediaPipe BlazeFace (experimental profile).
    Blazeface(BlazeFaceConfig),
    /// Reserved in the format (no model ships); kept so that such a profile gives a clear
    /// "not implemented" error instead of a parse error.
    Scrfd(serde_json::Value),
}

impl DetectorConfig {
    /// The family name as written in the profile, for messages.
    pub fn family(&self) -> &'static str {
        match self {
            Self::Mtcnn(_) => "mtcnn",
            Self::Blazeface(_) => "blazeface",
            Self::Scrfd(_) => "scrfd",
        }
    }

    /// Names of the landmarks the detector produces, in order.
    pub fn landmark_names(&self) -> &'static [&'static str] {
        match self {
            Self::Mtcnn(_) => &MTCNN_LANDMARKS,
            Self::Blazeface(_) => &BLAZEFACE_LANDMARKS,
            Self::Scrfd(_) => &MTCNN_LANDMARKS,
        }
    }
}

/// MTCNN settings (`detector.family == "mtcnn"`).
#[derive(Debug, Clone, Deserialize)]
pub struct MtcnnConfig {
    /// Model files, relative to the model directory.
    pub models: MtcnnModels,
    /// Network input convention: `(pixel - mean) * scale`, transposed layout.
    pub input: DetectorInput,
    /// Resampling used for the detector image, the pyramid and the crops; only `"area"`.
    pub resize: String,
    /// Longer side of the detector image; the photo is area-shrunk to it when larger.
    #[serde(default)]
    pub max_image_side: Option<u32>,
    /// Smallest face in detector-image pixels; first pyramid scale = 12 / this.
    pub min_face_size: f64,
    /// Ratio between pyramid levels.
    pub scale_factor: f64,
    /// `[P-Net (>=), R-Net (>), O-Net (>)]` score thresholds.
    pub score_thresholds: Vec<f64>,
    /// NMS settings of the four NMS steps.
    pub nms: MtcnnNms,
    /// Reproduced bugs of the original implementation.
    #[serde(default)]
    pub quirks: MtcnnQuirks,
}

/// MTCNN model files.
#[derive(Debug, Clone, Deserialize)]
pub struct MtcnnModels {
    /// Proposal network (fully convolutional, any input size).
    pub pnet: String,
    /// Refinement network (24×24 input).
    pub rnet: String,
    /// Output network (48×48 input; boxes and landmarks).
    pub onet: String,
}

/// Detector input normalisation: `x = (pixel - mean) * scale` as float32.
#[derive(Debug, Clone, Deserialize)]
pub struct DetectorInput {
    /// Channel order fed to the network; only `"RGB"` is shipped.
    #[serde(default = "default_rgb")]
    pub color: String,
    /// Subtracted from every channel.
    pub mean: f64,
    /// Multiplied after the subtraction.
    pub scale: f64,
    /// `"NWHC"` (MTCNN, transposed) or `"NHWC"` (BlazeFace).
    pub layout: String,
}

fn default_rgb() -> String {
    "RGB".into()
}

/// The four NMS steps of MTCNN.
#[derive(Debug, Clone, Deserialize)]
pub struct MtcnnNms {
    /// Within one pyramid level.
    pub pnet_per_scale: NmsConfig,
    /// Over all levels' survivors.
    pub pnet_all_scales: NmsConfig,
    /// After R-Net.
    pub rnet: NmsConfig,
    /// After O-Net (the shipped profiles use `min`).
    pub onet: NmsConfig,
}

/// One NMS step: candidates overlapping a kept box by more than `iou` are dropped.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct NmsConfig {
    /// Overlap threshold (a candidate stays if overlap `<=` this).
    pub iou: f64,
    /// How overlap is measured.
    pub method: NmsMethod,
}

/// Overlap measure of an NMS step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NmsMethod {
    /// Intersection over union.
    Union,
    /// Intersection over the smaller area (MTCNN's last NMS).
    Min,
    /// MediaPipe's weighted NMS (BlazeFace): overlapping groups are blended.
    Weighted,
}

/// Reproduced quirks of ipazc/mtcnn.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct MtcnnQuirks {
    /// With exactly one P-Net hit at a scale, read its regression from the x-mirrored cell
    /// (ipazc/mtcnn's `np.flipud`). Default `true`, as in the reference.
    #[serde(default = "default_true")]
    pub pnet_single_hit_flipud: bool,
}

impl Default for MtcnnQuirks {
    fn default() -> Self {
        Self {
            pnet_single_hit_flipud: true,
        }
    }
}

fn default_true() -> bool {
    true
}

/// BlazeFace settings (`detector.family == "blazeface"`, experimental).
#[derive(Debug, Clone, Deserialize)]
pub struct BlazeFaceConfig {
    /// `detector`: the model file.
    pub models: BlazeFaceModels,
    /// Input normalisation (`layout` `"NHWC"`).
    pub input: DetectorInput,
    /// Square input side (256).
    pub input_size: u32,
    /// Resampling of the photo to the input; only `"area"`.
    #[serde(default = "default_area")]
    pub resize: String,
    /// Canvas value outside the photo.
    #[serde(default)]
    pub pad_value: f64,
    /// `[t]`: candidates with sigmoid score `>=` t.
    pub score_thresholds: Vec<f64>,
    /// Weighted NMS settings.
    pub nms: NmsConfig,
    /// Anchor grid per output layer.
    pub anchor_layers: Vec<AnchorLayer>,
}

fn default_area() -> String {
    "area".into()
}

/// BlazeFace model file.
#[derive(Debug, Clone, Deserialize)]
pub struct BlazeFaceModels {
    /// The detector model.
    pub detector: String,
}

/// One BlazeFace anchor layer: `cells × cells` grid, `anchors` per cell, and its outputs.
#[derive(Debug, Clone, Deserialize)]
pub struct AnchorLayer {
    /// Grid size (16 or 8).
    pub cells: usize,
    /// Anchors per cell.
    pub anchors: usize,
    /// Output tensor with the raw scores `[1, cells²·anchors, 1]`.
    pub scores: String,
    /// Output tensor with the box/keypoint offsets `[1, cells²·anchors, 16]`.
    pub boxes: String,
}

/// Alignment: similarity transform of the landmarks onto a template, then a bilinear warp.
#[derive(Debug, Clone, Deserialize)]
pub struct AlignmentConfig {
    /// Detector landmark names matching the template points, in template order (default:
    /// all detector landmarks, in detector order).
    #[serde(default)]
    pub landmarks: Option<Vec<String>>,
    /// Target positions in chip pixels (pixel centres at integers).
    pub template: Vec<[f64; 2]>,
    /// `[width, height]` of the chip.
    pub output_size: [u32; 2],
    /// Only `"similarity_lstsq"`.
    #[serde(default = "default_transform")]
    pub transform: String,
    /// Only `"bilinear"`.
    #[serde(default = "default_bilinear")]
    pub interpolation: String,
    /// Value of samples outside the photo; only 0.
    #[serde(default)]
    pub border: f64,
    /// Only `"oriented"` (sample the full-resolution oriented photo).
    #[serde(default = "default_oriented")]
    pub source: String,
}

fn default_transform() -> String {
    "similarity_lstsq".into()
}
fn default_bilinear() -> String {
    "bilinear".into()
}
fn default_oriented() -> String {
    "oriented".into()
}

/// The recognition model and how its input is prepared.
#[derive(Debug, Clone, Deserialize)]
pub struct RecognizerConfig {
    /// Model file, relative to the model directory.
    pub model: String,
    /// Input tensor name.
    pub input_name: String,
    /// Output tensor name.
    pub output_name: String,
    /// `[width, height]`; must equal `alignment.output_size`.
    pub input_size: [u32; 2],
    /// `"NCHW"` or `"NHWC"`.
    pub layout: String,
    /// Channel order fed to the model: `"RGB"` or `"BGR"`.
    pub color: String,
    /// Per-channel mean, in `color` order.
    pub mean: [f64; 3],
    /// Per-channel divisor, in `color` order.
    pub std: [f64; 3],
    /// `1` (fixed batch) or `"dynamic"`; faces are run one by one either way, as the reference.
    #[serde(default)]
    pub batch: serde_json::Value,
    /// Embedding length.
    pub output_dim: usize,
    /// Divide by the L2 norm (float64) before storing.
    #[serde(default = "default_true")]
    pub l2_normalize: bool,
}

impl Profile {
    /// Read, parse and validate a profile file.
    pub fn load(path: &Path) -> Result<Self, EmbedError> {
        let text = std::fs::read_to_string(path).map_err(|e| EmbedError::Profile {
            path: path.to_path_buf(),
            reason: format!("cannot read: {e}"),
        })?;
        Self::parse(&text).map_err(|reason| EmbedError::Profile {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Parse and validate profile JSON; the error says which field is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        let p: Profile =
            serde_json::from_str(text).map_err(|e| format!("invalid profile JSON: {e}"))?;
        p.validate()?;
        Ok(p)
    }

    /// Indices into the detector's landmarks of the points the template is fitted to.
    pub fn alignment_landmark_indices(&self) -> Result<Vec<usize>, String> {
        let names = self.detector.landmark_names();
        match &self.alignment.landmarks {
            None => Ok((0..names.len()).collect()),
            Some(list) => list
                .iter()
                .map(|n| {
                    names.iter().position(|m| m == n).ok_or_else(|| {
                        format!(
                            "alignment.landmarks: {n:?} is not a {} landmark (those are {names:?})",
                            self.detector.family()
                        )
                    })
                })
                .collect(),
        }
    }

    /// Check every field the pipeline relies on; returns the first problem found.
    pub fn validate(&self) -> Result<(), String> {
        if self.format_version != FORMAT_VERSION {
            return Err(format!(
                "format_version {} is not supported (expected {FORMAT_VERSION})",
                self.format_version
            ));
        }
        if self.name.is_empty() {
            return Err("name is empty".into());
        }
        finite_nonneg("min_face_size", self.min_face_size)?;
        if let Some(c) = self.embed_input {
            if !(64..=16384).contains(&c.max_side) {
                return Err(format!(
                    "embed_input.max_side {} is out of range 64..=16384",
                    c.max_side
                ));
            }
        }
        if !self.min_det_score.is_finite() {
            return Err("min_det_score must be a finite number".into());
        }
        match &self.detector {
            DetectorConfig::Mtcnn(m) => m.validate()?,
            DetectorConfig::Blazeface(b) => b.validate()?,
            DetectorConfig::Scrfd(_) => {}
        }
        let a = &self.alignment;
        let idx = self.alignment_landmark_indices()?;
        if a.template.len() != idx.len() {
            return Err(format!(
                "alignment.template has {} points but {} landmarks are used",
                a.template.len(),
                idx.len()
            ));
        }
        if a.template.len() < 2 {
            return Err("alignment.template needs at least 2 points".into());
        }
        if a.template.iter().flatten().any(|v| !v.is_finite()) {
            return Err("alignment.template has a non-finite value".into());
        }
        if a.output_size[0] == 0
            || a.output_size[1] == 0
            || a.output_size[0] > 4096
            || a.output_size[1] > 4096
        {
            return Err(format!(
                "alignment.output_size {:?} is out of range 1..=4096",
                a.output_size
            ));
        }
        one_of("alignment.transform", &a.transform, &["similarity_lstsq"])?;
        one_of("alignment.interpolation", &a.interpolation, &["bilinear"])?;
        one_of("alignment.source", &a.source, &["oriented"])?;
        if a.border != 0.0 {
            return Err(format!(
                "alignment.border {} is not supported (only 0)",
                a.border
            ));
        }
        let r = &self.recognizer;
        if r.input_size != a.output_size {
            return Err(format!(
                "recognizer.input_size {:?} differs from alignment.output_size {:?}",
                r.input_size, a.output_size
            ));
        }
        one_of("recognizer.layout", &r.layout, &["NCHW", "NHWC"])?;
        one_of("recognizer.color", &r.color, &["RGB", "BGR"])?;
        if r.std.iter().any(|s| !s.is_finite() || *s == 0.0)
            || r.mean.iter().any(|m| !m.is_finite())
        {
            return Err("recognizer.mean/std must be finite, std non-zero".into());
        }
        if r.output_dim == 0 {
            return Err("recognizer.output_dim must be > 0".into());
        }
        if r.model.is_empty() || r.input_name.is_empty() || r.output_name.is_empty() {
            return Err("recognizer.model, input_name and output_name must be set".into());
        }
        Ok(())
    }
}

impl MtcnnConfig {
    fn validate(&self) -> Result<(), String> {
        one_of("detector.resize", &self.resize, &["area"])?;
        one_of("detector.input.layout", &self.input.layout, &["NWHC"])?;
        one_of("detector.input.color", &self.input.color, &["RGB"])?;
        if !self.input.mean.is_finite() || !self.input.scale.is_finite() {
            return Err("detector.input.mean/scale must be finite".into());
        }
        if self.max_image_side == Some(0) {
            return Err("detector.max_image_side must be > 0".into());
        }
        if !(self.min_face_size.is_finite() && self.min_face_size >= 12.0) {
            // 12 / min_face_size is the first pyramid scale; above 1 would enlarge the photo
            // and below 12 px the cascade has nothing to stand on.
            return Err(format!(
                "detector.min_face_size {} must be >= 12",
                self.min_face_size
            ));
        }
        if !(self.scale_factor > 0.0 && self.scale_factor < 1.0) {
            return Err(format!(
                "detector.scale_factor {} must be in (0, 1)",
                self.scale_factor
            ));
        }
        if self.score_thresholds.len() != 3 || self.score_thresholds.iter().any(|t| !t.is_finite())
        {
            return Err(format!(
                "detector.score_thresholds must be 3 finite numbers, got {:?}",
                self.score_thresholds
            ));
        }
        for (name, n) in [
            ("pnet_per_scale", &self.nms.pnet_per_scale),
            ("pnet_all_scales", &self.nms.pnet_all_scales),
            ("rnet", &self.nms.rnet),
            ("onet", &self.nms.onet),
        ] {
            if n.method == NmsMethod::Weighted {
                return Err(format!(
                    "detector.nms.{name}.method \"weighted\" is for BlazeFace only"
                ));
            }
            if !n.iou.is_finite() {
                return Err(format!("detector.nms.{name}.iou must be finite"));
            }
        }
        Ok(())
    }
}

impl BlazeFaceConfig {
    fn validate(&self) -> Result<(), String> {
        one_of("detector.resize", &self.resize, &["area"])?;
        one_of("detector.input.layout", &self.input.layout, &["NHWC"])?;
        one_of("detector.input.color", &self.input.color, &["RGB"])?;
        if self.input_size == 0 || self.input_size > 4096 {
            return Err(format!(
                "detector.input_size {} is out of range",
                self.input_size
            ));
        }
        if self.score_thresholds.len() != 1 {
            return Err("detector.score_thresholds must have one value".into());
        }
        if self.nms.method != NmsMethod::Weighted {
            return Err("detector.nms.method must be \"weighted\" for BlazeFace".into());
        }
        if self.anchor_layers.is_empty()
            || self
                .anchor_layers
                .iter()
                .any(|l| l.cells == 0 || l.anchors == 0)
        {
            return Err("detector.anchor_layers must be non-empty with cells, anchors > 0".into());
        }
        Ok(())
    }
}

fn one_of(field: &str, value: &str, allowed: &[&str]) -> Result<(), String> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "{field} {value:?} is not supported (expected one of {allowed:?})"
        ))
    }
}

fn finite_nonneg(field: &str, v: f64) -> Result<(), String> {
    if v.is_finite() && v >= 0.0 {
        Ok(())
    } else {
        Err(format!("{field} must be a finite number >= 0, got {v}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped(name: &str) -> Profile {
        let path = Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("run under cargo"))
            .join("profiles")
            .join(format!("{name}.json"));
        Profile::load(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn shipped_profiles_load() {
        for name in ["arcface112", "dlib128", "arcface112_blazeface"] {
            let p = shipped(name);
            assert_eq!(p.name, name);
        }
        let p = shipped("arcface112");
        let DetectorConfig::Mtcnn(m) = &p.detector else {
            panic!("mtcnn expected")
        };
        assert_eq!(m.score_thresholds, vec![0.6, 0.7, 0.7]);
        assert_eq!(m.nms.onet.method, NmsMethod::Min);
        assert!(m.quirks.pnet_single_hit_flipud);
        assert_eq!(p.alignment_landmark_indices().unwrap(), vec![0, 1, 2, 3, 4]);
        let b = shipped("arcface112_blazeface");
        assert_eq!(b.alignment_landmark_indices().unwrap(), vec![0, 1, 2, 3]);
    }

    #[test]
    fn bad_profiles_are_clear_errors() {
        let path = Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("run under cargo"))
            .join("profiles/arcface112.json");
        let good = std::fs::read_to_string(path).unwrap();
        let bad = good.replace("\"output_dim\": 512", "\"output_dim\": 0");
        assert!(Profile::parse(&bad).unwrap_err().contains("output_dim"));
        let bad = good.replace("\"method\": \"min\"", "\"method\": \"weighted\"");
        assert!(Profile::parse(&bad).unwrap_err().contains("nms.onet"));
        let bad = good.replace("\"mouth_right\"]", "\"chin\"]");
        assert!(Profile::parse(&bad).unwrap_err().contains("chin"));
        assert!(Profile::parse("{")
            .unwrap_err()
            .contains("invalid profile JSON"));
    }
}
