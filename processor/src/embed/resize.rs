//! Exact float64 area (box-filter) resampling, as `bench/embed/README.md` §3 specifies.
//!
//! MTCNN makes discrete choices (thresholds, NMS, integer boxes), so a resampling difference
//! of one unit in the last place can move a final box by pixels. This module therefore does
//! the reference's arithmetic in the reference's order — rows first, then columns, each output
//! `Σ w·x` accumulated from 0.0 in increasing source order, no FMA, never rounded — and gets
//! bit-identical detector images, pyramid levels and crops. It is also the hot loop of
//! detection, so it works on flat interleaved buffers that the caller reuses between calls.

/// A sample type the resampler reads: `u8` photo pixels or `f64` intermediate images.
pub trait Sample: Copy {
    /// The value as float64 (exact for both types).
    fn to_f64(self) -> f64;
}

impl Sample for u8 {
    #[inline(always)]
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}

impl Sample for f64 {
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self
    }
}

/// An interleaved RGB float64 image (`[y][x][c]`), the detector's working format.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageF64 {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `height * width * 3` samples.
    pub data: Vec<f64>,
}

/// A borrowed interleaved 3-channel image of any [`Sample`] type.
#[derive(Debug, Clone, Copy)]
pub struct View<'a, S> {
    /// `height * width * 3` samples.
    pub data: &'a [S],
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
}

impl<'a> From<&'a ImageF64> for View<'a, f64> {
    fn from(img: &'a ImageF64) -> Self {
        View {
            data: &img.data,
            width: img.width,
            height: img.height,
        }
    }
}

/// A rectangle of the source in source pixels: `w × h` pixels starting at `(x0, y0)`; may
/// stick out of the source, where it reads as 0 (MTCNN's padded crops).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    /// Left column (may be negative).
    pub x0: i64,
    /// Top row (may be negative).
    pub y0: i64,
    /// Width (0 gives an all-zero output).
    pub w: usize,
    /// Height (0 gives an all-zero output).
    pub h: usize,
}

/// Taps of one axis: destination `d` reads source indices `first[d] ..` with the weights
/// `weights[offsets[d] .. offsets[d + 1]]`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AxisTaps {
    /// First source index per destination index.
    pub first: Vec<usize>,
    /// Start of each destination's weights in `weights` (`dst_len + 1` entries).
    pub offsets: Vec<usize>,
    /// All weights, destination by destination, in increasing source order.
    pub weights: Vec<f64>,
}

impl AxisTaps {
    /// Taps for `src_len → dst_len`: destination `d` covers `[a, b)`, `r = src_len / dst_len`,
    /// `a = d*r`, `b = min((d+1)*r, src_len)`; source `s` in `floor(a) .. ceil(b)` weighs
    /// `(min(s+1, b) - max(s, a)) / (b - a)`. Same expressions as `area_taps` in the reference.
    pub fn new(src_len: usize, dst_len: usize) -> Self {
        let mut t = AxisTaps::default();
        t.fill(src_len, dst_len);
        t
    }

    /// Recompute in place (keeps the allocations).
    pub fn fill(&mut self, src_len: usize, dst_len: usize) {
        self.first.clear();
        self.offsets.clear();
        self.weights.clear();
        self.offsets.push(0);
        if dst_len == 0 {
            return;
        }
        let srcf = src_len as f64;
        let r = srcf / dst_len as f64;
        for d in 0..dst_len {
            let df = d as f64;
            let a = df * r;
            let b = ((df + 1.0) * r).min(srcf);
            let s0 = a.floor();
            let s1 = b.ceil();
            let span = b - a;
            self.first.push(s0.max(0.0) as usize);
            let mut s = s0;
            while s < s1 {
                let overlap = (s + 1.0).min(b) - s.max(a);
                self.weights.push(overlap / span);
                s += 1.0;
            }
            self.offsets.push(self.weights.len());
        }
    }

    /// Number of destination indices.
    pub fn len(&self) -> usize {
        self.first.len()
    }

    /// Whether there are no destination indices.
    pub fn is_empty(&self) -> bool {
        self.first.is_empty()
    }

    /// `(first source index, weights)` of destination `d`.
    #[inline(always)]
    pub fn get(&self, d: usize) -> (usize, &[f64]) {
        (
            self.first[d],
            &self.weights[self.offsets[d]..self.offsets[d + 1]],
        )
    }
}

/// Reusable buffers of [`area_resize`] (taps and the intermediate after the vertical pass), so
/// that the pyramid and the hundreds of crops per photo allocate nothing in steady state.
#[derive(Debug, Default)]
pub struct Resizer {
    taps_y: AxisTaps,
    taps_x: AxisTaps,
    tmp: Vec<f64>,
}

impl Resizer {
    /// Area-resize `region` of `src` to `dst_w × dst_h`, writing `dst_h * dst_w * 3` samples
    /// into `out` (resized, previous content discarded). Rows (vertical pass) first, then
    /// columns, exactly as the reference's `resize_area` applied to `crop_padded(region)`.
    ///
    /// On a CPU with AVX2 the same code runs compiled for it: four float64 lanes instead of
    /// SSE2's two. Each lane still does a separate multiply and add (AVX2 does not bring FMA,
    /// and Rust never contracts), so the results are bit-identical either way.
    pub fn area_resize<S: Sample>(
        &mut self,
        src: View<'_, S>,
        region: Region,
        dst_w: usize,
        dst_h: usize,
        out: &mut Vec<f64>,
    ) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            unsafe { self.area_resize_avx2(src, region, dst_w, dst_h, out) };
            return;
        }
        self.area_resize_portable(src, region, dst_w, dst_h, out);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn area_resize_avx2<S: Sample>(
        &mut self,
        src: View<'_, S>,
        region: Region,
        dst_w: usize,
        dst_h: usize,
        out: &mut Vec<f64>,
    ) {
        self.area_resize_portable(src, region, dst_w, dst_h, out);
    }

    #[inline(always)]
    fn area_resize_portable<S: Sample>(
        &mut self,
        src: View<'_, S>,
        region: Region,
        dst_w: usize,
        dst_h: usize,
        out: &mut Vec<f64>,
    ) {
        debug_assert_eq!(src.data.len(), src.width * src.height * 3);
        self.taps_y.fill(region.h, dst_h);
        self.taps_x.fill(region.w, dst_w);
        let row_len = region.w * 3;

        // Vertical pass: tmp[dy][c] = Σ_s wy * patch[s][c]. Patch samples outside the source
        // are 0, and adding w * 0 = +0 to a non-negative sum changes nothing, so those taps
        // and columns are skipped (the sum stays bit-identical).
        self.tmp.clear();
        self.tmp.resize(dst_h * row_len, 0.0);
        let cx0 = (-region.x0).clamp(0, region.w as i64) as usize;
        let cx1 = (src.width as i64 - region.x0).clamp(cx0 as i64, region.w as i64) as usize;
        if cx1 > cx0 {
            for dy in 0..dst_h {
                let (first, ws) = self.taps_y.get(dy);
                let tmp_row = &mut self.tmp[dy * row_len + cx0 * 3..dy * row_len + cx1 * 3];
                for (k, &w) in ws.iter().enumerate() {
                    let sy = region.y0 + (first + k) as i64;
                    if sy < 0 || sy >= src.height as i64 {
                        continue;
                    }
                    let sx0 = (region.x0 + cx0 as i64) as usize;
                    let start = (sy as usize * src.width + sx0) * 3;
                    let src_row = &src.data[start..start + (cx1 - cx0) * 3];
                    for (t, &v) in tmp_row.iter_mut().zip(src_row) {
                        *t += w * v.to_f64();
                    }
                }
            }
        }

        // Horizontal pass: out[dy][dx][c] = Σ_s wx * tmp[dy][s][c].
        out.clear();
        out.resize(dst_h * dst_w * 3, 0.0);
        for dy in 0..dst_h {
            let tmp_row = &self.tmp[dy * row_len..(dy + 1) * row_len];
            let out_row = &mut out[dy * dst_w * 3..(dy + 1) * dst_w * 3];
            for dx in 0..dst_w {
                let (first, ws) = self.taps_x.get(dx);
                let (mut r, mut g, mut b) = (0.0f64, 0.0f64, 0.0f64);
                for (k, &w) in ws.iter().enumerate() {
                    let p = &tmp_row[(first + k) * 3..(first + k) * 3 + 3];
                    r += w * p[0];
                    g += w * p[1];
                    b += w * p[2];
                }
                out_row[dx * 3] = r;
                out_row[dx * 3 + 1] = g;
                out_row[dx * 3 + 2] = b;
            }
        }
    }

    /// Area-resize the whole of `src` into a new [`ImageF64`].
    pub fn resize_image<S: Sample>(
        &mut self,
        src: View<'_, S>,
        dst_w: usize,
        dst_h: usize,
    ) -> ImageF64 {
        let mut data = Vec::new();
        let region = Region {
            x0: 0,
            y0: 0,
            w: src.width,
            h: src.height,
        };
        self.area_resize(src, region, dst_w, dst_h, &mut data);
        ImageF64 {
            width: dst_w,
            height: dst_h,
            data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taps_sum_to_one_and_cover_the_source() {
        for (s, d) in [(10, 3), (3, 10), (1280, 768), (7, 7), (5, 1), (1, 5)] {
            let t = AxisTaps::new(s, d);
            assert_eq!(t.len(), d);
            for k in 0..d {
                let (first, ws) = t.get(k);
                let sum: f64 = ws.iter().sum();
                assert!((sum - 1.0).abs() < 1e-12, "{s}->{d} at {k}: {sum}");
                assert!(first + ws.len() <= s);
            }
        }
    }

    #[test]
    fn box_filter_halves_and_pads_with_zero() {
        // 4x2 image, single value per pixel replicated to 3 channels.
        let px: Vec<u8> = [0u8, 10, 20, 30, 40, 50, 60, 70]
            .iter()
            .flat_map(|&v| [v, v, v])
            .collect();
        let view = View {
            data: &px[..],
            width: 4,
            height: 2,
        };
        let mut rs = Resizer::default();
        let out = rs.resize_image(view, 2, 1);
        assert_eq!(out.data, vec![25.0, 25.0, 25.0, 45.0, 45.0, 45.0]);
        // Region sticking out on the left by one pixel: patch = [0, 0, 10] / [0, 40, 50].
        let mut buf = Vec::new();
        rs.area_resize(
            view,
            Region {
                x0: -1,
                y0: 0,
                w: 3,
                h: 2,
            },
            1,
            1,
            &mut buf,
        );
        assert!((buf[0] - 100.0 / 6.0).abs() < 1e-12);
        // Enlarging copies (1 tap at exact multiples).
        let out = rs.resize_image(
            View {
                data: &px[..6],
                width: 2,
                height: 1,
            },
            4,
            1,
        );
        assert_eq!(
            out.data.iter().step_by(3).copied().collect::<Vec<_>>(),
            vec![0.0, 0.0, 10.0, 10.0]
        );
    }
}
