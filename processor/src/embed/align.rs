//! Face alignment: least-squares similarity transform from the detector's landmarks to the
//! profile's template, then a bilinear warp of the full-resolution photo into the chip
//! (`bench/embed/README.md` §6).
//!
//! Recognizers are trained on chips where the eyes, nose and mouth sit at fixed positions;
//! the transform puts them there. The closed form of Umeyama's estimate in 2-D needs no SVD
//! and, with sums in landmark order, reproduces the reference (= skimage) to the last bits.
//! The warp is float64 and not rounded (unlike `cv2.warpAffine`), sampling 0 outside the photo.

/// A similarity transform `u = a·x − b·y + tx`, `v = b·x + a·y + ty` (rotation + uniform
/// scale + translation, no reflection), mapping photo pixels to chip pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Similarity {
    /// `scale · cos θ`.
    pub a: f64,
    /// `scale · sin θ`.
    pub b: f64,
    /// Translation in x.
    pub tx: f64,
    /// Translation in y.
    pub ty: f64,
}

impl Similarity {
    /// Least-squares similarity mapping `src[i]` onto `dst[i]` (Umeyama without reflection,
    /// closed form; sums in point order, as `similarity_lstsq` in the reference).
    /// `None` when the source points coincide (no transform is defined).
    pub fn estimate(src: &[[f64; 2]], dst: &[[f64; 2]]) -> Option<Self> {
        let n = src.len();
        if n == 0 || n != dst.len() {
            return None;
        }
        let nf = n as f64;
        let mean = |pts: &[[f64; 2]], k: usize| pts.iter().fold(0.0, |acc, p| acc + p[k]) / nf;
        let (mx, my) = (mean(src, 0), mean(src, 1));
        let (mu, mv) = (mean(dst, 0), mean(dst, 1));
        let (mut sxx, mut sdot, mut scross) = (0.0f64, 0.0f64, 0.0f64);
        for (p, q) in src.iter().zip(dst) {
            let (px, py) = (p[0] - mx, p[1] - my);
            let (qx, qy) = (q[0] - mu, q[1] - mv);
            sxx += px * px + py * py;
            sdot += px * qx + py * qy;
            scross += px * qy - py * qx;
        }
        if sxx == 0.0 || !sxx.is_finite() {
            return None;
        }
        let a = sdot / sxx;
        let b = scross / sxx;
        let t = Similarity {
            a,
            b,
            tx: mu - (a * mx - b * my),
            ty: mv - (b * mx + a * my),
        };
        (t.a.is_finite()
            && t.b.is_finite()
            && t.tx.is_finite()
            && t.ty.is_finite()
            && (a != 0.0 || b != 0.0))
            .then_some(t)
    }

    /// Photo → chip.
    pub fn apply(&self, x: f64, y: f64) -> (f64, f64) {
        (
            self.a * x - self.b * y + self.tx,
            self.b * x + self.a * y + self.ty,
        )
    }
}

/// Warp the interleaved RGB8 photo (`width × height`) into an `out_w × out_h` float64 chip
/// (`[v][u][c]`, written into `chip`): every chip pixel centre is mapped back through the
/// inverse of `t` and sampled bilinearly, neighbours outside the photo counting as 0.
pub fn warp_similarity(
    rgb: &[u8],
    width: usize,
    height: usize,
    t: &Similarity,
    out_w: usize,
    out_h: usize,
    chip: &mut Vec<f64>,
) {
    chip.clear();
    chip.resize(out_w * out_h * 3, 0.0);
    let den = t.a * t.a + t.b * t.b;
    let (w, h) = (width as i64, height as i64);
    let px = |xx: i64, yy: i64, c: usize| -> f64 {
        if xx >= 0 && xx < w && yy >= 0 && yy < h {
            f64::from(rgb[(yy as usize * width + xx as usize) * 3 + c])
        } else {
            0.0
        }
    };
    for v in 0..out_h {
        for u in 0..out_w {
            let du = u as f64 - t.tx;
            let dv = v as f64 - t.ty;
            let xs = (t.a * du + t.b * dv) / den;
            let ys = (-t.b * du + t.a * dv) / den;
            let x0f = xs.floor();
            let y0f = ys.floor();
            let fx = xs - x0f;
            let fy = ys - y0f;
            // Far-outside coordinates saturate; they still read as 0.
            let (x0, y0) = (x0f as i64, y0f as i64);
            let o = (v * out_w + u) * 3;
            for c in 0..3 {
                let top = (1.0 - fx) * px(x0, y0, c) + fx * px(x0.saturating_add(1), y0, c);
                let bot = (1.0 - fx) * px(x0, y0.saturating_add(1), c)
                    + fx * px(x0.saturating_add(1), y0.saturating_add(1), c);
                chip[o + c] = (1.0 - fy) * top + fy * bot;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn umeyama_recovers_an_exact_similarity() {
        // dst = R(30°) * 2 * src + (5, -3)
        let (s, th) = (2.0f64, 30f64.to_radians());
        let (a, b) = (s * th.cos(), s * th.sin());
        let src = [
            [0.0, 0.0],
            [10.0, 0.0],
            [0.0, 10.0],
            [7.0, 3.0],
            [-4.0, 6.0],
        ];
        let dst: Vec<[f64; 2]> = src
            .iter()
            .map(|p| [a * p[0] - b * p[1] + 5.0, b * p[0] + a * p[1] - 3.0])
            .collect();
        let t = Similarity::estimate(&src, &dst).unwrap();
        assert!(
            close(t.a, a) && close(t.b, b) && close(t.tx, 5.0) && close(t.ty, -3.0),
            "{t:?}"
        );
        for (p, q) in src.iter().zip(&dst) {
            let (u, v) = t.apply(p[0], p[1]);
            assert!(close(u, q[0]) && close(v, q[1]));
        }
    }

    #[test]
    fn umeyama_least_squares_and_no_reflection() {
        // A mirrored target cannot be reached by a similarity; for this symmetric set the best
        // fit without reflection is a pure scaling.
        let src = [[-1.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, -2.0]];
        let mirrored: Vec<[f64; 2]> = src.iter().map(|p| [-p[0], p[1]]).collect();
        let t = Similarity::estimate(&src, &mirrored);
        // sdot = Σ(-x² + y²) = -2 + 8 = 6, sxx = 10, scross = Σ(x·y' - y·x') = 0
        // -> a = 0.6, b = 0: never a flip.
        let t = t.unwrap();
        assert!(close(t.a, 0.6) && close(t.b, 0.0));
        // ... and noise-free translation-only data gives the identity plus the shift.
        let moved: Vec<[f64; 2]> = src.iter().map(|p| [p[0] + 1.5, p[1] - 2.0]).collect();
        let t = Similarity::estimate(&src, &moved).unwrap();
        assert!(close(t.a, 1.0) && close(t.b, 0.0) && close(t.tx, 1.5) && close(t.ty, -2.0));
        // Coincident source points: undefined.
        assert!(
            Similarity::estimate(&[[1.0, 1.0], [1.0, 1.0]], &[[0.0, 0.0], [1.0, 1.0]]).is_none()
        );
    }

    #[test]
    fn umeyama_matches_the_reference_bit_for_bit() {
        // Expected values printed by bench/embed/embed_ref.py's similarity_lstsq (float64,
        // `repr`) for these landmarks and the arcface112 template.
        let src = [
            [100.0, 120.0],
            [140.0, 118.0],
            [121.0, 140.0],
            [104.0, 162.0],
            [138.0, 160.0],
        ];
        let tpl = [
            [38.2946, 51.6963],
            [73.5318, 51.5014],
            [56.0252, 71.7366],
            [41.5493, 92.3655],
            [70.7299, 92.2041],
        ];
        let t = Similarity::estimate(&src, &tpl).unwrap();
        assert_eq!(
            t,
            Similarity {
                a: 0.924696975088968,
                b: 0.028238135485510928,
                tx: -51.53895622775799,
                ty: -60.96231565200813
            }
        );
        // Residuals of a least-squares fit with a free translation sum to zero.
        let (mut rx, mut ry) = (0.0, 0.0);
        for (p, q) in src.iter().zip(&tpl) {
            let (u, v) = t.apply(p[0], p[1]);
            rx += u - q[0];
            ry += v - q[1];
        }
        assert!(rx.abs() < 1e-9 && ry.abs() < 1e-9);
    }

    #[test]
    fn warp_identity_copies_and_pads_with_zero() {
        // 2x2 image, channel 0 = 10, 20 / 30, 40.
        let rgb: Vec<u8> = [10u8, 20, 30, 40]
            .iter()
            .flat_map(|&v| [v, 0, 255])
            .collect();
        let id = Similarity {
            a: 1.0,
            b: 0.0,
            tx: 0.0,
            ty: 0.0,
        };
        let mut chip = Vec::new();
        warp_similarity(&rgb, 2, 2, &id, 3, 2, &mut chip);
        let ch0: Vec<f64> = chip.iter().step_by(3).copied().collect();
        assert_eq!(ch0, vec![10.0, 20.0, 0.0, 30.0, 40.0, 0.0]);
        // Half-pixel shift: bilinear mean of neighbours.
        let shift = Similarity {
            a: 1.0,
            b: 0.0,
            tx: -0.5,
            ty: 0.0,
        };
        warp_similarity(&rgb, 2, 2, &shift, 1, 1, &mut chip);
        assert_eq!(chip[0], 15.0);
        assert_eq!(chip[2], 255.0);
    }
}
