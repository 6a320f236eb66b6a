//! Comparing two encoded images the way the thumbnail checks do: structural similarity of
//! their luma (the benchmark's quality figure, the format tests' "same photo" check) and the
//! mean colour difference (the colour-management tests: SSIM on luma cannot see a hue shift).

/// SSIM (Wang et al. 2004) on luma: 11×11 Gaussian window, σ = 1.5, K1 = 0.01, K2 = 0.03,
/// L = 255, averaged over the window positions that fit inside the image. Sizes that differ
/// by rounding are compared on their common top-left area.
pub fn ssim(ours: &[u8], theirs: &[u8]) -> anyhow::Result<(f64, bool)> {
    let a = image::load_from_memory(ours)?.to_luma8();
    let b = image::load_from_memory(theirs)?.to_luma8();
    let same = a.dimensions() == b.dimensions();
    let (w, h) = (
        a.width().min(b.width()) as usize,
        a.height().min(b.height()) as usize,
    );
    anyhow::ensure!(w >= 11 && h >= 11, "thumbnail smaller than the SSIM window");
    let plane = |img: &image::GrayImage| -> Vec<f64> {
        (0..h)
            .flat_map(|y| (0..w).map(move |x| (x, y)))
            .map(|(x, y)| img.get_pixel(x as u32, y as u32).0[0] as f64)
            .collect()
    };
    let (x, y) = (plane(&a), plane(&b));
    let kernel: Vec<f64> = {
        let k: Vec<f64> = (-5..=5)
            .map(|i: i32| (-(i * i) as f64 / (2.0 * 1.5 * 1.5)).exp())
            .collect();
        let sum: f64 = k.iter().sum();
        k.into_iter().map(|v| v / sum).collect()
    };
    // Separable "valid" Gaussian filter: output is (w-10)×(h-10).
    let blur = |p: &[f64]| -> Vec<f64> {
        let (ow, oh) = (w - 10, h - 10);
        let mut rows = vec![0.0; ow * h];
        for r in 0..h {
            for c in 0..ow {
                rows[r * ow + c] = (0..11).map(|k| kernel[k] * p[r * w + c + k]).sum();
            }
        }
        let mut out = vec![0.0; ow * oh];
        for r in 0..oh {
            for c in 0..ow {
                out[r * ow + c] = (0..11).map(|k| kernel[k] * rows[(r + k) * ow + c]).sum();
            }
        }
        out
    };
    let prod = |p: &[f64], q: &[f64]| p.iter().zip(q).map(|(a, b)| a * b).collect::<Vec<f64>>();
    let (mx, my) = (blur(&x), blur(&y));
    let (sxx, syy, sxy) = (
        blur(&prod(&x, &x)),
        blur(&prod(&y, &y)),
        blur(&prod(&x, &y)),
    );
    let (c1, c2) = ((0.01f64 * 255.0).powi(2), (0.03f64 * 255.0).powi(2));
    let n = mx.len();
    let total: f64 = (0..n)
        .map(|i| {
            let (vx, vy, cxy) = (
                sxx[i] - mx[i] * mx[i],
                syy[i] - my[i] * my[i],
                sxy[i] - mx[i] * my[i],
            );
            ((2.0 * mx[i] * my[i] + c1) * (2.0 * cxy + c2))
                / ((mx[i] * mx[i] + my[i] * my[i] + c1) * (vx + vy + c2))
        })
        .sum();
    Ok((total / n as f64, same))
}

/// Mean absolute difference per RGB channel (0–255) between two encoded images, on their
/// common top-left area: `[r, g, b]`. A colour shift shows here even when luma is equal.
pub fn mean_rgb_difference(a: &[u8], b: &[u8]) -> anyhow::Result<[f64; 3]> {
    let a = image::load_from_memory(a)?.to_rgb8();
    let b = image::load_from_memory(b)?.to_rgb8();
    let (w, h) = (a.width().min(b.width()), a.height().min(b.height()));
    anyhow::ensure!(w > 0 && h > 0, "empty image");
    let mut sum = [0f64; 3];
    for y in 0..h {
        for x in 0..w {
            let (p, q) = (a.get_pixel(x, y).0, b.get_pixel(x, y).0);
            for c in 0..3 {
                sum[c] += (p[c] as f64 - q[c] as f64).abs();
            }
        }
    }
    let n = (w * h) as f64;
    Ok(sum.map(|s| s / n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
        out.into_inner()
    }

    #[test]
    fn identical_images_score_one_and_different_ones_less() {
        let a = jpeg(64, 48, |x, y| [(x * 4) as u8, (y * 5) as u8, 90]);
        let b = jpeg(64, 48, |x, y| [(y * 5) as u8, (x * 4) as u8, 90]);
        assert!((ssim(&a, &a).unwrap().0 - 1.0).abs() < 1e-9);
        assert!(ssim(&a, &b).unwrap().0 < 0.9);
    }

    #[test]
    fn a_colour_shift_shows_in_the_channel_differences() {
        let a = jpeg(32, 32, |_, _| [120, 120, 120]);
        let b = jpeg(32, 32, |_, _| [150, 120, 100]);
        let d = mean_rgb_difference(&a, &b).unwrap();
        assert!(d[0] > 25.0 && d[1] < 3.0 && d[2] > 15.0, "{d:?}");
        assert_eq!(mean_rgb_difference(&a, &a).unwrap(), [0.0; 3]);
    }
}
