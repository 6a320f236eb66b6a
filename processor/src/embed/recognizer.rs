//! The recognition model: aligned chip → embedding (`bench/embed/README.md` §7).
//!
//! Both shipped recognizers (arcface112's `fr_feature.onnx`, dlib128's converted ResNet) take
//! one float32 chip normalised per channel as the profile says; what differs between them is
//! data (chip size, mean/std, layout, colour order, L2 or not), so one type serves both. Faces
//! are run one at a time, like the reference: `fr_feature.onnx` has a fixed batch of 1, and
//! batch 1 keeps our outputs identical to the reference's for the dynamic-batch dlib model too.

use super::profile::RecognizerConfig;
use super::runtime::Model;
use super::EmbedError;
use ort::environment::Environment;
use std::path::Path;

/// A loaded recognizer with its input convention and a reusable input buffer.
pub struct Recognizer {
    model: Model,
    output: String,
    width: usize,
    height: usize,
    nchw: bool,
    bgr: bool,
    mean: [f64; 3],
    std: [f64; 3],
    dim: usize,
    l2: bool,
    input: Vec<f32>,
}

impl Recognizer {
    /// Open `cfg.model` (relative to `model_dir`) and check that the profile's tensor names
    /// exist, so a profile/model mismatch fails at start-up.
    pub fn load(
        cfg: &RecognizerConfig,
        model_dir: &Path,
        env: &Environment,
        intra_threads: usize,
    ) -> Result<Self, EmbedError> {
        let path = model_dir.join(&cfg.model);
        let mut model = Model::open(env, &path, "recognizer", intra_threads)?;
        let inputs: Vec<String> = model
            .session
            .inputs()
            .iter()
            .map(|i| i.name().to_string())
            .collect();
        if !inputs.contains(&cfg.input_name) {
            return Err(EmbedError::ModelLoad {
                path,
                reason: format!(
                    "profile input_name {:?} is not a model input (inputs: {inputs:?})",
                    cfg.input_name
                ),
            });
        }
        model.input = cfg.input_name.clone();
        let outputs = model.output_names();
        if !outputs.contains(&cfg.output_name) {
            return Err(EmbedError::ModelLoad {
                path,
                reason: format!(
                    "profile output_name {:?} is not a model output (outputs: {outputs:?})",
                    cfg.output_name
                ),
            });
        }
        Ok(Self {
            model,
            output: cfg.output_name.clone(),
            width: cfg.input_size[0] as usize,
            height: cfg.input_size[1] as usize,
            nchw: cfg.layout == "NCHW",
            bgr: cfg.color == "BGR",
            mean: cfg.mean,
            std: cfg.std,
            dim: cfg.output_dim,
            l2: cfg.l2_normalize,
            input: Vec::new(),
        })
    }

    /// Chip size `(width, height)` the recognizer expects.
    pub fn chip_size(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    /// Embed one float64 RGB chip (`[y][x][c]`, `chip_size()`): `f32((chip - mean) / std)` in
    /// the profile's channel order and layout, batch 1, then L2-normalised in float64 if the
    /// profile says so.
    pub fn embed(&mut self, chip: &[f64]) -> Result<Vec<f32>, EmbedError> {
        let (w, h) = (self.width, self.height);
        debug_assert_eq!(chip.len(), w * h * 3);
        self.input.clear();
        self.input.resize(w * h * 3, 0.0);
        for y in 0..h {
            for x in 0..w {
                let p = &chip[(y * w + x) * 3..(y * w + x) * 3 + 3];
                for c in 0..3 {
                    let v = if self.bgr { p[2 - c] } else { p[c] };
                    let d = if self.nchw {
                        c * h * w + y * w + x
                    } else {
                        (y * w + x) * 3 + c
                    };
                    self.input[d] = ((v - self.mean[c]) / self.std[c]) as f32;
                }
            }
        }
        let shape = if self.nchw {
            [1, 3, h, w]
        } else {
            [1, h, w, 3]
        };
        let output = self.output.clone();
        let outs = self.model.run(&shape, &self.input, &[output.as_str()])?;
        let out = &outs[0];
        if out.data.len() != self.dim {
            return Err(EmbedError::Inference {
                model: "recognizer",
                reason: format!("output shape {:?}, expected {} values", out.shape, self.dim),
            });
        }
        if !self.l2 {
            return Ok(out.data.clone());
        }
        Ok(l2_normalize(&out.data))
    }
}

/// `v / sqrt(Σ v²)` in float64, rounded to float32 — with numpy's pairwise summation so the
/// result matches `np.sum` in the reference to the last bit.
pub fn l2_normalize(v: &[f32]) -> Vec<f32> {
    let v64: Vec<f64> = v.iter().map(|&x| f64::from(x)).collect();
    let sq: Vec<f64> = v64.iter().map(|x| x * x).collect();
    let norm = (0.0 + pairwise_sum(&sq)).sqrt();
    v64.iter().map(|x| (x / norm) as f32).collect()
}

/// numpy's pairwise summation of a contiguous float64 array (`pairwise_sum_DOUBLE`): blocks of
/// up to 128 summed with 8 interleaved accumulators, larger arrays split in halves (rounded
/// down to a multiple of 8).
pub fn pairwise_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        let mut res = -0.0;
        for &x in a {
            res += x;
        }
        res
    } else if n <= 128 {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i < n - (n % 8) {
            for j in 0..8 {
                r[j] += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        while i < n {
            res += a[i];
            i += 1;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum(&a[..n2]) + pairwise_sum(&a[n2..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairwise_sum_matches_numpy_bits() {
        // np.sum(a*a) for a[i] = ((i*37) % 101) / 7 - 5, printed with repr.
        let a: Vec<f64> = (0..512)
            .map(|i| ((i * 37) % 101) as f64 / 7.0 - 5.0)
            .collect();
        let sq: Vec<f64> = a.iter().map(|x| x * x).collect();
        assert_eq!(0.0 + pairwise_sum(&sq), 11204.489795918369);
        assert_eq!(0.0 + pairwise_sum(&sq[..100]), 2198.65306122449);
        // (A plain left-to-right sum gives 11204.489795918365.)
        assert_eq!(sq.iter().fold(0.0, |s, x| s + x), 11204.489795918365);
    }

    #[test]
    fn l2_normalize_gives_unit_length() {
        let e = l2_normalize(&[3.0, 4.0]);
        assert_eq!(e, vec![0.6, 0.8]);
    }
}
