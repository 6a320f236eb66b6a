//! The embed input: the image the embed stage works on, made once by whoever decoded the
//! original (the thumbnail stage) and handed over, so the original is neither downloaded nor
//! decoded twice (`docs/embed.md`, "Decode once").
//!
//! It is the upright photo, area-shrunk (the reference's exact float64 resampling, then
//! rounded to `u8`) so that its longer side is at most the profile's `embed_input.max_side`;
//! detection *and* alignment run on it, and [`EmbedInput::to_source`] maps the results back to
//! the photo's own pixels. Being 8-bit RGB, it can travel losslessly as a PNG derivative
//! between deployments, and the Python reference computes the very same pixels.

use super::resize::{Region, Resizer, View};
use super::EmbedError;
use schemas::FailureReason;

/// An upright RGB8 image prepared for the embed stage, with the size of the photo it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedInput {
    /// `height * width * 3` bytes, interleaved RGB.
    pub pixels: Vec<u8>,
    /// Width of this image.
    pub width: u32,
    /// Height of this image.
    pub height: u32,
    /// Width of the upright original (faces are reported in its pixels).
    pub source_width: u32,
    /// Height of the upright original.
    pub source_height: u32,
}

impl EmbedInput {
    /// Prepare the input from an upright RGB8 photo: area-shrunk to `max_side` when larger
    /// (never enlarged), else a copy. Sizes round as the reference rounds them.
    pub fn from_upright(
        rgb: &[u8],
        width: u32,
        height: u32,
        max_side: Option<u32>,
        resizer: &mut Resizer,
    ) -> Self {
        Self::from_reduced_upright(rgb, (width, height), (width, height), max_side, resizer)
    }

    /// Prepare the input from an upright RGB8 image that is itself a reduced decode
    /// (`width × height`, e.g. a JPEG decoded at 1/2 scale) of a `source_width × source_height`
    /// photo: area-shrunk to the size [`from_upright`](Self::from_upright) would give the full
    /// photo. The decode must not be smaller than that size (see [`jpeg_decode_scale`]).
    pub fn from_reduced_upright(
        rgb: &[u8],
        (width, height): (u32, u32),
        (source_width, source_height): (u32, u32),
        max_side: Option<u32>,
        resizer: &mut Resizer,
    ) -> Self {
        let (sw, sh) = (source_width as usize, source_height as usize);
        let (dw, dh) = match max_side {
            Some(m) if sw.max(sh) > m as usize => shrunk_size(sw, sh, m),
            _ => (sw, sh),
        };
        let (w, h) = (width as usize, height as usize);
        debug_assert!(w >= dw && h >= dh, "reduced decode smaller than the input");
        let pixels = if (w, h) == (dw, dh) {
            rgb.to_vec()
        } else {
            let mut out = Vec::new();
            resizer.area_resize(
                View {
                    data: rgb,
                    width: w,
                    height: h,
                },
                Region { x0: 0, y0: 0, w, h },
                dw,
                dh,
                &mut out,
            );
            // Round half up, as the reference's np.floor(v + 0.5); values stay in 0..=255.
            out.iter()
                .map(|&v| (v + 0.5).floor().clamp(0.0, 255.0) as u8)
                .collect()
        };
        Self {
            pixels,
            width: dw as u32,
            height: dh as u32,
            source_width,
            source_height,
        }
    }

    /// Bytes held (for the in-memory hand-off's budget).
    pub fn byte_len(&self) -> usize {
        self.pixels.len()
    }

    /// Input pixel → source pixel scale factors `(fx, fy)`.
    pub fn scale(&self) -> (f64, f64) {
        (
            f64::from(self.source_width) / f64::from(self.width),
            f64::from(self.source_height) / f64::from(self.height),
        )
    }

    /// Lossless PNG (fast compression) for the derivative object.
    pub fn to_png(&self) -> Result<Vec<u8>, String> {
        use image::ImageEncoder;
        let mut out = Vec::with_capacity(self.pixels.len() / 2);
        image::codecs::png::PngEncoder::new_with_quality(
            &mut out,
            image::codecs::png::CompressionType::Fast,
            image::codecs::png::FilterType::Sub,
        )
        .write_image(
            &self.pixels,
            self.width,
            self.height,
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| format!("PNG encode: {e}"))?;
        Ok(out)
    }

    /// Read a derivative written by [`to_png`](Self::to_png); the source size travels in the
    /// `ThumbnailDone` event. Anything but an RGB8 PNG within `max_pixels` is refused.
    pub fn from_png(
        data: &[u8],
        source_width: u32,
        source_height: u32,
        max_pixels: u64,
    ) -> Result<Self, EmbedError> {
        let bad = |detail: String| EmbedError::Decode {
            reason: FailureReason::CorruptImage,
            detail: format!("embed input derivative: {detail}"),
        };
        let mut reader =
            image::ImageReader::with_format(std::io::Cursor::new(data), image::ImageFormat::Png);
        let mut limits = image::Limits::default();
        limits.max_alloc = Some(max_pixels.saturating_mul(4));
        reader.limits(limits);
        let img = reader.decode().map_err(|e| bad(e.to_string()))?;
        let image::DynamicImage::ImageRgb8(rgb) = img else {
            return Err(bad(format!("{:?} instead of RGB8", img.color())));
        };
        let (width, height) = rgb.dimensions();
        if source_width < width || source_height < height {
            return Err(bad(format!(
                "{width}x{height} is larger than its source {source_width}x{source_height}"
            )));
        }
        Ok(Self {
            pixels: rgb.into_raw(),
            width,
            height,
            source_width,
            source_height,
        })
    }
}

/// `(w, h)` shrunk so the longer side is `max_side`, rounded half up (the reference's
/// `floor(x * s + 0.5)`), at least 1.
pub fn shrunk_size(w: usize, h: usize, max_side: u32) -> (usize, usize) {
    let s = f64::from(max_side) / w.max(h) as f64;
    let dw = ((w as f64 * s + 0.5).floor() as usize).max(1);
    let dh = ((h as f64 * s + 0.5).floor() as usize).max(1);
    (dw, dh)
}

/// The DCT scale (decode at `num/8`: 8, 4, 2 or 1) at which a stored `w × h` JPEG is decoded
/// for an embed input of `max_side`: the smallest decode that is still at least the input's
/// size in both axes, so the input is an area shrink of it, as of the full image. libjpeg's
/// scaled sizes round up (`ceil(w · num / 8)`), here as in Pillow's `draft`, which the
/// reference pipeline uses the same way (`bench/embed/README.md`, §1).
pub fn jpeg_decode_scale(w: usize, h: usize, max_side: Option<u32>) -> u8 {
    let Some(m) = max_side.filter(|&m| w.max(h) > m as usize) else {
        return 8;
    };
    let (dw, dh) = shrunk_size(w, h, m);
    [1u8, 2, 4]
        .into_iter()
        .find(|&num| {
            let scaled = |d: usize| (d * num as usize).div_ceil(8);
            scaled(w) >= dw && scaled(h) >= dh
        })
        .unwrap_or(8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(w: u32, h: u32) -> Vec<u8> {
        (0..h)
            .flat_map(|y| (0..w).flat_map(move |x| [(x * 7 % 256) as u8, (y * 3 % 256) as u8, 9]))
            .collect()
    }

    #[test]
    fn shrinks_only_when_larger_and_keeps_the_source_size() {
        let mut r = Resizer::default();
        let img = gradient(400, 300);
        let small = EmbedInput::from_upright(&img, 400, 300, Some(200), &mut r);
        assert_eq!((small.width, small.height), (200, 150));
        assert_eq!((small.source_width, small.source_height), (400, 300));
        assert_eq!(small.scale(), (2.0, 2.0));
        // The first output pixel averages the 2x2 block: R = mean(0, 7, 0, 7) = 3.5 -> 4.
        assert_eq!(&small.pixels[..3], &[4, 2, 9]);
        let same = EmbedInput::from_upright(&img, 400, 300, Some(400), &mut r);
        assert_eq!(same.pixels, img);
        let none = EmbedInput::from_upright(&img, 400, 300, None, &mut r);
        assert_eq!((none.width, none.height), (400, 300));
    }

    #[test]
    fn decode_scale_is_the_smallest_decode_not_below_the_input() {
        // 12 MP phone photo to 1280: 1/2 gives 2016 (1/4 would give 1008 < 1280).
        assert_eq!(jpeg_decode_scale(4032, 3024, Some(1280)), 4);
        // 20 MP to 1280: 1/4 gives 1368 >= 1280.
        assert_eq!(jpeg_decode_scale(5472, 3648, Some(1280)), 2);
        // Exactly 8x: 1/8 is already the input's size.
        assert_eq!(jpeg_decode_scale(10240, 7680, Some(1280)), 1);
        // Small enough already, or no limit: full size.
        assert_eq!(jpeg_decode_scale(1280, 960, Some(1280)), 8);
        assert_eq!(jpeg_decode_scale(4032, 3024, None), 8);
        // Portrait works the same way.
        assert_eq!(jpeg_decode_scale(3024, 4032, Some(1280)), 4);
    }

    #[test]
    fn a_reduced_decode_gives_the_full_size_input_geometry() {
        let mut r = Resizer::default();
        let img = gradient(200, 150);
        let input =
            EmbedInput::from_reduced_upright(&img, (200, 150), (400, 300), Some(100), &mut r);
        assert_eq!((input.width, input.height), (100, 75));
        assert_eq!((input.source_width, input.source_height), (400, 300));
        assert_eq!(input.scale(), (4.0, 4.0));
        // No shrink needed: the decode is the input.
        let same =
            EmbedInput::from_reduced_upright(&img, (200, 150), (200, 150), Some(400), &mut r);
        assert_eq!(same.pixels, img);
    }

    #[test]
    fn png_round_trip_is_lossless_and_checked() {
        let mut r = Resizer::default();
        let img = gradient(64, 48);
        let input = EmbedInput::from_upright(&img, 64, 48, Some(32), &mut r);
        let png = input.to_png().unwrap();
        let back = EmbedInput::from_png(&png, 64, 48, 1 << 20).unwrap();
        assert_eq!(back, input);
        assert!(EmbedInput::from_png(&png, 16, 16, 1 << 20).is_err());
        assert!(EmbedInput::from_png(b"not a png", 64, 48, 1 << 20).is_err());
    }
}
