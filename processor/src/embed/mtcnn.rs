//! The MTCNN face detector (P-Net → R-Net → O-Net), reproducing `MTCNN` in
//! `bench/embed/embed_ref.py` step for step (`bench/embed/README.md` §4).
//!
//! MTCNN is a cascade of discrete decisions — threshold, NMS, integer boxes — so "close"
//! arithmetic is not enough: a different pyramid pixel can make another candidate win an NMS
//! and move a final box by pixels. Everything here is therefore float64 in the reference's
//! order of operations, comparisons are made in the same precision as numpy makes them, and
//! the ipazc/mtcnn quirks the reference keeps (1-based boxes, `+1` areas, the single-hit
//! regression flip) are kept too. The networks take the image transposed (`[n][x][y][c]`).

use super::profile::{MtcnnConfig, NmsConfig, NmsMethod};
use super::resize::{ImageF64, Region, Resizer, View};
use super::runtime::{Model, Output};
use super::EmbedError;
use ort::environment::Environment;
use std::cmp::Ordering;
use std::path::Path;

/// One detected face in detector-image coordinates: box corners `[x1, y1, x2, y2]`, O-Net
/// score, five landmarks (left eye, right eye, nose, mouth left, mouth right; image left).
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// `[x1, y1, x2, y2]`, float, not clamped to the image.
    pub bbox: [f64; 4],
    /// O-Net face probability (a float32 value, widened).
    pub score: f64,
    /// Landmarks `[x, y]`, pixel centres at integers.
    pub landmarks: Vec<[f64; 2]>,
}

/// What the last `detect` did, for parity debugging (`embed_ref.py --debug` prints the same).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MtcnnDebug {
    /// Per pyramid level: scale, level width, level height, P-Net cells over threshold.
    pub scales: Vec<(f64, usize, usize, usize)>,
    /// Boxes after P-Net, after R-Net, after O-Net.
    pub stage_counts: [usize; 3],
}

/// A box with its score (and, between stages, its pending regression).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Cand {
    b: [f64; 4],
    score: f64,
    reg: [f64; 4],
}

/// The loaded cascade plus reusable buffers (the pyramid and crops allocate nothing once warm).
pub struct Mtcnn {
    pnet: Model,
    rnet: Model,
    onet: Model,
    mean: f64,
    scale: f64,
    min_face: f64,
    factor: f64,
    thresholds: [f64; 3],
    nms: [NmsConfig; 4],
    flip_quirk: bool,
    resizer: Resizer,
    level: Vec<f64>,
    input: Vec<f32>,
    /// What the last call did.
    pub debug: MtcnnDebug,
}

impl Mtcnn {
    /// Open the three networks (`models.*` relative to `model_dir`) with the profile's settings.
    pub fn load(
        cfg: &MtcnnConfig,
        model_dir: &Path,
        env: &Environment,
        intra_threads: usize,
    ) -> Result<Self, EmbedError> {
        let pnet = Model::open(
            env,
            &model_dir.join(&cfg.models.pnet),
            "pnet",
            intra_threads,
        )?;
        let rnet = Model::open(
            env,
            &model_dir.join(&cfg.models.rnet),
            "rnet",
            intra_threads,
        )?;
        let onet = Model::open(
            env,
            &model_dir.join(&cfg.models.onet),
            "onet",
            intra_threads,
        )?;
        let t = &cfg.score_thresholds;
        Ok(Self {
            pnet,
            rnet,
            onet,
            mean: cfg.input.mean,
            scale: cfg.input.scale,
            min_face: cfg.min_face_size,
            factor: cfg.scale_factor,
            thresholds: [t[0], t[1], t[2]],
            nms: [
                cfg.nms.pnet_per_scale,
                cfg.nms.pnet_all_scales,
                cfg.nms.rnet,
                cfg.nms.onet,
            ],
            flip_quirk: cfg.quirks.pnet_single_hit_flipud,
            resizer: Resizer::default(),
            level: Vec::new(),
            input: Vec::new(),
            debug: MtcnnDebug::default(),
        })
    }

    /// Detect faces in the float64 RGB detector image; results in its coordinates, in the
    /// order of the final NMS (score descending).
    pub fn detect(&mut self, img: &ImageF64) -> Result<Vec<Detection>, EmbedError> {
        self.debug = MtcnnDebug::default();
        let b1 = self.stage1(img)?;
        let b2 = self.stage2(img, &b1)?;
        let b3 = self.stage3(img, &b2)?;
        self.debug.stage_counts = [b1.len(), b2.len(), b3.len()];
        Ok(b3)
    }

    /// P-Net over the pyramid, per-scale and all-scale NMS, stage-1 regression, squaring,
    /// truncation.
    fn stage1(&mut self, img: &ImageF64) -> Result<Vec<Cand>, EmbedError> {
        let (w, h) = (img.width, img.height);
        // numpy compares the float32 map with the threshold as float32 (NEP 50).
        let t = self.thresholds[0] as f32;
        let mut all: Vec<Cand> = Vec::new();
        let mut cands: Vec<Cand> = Vec::new();
        let mut hits: Vec<(usize, usize, f32)> = Vec::new();
        for scale in pyramid_scales(w, h, self.min_face, self.factor) {
            let ws = (w as f64 * scale).ceil() as usize;
            let hs = (h as f64 * scale).ceil() as usize;
            let region = Region { x0: 0, y0: 0, w, h };
            self.resizer
                .area_resize(View::from(img), region, ws, hs, &mut self.level);
            self.input.clear();
            self.input.resize(ws * hs * 3, 0.0);
            normalise_transposed(&self.level, ws, hs, self.mean, self.scale, &mut self.input);
            let outs = self.pnet.run(&[1, ws, hs, 3], &self.input, &[])?;
            let (reg, prob) = (
                pick_output(&outs, "pnet", 4, 4)?,
                pick_output(&outs, "pnet", 4, 2)?,
            );
            let (wo, ho) = (prob.shape[1], prob.shape[2]);
            if reg.shape[1] != wo || reg.shape[2] != ho || prob.shape[0] != 1 {
                return Err(EmbedError::Inference {
                    model: "pnet",
                    reason: format!(
                        "output shapes {:?} and {:?} do not match",
                        reg.shape, prob.shape
                    ),
                });
            }
            hits.clear();
            for xo in 0..wo {
                for yo in 0..ho {
                    let p = prob.data[(xo * ho + yo) * 2 + 1];
                    if p >= t {
                        hits.push((xo, yo, p));
                    }
                }
            }
            self.debug.scales.push((scale, ws, hs, hits.len()));
            if hits.is_empty() {
                continue;
            }
            // ipazc/mtcnn's np.flipud on a single hit: the regression comes from cell
            // (Wo-1-xo, yo). Kept on purpose (profile quirk).
            let flip = self.flip_quirk && hits.len() == 1;
            cands.clear();
            for &(xo, yo, p) in &hits {
                let rx = if flip { wo - 1 - xo } else { xo };
                let r = &reg.data[(rx * ho + yo) * 4..(rx * ho + yo) * 4 + 4];
                let (xf, yf) = (xo as f64, yo as f64);
                cands.push(Cand {
                    b: [
                        ((2.0 * xf + 1.0) / scale).trunc(),
                        ((2.0 * yf + 1.0) / scale).trunc(),
                        ((2.0 * xf + 12.0) / scale).trunc(),
                        ((2.0 * yf + 12.0) / scale).trunc(),
                    ],
                    score: f64::from(p),
                    reg: [
                        f64::from(r[0]),
                        f64::from(r[1]),
                        f64::from(r[2]),
                        f64::from(r[3]),
                    ],
                });
            }
            for i in nms_cands(&cands, self.nms[0]) {
                all.push(cands[i]);
            }
        }
        let mut out = Vec::new();
        for i in nms_cands(&all, self.nms[1]) {
            let c = all[i];
            // Stage-1 regression uses w = x2 - x1 (no +1), unlike bbreg.
            let rw = c.b[2] - c.b[0];
            let rh = c.b[3] - c.b[1];
            let mut b = [
                c.b[0] + c.reg[0] * rw,
                c.b[1] + c.reg[1] * rh,
                c.b[2] + c.reg[2] * rw,
                c.b[3] + c.reg[3] * rh,
            ];
            rerec(&mut b);
            for v in &mut b {
                *v = v.trunc();
            }
            out.push(Cand {
                b,
                score: c.score,
                reg: [0.0; 4],
            });
        }
        Ok(out)
    }

    /// R-Net on 24×24 crops: strict threshold, NMS, `bbreg`, squaring (no truncation).
    fn stage2(&mut self, img: &ImageF64, boxes: &[Cand]) -> Result<Vec<Cand>, EmbedError> {
        if boxes.is_empty() {
            return Ok(Vec::new());
        }
        self.crops(img, boxes, 24);
        let outs = self.rnet.run(&[boxes.len(), 24, 24, 3], &self.input, &[])?;
        let (reg, prob) = (
            pick_output(&outs, "rnet", 2, 4)?,
            pick_output(&outs, "rnet", 2, 2)?,
        );
        check_batch("rnet", &[reg, prob], boxes.len())?;
        let t = self.thresholds[1] as f32;
        let mut kept = Vec::new();
        for (n, c) in boxes.iter().enumerate() {
            let p = prob.data[n * 2 + 1];
            if p > t {
                let r = &reg.data[n * 4..n * 4 + 4];
                kept.push(Cand {
                    b: c.b,
                    score: f64::from(p),
                    reg: [
                        f64::from(r[0]),
                        f64::from(r[1]),
                        f64::from(r[2]),
                        f64::from(r[3]),
                    ],
                });
            }
        }
        let mut out = Vec::new();
        for i in nms_cands(&kept, self.nms[2]) {
            let mut c = kept[i];
            bbreg(&mut c.b, c.reg);
            rerec(&mut c.b);
            c.reg = [0.0; 4];
            out.push(c);
        }
        Ok(out)
    }

    /// O-Net on 48×48 crops of the truncated boxes: strict threshold, landmarks from the
    /// truncated box, `bbreg`, NMS by intersection over the smaller area.
    fn stage3(&mut self, img: &ImageF64, boxes: &[Cand]) -> Result<Vec<Detection>, EmbedError> {
        if boxes.is_empty() {
            return Ok(Vec::new());
        }
        let boxes: Vec<Cand> = boxes
            .iter()
            .map(|c| Cand {
                b: c.b.map(f64::trunc),
                ..*c
            })
            .collect();
        self.crops(img, &boxes, 48);
        let outs = self.onet.run(&[boxes.len(), 48, 48, 3], &self.input, &[])?;
        let reg = pick_output(&outs, "onet", 2, 4)?;
        let lmk = pick_output(&outs, "onet", 2, 10)?;
        let prob = pick_output(&outs, "onet", 2, 2)?;
        check_batch("onet", &[reg, lmk, prob], boxes.len())?;
        let t = self.thresholds[2] as f32;
        let mut kept: Vec<Cand> = Vec::new();
        let mut points: Vec<Vec<[f64; 2]>> = Vec::new();
        for (n, c) in boxes.iter().enumerate() {
            let p = prob.data[n * 2 + 1];
            if p <= t || p.is_nan() {
                continue;
            }
            let l = &lmk.data[n * 10..n * 10 + 10];
            let w = c.b[2] - c.b[0] + 1.0;
            let h = c.b[3] - c.b[1] + 1.0;
            points.push(
                (0..5)
                    .map(|i| {
                        [
                            w * f64::from(l[i]) + c.b[0] - 1.0,
                            h * f64::from(l[5 + i]) + c.b[1] - 1.0,
                        ]
                    })
                    .collect(),
            );
            let r = &reg.data[n * 4..n * 4 + 4];
            let mut b = c.b;
            bbreg(
                &mut b,
                [
                    f64::from(r[0]),
                    f64::from(r[1]),
                    f64::from(r[2]),
                    f64::from(r[3]),
                ],
            );
            kept.push(Cand {
                b,
                score: f64::from(p),
                reg: [0.0; 4],
            });
        }
        Ok(nms_cands(&kept, self.nms[3])
            .into_iter()
            .map(|i| Detection {
                bbox: kept[i].b,
                score: kept[i].score,
                landmarks: std::mem::take(&mut points[i]),
            })
            .collect())
    }

    /// Fill `self.input` with the normalised, transposed `size × size` crops of `boxes`
    /// (`crop_padded` of the 1-based inclusive integer box, then area-resized).
    fn crops(&mut self, img: &ImageF64, boxes: &[Cand], size: usize) {
        let per = size * size * 3;
        self.input.clear();
        self.input.resize(boxes.len() * per, 0.0);
        for (n, c) in boxes.iter().enumerate() {
            // Boxes hold integral values here; `as i64` is numpy's int() (truncation).
            let [x1, y1, x2, y2] = c.b.map(|v| v as i64);
            let region = Region {
                x0: x1 - 1,
                y0: y1 - 1,
                w: (x2 - x1 + 1).max(0) as usize,
                h: (y2 - y1 + 1).max(0) as usize,
            };
            self.resizer
                .area_resize(View::from(img), region, size, size, &mut self.level);
            let dst = &mut self.input[n * per..(n + 1) * per];
            normalise_transposed(&self.level, size, size, self.mean, self.scale, dst);
        }
    }
}

/// `x = f32((v - mean) * scale)` of an interleaved `w × h` RGB float64 image, written in the
/// networks' transposed order: element `[x][y][c]`.
fn normalise_transposed(src: &[f64], w: usize, h: usize, mean: f64, scale: f64, dst: &mut [f32]) {
    debug_assert_eq!(src.len(), w * h * 3);
    debug_assert_eq!(dst.len(), w * h * 3);
    for y in 0..h {
        let row = &src[y * w * 3..(y + 1) * w * 3];
        for x in 0..w {
            let d = (x * h + y) * 3;
            for c in 0..3 {
                dst[d + c] = ((row[x * 3 + c] - mean) * scale) as f32;
            }
        }
    }
}

/// The output of rank `rank` whose last dimension is `last` (the models' outputs are told
/// apart by shape: 4 = box regression, 2 = face probability, 10 = landmarks).
fn pick_output<'a>(
    outs: &'a [Output],
    model: &'static str,
    rank: usize,
    last: usize,
) -> Result<&'a Output, EmbedError> {
    outs.iter()
        .find(|o| o.shape.len() == rank && o.shape.last() == Some(&last))
        .ok_or_else(|| EmbedError::Inference {
            model,
            reason: format!(
                "no rank-{rank} output with last dimension {last} (got {:?})",
                outs.iter().map(|o| &o.shape).collect::<Vec<_>>()
            ),
        })
}

fn check_batch(model: &'static str, outs: &[&Output], n: usize) -> Result<(), EmbedError> {
    for o in outs {
        if o.shape[0] != n {
            return Err(EmbedError::Inference {
                model,
                reason: format!("batch of {n} gave output shape {:?}", o.shape),
            });
        }
    }
    Ok(())
}

/// Pyramid scales for a `w × h` image: `m = 12 / min_face`, then repeated products with
/// `factor` while the shorter side times the scale is at least 12 (iterative products, not
/// powers, as the reference).
pub fn pyramid_scales(w: usize, h: usize, min_face: f64, factor: f64) -> Vec<f64> {
    let m = 12.0 / min_face;
    let mut min_layer = w.min(h) as f64 * m;
    let mut s = m;
    let mut out = Vec::new();
    while min_layer >= 12.0 {
        out.push(s);
        s *= factor;
        min_layer *= factor;
    }
    out
}

/// Square a box around its centre: `l = max(w, h)` with `w = x2 - x1` (no +1).
pub fn rerec(b: &mut [f64; 4]) {
    let h = b[3] - b[1];
    let w = b[2] - b[0];
    let l = w.max(h);
    b[0] = b[0] + w * 0.5 - l * 0.5;
    b[1] = b[1] + h * 0.5 - l * 0.5;
    b[2] = b[0] + l;
    b[3] = b[1] + l;
}

/// Box regression of stages 2 and 3: `w = x2 - x1 + 1`, `x1 += r0*w`, `x2 += r2*w`, same in y.
pub fn bbreg(b: &mut [f64; 4], r: [f64; 4]) {
    let w = b[2] - b[0] + 1.0;
    let h = b[3] - b[1] + 1.0;
    b[0] += r[0] * w;
    b[1] += r[1] * h;
    b[2] += r[2] * w;
    b[3] += r[3] * h;
}

fn nms_cands(c: &[Cand], cfg: NmsConfig) -> Vec<usize> {
    let boxes: Vec<[f64; 4]> = c.iter().map(|c| c.b).collect();
    let scores: Vec<f64> = c.iter().map(|c| c.score).collect();
    nms(&boxes, &scores, cfg.iou, cfg.method)
}

/// Score-descending order with numpy's `argsort(-s, kind="stable")` semantics: ties keep the
/// lower index first, NaN goes last.
fn by_score_desc(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (false, false) => b.partial_cmp(&a).unwrap_or(Ordering::Equal),
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
    }
}

/// Greedy NMS of MTCNN: `+1` pixel areas; take the best remaining box, drop every other box
/// whose overlap (IoU for `Union`, intersection over the smaller area for `Min`) is above
/// `threshold`; repeat. Returns the kept indices in the order taken. `Weighted` is
/// BlazeFace's blending NMS and is treated as `Union` here.
pub fn nms(boxes: &[[f64; 4]], scores: &[f64], threshold: f64, method: NmsMethod) -> Vec<usize> {
    debug_assert_eq!(boxes.len(), scores.len());
    let area: Vec<f64> = boxes
        .iter()
        .map(|b| (b[2] - b[0] + 1.0) * (b[3] - b[1] + 1.0))
        .collect();
    let mut order: Vec<usize> = (0..boxes.len()).collect();
    order.sort_by(|&i, &j| by_score_desc(scores[i], scores[j])); // stable
    let mut keep = Vec::new();
    let mut start = 0;
    while start < order.len() {
        let i = order[start];
        keep.push(i);
        let bi = boxes[i];
        let mut w = start + 1;
        for r in start + 1..order.len() {
            let j = order[r];
            let bj = boxes[j];
            let iw = (bi[2].min(bj[2]) - bi[0].max(bj[0]) + 1.0).max(0.0);
            let ih = (bi[3].min(bj[3]) - bi[1].max(bj[1]) + 1.0).max(0.0);
            let inter = iw * ih;
            let o = match method {
                NmsMethod::Min => inter / area[i].min(area[j]),
                NmsMethod::Union | NmsMethod::Weighted => inter / (area[i] + area[j] - inter),
            };
            if o <= threshold {
                order[w] = j;
                w += 1;
            }
        }
        order.truncate(w);
        start += 1;
    }
    keep
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nms_union_keeps_best_of_overlapping_and_distinct_boxes() {
        // Box 0 and 1 overlap heavily (IoU = 81/119 ≈ 0.68), box 2 is far away.
        let boxes = [
            [0.0, 0.0, 9.0, 9.0],
            [1.0, 1.0, 10.0, 10.0],
            [50.0, 50.0, 59.0, 59.0],
        ];
        assert_eq!(
            nms(&boxes, &[0.8, 0.9, 0.7], 0.5, NmsMethod::Union),
            vec![1, 2]
        );
        // With a higher threshold the overlap is tolerated.
        assert_eq!(
            nms(&boxes, &[0.8, 0.9, 0.7], 0.7, NmsMethod::Union),
            vec![1, 0, 2]
        );
        // Exactly at the threshold stays (o <= t).
        let iou = 81.0 / (100.0 + 100.0 - 81.0);
        assert_eq!(
            nms(&boxes, &[0.8, 0.9, 0.7], iou, NmsMethod::Union),
            vec![1, 0, 2]
        );
    }

    #[test]
    fn nms_min_drops_a_box_inside_another() {
        // A small box fully inside a big one: IoU is small, intersection/min-area is 1.
        let boxes = [[0.0, 0.0, 99.0, 99.0], [10.0, 10.0, 19.0, 19.0]];
        let scores = [0.99, 0.98];
        assert_eq!(nms(&boxes, &scores, 0.7, NmsMethod::Union), vec![0, 1]);
        assert_eq!(nms(&boxes, &scores, 0.7, NmsMethod::Min), vec![0]);
    }

    #[test]
    fn nms_ties_keep_the_lower_index_first() {
        let boxes = [
            [0.0, 0.0, 9.0, 9.0],
            [0.0, 0.0, 9.0, 9.0],
            [30.0, 0.0, 39.0, 9.0],
        ];
        assert_eq!(
            nms(&boxes, &[0.5, 0.5, 0.5], 0.5, NmsMethod::Union),
            vec![0, 2]
        );
        assert_eq!(nms(&[], &[], 0.5, NmsMethod::Union), Vec::<usize>::new());
    }

    #[test]
    fn rerec_and_bbreg() {
        let mut b = [10.0, 20.0, 30.0, 60.0]; // w 20, h 40
        rerec(&mut b);
        assert_eq!(b, [0.0, 20.0, 40.0, 60.0]);
        let mut b = [0.0, 0.0, 9.0, 19.0]; // w+1 = 10, h+1 = 20
        bbreg(&mut b, [0.1, -0.1, 0.2, 0.5]);
        assert_eq!(b, [1.0, -2.0, 11.0, 29.0]);
    }

    #[test]
    fn pyramid_matches_the_reference_rule() {
        // 100x60 image, min face 20, factor 0.709: minl = 60*0.6 = 36 -> 25.5 -> 18.1 -> 12.8.
        let s = pyramid_scales(100, 60, 20.0, 0.709);
        assert_eq!(s.len(), 4);
        assert_eq!(s[0], 0.6);
        assert_eq!(s[1], 0.6 * 0.709);
        assert_eq!(s[3], 0.6 * 0.709 * 0.709 * 0.709);
    }
}
