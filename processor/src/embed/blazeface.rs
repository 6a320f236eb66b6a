//! MediaPipe BlazeFace (back-camera 256×256 model), the experimental detector of the
//! `arcface112_blazeface` profile (`bench/embed/README.md` §8, `BlazeFace` in `embed_ref.py`).
//!
//! One network run instead of MTCNN's pyramid makes detection ~10× faster, at the price of
//! missing small faces (the photo is shrunk to 256 px); the profile stays experimental until
//! that trade-off is decided. Implemented so that every shipped profile loads and runs.

use super::mtcnn::Detection;
use super::profile::BlazeFaceConfig;
use super::recognizer::pairwise_sum;
use super::resize::{Region, Resizer, View};
use super::runtime::Model;
use super::EmbedError;
use ort::environment::Environment;
use std::cmp::Ordering;
use std::path::Path;

/// A loaded BlazeFace model with its anchor layout.
pub struct BlazeFace {
    model: Model,
    cfg: BlazeFaceConfig,
    resizer: Resizer,
    resized: Vec<f64>,
    input: Vec<f32>,
}

impl BlazeFace {
    /// Open `models.detector` and check that every anchor layer's outputs exist.
    pub fn load(
        cfg: &BlazeFaceConfig,
        model_dir: &Path,
        env: &Environment,
        intra_threads: usize,
    ) -> Result<Self, EmbedError> {
        let path = model_dir.join(&cfg.models.detector);
        let model = Model::open(env, &path, "blazeface", intra_threads)?;
        let outputs = model.output_names();
        for l in &cfg.anchor_layers {
            for name in [&l.scores, &l.boxes] {
                if !outputs.contains(name) {
                    return Err(EmbedError::ModelLoad {
                        path: path.clone(),
                        reason: format!(
                            "anchor layer output {name:?} is not a model output ({outputs:?})"
                        ),
                    });
                }
            }
        }
        Ok(Self {
            model,
            cfg: cfg.clone(),
            resizer: Resizer::default(),
            resized: Vec::new(),
            input: Vec::new(),
        })
    }

    /// Detect faces in the oriented RGB8 photo; boxes and the 6 keypoints in photo pixels,
    /// in weighted-NMS order (score descending).
    pub fn detect(&mut self, rgb: &[u8], w: usize, h: usize) -> Result<Vec<Detection>, EmbedError> {
        let n = self.cfg.input_size as usize;
        let nf = n as f64;
        let side = w.max(h) as f64;
        let rw = (((w * n) as f64 / side + 0.5).floor() as usize).max(1);
        let rh = (((h * n) as f64 / side + 0.5).floor() as usize).max(1);
        let (ox, oy) = ((n - rw.min(n)) / 2, (n - rh.min(n)) / 2);
        let region = Region { x0: 0, y0: 0, w, h };
        self.resizer.area_resize(
            View {
                data: rgb,
                width: w,
                height: h,
            },
            region,
            rw,
            rh,
            &mut self.resized,
        );
        let (mean, scale, pad) = (
            self.cfg.input.mean,
            self.cfg.input.scale,
            self.cfg.pad_value,
        );
        self.input.clear();
        self.input.resize(n * n * 3, ((pad - mean) * scale) as f32);
        for y in 0..rh.min(n) {
            for x in 0..rw.min(n) {
                for c in 0..3 {
                    let v = self.resized[(y * rw + x) * 3 + c];
                    self.input[((oy + y) * n + ox + x) * 3 + c] = ((v - mean) * scale) as f32;
                }
            }
        }
        let names: Vec<&str> = self
            .cfg
            .anchor_layers
            .iter()
            .flat_map(|l| [l.scores.as_str(), l.boxes.as_str()])
            .collect();
        let outs = self.model.run(&[1, n, n, 3], &self.input, &names)?;
        let threshold = self.cfg.score_thresholds[0];
        // Rows: cx, cy, w, h, 6 × (x, y), score — canvas units (0..1).
        let mut d: Vec<[f64; 17]> = Vec::new();
        for (k, layer) in self.cfg.anchor_layers.iter().enumerate() {
            let (scores, boxes) = (&outs[2 * k], &outs[2 * k + 1]);
            let rows = scores.data.len();
            if boxes.data.len() != rows * 16 || rows != layer.cells * layer.cells * layer.anchors {
                return Err(EmbedError::Inference {
                    model: "blazeface",
                    reason: format!(
                        "layer {k}: output shapes {:?} / {:?} do not fit the anchors",
                        scores.shape, boxes.shape
                    ),
                });
            }
            let cells = layer.cells as f64;
            for i in 0..rows {
                let raw = f64::from(scores.data[i]);
                let score = 1.0 / (1.0 + (-raw.clamp(-100.0, 100.0)).exp());
                if score < threshold || score.is_nan() {
                    continue;
                }
                let cell = i / layer.anchors;
                let ax = ((cell % layer.cells) as f64 + 0.5) / cells;
                let ay = ((cell / layer.cells) as f64 + 0.5) / cells;
                let o = &boxes.data[i * 16..i * 16 + 16];
                let mut row = [0.0f64; 17];
                row[0] = ax + f64::from(o[0]) / nf;
                row[1] = ay + f64::from(o[1]) / nf;
                row[2] = f64::from(o[2]) / nf;
                row[3] = f64::from(o[3]) / nf;
                for kp in 0..6 {
                    row[4 + 2 * kp] = ax + f64::from(o[4 + 2 * kp]) / nf;
                    row[5 + 2 * kp] = ay + f64::from(o[5 + 2 * kp]) / nf;
                }
                row[16] = score;
                d.push(row);
            }
        }
        let blended = weighted_nms(&d, self.cfg.nms.iou);
        let (sx, sy) = (w as f64 / rw as f64, h as f64 / rh as f64);
        let px = |u: f64, off: usize, s: f64| (u * nf - off as f64) * s - 0.5;
        Ok(blended
            .iter()
            .map(|o| Detection {
                bbox: [
                    px(o[0] - o[2] / 2.0, ox, sx),
                    px(o[1] - o[3] / 2.0, oy, sy),
                    px(o[0] + o[2] / 2.0, ox, sx),
                    px(o[1] + o[3] / 2.0, oy, sy),
                ],
                score: o[16],
                landmarks: (0..6)
                    .map(|k| [px(o[4 + 2 * k], ox, sx), px(o[5 + 2 * k], oy, sy)])
                    .collect(),
            })
            .collect())
    }
}

/// MediaPipe's weighted NMS: by score descending (stable), the best remaining candidate and
/// every remaining one with IoU >= `iou` (no +1 areas) form a group; its box and keypoints are
/// the score-weighted mean, its score the best one's.
fn weighted_nms(d: &[[f64; 17]], iou: f64) -> Vec<[f64; 17]> {
    let mut order: Vec<usize> = (0..d.len()).collect();
    order.sort_by(|&i, &j| d[j][16].partial_cmp(&d[i][16]).unwrap_or(Ordering::Equal));
    let corners = |r: &[f64; 17]| {
        [
            r[0] - r[2] / 2.0,
            r[1] - r[3] / 2.0,
            r[0] + r[2] / 2.0,
            r[1] + r[3] / 2.0,
        ]
    };
    let mut out = Vec::new();
    while let Some(&first) = order.first() {
        let a = corners(&d[first]);
        let area0 = d[first][2] * d[first][3];
        let mut group = Vec::new();
        let mut rest = Vec::new();
        for (j, &o) in order.iter().enumerate() {
            let b = corners(&d[o]);
            let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
            let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
            let inter = iw * ih;
            let area = d[o][2] * d[o][3];
            if j == 0 || inter / (area0 + area - inter) >= iou {
                group.push(o);
            } else {
                rest.push(o);
            }
        }
        let weights: Vec<f64> = group.iter().map(|&g| d[g][16]).collect();
        let total = 0.0 + pairwise_sum(&weights);
        let mut row = [0.0f64; 17];
        for k in 0..16 {
            let mut acc = 0.0;
            for &g in &group {
                acc += d[g][k] * d[g][16];
            }
            row[k] = acc / total;
        }
        row[16] = d[first][16];
        out.push(row);
        order = rest;
    }
    out
}
