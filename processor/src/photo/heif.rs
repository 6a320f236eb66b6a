//! HEIC/HEIF (HEVC) and AVIF (AV1) photos through libheif 1.23, built into the binary
//! (`libheif-rs`, feature `embedded-libheif`) with Debian's libde265 and dav1d as its codecs.
//!
//! What an iPhone or an Android phone writes is handled as their own galleries show it: the
//! primary image only (depth maps, thumbnails, auxiliary images are not decoded), grid/tiled
//! images composed, the container's rotation and mirror (`irot`, `imir`) and crop (`clap`)
//! applied by libheif, 8- and 10-bit reduced to 8-bit, alpha flattened on white. The EXIF
//! orientation of a HEIF file is *not* applied: the HEIF transforms are the orientation, and an
//! iPhone's EXIF tag repeats them (applying both would turn a photo twice).
//!
//! The size is checked against `max_pixels` from the container's `ispe` boxes before anything
//! is decoded, and libheif's own security limits stay on (tiles, items, memory), with its
//! image-size limit lowered to `max_pixels`.

use super::colour::ColourProfile;
use libheif_rs::{
    color_profile_types, ColorPrimaries, ColorProfile, ColorSpace, DecodingOptions, HeifContext,
    HeifError, HeifErrorCode, HeifErrorSubCode, ImageHandle, LibHeif, RgbChroma, SecurityLimits,
    TransferCharacteristics,
};
use schemas::{Failure, FailureReason};
use std::sync::OnceLock;

/// A decoded HEIF/AVIF primary image, upright (transforms applied).
#[derive(Debug)]
pub struct HeifPixels {
    /// Interleaved RGB8, `width * height * 3` bytes.
    pub rgb: Vec<u8>,
    pub width: u32,
    pub height: u32,
    /// Bits per sample in the file (8, 10, 12), for the record.
    pub bit_depth: u8,
    /// The declared colour space, when it is not plain sRGB/BT.709.
    pub profile: Option<ColourProfile>,
}

/// libheif's global state (codec registry), set up once per process.
fn libheif() -> &'static LibHeif {
    static LIBHEIF: OnceLock<LibHeif> = OnceLock::new();
    LIBHEIF.get_or_init(LibHeif::new)
}

fn fail(reason: FailureReason, detail: impl Into<String>) -> Failure {
    Failure {
        reason,
        detail: detail.into(),
    }
}

/// Decode the primary image of a HEIF/AVIF file. `format` names it in errors ("heic", "avif").
pub fn decode(data: &[u8], format: &str, max_pixels: u64) -> Result<HeifPixels, Failure> {
    let lib = libheif();
    let mut ctx = HeifContext::new().map_err(|e| heif_failure(format, "context", e))?;
    let mut limits = SecurityLimits::new();
    limits.set_max_image_size_pixels(limits.max_image_size_pixels().min(max_pixels));
    ctx.set_security_limits(&limits)
        .map_err(|e| heif_failure(format, "limits", e))?;
    // Tiles are decoded on the calling thread: the CPU pool's workers are the parallelism.
    ctx.set_max_decoding_threads(0);
    ctx.read_bytes(data)
        .map_err(|e| heif_failure(format, "container", e))?;
    let handle = ctx
        .primary_image_handle()
        .map_err(|e| heif_failure(format, "primary image", e))?;
    let (width, height) = (handle.width(), handle.height());
    if width == 0 || height == 0 {
        return Err(fail(
            FailureReason::CorruptImage,
            format!("{format}: the primary image declares a {width}x{height} size"),
        ));
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > max_pixels {
        return Err(fail(
            FailureReason::TooManyPixels,
            format!("{width}x{height} is {pixels} pixels, above the limit of {max_pixels}"),
        ));
    }
    let alpha = handle.has_alpha_channel();
    let profile = declared_profile(&handle);
    let bit_depth = handle.luma_bits_per_pixel();

    let mut opts = DecodingOptions::new().expect("libheif decoding options");
    opts.set_convert_hdr_to_8bit(true);
    opts.set_num_codec_threads(1);
    let chroma = if alpha {
        RgbChroma::Rgba
    } else {
        RgbChroma::Rgb
    };
    let image = lib
        .decode(&handle, ColorSpace::Rgb(chroma), Some(opts))
        .map_err(|e| heif_failure(format, "decode", e))?;
    let planes = image.planes();
    let plane = planes.interleaved.ok_or_else(|| {
        fail(
            FailureReason::Internal,
            format!("{format}: libheif returned no interleaved plane"),
        )
    })?;
    let (w, h) = (plane.width as usize, plane.height as usize);
    let channels = if alpha { 4 } else { 3 };
    if plane.storage_bits_per_pixel as usize != channels * 8 || plane.stride < w * channels {
        return Err(fail(
            FailureReason::Internal,
            format!(
                "{format}: unexpected plane layout ({} bits a pixel, stride {})",
                plane.storage_bits_per_pixel, plane.stride
            ),
        ));
    }
    let mut rgb = Vec::with_capacity(w * h * 3);
    for row in plane.data.chunks(plane.stride).take(h) {
        let row = &row[..w * channels];
        if alpha {
            super::flatten_on_white(row, &mut rgb);
        } else {
            rgb.extend_from_slice(row);
        }
    }
    if rgb.len() != w * h * 3 {
        return Err(fail(
            FailureReason::CorruptImage,
            format!("{format}: decoded plane is shorter than {w}x{h}"),
        ));
    }
    Ok(HeifPixels {
        rgb,
        width: w as u32,
        height: h as u32,
        bit_depth,
        profile,
    })
}

/// The colour space the file declares: its ICC profile, else its `nclx` primaries when they
/// are not sRGB's (BT.709) and the tone curve is one we can convert from (sRGB/BT.709-like or
/// linear; PQ and HLG HDR are left as decoded).
fn declared_profile(handle: &ImageHandle) -> Option<ColourProfile> {
    if let Some(raw) = handle.color_profile_raw() {
        let t = raw.profile_type();
        if t == color_profile_types::PROF || t == color_profile_types::R_ICC {
            return Some(ColourProfile::Icc(raw.data));
        }
    }
    let nclx = handle.color_profile_nclx()?;
    if matches!(
        nclx.color_primaries(),
        ColorPrimaries::ITU_R_BT_709_5 | ColorPrimaries::Unspecified
    ) {
        return None;
    }
    let linear = match nclx.transfer_characteristics() {
        TransferCharacteristics::Linear => true,
        TransferCharacteristics::ITU_R_BT_2100_0_PQ
        | TransferCharacteristics::ITU_R_BT_2100_0_HLG => return None,
        _ => false,
    };
    let xy = |x: f32, y: f32| (x as f64, y as f64);
    Some(ColourProfile::Primaries {
        red: xy(nclx.color_primary_red_x(), nclx.color_primary_red_y()),
        green: xy(nclx.color_primary_green_x(), nclx.color_primary_green_y()),
        blue: xy(nclx.color_primary_blue_x(), nclx.color_primary_blue_y()),
        white: xy(nclx.color_primary_white_x(), nclx.color_primary_white_y()),
        linear,
    })
}

/// A libheif error as the failure it is for the user: an image in a compression format this
/// build has no decoder for is `unsupported_format` (naming the ones it has), a size over a
/// limit is `too_many_pixels`, anything else about the file is `corrupt_image`.
fn heif_failure(format: &str, step: &str, e: HeifError) -> Failure {
    let detail = format!("{format} {step}: {} ({:?})", e.message, e.sub_code);
    let reason = match (e.code, e.sub_code) {
        (_, HeifErrorSubCode::SecurityLimitExceeded) => FailureReason::TooManyPixels,
        (_, HeifErrorSubCode::NoMatchingDecoderInstalled) => FailureReason::UnsupportedFormat,
        (HeifErrorCode::UnsupportedFeature, HeifErrorSubCode::UnsupportedCodec)
        | (HeifErrorCode::UnsupportedFeature, HeifErrorSubCode::UnsupportedImageType)
        | (HeifErrorCode::UnsupportedFileType, _) => FailureReason::UnsupportedFormat,
        (HeifErrorCode::MemoryAllocationError, _) => FailureReason::TooManyPixels,
        (HeifErrorCode::UsageError, _) | (HeifErrorCode::ContextCreateFailed, _) => {
            FailureReason::Internal
        }
        _ => FailureReason::CorruptImage,
    };
    let detail = if reason == FailureReason::UnsupportedFormat {
        format!(
            "{detail}: the image is in a compression format this build cannot decode \
             (it decodes HEVC and AV1, through libde265 and dav1d)"
        )
    } else {
        detail
    };
    fail(reason, detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn compat(name: &str) -> Vec<u8> {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/corpus/compat")
            .join(name);
        std::fs::read(&p).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (../shared must sit beside the repository)",
                p.display()
            )
        })
    }

    #[test]
    fn the_corpus_heic_and_avif_decode_to_their_declared_size() {
        for (name, format) in [("ladybird.heic", "heic"), ("ladybird.avif", "avif")] {
            let data = compat(name);
            let img =
                decode(&data, format, 100_000_000).unwrap_or_else(|f| panic!("{name}: {f:?}"));
            assert_eq!((img.width, img.height), (2560, 1600), "{name}");
            assert_eq!(img.rgb.len(), 2560 * 1600 * 3);
            // A photo, not a flat fill: the decode produced real content.
            let mean = img.rgb.iter().map(|&v| v as u64).sum::<u64>() / img.rgb.len() as u64;
            let spread = img
                .rgb
                .iter()
                .filter(|&&v| (v as u64).abs_diff(mean) > 40)
                .count();
            assert!(spread > img.rgb.len() / 20, "{name}: too uniform");
        }
    }

    #[test]
    fn a_size_above_the_limit_is_refused_before_decoding() {
        let data = compat("ladybird.heic");
        let f = decode(&data, "heic", 1_000_000).unwrap_err();
        assert_eq!(f.reason, FailureReason::TooManyPixels, "{f:?}");
    }

    /// The committed fuzz seed (a 64×64 HEIC from heif-enc) with its image item retyped to
    /// another codec, its configuration box renamed and emptied.
    fn retyped(item: &[u8; 4], config: &[u8; 4]) -> Vec<u8> {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/heif/tiny.heic");
        let mut data = std::fs::read(path).unwrap();
        let at = |d: &[u8], w: &[u8]| d.windows(4).position(|x| x == w).unwrap();
        let i = at(&data, b"hvc1");
        data[i..i + 4].copy_from_slice(item);
        let c = at(&data, b"hvcC");
        data[c..c + 4].copy_from_slice(config);
        // The configuration's payload becomes one empty child box of the same size.
        let size = u32::from_be_bytes(data[c - 4..c].try_into().unwrap()) as usize;
        let body = &mut data[c + 4..c - 4 + size];
        body.fill(0);
        body[..4].copy_from_slice(&((size - 8) as u32).to_be_bytes());
        body[4..8].copy_from_slice(b"free");
        data
    }

    #[test]
    fn a_codec_this_build_lacks_is_unsupported_format_naming_what_it_decodes() {
        // JPEG 2000 in HEIF: libheif parses it, but no OpenJPEG is built in.
        let f = decode(&retyped(b"j2k1", b"j2kH"), "heic", 100_000_000).unwrap_err();
        assert_eq!(f.reason, FailureReason::UnsupportedFormat, "{f:?}");
        assert!(f.detail.contains("HEVC and AV1"), "{}", f.detail);
        // The untouched seed decodes: the failure above is the codec, not the file.
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/heif/tiny.heic");
        let img = decode(&std::fs::read(path).unwrap(), "heic", 100_000_000).unwrap();
        assert_eq!((img.width, img.height), (64, 64));
    }

    #[test]
    fn truncated_and_garbage_files_are_corrupt_not_a_crash() {
        let data = compat("ladybird.heic");
        for cut in [40, 400, data.len() / 2, data.len() - 10] {
            let f = decode(&data[..cut], "heic", 100_000_000).unwrap_err();
            assert_eq!(f.reason, FailureReason::CorruptImage, "cut at {cut}: {f:?}");
        }
        let mut garbage = data[..64].to_vec();
        garbage.extend(std::iter::repeat_n(0xA5, 5000));
        assert!(decode(&garbage, "heic", 100_000_000).is_err());
    }
}
