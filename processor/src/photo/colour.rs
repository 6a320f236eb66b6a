//! Colour management: pixels decoded from a photo that carries a colour profile (an embedded
//! ICC profile, or a HEIF/AVIF `nclx` description) are converted to sRGB, as sharp does by
//! default. Without it a wide-gamut photo (Display P3 from an iPhone, Adobe RGB from a camera)
//! gets dull, shifted colours in its thumbnail, and the face model sees other pixels than a
//! browser shows.
//!
//! The conversion is littleCMS (the `lcms2` crate, the CMS that libvips and Pillow use) with
//! the perceptual intent and its default 8-bit optimisation, on the decoded pixels before any
//! resize. A profile that is sRGB already (same colorants and tone curve) is left alone, so the
//! common case costs nothing and keeps the pixels bit for bit. A profile that cannot be read,
//! or is not an RGB profile, is ignored with a warning: colour is a hint, the photo still gets
//! its thumbnail.

use lcms2::{
    CIExyY, CIExyYTRIPLE, ColorSpaceSignature, Intent, PixelFormat, Profile, Tag, TagSignature,
    ToneCurve, Transform,
};

/// The colour space a decoder found declared in a photo.
#[derive(Debug, Clone, PartialEq)]
pub enum ColourProfile {
    /// An ICC profile (JPEG APP2, PNG iCCP, WebP ICCP, TIFF, HEIF `colr` of type `prof`/`rICC`).
    Icc(Vec<u8>),
    /// RGB primaries and white point (CIE xy) with the sRGB tone curve or a linear one, from
    /// a HEIF/AVIF `nclx` description.
    Primaries {
        red: (f64, f64),
        green: (f64, f64),
        blue: (f64, f64),
        white: (f64, f64),
        linear: bool,
    },
}

/// What [`SrgbConverter::convert`] did, for the `colour_conversions_total` metric and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Conversion {
    /// Converted from the profile to sRGB.
    Converted,
    /// The profile is sRGB already: pixels left as decoded.
    AlreadySrgb,
    /// The profile could not be used (unreadable, not RGB): pixels left as decoded.
    Ignored,
}

impl Conversion {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Converted => "converted",
            Self::AlreadySrgb => "already_srgb",
            Self::Ignored => "ignored",
        }
    }
}

type RgbTransform = Transform<[u8; 3], [u8; 3]>;

/// What to do with the pixels of photos with one profile.
enum Plan {
    Convert(RgbTransform),
    Keep(Conversion),
}

/// Converts RGB8 pixels to sRGB. Keeps the plan for the last profile seen, since the photos
/// of one phone or camera share a profile and building a transform costs more than applying
/// it to a thumbnail-sized decode. One per worker thread.
pub struct SrgbConverter {
    srgb: Profile,
    last: Option<(ColourProfile, Plan)>,
}

impl Default for SrgbConverter {
    fn default() -> Self {
        Self {
            srgb: Profile::new_srgb(),
            last: None,
        }
    }
}

impl SrgbConverter {
    /// Convert `rgb` (interleaved RGB8) in place from `profile` to sRGB.
    pub fn convert(&mut self, rgb: &mut [u8], profile: &ColourProfile) -> Conversion {
        if !matches!(&self.last, Some((p, _)) if p == profile) {
            self.last = Some((profile.clone(), self.plan(profile)));
        }
        match &self.last {
            Some((_, Plan::Convert(transform))) => {
                let (pixels, rest) = rgb.as_chunks_mut::<3>();
                debug_assert!(rest.is_empty(), "an RGB8 buffer");
                transform.transform_in_place(pixels);
                Conversion::Converted
            }
            Some((_, Plan::Keep(kept))) => *kept,
            None => unreachable!("set above"),
        }
    }

    fn plan(&self, profile: &ColourProfile) -> Plan {
        let p = match load(profile) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "ignoring the photo's colour profile");
                return Plan::Keep(Conversion::Ignored);
            }
        };
        if is_srgb(&p, &self.srgb) {
            return Plan::Keep(Conversion::AlreadySrgb);
        }
        match Transform::new(
            &p,
            PixelFormat::RGB_8,
            &self.srgb,
            PixelFormat::RGB_8,
            Intent::Perceptual,
        ) {
            Ok(t) => Plan::Convert(t),
            Err(e) => {
                tracing::warn!(error = %e, "no transform from the photo's colour profile");
                Plan::Keep(Conversion::Ignored)
            }
        }
    }
}

/// Parse a profile; only RGB input profiles are of use here (a grey or CMYK profile describes
/// data that was already turned into RGB by the decoder, without it).
fn load(profile: &ColourProfile) -> Result<Profile, String> {
    let p = match profile {
        ColourProfile::Icc(bytes) => {
            Profile::new_icc(bytes).map_err(|e| format!("unreadable ICC profile: {e}"))?
        }
        ColourProfile::Primaries {
            red,
            green,
            blue,
            white,
            linear,
        } => {
            let xy = |(x, y): (f64, f64)| CIExyY { x, y, Y: 1.0 };
            let curve = if *linear {
                ToneCurve::new(1.0)
            } else {
                srgb_curve()
            };
            Profile::new_rgb(
                &xy(*white),
                &CIExyYTRIPLE {
                    Red: xy(*red),
                    Green: xy(*green),
                    Blue: xy(*blue),
                },
                &[&curve, &curve, &curve],
            )
            .map_err(|e| format!("nclx primaries give no profile: {e}"))?
        }
    };
    if p.color_space() != ColorSpaceSignature::RgbData {
        return Err(format!("a {:?} profile on RGB pixels", p.color_space()));
    }
    Ok(p)
}

/// The sRGB tone curve (IEC 61966-2-1) as an ICC parametric curve of type 4.
fn srgb_curve() -> ToneCurve {
    ToneCurve::new_parametric(4, &[2.4, 1.0 / 1.055, 0.055 / 1.055, 1.0 / 12.92, 0.04045])
        .expect("valid parametric curve")
}

/// Whether `p` is a matrix/TRC profile with sRGB's colorants and tone curves (what most
/// cameras embed as "sRGB IEC61966-2.1"): converting with it would only add rounding.
fn is_srgb(p: &Profile, srgb: &Profile) -> bool {
    let colorant = |p: &Profile, t| match p.read_tag(t) {
        Tag::CIEXYZ(xyz) => Some((xyz.X, xyz.Y, xyz.Z)),
        _ => None,
    };
    let curve = |p: &Profile, t| match p.read_tag(t) {
        Tag::ToneCurve(c) => Some(c.to_owned()),
        _ => None,
    };
    let colorants_match = [
        TagSignature::RedColorantTag,
        TagSignature::GreenColorantTag,
        TagSignature::BlueColorantTag,
    ]
    .into_iter()
    .all(|t| match (colorant(p, t), colorant(srgb, t)) {
        (Some(a), Some(b)) => {
            (a.0 - b.0).abs() < 0.002 && (a.1 - b.1).abs() < 0.002 && (a.2 - b.2).abs() < 0.002
        }
        _ => false,
    });
    if !colorants_match {
        return false;
    }
    let reference = srgb_curve();
    [
        TagSignature::RedTRCTag,
        TagSignature::GreenTRCTag,
        TagSignature::BlueTRCTag,
    ]
    .into_iter()
    .all(|t| match curve(p, t) {
        Some(c) => (0..=32).all(|i| {
            let v = i as f32 / 32.0;
            (c.eval(v) - reference.eval(v)).abs() < 0.5 / 255.0
        }),
        None => false,
    })
}

/// The ICC profile embedded in a JPEG: the `ICC_PROFILE` APP2 segments, joined in their
/// sequence order. `None` when absent or when the chunks do not add up (a broken profile is
/// no profile, as in libjpeg's `jpeg_read_icc_profile`).
pub fn jpeg_icc_profile(segments: &[(u8, u8, &[u8])]) -> Option<Vec<u8>> {
    let count = segments.first()?.1;
    if count == 0 || segments.len() != count as usize {
        return None;
    }
    let mut ordered: Vec<_> = segments.to_vec();
    ordered.sort_by_key(|s| s.0);
    if ordered
        .iter()
        .enumerate()
        .any(|(i, s)| s.0 as usize != i + 1 || s.1 != count)
    {
        return None;
    }
    Some(ordered.iter().flat_map(|s| s.2.iter().copied()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Display P3: DCI-P3 primaries, D65 white, the sRGB tone curve.
    fn display_p3() -> ColourProfile {
        ColourProfile::Primaries {
            red: (0.680, 0.320),
            green: (0.265, 0.690),
            blue: (0.150, 0.060),
            white: (0.3127, 0.3290),
            linear: false,
        }
    }

    #[test]
    fn p3_red_is_more_saturated_than_srgb_can_show_so_it_clips_to_srgb_red() {
        let mut c = SrgbConverter::default();
        let mut px = vec![255, 0, 0, 128, 128, 128];
        assert_eq!(c.convert(&mut px, &display_p3()), Conversion::Converted);
        // Pure P3 red lies outside sRGB: red stays full, green and blue go to 0 (clipped).
        assert_eq!(&px[..3], &[255, 0, 0]);
        // Neutral grey stays neutral (same white point and tone curve).
        assert!(px[3..].iter().all(|&v| (127..=129).contains(&v)), "{px:?}");
    }

    #[test]
    fn a_muted_p3_colour_becomes_a_more_saturated_srgb_colour() {
        let mut c = SrgbConverter::default();
        let mut px = vec![200, 100, 80];
        c.convert(&mut px, &display_p3());
        // The same numbers mean a wider colour in P3: in sRGB red rises, green and blue fall.
        assert!(px[0] > 200 && px[1] < 100 && px[2] < 80, "{px:?}");
    }

    #[test]
    fn an_srgb_profile_leaves_pixels_bit_for_bit() {
        let mut c = SrgbConverter::default();
        let icc = Profile::new_srgb().icc().unwrap();
        let mut px: Vec<u8> = (0..=255).flat_map(|v| [v, 255 - v, v / 2]).collect();
        let before = px.clone();
        assert_eq!(
            c.convert(&mut px, &ColourProfile::Icc(icc)),
            Conversion::AlreadySrgb
        );
        assert_eq!(px, before);
    }

    #[test]
    fn garbage_and_non_rgb_profiles_are_ignored_not_fatal() {
        let mut c = SrgbConverter::default();
        let mut px = vec![10, 20, 30];
        assert_eq!(
            c.convert(&mut px, &ColourProfile::Icc(b"not a profile".to_vec())),
            Conversion::Ignored
        );
        let grey = Profile::new_gray(&CIExyY::default(), &ToneCurve::new(2.2))
            .unwrap()
            .icc()
            .unwrap();
        assert_eq!(
            c.convert(&mut px, &ColourProfile::Icc(grey)),
            Conversion::Ignored
        );
        assert_eq!(px, vec![10, 20, 30]);
    }

    #[test]
    fn icc_chunks_join_in_sequence_order_and_broken_sets_are_refused() {
        let a: &[u8] = b"abc";
        let b: &[u8] = b"def";
        assert_eq!(
            jpeg_icc_profile(&[(2, 2, b), (1, 2, a)]).as_deref(),
            Some(&b"abcdef"[..])
        );
        assert_eq!(jpeg_icc_profile(&[(1, 2, a)]), None);
        assert_eq!(jpeg_icc_profile(&[(1, 2, a), (1, 2, b)]), None);
        assert_eq!(jpeg_icc_profile(&[]), None);
    }
}
