//! Phone formats and colour, on real components:
//! - HEIC/HEIF and AVIF files made from a corpus JPEG by `scripts/make-heif-fixtures` (Debian's
//!   heif-enc, plus box-level edits for rotation, mirroring, grids and hostile files) go through
//!   the whole stack (S3 → webhook → Kafka → thumbnail stage → S3); each thumbnail is checked
//!   for size, orientation and SSIM against the thumbnail the stack makes of the JPEG itself,
//!   and each hostile file for its failure reason.
//! - Photos tagged with a wide-gamut ICC profile (Display P3, Adobe RGB) get thumbnails in the
//!   colours sharp gives them (sharp converts to sRGB), measured per channel.

mod common;

use common::*;
use devstack::compare::{mean_rgb_difference, ssim};
use lcms2::{CIExyY, CIExyYTRIPLE, Intent, PixelFormat, Profile, ToneCurve, Transform};
use processor::thumbnail::render::{RenderOptions, Renderer};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(120);
/// Even-sized, so that heif-enc writes a plain image item (an odd size becomes a 1×1 grid).
const SOURCE: &str = "S_greenmeadow_1280x1024.jpg";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One line of the fixtures' MANIFEST.tsv.
struct Fixture {
    file: String,
    valid: bool,
    width: u32,
    height: u32,
}

fn make_fixtures(source: &Path, out: &Path) -> Vec<Fixture> {
    let status = Command::new(repo().join("scripts/make-heif-fixtures"))
        .arg(source)
        .arg(out)
        .status()
        .expect("run scripts/make-heif-fixtures (needs heif-enc: Debian libheif-examples)");
    assert!(status.success(), "make-heif-fixtures failed: {status}");
    std::fs::read_to_string(out.join("MANIFEST.tsv"))
        .expect("MANIFEST.tsv")
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            Fixture {
                file: f[0].to_string(),
                valid: f[1] == "valid",
                width: f[2].parse().unwrap(),
                height: f[3].parse().unwrap(),
            }
        })
        .collect()
}

/// The thumbnail box the stage fits into (400×400), aspect kept.
fn fitted(w: u32, h: u32) -> (u32, u32) {
    let s = (400.0 / w as f64).min(400.0 / h as f64).min(1.0);
    (
        ((w as f64 * s).round() as u32).max(1),
        ((h as f64 * s).round() as u32).max(1),
    )
}

fn encode(img: &image::DynamicImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.to_rgb8()
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heic_and_avif_uploads_become_upright_thumbnails_and_hostile_ones_fail_with_reasons() {
    let dir = tempfile::tempdir().unwrap();
    let source = corpus().join("photos").join(SOURCE);
    let fixtures = make_fixtures(&source, dir.path());
    assert!(fixtures.len() >= 14, "fixtures: {}", fixtures.len());

    let stack = stack().await;
    let key = |name: &str| format!("users/u7/photos/{name}");
    stack
        .upload(&key("source.jpg"), std::fs::read(&source).unwrap())
        .await;
    for f in &fixtures {
        let body = std::fs::read(dir.path().join(&f.file)).unwrap();
        stack.upload(&key(&f.file), body).await;
    }
    // An AVIF cut short, beside the fixtures' hostile HEICs.
    let avif = std::fs::read(dir.path().join("plain.avif")).unwrap();
    stack
        .upload(&key("cut.avif"), avif[..avif.len() * 2 / 3].to_vec())
        .await;
    let done = stack
        .wait_for_photos(&stack.topics.thumbnailed, fixtures.len() + 2, TIMEOUT)
        .await;
    let event = |name: &str| {
        done.iter()
            .find(|e| e["source_key"] == key(name))
            .unwrap_or_else(|| panic!("no event for {name}"))
            .clone()
    };
    let s3 = &stack;
    let thumb = |name: &str| {
        let e = event(name);
        assert_eq!(e["status"], "ok", "{name}: {e}");
        let key = e["thumbnail"]["key"].as_str().unwrap().to_string();
        async move { s3.get_object(&key).await.expect("thumbnail in S3") }
    };
    let reference = image::load_from_memory(&thumb("source.jpg").await).unwrap();

    for f in fixtures.iter().filter(|f| f.valid) {
        let bytes = thumb(&f.file).await;
        let img = image::load_from_memory(&bytes).unwrap();
        assert_eq!(
            (img.width(), img.height()),
            fitted(f.width, f.height),
            "{}",
            f.file
        );
        let e = event(&f.file);
        let format = if f.file.ends_with(".avif") {
            "avif"
        } else {
            "heic"
        };
        assert_eq!(e["source"]["format"], format, "{}: {e}", f.file);
        assert_eq!(e["source"]["orientation"], 1, "{}: {e}", f.file);
        // What the photo must look like: the JPEG's thumbnail, turned as the file prescribes.
        let expected = match f.file.as_str() {
            "rot90.heic" => reference.rotate270(),
            "mirror-lr.heic" | "mirror.heic" => reference.fliph(),
            "mirror-tb.heic" => reference.flipv(),
            _ => reference.clone(),
        };
        if f.file == "alpha.heic" {
            // Transparent at the left edge: flattened on white there, the photo further right.
            let rgb = img.to_rgb8();
            let edge: f64 = (0..rgb.height())
                .map(|y| rgb.get_pixel(0, y).0.iter().map(|&v| v as f64).sum::<f64>() / 3.0)
                .sum::<f64>()
                / rgb.height() as f64;
            assert!(
                edge > 235.0,
                "alpha.heic: left edge mean {edge:.1}, want white"
            );
            let right = |i: &image::DynamicImage| {
                let (w, h) = (i.width(), i.height());
                encode(&i.crop_imm(w * 3 / 4, 0, w / 4, h))
            };
            let d = mean_rgb_difference(&right(&img), &right(&expected)).unwrap();
            assert!(d.iter().all(|&c| c < 4.0), "alpha.heic opaque part: {d:?}");
            continue;
        }
        let (score, same_size) = ssim(&encode(&img), &encode(&expected)).unwrap();
        eprintln!("{}: SSIM {score:.4} against the JPEG's thumbnail", f.file);
        assert!(same_size, "{}: size differs from the JPEG's", f.file);
        assert!(score >= 0.95, "{}: SSIM {score:.4} < 0.95", f.file);
        // Colour too (SSIM is luma only): p3.heic is stored in Display P3 and must come out
        // in the JPEG's sRGB colours.
        let d = mean_rgb_difference(&encode(&img), &encode(&expected)).unwrap();
        assert!(
            d.iter().all(|&c| c < 4.0),
            "{}: colour differs: {d:?}",
            f.file
        );
    }
    let hostile = fixtures
        .iter()
        .filter(|f| !f.valid)
        .map(|f| f.file.as_str())
        .chain(["cut.avif"]);
    for file in hostile {
        let e = event(file);
        assert_eq!(e["status"], "failed", "{file}: {e}");
        let want: &[&str] = match file {
            "huge.heic" => &["too_many_pixels"],
            _ => &["corrupt_image"],
        };
        let reason = e["failure"]["reason"].as_str().unwrap();
        assert!(
            want.contains(&reason),
            "{file}: {reason} ({}), want {want:?}",
            e["failure"]["detail"]
        );
    }
}

/// A profile from primaries and white point (CIE xy) and one tone curve for all channels.
fn rgb_profile(primaries: [(f64, f64); 3], curve: &ToneCurve) -> Profile {
    let xy = |(x, y): (f64, f64)| CIExyY { x, y, Y: 1.0 };
    Profile::new_rgb(
        &xy((0.3127, 0.3290)),
        &CIExyYTRIPLE {
            Red: xy(primaries[0]),
            Green: xy(primaries[1]),
            Blue: xy(primaries[2]),
        },
        &[curve, curve, curve],
    )
    .unwrap()
}

/// `jpeg` with `icc` embedded as one APP2 ICC_PROFILE segment right after SOI.
fn with_icc(jpeg: &[u8], icc: &[u8]) -> Vec<u8> {
    let mut seg = b"ICC_PROFILE\0\x01\x01".to_vec();
    seg.extend_from_slice(icc);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, 0xE2]);
    out.extend_from_slice(&((seg.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(&seg);
    out.extend_from_slice(&jpeg[2..]);
    out
}

#[test]
fn wide_gamut_jpegs_get_the_colours_sharp_gives_them() {
    let srgb_curve =
        ToneCurve::new_parametric(4, &[2.4, 1.0 / 1.055, 0.055 / 1.055, 1.0 / 12.92, 0.04045])
            .unwrap();
    let profiles = [
        (
            "p3",
            rgb_profile(
                [(0.680, 0.320), (0.265, 0.690), (0.150, 0.060)],
                &srgb_curve,
            ),
        ),
        (
            "adobergb",
            rgb_profile(
                [(0.640, 0.330), (0.210, 0.710), (0.150, 0.060)],
                &ToneCurve::new(563.0 / 256.0),
            ),
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut files = vec![];
    for photo in [
        "M_colorfulcups_2560x1600.jpg",
        "S_freshflower_1600x1203.jpg",
    ] {
        let src = image::open(corpus().join("photos").join(photo))
            .unwrap()
            .to_rgb8();
        for (name, profile) in &profiles {
            // The same colours, stored in the wide-gamut space: a colour-managed viewer shows
            // the photo as before; one that ignores the profile shows it washed out.
            let t = Transform::<[u8; 3], [u8; 3]>::new(
                &Profile::new_srgb(),
                PixelFormat::RGB_8,
                profile,
                PixelFormat::RGB_8,
                Intent::Perceptual,
            )
            .unwrap();
            let mut px = src.clone().into_raw();
            t.transform_in_place(px.as_chunks_mut::<3>().0);
            let img = image::RgbImage::from_raw(src.width(), src.height(), px).unwrap();
            let mut jpeg = std::io::Cursor::new(Vec::new());
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
                .encode_image(&img)
                .unwrap();
            let jpeg = jpeg.into_inner();
            let tagged = dir.path().join(format!("{name}-{photo}"));
            std::fs::write(&tagged, with_icc(&jpeg, &profile.icc().unwrap())).unwrap();
            let untagged = dir.path().join(format!("untagged-{name}-{photo}"));
            std::fs::write(&untagged, &jpeg).unwrap();
            files.push((tagged, untagged));
        }
    }
    // sharp (the old Lambda's thumbnailer) on the tagged files.
    let sharp_out = dir.path().join("sharp");
    std::fs::create_dir(&sharp_out).unwrap();
    let mut cmd = Command::new("node");
    cmd.arg(repo().join("bench/sharp-thumbnail.js"))
        .arg(&sharp_out)
        .arg("1")
        .env("UV_THREADPOOL_SIZE", "1");
    for (tagged, _) in &files {
        cmd.arg(tagged);
    }
    let out = cmd
        .output()
        .expect("node (scripts/test installs bench/node_modules with sharp)");
    assert!(
        out.status.success(),
        "sharp: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut renderer = Renderer::new(RenderOptions::default()).unwrap();
    for (tagged, untagged) in &files {
        let name = tagged.file_name().unwrap().to_string_lossy().to_string();
        let theirs = std::fs::read(sharp_out.join(format!("{name}.jpg"))).expect("sharp output");
        let ours = renderer
            .render(&std::fs::read(tagged).unwrap())
            .unwrap()
            .jpeg;
        let blind = renderer
            .render(&std::fs::read(untagged).unwrap())
            .unwrap()
            .jpeg;
        let d = mean_rgb_difference(&ours, &theirs).unwrap();
        let d_blind = mean_rgb_difference(&blind, &theirs).unwrap();
        eprintln!("{name}: mean |ours - sharp| per channel {d:.2?}; ignoring the profile it would be {d_blind:.2?}");
        assert!(
            d.iter().all(|&c| c < 2.5),
            "{name}: colours differ from sharp's: {d:?}"
        );
        // The check can tell: ignoring the profile is visibly off.
        assert!(
            d_blind.iter().cloned().fold(0.0, f64::max)
                > 2.0 * d.iter().cloned().fold(0.0, f64::max),
            "{name}: the profile made no difference ({d:?} vs {d_blind:?})"
        );
    }
}
