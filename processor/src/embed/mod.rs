//! The face-embedding core: upright RGB photo → faces (box, score, landmarks) → aligned chips →
//! embeddings, as specified by `bench/embed/README.md` and executed by
//! `bench/embed/embed_ref.py`, which this module reproduces (checked by `scripts/parity`).
//!
//! [`FaceEmbedder`] is what the embed stage holds per worker thread: loading the profile,
//! the ONNX Runtime library and the models happens once, at start-up, and fails there with an
//! [`EmbedError`] that says what to fix (usually: run `scripts/fetch-models`). `embed` is then
//! synchronous CPU work on one photo; the caller runs it on a blocking thread.
//!
//! Files: `profile` (profile format), `runtime` (ONNX Runtime glue), `resize` (exact area
//! resampling), `mtcnn` / `blazeface` (detectors), `align` (similarity transform + warp),
//! `recognizer` (chip → embedding), `decode` (file → oriented RGB, for tools and tests).

#![warn(missing_docs)]

pub mod align;
pub mod blazeface;
pub mod decode;
pub mod input;
pub mod mtcnn;
pub mod profile;
pub mod recognizer;
pub mod resize;
pub mod runtime;

use align::{warp_similarity, Similarity};
use blazeface::BlazeFace;
use mtcnn::{Detection, Mtcnn, MtcnnDebug};
use profile::{DetectorConfig, Profile};
use recognizer::Recognizer;
use resize::{ImageF64, Resizer, View};
use schemas::{Face, Failure, FailureReason};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use decode::{decode_embed_input, decode_oriented_rgb, OrientedRgb};
pub use input::EmbedInput;
pub use runtime::{default_model_dir, default_ort_dylib};

/// Everything that can go wrong in the embed core. Each variant maps to a stable
/// [`FailureReason`] via [`EmbedError::reason`], which is what events and metrics carry.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// The profile file is unreadable or invalid (start-up configuration error).
    #[error("profile {path}: {reason}")]
    Profile {
        /// The profile file.
        path: PathBuf,
        /// What is wrong, naming the field.
        reason: String,
    },
    /// The ONNX Runtime library cannot be loaded (start-up configuration error).
    #[error("ONNX Runtime library {path}: {reason}")]
    Runtime {
        /// The library file tried.
        path: PathBuf,
        /// The loader's message.
        reason: String,
    },
    /// A model file is not there: the model directory was not populated.
    #[error("model file {path} is missing; run scripts/fetch-models (and scripts/convert-dlib for dlib128), or set MODEL_DIR")]
    ModelMissing {
        /// The missing file.
        path: PathBuf,
    },
    /// A model file exists but ONNX Runtime rejects it, or it does not fit the profile.
    #[error("cannot load model {path}: {reason}")]
    ModelLoad {
        /// The model file.
        path: PathBuf,
        /// ONNX Runtime's message or the mismatch.
        reason: String,
    },
    /// A model run failed or returned outputs of an unexpected shape.
    #[error("{model} inference failed: {reason}")]
    Inference {
        /// Which model (`pnet`, `rnet`, `onet`, `blazeface`, `recognizer`).
        model: &'static str,
        /// ONNX Runtime's message or the shape problem.
        reason: String,
    },
    /// The pixel buffer does not match the given dimensions (a caller bug).
    #[error("invalid input image: {0}")]
    InvalidInput(String),
    /// The photo file could not be decoded (only from [`decode_oriented_rgb`]).
    #[error("cannot decode photo: {detail}")]
    Decode {
        /// Stable reason (corrupt, unsupported, too many pixels, ...).
        reason: FailureReason,
        /// The decoder's message.
        detail: String,
    },
    /// The profile names a detector family this build does not implement (`scrfd`).
    #[error("detector family {0:?} is not implemented")]
    Unsupported(String),
}

impl EmbedError {
    /// The stable failure code for events, dead letters and metric labels: model problems are
    /// `model_error`, decode problems their decode reason, configuration and caller bugs
    /// `internal`.
    pub fn reason(&self) -> FailureReason {
        match self {
            Self::ModelMissing { .. } | Self::ModelLoad { .. } | Self::Inference { .. } => {
                FailureReason::ModelError
            }
            Self::Decode { reason, .. } => *reason,
            Self::Profile { .. }
            | Self::Runtime { .. }
            | Self::InvalidInput(_)
            | Self::Unsupported(_) => FailureReason::Internal,
        }
    }

    /// As a [`Failure`] (reason + this error's message) for `EmbeddingDone` / `DeadLetter`.
    pub fn to_failure(&self) -> Failure {
        Failure {
            reason: self.reason(),
            detail: self.to_string(),
        }
    }
}

/// Wall-clock time of the three steps of one `embed` call (model loading excluded), with the
/// boundaries of the reference's `ms` fields: `detect` covers the detector image, the
/// detector, the mapping to photo pixels and the filter; `align` the transforms and warps of
/// all faces; `embed` the normalisation, recognizer runs and L2 of all faces.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepTimings {
    /// Detection.
    pub detect: Duration,
    /// Alignment.
    pub align: Duration,
    /// Embedding.
    pub embed: Duration,
}

enum Detector {
    Mtcnn {
        net: Box<Mtcnn>,
        max_side: Option<u32>,
        /// Scratch for the detector image (reused between photos).
        scratch: Box<(Resizer, ImageF64)>,
    },
    BlazeFace(Box<BlazeFace>),
}

/// A loaded profile: detector, aligner and recognizer, ready to embed photos one at a time.
/// Not shareable between threads while embedding (`embed` takes `&mut self`: ONNX Runtime
/// sessions and the scratch buffers are per instance); load one per worker.
pub struct FaceEmbedder {
    profile: Profile,
    detector: Detector,
    recognizer: Recognizer,
    align_idx: Vec<usize>,
    template: Vec<[f64; 2]>,
    chip: Vec<f64>,
    /// Scratch for reducing a full photo to the embed input.
    input_resizer: Resizer,
}

impl FaceEmbedder {
    /// Load `profile` (a `processor/profiles/*.json` file), the ONNX Runtime library
    /// `ort_dylib` (see [`default_ort_dylib`]) and the profile's models from `model_dir` (see
    /// [`default_model_dir`]), with `intra_threads` ONNX Runtime threads per model run.
    pub fn load(
        profile: &Path,
        model_dir: &Path,
        ort_dylib: &Path,
        intra_threads: usize,
    ) -> Result<Self, EmbedError> {
        let prof = Profile::load(profile)?;
        let align_idx =
            prof.alignment_landmark_indices()
                .map_err(|reason| EmbedError::Profile {
                    path: profile.to_path_buf(),
                    reason,
                })?;
        // Report missing model files before touching the runtime: it is the common case
        // ("models not fetched") and the message says what to run.
        for m in model_files(&prof) {
            let path = model_dir.join(m);
            if !path.is_file() {
                return Err(EmbedError::ModelMissing { path });
            }
        }
        let env = runtime::environment(ort_dylib)?;
        let detector = match &prof.detector {
            DetectorConfig::Mtcnn(cfg) => Detector::Mtcnn {
                net: Box::new(Mtcnn::load(cfg, model_dir, &env, intra_threads)?),
                max_side: cfg.max_image_side,
                scratch: Box::default(),
            },
            DetectorConfig::Blazeface(cfg) => Detector::BlazeFace(Box::new(BlazeFace::load(
                cfg,
                model_dir,
                &env,
                intra_threads,
            )?)),
            DetectorConfig::Scrfd(_) => return Err(EmbedError::Unsupported("scrfd".into())),
        };
        let recognizer = Recognizer::load(&prof.recognizer, model_dir, &env, intra_threads)?;
        Ok(Self {
            template: prof.alignment.template.clone(),
            profile: prof,
            detector,
            recognizer,
            align_idx,
            chip: Vec::new(),
            input_resizer: Resizer::default(),
        })
    }

    /// Decode a photo file straight to this profile's embed input (a JPEG at the smallest DCT
    /// scale that suffices): what the embed stage does when the thumbnail stage handed nothing
    /// over, and what `bench-embed` measures.
    pub fn prepare(&mut self, data: &[u8], max_pixels: u64) -> Result<EmbedInput, EmbedError> {
        decode::decode_embed_input(
            data,
            self.profile.embed_input_max_side(),
            max_pixels,
            &mut self.input_resizer,
        )
    }

    /// The loaded profile (its `name` must be stored with the embeddings).
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// MTCNN's pyramid and stage counts of the last call (for parity debugging); `None` for
    /// other detectors.
    pub fn last_debug(&self) -> Option<&MtcnnDebug> {
        match &self.detector {
            Detector::Mtcnn { net, .. } => Some(&net.debug),
            Detector::BlazeFace(_) => None,
        }
    }

    /// Faces in an upright RGB8 photo (`width × height`, EXIF orientation already applied):
    /// boxes `[x, y, w, h]` and landmarks in input pixels, detector score, embedding; in
    /// descending score order. Step durations go to the `embed_step_seconds` histogram.
    pub fn embed(&mut self, rgb: &[u8], width: u32, height: u32) -> Result<Vec<Face>, EmbedError> {
        self.embed_timed(rgb, width, height).map(|(faces, _)| faces)
    }

    /// [`embed`](Self::embed), also returning the step durations. The photo is first reduced
    /// to the profile's embed input (counted as detection time), exactly as the thumbnail stage
    /// prepares it for [`embed_input`](Self::embed_input).
    pub fn embed_timed(
        &mut self,
        rgb: &[u8],
        width: u32,
        height: u32,
    ) -> Result<(Vec<Face>, StepTimings), EmbedError> {
        let (w, h) = (width as usize, height as usize);
        if w == 0 || h == 0 || rgb.len() != w * h * 3 {
            return Err(EmbedError::InvalidInput(format!(
                "{} bytes for {width}x{height} RGB8 (expected {})",
                rgb.len(),
                w * h * 3
            )));
        }
        let max_side = self.profile.embed_input_max_side();
        if max_side.is_some_and(|m| w.max(h) > m as usize) {
            let t0 = Instant::now();
            let input =
                EmbedInput::from_upright(rgb, width, height, max_side, &mut self.input_resizer);
            let prep = t0.elapsed();
            let (faces, mut timings) = self.embed_input_timed(&input)?;
            timings.detect += prep;
            return Ok((faces, timings));
        }
        self.run(rgb, w, h, (1.0, 1.0))
    }

    /// Faces in a prepared [`EmbedInput`], in the pixels of the photo it was made from.
    pub fn embed_input(&mut self, input: &EmbedInput) -> Result<Vec<Face>, EmbedError> {
        self.embed_input_timed(input).map(|(faces, _)| faces)
    }

    /// [`embed_input`](Self::embed_input), also returning the step durations.
    pub fn embed_input_timed(
        &mut self,
        input: &EmbedInput,
    ) -> Result<(Vec<Face>, StepTimings), EmbedError> {
        let (w, h) = (input.width as usize, input.height as usize);
        if w == 0 || h == 0 || input.pixels.len() != w * h * 3 {
            return Err(EmbedError::InvalidInput(format!(
                "{} bytes for a {w}x{h} embed input",
                input.pixels.len()
            )));
        }
        self.run(&input.pixels, w, h, input.scale())
    }

    /// Detect, align and embed on `rgb` (`w × h`); `to_source` maps its pixels to the photo's
    /// (filter and reported geometry use photo pixels; alignment uses `rgb`'s).
    fn run(
        &mut self,
        rgb: &[u8],
        w: usize,
        h: usize,
        to_source: (f64, f64),
    ) -> Result<(Vec<Face>, StepTimings), EmbedError> {
        let t0 = Instant::now();
        let detections = self.detect(rgb, w, h, to_source)?;
        let t1 = Instant::now();

        let (cw, ch) = self.recognizer.chip_size();
        let mut chips: Vec<(Detection, Vec<f64>)> = Vec::with_capacity(detections.len());
        for det in detections {
            let pts: Vec<[f64; 2]> = self.align_idx.iter().map(|&i| det.landmarks[i]).collect();
            // Coincident landmarks have no transform; the reference would emit NaNs. Skip.
            let Some(t) = Similarity::estimate(&pts, &self.template) else {
                continue;
            };
            warp_similarity(rgb, w, h, &t, cw, ch, &mut self.chip);
            chips.push((det, self.chip.clone()));
        }
        let t2 = Instant::now();

        let mut faces = Vec::with_capacity(chips.len());
        for (det, chip) in &chips {
            let embedding = self.recognizer.embed(chip)?;
            let det = map_detection(det, to_source);
            let [x1, y1, x2, y2] = det.bbox;
            faces.push(Face {
                bbox: [x1 as f32, y1 as f32, (x2 - x1) as f32, (y2 - y1) as f32],
                score: det.score as f32,
                landmarks: det
                    .landmarks
                    .iter()
                    .map(|p| [p[0] as f32, p[1] as f32])
                    .collect(),
                embedding,
            });
        }
        let t3 = Instant::now();

        let timings = StepTimings {
            detect: t1 - t0,
            align: t2 - t1,
            embed: t3 - t2,
        };
        metrics::histogram!("embed_step_seconds", "step" => "detect")
            .record(timings.detect.as_secs_f64());
        metrics::histogram!("embed_step_seconds", "step" => "align")
            .record(timings.align.as_secs_f64());
        metrics::histogram!("embed_step_seconds", "step" => "embed")
            .record(timings.embed.as_secs_f64());
        Ok((faces, timings))
    }

    /// Detector image (area-shrunk to `max_image_side` when larger), detection, mapping back
    /// to photo pixel centres, and the profile's size/score filter.
    fn detect(
        &mut self,
        rgb: &[u8],
        w: usize,
        h: usize,
        to_source: (f64, f64),
    ) -> Result<Vec<Detection>, EmbedError> {
        let photo = View {
            data: rgb,
            width: w,
            height: h,
        };
        let mut dets = match &mut self.detector {
            Detector::Mtcnn {
                net,
                max_side,
                scratch,
            } => {
                let (resizer, image) = &mut **scratch;
                let (mut fx, mut fy) = (1.0, 1.0);
                match *max_side {
                    Some(m) if w.max(h) > m as usize => {
                        let s = f64::from(m) / w.max(h) as f64;
                        let dw = ((w as f64 * s + 0.5).floor() as usize).max(1);
                        let dh = ((h as f64 * s + 0.5).floor() as usize).max(1);
                        let region = resize::Region { x0: 0, y0: 0, w, h };
                        resizer.area_resize(photo, region, dw, dh, &mut image.data);
                        (image.width, image.height) = (dw, dh);
                        (fx, fy) = (w as f64 / dw as f64, h as f64 / dh as f64);
                    }
                    _ => {
                        image.data.clear();
                        image.data.extend(rgb.iter().map(|&v| f64::from(v)));
                        (image.width, image.height) = (w, h);
                    }
                }
                let mut dets = net.detect(image)?;
                if fx != 1.0 || fy != 1.0 {
                    // Detector pixel centres -> photo pixel centres (area-resize geometry).
                    for d in &mut dets {
                        for k in [0, 2] {
                            d.bbox[k] = (d.bbox[k] + 0.5) * fx - 0.5;
                            d.bbox[k + 1] = (d.bbox[k + 1] + 0.5) * fy - 0.5;
                        }
                        for p in &mut d.landmarks {
                            p[0] = (p[0] + 0.5) * fx - 0.5;
                            p[1] = (p[1] + 0.5) * fy - 0.5;
                        }
                    }
                }
                dets
            }
            Detector::BlazeFace(net) => net.detect(rgb, w, h)?,
        };
        let (min_face, min_score) = (self.profile.min_face_size, self.profile.min_det_score);
        dets.retain(|d| {
            let b = map_detection(d, to_source).bbox;
            (b[2] - b[0]).min(b[3] - b[1]) >= min_face && d.score >= min_score
        });
        Ok(dets)
    }
}

/// A detection in embed-input pixel centres → photo pixel centres (area-resize geometry, as
/// for the detector image); the identity for a full-size input.
fn map_detection(d: &Detection, (fx, fy): (f64, f64)) -> Detection {
    let mut d = d.clone();
    if fx != 1.0 || fy != 1.0 {
        for k in [0, 2] {
            d.bbox[k] = (d.bbox[k] + 0.5) * fx - 0.5;
            d.bbox[k + 1] = (d.bbox[k + 1] + 0.5) * fy - 0.5;
        }
        for p in &mut d.landmarks {
            p[0] = (p[0] + 0.5) * fx - 0.5;
            p[1] = (p[1] + 0.5) * fy - 0.5;
        }
    }
    d
}

/// Model files a profile needs, relative to the model directory.
fn model_files(p: &Profile) -> Vec<&str> {
    let mut v = match &p.detector {
        DetectorConfig::Mtcnn(m) => vec![
            m.models.pnet.as_str(),
            m.models.rnet.as_str(),
            m.models.onet.as_str(),
        ],
        DetectorConfig::Blazeface(b) => vec![b.models.detector.as_str()],
        DetectorConfig::Scrfd(_) => vec![],
    };
    v.push(p.recognizer.model.as_str());
    v
}

#[cfg(test)]
mod tests;
