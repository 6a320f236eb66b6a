//! Photo bytes → upright RGB8 pixels, the way the reference pipeline gets them (Pillow:
//! decode, `ImageOps.exif_transpose`, `convert("RGB")`; `bench/embed/README.md` §1).
//!
//! The embed stage itself takes pixels; this is for the callers that start from a file (the
//! `bench-embed` tool, the model tests). JPEG goes through libjpeg-turbo with its default
//! settings (ISLOW IDCT, fancy upsampling) — the decoder Pillow uses — so the pixels, and hence
//! the detections, are identical to the reference's; HEIC/HEIF and AVIF go through libheif
//! (`photo::heif`, not in the reference: Pillow cannot read them), other formats (and CMYK
//! JPEGs) through the `image` crate. EXIF orientation 2–8 is applied exactly (flips and
//! transposes only). Pixels in a tagged colour space other than sRGB are converted to sRGB
//! (`photo::colour`), as the reference and the thumbnail stage do.

use super::input::{jpeg_decode_scale, EmbedInput};
use super::resize::Resizer;
use super::EmbedError;
use crate::photo::colour::{ColourProfile, SrgbConverter};
use crate::photo::heif;
use crate::thumbnail::jpeg::{JpegColorspace, JpegDecoder, PixelLayout};
use crate::thumbnail::orient;
use crate::thumbnail::render::{sniff, Format};
use image::ImageDecoder;
use schemas::FailureReason;

/// A decoded, oriented photo: interleaved RGB8, `width × height`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrientedRgb {
    /// `height * width * 3` bytes.
    pub pixels: Vec<u8>,
    /// Width after orientation.
    pub width: u32,
    /// Height after orientation.
    pub height: u32,
}

/// Width and height of the full photo, upright.
type UprightSize = (u32, u32);

/// Progressive-scan limit for JPEG (CPU-exhaustion guard, as in the thumbnailer).
const MAX_JPEG_SCANS: u32 = 500;

/// Decode `data` and apply its EXIF orientation. Refuses images above `max_pixels`.
pub fn decode_oriented_rgb(data: &[u8], max_pixels: u64) -> Result<OrientedRgb, EmbedError> {
    if data.is_empty() {
        return Err(EmbedError::Decode {
            reason: FailureReason::EmptyObject,
            detail: "empty file".into(),
        });
    }
    if data.starts_with(&[0xFF, 0xD8]) {
        if let Some(img) = decode_jpeg(data, max_pixels)? {
            return Ok(img);
        }
    }
    if let Some(format @ (Format::Heic | Format::Avif)) = sniff(data) {
        let img =
            heif::decode(data, format.name(), max_pixels).map_err(|f| EmbedError::Decode {
                reason: f.reason,
                detail: f.detail,
            })?;
        let mut pixels = img.rgb;
        to_srgb(&mut pixels, img.profile.as_ref());
        return Ok(OrientedRgb {
            pixels,
            width: img.width,
            height: img.height,
        });
    }
    decode_other(data, max_pixels)
}

/// Convert decoded pixels in a tagged colour space to sRGB, as the thumbnail stage does (the
/// embed input must be the same pixels whichever stage decodes the photo).
fn to_srgb(rgb: &mut [u8], profile: Option<&ColourProfile>) {
    thread_local! {
        static COLOUR: std::cell::RefCell<SrgbConverter> = Default::default();
    }
    if let Some(profile) = profile {
        COLOUR.with_borrow_mut(|c| c.convert(rgb, profile));
    }
}

/// Decode `data` straight to the embed input of `max_side` (see [`EmbedInput`]): a JPEG is
/// decoded at the smallest DCT scale that is still at least the input's size
/// ([`jpeg_decode_scale`]), so a 12 MP photo is decoded at 1/2 scale rather than in full;
/// other formats are decoded in full. Refuses images above `max_pixels`.
pub fn decode_embed_input(
    data: &[u8],
    max_side: Option<u32>,
    max_pixels: u64,
    resizer: &mut Resizer,
) -> Result<EmbedInput, EmbedError> {
    if data.starts_with(&[0xFF, 0xD8]) {
        if let Some((img, source)) = decode_jpeg_scaled(data, max_side, max_pixels)? {
            return Ok(EmbedInput::from_reduced_upright(
                &img.pixels,
                (img.width, img.height),
                source,
                max_side,
                resizer,
            ));
        }
    }
    let img = decode_oriented_rgb(data, max_pixels)?;
    Ok(EmbedInput::from_upright(
        &img.pixels,
        img.width,
        img.height,
        max_side,
        resizer,
    ))
}

/// libjpeg-turbo path; `None` for CMYK/YCCK data, which it cannot convert to RGB.
fn decode_jpeg(data: &[u8], max_pixels: u64) -> Result<Option<OrientedRgb>, EmbedError> {
    Ok(decode_jpeg_scaled(data, None, max_pixels)?.map(|(img, _)| img))
}

/// [`decode_jpeg`] at the DCT scale for an embed input of `max_side` (full size for `None`);
/// also returns the upright size of the full photo.
fn decode_jpeg_scaled(
    data: &[u8],
    max_side: Option<u32>,
    max_pixels: u64,
) -> Result<Option<(OrientedRgb, UprightSize)>, EmbedError> {
    let corrupt = |e: crate::thumbnail::jpeg::JpegError| EmbedError::Decode {
        reason: FailureReason::CorruptImage,
        detail: format!("JPEG: {e}"),
    };
    let mut dec = JpegDecoder::new(max_pixels, MAX_JPEG_SCANS).map_err(corrupt)?;
    let header = dec.read_header(data).map_err(corrupt)?;
    if matches!(
        header.colorspace,
        JpegColorspace::Cmyk | JpegColorspace::Ycck
    ) {
        return Ok(None);
    }
    if (header.width as u64) * (header.height as u64) > max_pixels {
        return Err(too_many(header.width as u64, header.height as u64));
    }
    let num = jpeg_decode_scale(header.width, header.height, max_side);
    let (pixels, w, h) = dec
        .decode_scaled(data, &header, num, PixelLayout::Rgb)
        .map_err(corrupt)?;
    let markers = orient::scan_jpeg_markers(data);
    let tag = markers.orientation;
    let mut pixels = pixels;
    to_srgb(&mut pixels, markers.icc.map(ColourProfile::Icc).as_ref());
    let (pixels, w, h) = orient::apply(pixels, w, h, 3, tag);
    let source = if orient::swaps_axes(tag) {
        (header.height as u32, header.width as u32)
    } else {
        (header.width as u32, header.height as u32)
    };
    Ok(Some((
        OrientedRgb {
            pixels,
            width: w as u32,
            height: h as u32,
        },
        source,
    )))
}

/// `image` crate path (PNG, WebP, GIF, BMP, TIFF, CMYK JPEG): alpha dropped, grey replicated.
fn decode_other(data: &[u8], max_pixels: u64) -> Result<OrientedRgb, EmbedError> {
    let err = |e: image::ImageError| {
        let reason = match &e {
            image::ImageError::Unsupported(u) => match u.kind() {
                image::error::UnsupportedErrorKind::Format(
                    image::error::ImageFormatHint::Unknown,
                ) => FailureReason::NotAnImage,
                _ => FailureReason::UnsupportedFormat,
            },
            image::ImageError::Limits(_) => FailureReason::TooManyPixels,
            _ => FailureReason::CorruptImage,
        };
        EmbedError::Decode {
            reason,
            detail: e.to_string(),
        }
    };
    let reader = image::ImageReader::new(std::io::Cursor::new(data))
        .with_guessed_format()
        .map_err(|e| EmbedError::Decode {
            reason: FailureReason::CorruptImage,
            detail: e.to_string(),
        })?;
    if reader.format().is_none() {
        return Err(EmbedError::Decode {
            reason: FailureReason::NotAnImage,
            detail: "unrecognised image format".into(),
        });
    }
    let mut decoder = reader.into_decoder().map_err(err)?;
    let (w, h) = decoder.dimensions();
    if u64::from(w) * u64::from(h) > max_pixels {
        return Err(too_many(w.into(), h.into()));
    }
    // An unreadable orientation means "as stored", like Pillow's exif_transpose.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let icc = decoder.icc_profile().ok().flatten();
    let mut img = image::DynamicImage::from_decoder(decoder).map_err(err)?;
    img.apply_orientation(orientation);
    let mut rgb = img.to_rgb8();
    to_srgb(&mut rgb, icc.map(ColourProfile::Icc).as_ref());
    let (width, height) = rgb.dimensions();
    Ok(OrientedRgb {
        pixels: rgb.into_raw(),
        width,
        height,
    })
}

fn too_many(w: u64, h: u64) -> EmbedError {
    EmbedError::Decode {
        reason: FailureReason::TooManyPixels,
        detail: format!("{w}x{h} is above the pixel limit"),
    }
}
