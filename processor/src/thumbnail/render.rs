//! Turning the bytes of an original photo into thumbnail JPEG bytes: sniff, decode (with
//! DCT-domain shrink-on-load for JPEG; HEIC/AVIF through `photo::heif`), convert a tagged
//! colour space to sRGB (`photo::colour`), resize with Lanczos3, apply EXIF orientation, encode.
//!
//! Pure CPU work with no I/O, so the stage runs it on blocking threads and the benchmark calls
//! it directly. Every failure maps to a stable [`FailureReason`].

use super::jpeg::{JpegColorspace, JpegDecoder, JpegEncoder, PixelLayout};
use super::orient;
use crate::embed::input::jpeg_decode_scale;
use crate::embed::resize::Resizer as AreaResizer;
use crate::embed::EmbedInput;
use crate::photo::colour::{ColourProfile, SrgbConverter};
use crate::photo::{flatten_on_white, heif};
use fast_image_resize as fr;
use schemas::{Failure, FailureReason, SourceImage};
use std::io::Cursor;
use std::time::{Duration, Instant};

/// Thumbnail geometry, quality and safety limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RenderOptions {
    /// Box the thumbnail must fit inside; aspect kept, never upscaled.
    pub max_width: u32,
    pub max_height: u32,
    /// JPEG quality, 1–100.
    pub quality: u8,
    /// Refuse images with more pixels than this before allocating anything for them.
    pub max_pixels: u64,
}

impl Default for RenderOptions {
    fn default() -> Self {
        Self {
            max_width: 400,
            max_height: 400,
            quality: 80,
            max_pixels: 100_000_000,
        }
    }
}

/// Most scans a progressive JPEG may have (libjpeg's own scripts use ~10; thousands is an attack).
const MAX_JPEG_SCANS: u32 = 200;

/// A rendered thumbnail and what we learned on the way.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub jpeg: Vec<u8>,
    pub width: u32,
    pub height: u32,
    pub source: SourceImage,
    pub decode: Duration,
    pub resize: Duration,
    pub encode: Duration,
}

/// Container formats we can recognise from their first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Jpeg,
    Png,
    Webp,
    Gif,
    Bmp,
    Tiff,
    Heic,
    Avif,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Self::Jpeg => "jpeg",
            Self::Png => "png",
            Self::Webp => "webp",
            Self::Gif => "gif",
            Self::Bmp => "bmp",
            Self::Tiff => "tiff",
            Self::Heic => "heic",
            Self::Avif => "avif",
        }
    }
}

/// Recognise the format from magic bytes; the object key's extension and content type are
/// never trusted.
pub fn sniff(data: &[u8]) -> Option<Format> {
    if data.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Some(Format::Jpeg);
    }
    if data.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Some(Format::Png);
    }
    if data.len() >= 12 && &data[0..4] == b"RIFF" && &data[8..12] == b"WEBP" {
        return Some(Format::Webp);
    }
    if data.starts_with(b"GIF87a") || data.starts_with(b"GIF89a") {
        return Some(Format::Gif);
    }
    if data.starts_with(b"BM") && data.len() > 26 {
        return Some(Format::Bmp);
    }
    if data.starts_with(b"II*\0") || data.starts_with(b"MM\0*") {
        return Some(Format::Tiff);
    }
    if data.len() >= 12 && &data[4..8] == b"ftyp" {
        let box_len = (u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize)
            .clamp(12, data.len());
        let brands: Vec<&[u8]> = std::iter::once(&data[8..12])
            .chain(data[16.min(box_len)..box_len].chunks_exact(4))
            .collect();
        if brands.iter().any(|b| matches!(*b, b"avif" | b"avis")) {
            return Some(Format::Avif);
        }
        if brands.iter().any(|b| {
            matches!(
                *b,
                b"heic" | b"heix" | b"hevc" | b"hevx" | b"heim" | b"heis" | b"mif1" | b"msf1"
            )
        }) {
            return Some(Format::Heic);
        }
    }
    None
}

/// Width and height as the file's header declares them, read without a decoder, so that the
/// pixel limit is enforced before any decoder allocates (or reads further than the header).
pub fn declared_dimensions(format: Format, data: &[u8]) -> Option<(u32, u32)> {
    let be32 = |i: usize| {
        data.get(i..i + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let le16 = |i: usize| {
        data.get(i..i + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as u32)
    };
    let le24 = |i: usize| {
        data.get(i..i + 3)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], 0]))
    };
    match format {
        Format::Png if data.get(12..16) == Some(b"IHDR") => Some((be32(16)?, be32(20)?)),
        Format::Gif => Some((le16(6)?, le16(8)?)),
        Format::Webp => match data.get(12..16)? {
            b"VP8X" => Some((le24(24)? + 1, le24(27)? + 1)),
            b"VP8L" => {
                let bits = data
                    .get(21..25)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))?;
                Some(((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1))
            }
            b"VP8 " => Some((le16(26)? & 0x3FFF, le16(28)? & 0x3FFF)),
            _ => None,
        },
        _ => None,
    }
}

fn fail(reason: FailureReason, detail: impl Into<String>) -> Failure {
    Failure {
        reason,
        detail: detail.into(),
    }
}

/// Renders thumbnails, reusing decoder, encoder and resizer state between photos.
/// Not `Sync`: keep one per worker thread.
pub struct Renderer {
    opts: RenderOptions,
    jpeg_decoder: JpegDecoder,
    jpeg_encoder: JpegEncoder,
    resizer: fr::Resizer,
    /// The embed input's exact area resampler.
    area: AreaResizer,
    /// Tagged colour spaces → sRGB.
    colour: SrgbConverter,
}

impl Renderer {
    pub fn new(opts: RenderOptions) -> Result<Self, Failure> {
        let internal = |e: super::jpeg::JpegError| fail(FailureReason::Internal, e.0);
        Ok(Self {
            opts,
            jpeg_decoder: JpegDecoder::new(opts.max_pixels, MAX_JPEG_SCANS).map_err(internal)?,
            jpeg_encoder: JpegEncoder::new(opts.quality).map_err(internal)?,
            resizer: fr::Resizer::new(),
            area: AreaResizer::default(),
            colour: SrgbConverter::default(),
        })
    }

    pub fn options(&self) -> RenderOptions {
        self.opts
    }

    /// Render one photo.
    pub fn render(&mut self, data: &[u8]) -> Result<Rendered, Failure> {
        self.render_inner(data, None).map(|(rendered, _)| rendered)
    }

    /// Render one photo *and* make the embed stage's input from the same decode (see
    /// `embed::input`): JPEGs are then decoded at full size (no DCT shrink: the embed input
    /// must be the reference's pixels), oriented, area-shrunk to `embed_max_side`, and the
    /// thumbnail is resized from that input when it is large enough (else from the photo).
    pub fn render_with_embed_input(
        &mut self,
        data: &[u8],
        embed_max_side: Option<u32>,
    ) -> Result<(Rendered, EmbedInput), Failure> {
        let (rendered, input) = self.render_inner(data, Some(embed_max_side))?;
        Ok((rendered, input.expect("embed input requested")))
    }

    fn render_inner(
        &mut self,
        data: &[u8],
        embed: Option<Option<u32>>,
    ) -> Result<(Rendered, Option<EmbedInput>), Failure> {
        if data.is_empty() {
            return Err(fail(
                FailureReason::EmptyObject,
                "the object has zero bytes",
            ));
        }
        let format = sniff(data).ok_or_else(|| {
            fail(
                FailureReason::NotAnImage,
                "not a JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC or AVIF file",
            )
        })?;
        let start = Instant::now();
        let Decoded {
            mut rgb,
            width,
            height,
            target,
            source,
            profile,
        } = match format {
            Format::Jpeg => self.decode_jpeg(data, embed)?,
            Format::Heic | Format::Avif => self.decode_heif(data, format)?,
            other => self.decode_other(data, other)?,
        };
        if let Some(profile) = &profile {
            let done = self.colour.convert(&mut rgb, profile);
            metrics::counter!("colour_conversions_total", "result" => done.label()).increment(1);
        }
        let decode = start.elapsed();

        let start = Instant::now();
        let (rgb, w, h, input) = match embed {
            None => {
                let (rgb, w, h) = if (width, height) == target {
                    (rgb, width, height)
                } else {
                    (self.resize(rgb, width, height, target)?, target.0, target.1)
                };
                let (rgb, w, h) = orient::apply(rgb, w, h, 3, source.orientation);
                (rgb, w, h, None)
            }
            Some(max_side) => {
                let (up, uw, uh) = orient::apply(rgb, width, height, 3, source.orientation);
                let full = if orient::swaps_axes(source.orientation) {
                    (source.height, source.width)
                } else {
                    (source.width, source.height)
                };
                let input = EmbedInput::from_reduced_upright(
                    &up,
                    (uw as u32, uh as u32),
                    full,
                    max_side,
                    &mut self.area,
                );
                let target = if orient::swaps_axes(source.orientation) {
                    (target.1, target.0)
                } else {
                    target
                };
                let (iw, ih) = (input.width as usize, input.height as usize);
                let rgb = if (iw, ih) != (uw, uh) && iw >= target.0 && ih >= target.1 {
                    self.resize_or_keep(input.pixels.clone(), iw, ih, target)?
                } else {
                    self.resize_or_keep(up, uw, uh, target)?
                };
                (rgb, target.0, target.1, Some(input))
            }
        };
        let resize = start.elapsed();

        let start = Instant::now();
        let jpeg = self
            .jpeg_encoder
            .encode_rgb(&rgb, w, h)
            .map_err(|e| fail(FailureReason::Internal, format!("JPEG encode failed: {e}")))?;
        let rendered = Rendered {
            jpeg,
            width: w as u32,
            height: h as u32,
            source,
            decode,
            resize,
            encode: start.elapsed(),
        };
        Ok((rendered, input))
    }

    fn resize_or_keep(
        &mut self,
        rgb: Vec<u8>,
        w: usize,
        h: usize,
        target: (usize, usize),
    ) -> Result<Vec<u8>, Failure> {
        if (w, h) == target {
            Ok(rgb)
        } else {
            self.resize(rgb, w, h, target)
        }
    }

    /// Final size in stored (pre-orientation) axes for a stored image of `w`×`h`.
    fn stored_target(&self, w: usize, h: usize, orientation: u8) -> (usize, usize) {
        let swap = orient::swaps_axes(orientation);
        let (ow, oh) = if swap { (h, w) } else { (w, h) };
        let scale = (self.opts.max_width as f64 / ow as f64)
            .min(self.opts.max_height as f64 / oh as f64)
            .min(1.0);
        let tw = ((ow as f64 * scale).round() as usize).max(1);
        let th = ((oh as f64 * scale).round() as usize).max(1);
        if swap {
            (th, tw)
        } else {
            (tw, th)
        }
    }

    fn check_pixels(&self, w: u64, h: u64) -> Result<(), Failure> {
        if w == 0 || h == 0 {
            return Err(fail(
                FailureReason::CorruptImage,
                format!("image declares a {w}x{h} size"),
            ));
        }
        if w.saturating_mul(h) > self.opts.max_pixels {
            return Err(fail(
                FailureReason::TooManyPixels,
                format!(
                    "{w}x{h} is {} pixels, above the limit of {}",
                    w.saturating_mul(h),
                    self.opts.max_pixels
                ),
            ));
        }
        Ok(())
    }

    /// Shrink on load for the thumbnail; with `embed = Some(max_side)` no further than the
    /// embed input of `max_side` allows ([`jpeg_decode_scale`]; CMYK files in full, as the
    /// reference decodes them).
    fn decode_jpeg(&mut self, data: &[u8], embed: Option<Option<u32>>) -> Result<Decoded, Failure> {
        let header = self.jpeg_decoder.read_header(data).map_err(|e| {
            let too_big = e.0.contains("exceeds") || e.0.contains("limit");
            if too_big {
                fail(FailureReason::TooManyPixels, format!("JPEG header: {e}"))
            } else {
                fail(
                    FailureReason::CorruptImage,
                    format!("invalid JPEG header: {e}"),
                )
            }
        })?;
        self.check_pixels(header.width as u64, header.height as u64)?;
        let markers = orient::scan_jpeg_markers(data);
        let target = self.stored_target(header.width, header.height, markers.orientation);
        let cmyk = matches!(
            header.colorspace,
            JpegColorspace::Cmyk | JpegColorspace::Ycck
        );
        let thumb_num = shrink_on_load(header.width, header.height, target);
        let num = match embed {
            None => thumb_num,
            Some(_) if cmyk => 8,
            Some(max_side) => {
                jpeg_decode_scale(header.width, header.height, max_side).max(thumb_num)
            }
        };
        // At 1/8 scale only the DC coefficient of each block matters: a progressive file's DC
        // scans carry all of it, so its AC scans (most of the file) need not be decoded.
        let dc_only = if num == 1 && header.progressive {
            progressive_dc_only(data)
        } else {
            None
        };
        let data = dc_only.as_deref().unwrap_or(data);
        let layout = if cmyk {
            PixelLayout::Cmyk
        } else {
            PixelLayout::Rgb
        };
        let (pixels, w, h) = self
            .jpeg_decoder
            .decode_scaled(data, &header, num, layout)
            .map_err(|e| {
                let detail = if e.0.contains("Premature end") {
                    format!("truncated JPEG: {e}")
                } else {
                    format!("corrupt JPEG: {e}")
                };
                fail(FailureReason::CorruptImage, detail)
            })?;
        let rgb = if cmyk {
            cmyk_to_rgb(&pixels, markers.adobe)
        } else {
            pixels
        };
        let source = SourceImage {
            format: "jpeg".into(),
            width: header.width as u32,
            height: header.height as u32,
            orientation: markers.orientation,
        };
        Ok(Decoded {
            rgb,
            width: w,
            height: h,
            target,
            source,
            // A CMYK file's profile describes the CMYK data, not the RGB made from it.
            profile: markers.icc.filter(|_| !cmyk).map(ColourProfile::Icc),
        })
    }

    fn decode_other(&mut self, data: &[u8], format: Format) -> Result<Decoded, Failure> {
        use image::ImageDecoder;
        if let Some((w, h)) = declared_dimensions(format, data) {
            self.check_pixels(w as u64, h as u64)?;
        }
        let image_format = match format {
            Format::Png => image::ImageFormat::Png,
            Format::Webp => image::ImageFormat::WebP,
            Format::Gif => image::ImageFormat::Gif,
            Format::Bmp => image::ImageFormat::Bmp,
            _ => image::ImageFormat::Tiff,
        };
        let mut reader = image::ImageReader::with_format(Cursor::new(data), image_format);
        let mut limits = image::Limits::default();
        // 16-bit RGBA is 8 bytes a pixel; decoders account their own buffers against this.
        limits.max_alloc = Some(self.opts.max_pixels.saturating_mul(8).max(64 << 20));
        reader.limits(limits);
        let mut decoder = reader.into_decoder().map_err(|e| image_error(format, e))?;
        let (w, h) = decoder.dimensions();
        self.check_pixels(w as u64, h as u64)?;
        let orientation = decoder.orientation().map(|o| o.to_exif()).unwrap_or(1);
        let icc = decoder.icc_profile().ok().flatten();
        let img = image::DynamicImage::from_decoder(decoder).map_err(|e| image_error(format, e))?;
        let rgb = if img.color().has_alpha() {
            let rgba = img.to_rgba8();
            let (w, h) = rgba.dimensions();
            let mut rgb = Vec::with_capacity((w * h * 3) as usize);
            flatten_on_white(rgba.as_raw(), &mut rgb);
            image::RgbImage::from_raw(w, h, rgb).expect("buffer sized for the image")
        } else {
            img.to_rgb8()
        };
        let target = self.stored_target(w as usize, h as usize, orientation);
        let source = SourceImage {
            format: format.name().into(),
            width: w,
            height: h,
            orientation,
        };
        Ok(Decoded {
            rgb: rgb.into_raw(),
            width: w as usize,
            height: h as usize,
            target,
            source,
            profile: icc.map(ColourProfile::Icc),
        })
    }

    /// HEIC/HEIF and AVIF ([`heif::decode`]): decoded in full (HEVC and AV1 have no
    /// shrink-on-load), upright, so the orientation left to apply is 1.
    fn decode_heif(&mut self, data: &[u8], format: Format) -> Result<Decoded, Failure> {
        let img = heif::decode(data, format.name(), self.opts.max_pixels)?;
        let (w, h) = (img.width as usize, img.height as usize);
        Ok(Decoded {
            rgb: img.rgb,
            width: w,
            height: h,
            target: self.stored_target(w, h, 1),
            source: SourceImage {
                format: format.name().into(),
                width: img.width,
                height: img.height,
                orientation: 1,
            },
            profile: img.profile,
        })
    }

    fn resize(
        &mut self,
        rgb: Vec<u8>,
        w: usize,
        h: usize,
        target: (usize, usize),
    ) -> Result<Vec<u8>, Failure> {
        let internal =
            |e: &dyn std::fmt::Display| fail(FailureReason::Internal, format!("resize: {e}"));
        let src = fr::images::Image::from_vec_u8(w as u32, h as u32, rgb, fr::PixelType::U8x3)
            .map_err(|e| internal(&e))?;
        let mut dst = fr::images::Image::new(target.0 as u32, target.1 as u32, fr::PixelType::U8x3);
        let opts = fr::ResizeOptions::new()
            .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Lanczos3));
        self.resizer
            .resize(&src, &mut dst, &opts)
            .map_err(|e| internal(&e))?;
        Ok(dst.into_vec())
    }
}

/// DCT-domain shrink-on-load factor (decode at `num/8`), chosen as sharp/libvips choose it so
/// that thumbnails match the old Lambda's: the largest power of two not above the shrink
/// needed, halved when the shrink is exactly that power (libjpeg rounding), so the final
/// Lanczos3 step always has something left to do.
pub fn shrink_on_load(width: usize, height: usize, target: (usize, usize)) -> u8 {
    let shrink = (width as f64 / target.0 as f64).min(height as f64 / target.1 as f64);
    let mut factor = [8usize, 4, 2]
        .into_iter()
        .find(|&f| shrink >= f as f64)
        .unwrap_or(1);
    if factor > 1 && shrink as usize == factor {
        factor /= 2;
    }
    (8 / factor) as u8
}

/// A copy of a progressive JPEG with only its DC scans (first and refinement passes), or
/// `None` if the segments do not parse as expected (the caller then decodes the whole file).
pub fn progressive_dc_only(data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() / 4);
    out.extend_from_slice(data.get(..2)?);
    let mut pos = 2;
    loop {
        if *data.get(pos)? != 0xFF {
            return None;
        }
        let marker = *data.get(pos + 1)?;
        match marker {
            0xFF => {
                pos += 1;
                continue;
            }
            0xD9 => break,
            0xD0..=0xD7 | 0x01 => {
                pos += 2;
                continue;
            }
            _ => {}
        }
        let len = u16::from_be_bytes([*data.get(pos + 2)?, *data.get(pos + 3)?]) as usize;
        let seg_end = pos + 2 + len;
        let segment = data.get(pos..seg_end)?;
        if marker != 0xDA {
            out.extend_from_slice(segment);
            pos = seg_end;
            continue;
        }
        // Start of scan: header, then entropy-coded data up to the next real marker.
        let ns = *segment.get(4)? as usize;
        let (ss, se) = (*segment.get(5 + 2 * ns)?, *segment.get(6 + 2 * ns)?);
        let mut end = seg_end;
        while end + 1 < data.len()
            && !(data[end] == 0xFF && data[end + 1] != 0 && !(0xD0..=0xD7).contains(&data[end + 1]))
        {
            end += 1;
        }
        if end + 1 >= data.len() {
            return None; // truncated: let the decoder report it
        }
        if ss == 0 && se == 0 {
            out.extend_from_slice(&data[pos..end]);
        }
        pos = end;
    }
    out.extend_from_slice(&[0xFF, 0xD9]);
    Some(out)
}

struct Decoded {
    rgb: Vec<u8>,
    width: usize,
    height: usize,
    /// Final thumbnail size in stored axes.
    target: (usize, usize),
    source: SourceImage,
    /// The colour space the file declares, to be converted to sRGB.
    profile: Option<ColourProfile>,
}

fn image_error(format: Format, e: image::ImageError) -> Failure {
    use image::error::{ImageError, LimitErrorKind};
    match e {
        ImageError::Limits(l)
            if matches!(
                l.kind(),
                LimitErrorKind::DimensionError | LimitErrorKind::InsufficientMemory
            ) =>
        {
            fail(
                FailureReason::TooManyPixels,
                format!("{}: {l}", format.name()),
            )
        }
        ImageError::Unsupported(u) => fail(
            FailureReason::UnsupportedFormat,
            format!("{}: {u}", format.name()),
        ),
        ImageError::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => fail(
            FailureReason::CorruptImage,
            format!("truncated {}: {io}", format.name()),
        ),
        other => fail(
            FailureReason::CorruptImage,
            format!("corrupt {}: {other}", format.name()),
        ),
    }
}

/// Naive CMYK→RGB. Adobe (Photoshop) CMYK JPEGs store inverted values, which libjpeg passes
/// through unchanged.
fn cmyk_to_rgb(cmyk: &[u8], adobe_inverted: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(cmyk.len() / 4 * 3);
    for px in cmyk.chunks_exact(4) {
        let (c, m, y, k) = if adobe_inverted {
            (px[0] as u32, px[1] as u32, px[2] as u32, px[3] as u32)
        } else {
            (
                255 - px[0] as u32,
                255 - px[1] as u32,
                255 - px[2] as u32,
                255 - px[3] as u32,
            )
        };
        out.extend_from_slice(&[
            (c * k / 255) as u8,
            (m * k / 255) as u8,
            (y * k / 255) as u8,
        ]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg_of(w: usize, h: usize) -> Vec<u8> {
        let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 251) as u8).collect();
        JpegEncoder::new(90)
            .unwrap()
            .encode_rgb(&rgb, w, h)
            .unwrap()
    }

    fn reason(r: Result<Rendered, Failure>) -> FailureReason {
        r.expect_err("expected a failure").reason
    }

    #[test]
    fn fits_inside_box_and_keeps_aspect() {
        let mut r = Renderer::new(RenderOptions::default()).unwrap();
        let out = r.render(&jpeg_of(1600, 1200)).unwrap();
        assert_eq!((out.width, out.height), (400, 300));
        let out = r.render(&jpeg_of(300, 900)).unwrap();
        assert_eq!((out.width, out.height), (133, 400));
        // never upscales
        let out = r.render(&jpeg_of(120, 80)).unwrap();
        assert_eq!((out.width, out.height), (120, 80));
        assert!(sniff(&out.jpeg) == Some(Format::Jpeg));
    }

    #[test]
    fn bad_input_maps_to_reasons() {
        let mut r = Renderer::new(RenderOptions::default()).unwrap();
        assert_eq!(reason(r.render(b"")), FailureReason::EmptyObject);
        assert_eq!(
            reason(r.render(b"hello, not an image")),
            FailureReason::NotAnImage
        );
        let jpeg = jpeg_of(640, 480);
        assert_eq!(
            reason(r.render(&jpeg[..jpeg.len() / 2])),
            FailureReason::CorruptImage
        );
        // A HEIC brand with no HEIF boxes behind it.
        let mut heic = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic".to_vec();
        heic.extend_from_slice(&[0; 64]);
        assert_eq!(reason(r.render(&heic)), FailureReason::CorruptImage);
    }

    #[test]
    fn pixel_limit_refuses_before_decoding() {
        let mut r = Renderer::new(RenderOptions {
            max_pixels: 1000,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            reason(r.render(&jpeg_of(64, 64))),
            FailureReason::TooManyPixels
        );
        // A PNG header claiming 50,000 x 50,000 pixels with no data behind it.
        let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        png.extend_from_slice(&50_000u32.to_be_bytes());
        png.extend_from_slice(&50_000u32.to_be_bytes());
        png.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            declared_dimensions(Format::Png, &png),
            Some((50_000, 50_000))
        );
        let mut r = Renderer::new(RenderOptions::default()).unwrap();
        assert_eq!(reason(r.render(&png)), FailureReason::TooManyPixels);
        let mut gif = b"GIF89a".to_vec();
        gif.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0]);
        assert_eq!(reason(r.render(&gif)), FailureReason::TooManyPixels);
    }

    #[test]
    fn shrink_follows_sharp() {
        // 12 MP phone photo to 400x300: shrink 10 → 1/8
        assert_eq!(shrink_on_load(4032, 3024, (400, 300)), 1);
        // 1680x1050 to 400x250: shrink 4.2 → 4, halved (libjpeg rounding) → 1/2
        assert_eq!(shrink_on_load(1680, 1050, (400, 250)), 4);
        // 3088 wide to 400: shrink 7.7 → 1/4
        assert_eq!(shrink_on_load(3088, 2056, (400, 266)), 2);
        assert_eq!(shrink_on_load(500, 400, (400, 320)), 8);
    }

    #[test]
    fn progressive_dc_only_decodes_like_the_full_file_at_one_eighth() {
        // A progressive JPEG from libjpeg-turbo itself.
        let (w, h) = (640, 480);
        let rgb: Vec<u8> = (0..w * h * 3)
            .map(|i| ((i / 3) % w * 255 / w) as u8 ^ (i % 7) as u8)
            .collect();
        let mut enc = JpegEncoder::new(85).unwrap();
        enc.set_progressive(true).unwrap();
        let jpeg = enc.encode_rgb(&rgb, w, h).unwrap();
        let dc = progressive_dc_only(&jpeg).expect("parses");
        assert!(
            dc.len() < jpeg.len() / 2,
            "DC scans are a small part: {} of {}",
            dc.len(),
            jpeg.len()
        );
        let mut dec = JpegDecoder::new(1 << 30, 200).unwrap();
        let hdr = dec.read_header(&jpeg).unwrap();
        assert!(hdr.progressive);
        let full = dec.decode_scaled(&jpeg, &hdr, 1, PixelLayout::Rgb).unwrap();
        let hdr2 = dec.read_header(&dc).unwrap();
        let part = dec.decode_scaled(&dc, &hdr2, 1, PixelLayout::Rgb).unwrap();
        assert_eq!((full.1, full.2), (part.1, part.2));
        let mad = full
            .0
            .iter()
            .zip(&part.0)
            .map(|(a, b)| a.abs_diff(*b) as f64)
            .sum::<f64>()
            / full.0.len() as f64;
        let max = full
            .0
            .iter()
            .zip(&part.0)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        // libjpeg smooths blocks whose AC coefficients are unknown, so not bit-identical.
        assert!(mad < 1.0 && max <= 12, "mean abs diff {mad:.3}, max {max}");
    }

    #[test]
    fn transparent_png_is_flattened_on_white() {
        let img = image::RgbaImage::from_pixel(10, 10, image::Rgba([0, 0, 0, 0]));
        let mut png = Vec::new();
        img.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let mut r = Renderer::new(RenderOptions::default()).unwrap();
        let out = r.render(&png).unwrap();
        let back = image::load_from_memory(&out.jpeg).unwrap().to_rgb8();
        assert!(
            back.pixels().all(|p| p.0.iter().all(|&c| c > 245)),
            "expected white"
        );
    }
}
