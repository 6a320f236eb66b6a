//! A generated corpus of hostile uploads, so that the bad-input suite (`processor/tests/hostile.rs`)
//! and `devstack hostile-corpus DIR` exercise the same files: truncated and random bytes,
//! decompression-bomb headers, extreme shapes, unusual colour models, animations, broken EXIF,
//! and webhook bodies that are malformed, oversized or name keys no user owns.
//!
//! Every file carries the outcome the thumbnail stage must reach for it ([`Expect`]): the
//! generator is deterministic (no randomness from the OS), so a failing case can be replayed.
//! Files the pipeline should actually accept (CMYK/YCCK JPEGs, 16-bit and palette PNGs, the first
//! frame of an animation, huge or broken EXIF on an otherwise good JPEG) are `Expect::Ok`.

use std::path::Path;

/// What the thumbnail stage must do with a hostile photo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The file is a valid image despite its oddity: a thumbnail must come out.
    Ok,
    /// `ThumbnailDone{status: failed}` with this `failure.reason`.
    Failed(&'static str),
}

/// One hostile object to upload as a user's photo.
#[derive(Debug, Clone)]
pub struct HostilePhoto {
    /// File name under `users/{user}/photos/`.
    pub name: String,
    pub bytes: Vec<u8>,
    /// The `Content-Type` to upload it with (often a lie: the stage must sniff the bytes).
    pub content_type: &'static str,
    pub expect: Expect,
    /// What the case tries, for the manifest and assertion messages.
    pub about: &'static str,
}

/// One hostile webhook request (POSTed straight to the processor, not through S3).
#[derive(Debug, Clone)]
pub struct HostileWebhook {
    pub name: &'static str,
    pub body: Vec<u8>,
    /// HTTP status the processor must answer when the body is correctly signed.
    pub status: u16,
    /// For a 200: how many of its events must be listed as rejected (none may be accepted).
    pub rejected: usize,
    pub about: &'static str,
}

/// Object keys that must never become photos, for uploads through S3 (the B2 emulation
/// notifies for every key under `users/`, so the processor must refuse them itself).
pub fn hostile_keys(user: &str) -> Vec<String> {
    vec![
        format!("users/{user}/thumbs/evil.jpg.jpg"),
        format!("users/{user}/other/evil.jpg"),
        format!("users/{user}/photos/"),
        "users/bad user/photos/evil.jpg".to_string(),
        "users/../photos/evil.jpg".to_string(),
        format!("users/{user}/evil.jpg"),
    ]
}

/// Deterministic pseudo-random bytes (xorshift64*), so the corpus is the same on every run.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

fn gradient_rgb(w: u32, h: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            v.extend_from_slice(&[(x * 7) as u8, (y * 5) as u8, ((x + y) * 3) as u8]);
        }
    }
    v
}

/// A baseline RGB JPEG (image's encoder).
pub fn jpeg(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85)
        .encode(&gradient_rgb(w, h), w, h, image::ExtendedColorType::Rgb8)
        .expect("encode JPEG");
    out
}

/// `jpeg` with an extra marker segment right after SOI (payload without marker and length).
fn with_segments(jpeg: &[u8], segments: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = jpeg[..2].to_vec();
    for (marker, payload) in segments {
        out.extend_from_slice(&[0xFF, *marker]);
        out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(payload);
    }
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// Position of the first SOFn marker's segment in a JPEG.
fn sof_offset(jpeg: &[u8]) -> usize {
    let mut i = 2;
    while i + 4 < jpeg.len() {
        let m = jpeg[i + 1];
        if matches!(m, 0xC0..=0xC3) {
            return i;
        }
        i += 2 + u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]) as usize;
    }
    panic!("no SOF marker");
}

/// Overwrite the frame size a JPEG declares.
fn jpeg_with_size(jpeg: &[u8], w: u16, h: u16) -> Vec<u8> {
    let mut out = jpeg.to_vec();
    let i = sof_offset(&out);
    out[i + 5..i + 7].copy_from_slice(&h.to_be_bytes());
    out[i + 7..i + 9].copy_from_slice(&w.to_be_bytes());
    out
}

/// An EXIF APP1 payload: `Exif\0\0` and a big-endian TIFF header whose IFD0 (at offset 8)
/// has `entries` (tag, type, count, value) and then `next_ifd`.
fn exif_app1(entries: &[(u16, u16, u32, u32)], next_ifd: u32, extra: &[u8]) -> Vec<u8> {
    let mut v = b"Exif\0\0MM\0\x2a\0\0\0\x08".to_vec();
    v.extend_from_slice(&(entries.len() as u16).to_be_bytes());
    for (tag, typ, count, value) in entries {
        v.extend_from_slice(&tag.to_be_bytes());
        v.extend_from_slice(&typ.to_be_bytes());
        v.extend_from_slice(&count.to_be_bytes());
        v.extend_from_slice(&value.to_be_bytes());
    }
    v.extend_from_slice(&next_ifd.to_be_bytes());
    v.extend_from_slice(extra);
    v
}

const ORIENTATION: u16 = 0x0112;
const SHORT: u16 = 3;
const ASCII: u16 = 2;

fn png_bytes(
    w: u32,
    h: u32,
    color: png::ColorType,
    depth: png::BitDepth,
    setup: impl FnOnce(&mut png::Encoder<'static, &mut Vec<u8>>),
    frames: &[Vec<u8>],
) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, w, h);
        enc.set_color(color);
        enc.set_depth(depth);
        enc.set_compression(png::Compression::Fast);
        setup(&mut enc);
        let mut writer = enc.write_header().expect("png header");
        for f in frames {
            writer.write_image_data(f).expect("png data");
        }
        writer.finish().expect("png finish");
    }
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A PNG signature and IHDR declaring `w`×`h` 8-bit RGB, then an empty IDAT and IEND.
pub fn png_header_only(w: u32, h: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    for (kind, data) in [(&b"IHDR"[..], ihdr), (b"IDAT", vec![]), (b"IEND", vec![])] {
        png.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut chunk = kind.to_vec();
        chunk.extend_from_slice(&data);
        png.extend_from_slice(&chunk);
        png.extend_from_slice(&crc32(&chunk).to_be_bytes());
    }
    png
}

/// A lossless WebP (VP8L) of `w`×`h`.
pub fn webp(w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::webp::WebPEncoder::new_lossless(&mut out)
        .encode(&gradient_rgb(w, h), w, h, image::ExtendedColorType::Rgb8)
        .expect("encode WebP");
    out
}

fn riff_chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut v = kind.to_vec();
    v.extend_from_slice(&(data.len() as u32).to_le_bytes());
    v.extend_from_slice(data);
    if data.len() % 2 == 1 {
        v.push(0);
    }
    v
}

fn riff_webp(chunks: &[Vec<u8>]) -> Vec<u8> {
    let body: Vec<u8> = chunks.concat();
    let mut v = b"RIFF".to_vec();
    v.extend_from_slice(&((body.len() + 4) as u32).to_le_bytes());
    v.extend_from_slice(b"WEBP");
    v.extend_from_slice(&body);
    v
}

fn vp8x(flags: u8, w: u32, h: u32) -> Vec<u8> {
    let mut d = vec![flags, 0, 0, 0];
    d.extend_from_slice(&(w - 1).to_le_bytes()[..3]);
    d.extend_from_slice(&(h - 1).to_le_bytes()[..3]);
    riff_chunk(b"VP8X", &d)
}

/// An animated WebP (VP8X + ANIM + one ANMF per frame, each frame a VP8L bitstream).
fn animated_webp(w: u32, h: u32, frames: u32) -> Vec<u8> {
    let mut chunks = vec![vp8x(0x02, w, h), riff_chunk(b"ANIM", &[0, 0, 0, 0, 0, 0])];
    for i in 0..frames {
        let still = webp(w, h);
        // The encoder's RIFF holds a single VP8L chunk at offset 12.
        let vp8l = &still[12..];
        let mut d = vec![0u8; 6];
        d.extend_from_slice(&(w - 1).to_le_bytes()[..3]);
        d.extend_from_slice(&(h - 1).to_le_bytes()[..3]);
        d.extend_from_slice(&(100 + i).to_le_bytes()[..3]);
        d.push(0);
        d.extend_from_slice(vp8l);
        chunks.push(riff_chunk(b"ANMF", &d));
    }
    riff_webp(&chunks)
}

fn gif_animated(w: u16, h: u16, frames: u8) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = gif::Encoder::new(&mut out, w, h, &[]).expect("gif");
        enc.set_repeat(gif::Repeat::Infinite).expect("gif repeat");
        for i in 0..frames {
            let mut rgb = gradient_rgb(w as u32, h as u32);
            rgb.iter_mut().for_each(|b| *b = b.wrapping_add(i * 40));
            let mut frame = gif::Frame::from_rgb_speed(w, h, &rgb, 30);
            frame.delay = 10;
            enc.write_frame(&frame).expect("gif frame");
        }
    }
    out
}

/// A little-endian TIFF header with one IFD declaring `w`×`h` 8-bit RGB and no strips.
fn tiff_header_only(w: u32, h: u32) -> Vec<u8> {
    let entries: [(u16, u16, u32, u32); 8] = [
        (256, 4, 1, w), // ImageWidth (LONG)
        (257, 4, 1, h), // ImageLength
        (258, 3, 1, 8), // BitsPerSample
        (262, 3, 1, 2), // PhotometricInterpretation = RGB
        (273, 4, 1, 8), // StripOffsets
        (277, 3, 1, 3), // SamplesPerPixel
        (278, 4, 1, h), // RowsPerStrip
        (279, 4, 1, 0), // StripByteCounts
    ];
    let mut v = b"II\x2a\0\x08\0\0\0".to_vec();
    v.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    for (tag, typ, count, value) in entries {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&typ.to_le_bytes());
        v.extend_from_slice(&count.to_le_bytes());
        v.extend_from_slice(&value.to_le_bytes());
    }
    v.extend_from_slice(&0u32.to_le_bytes());
    v
}

/// A BMP header (BITMAPINFOHEADER) declaring `w`×`h` 24-bit pixels, with no pixel data.
fn bmp_header_only(w: i32, h: i32) -> Vec<u8> {
    let mut v = b"BM".to_vec();
    v.extend_from_slice(&54u32.to_le_bytes()); // file size (a lie, as an attacker's would be)
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&54u32.to_le_bytes()); // pixel data offset
    v.extend_from_slice(&40u32.to_le_bytes());
    v.extend_from_slice(&w.to_le_bytes());
    v.extend_from_slice(&h.to_le_bytes());
    v.extend_from_slice(&1u16.to_le_bytes());
    v.extend_from_slice(&24u16.to_le_bytes());
    v.extend_from_slice(&[0u8; 24]);
    v
}

/// The hostile photos. `corpus` is `shared/corpus` (its CMYK/YCCK JPEG is used as a base).
pub fn photos(corpus: &Path) -> Vec<HostilePhoto> {
    use Expect::{Failed, Ok};
    let mut v = Vec::new();
    let mut add = |name: &str, bytes: Vec<u8>, content_type, expect, about| {
        v.push(HostilePhoto {
            name: name.to_string(),
            bytes,
            content_type,
            expect,
            about,
        })
    };
    let good_jpeg = jpeg(640, 480);
    let good_png = png_bytes(
        256,
        256,
        png::ColorType::Rgb,
        png::BitDepth::Eight,
        |_| {},
        &[noise(256 * 256 * 3, 7)],
    );
    let good_webp = webp(256, 192);

    // Empty, random, wrong content.
    add(
        "zero.jpg",
        vec![],
        "image/jpeg",
        Failed("empty_object"),
        "zero bytes",
    );
    add(
        "random.jpg",
        noise(20_000, 1),
        "image/jpeg",
        Failed("not_an_image"),
        "random bytes, .jpg",
    );
    add(
        "random.png",
        noise(20_000, 2),
        "image/png",
        Failed("not_an_image"),
        "random bytes, .png",
    );
    add(
        "random.webp",
        noise(20_000, 3),
        "image/webp",
        Failed("not_an_image"),
        "random bytes, .webp",
    );
    add(
        "page.jpg",
        b"<!doctype html><html><body>not a photo</body></html>".to_vec(),
        "image/jpeg",
        Failed("not_an_image"),
        "HTML uploaded as image/jpeg",
    );
    add(
        "real-jpeg.txt",
        good_jpeg.clone(),
        "text/plain",
        Ok,
        "a JPEG named .txt, text/plain: bytes decide",
    );
    add(
        "real-png.jpg",
        good_png.clone(),
        "image/jpeg",
        Ok,
        "a PNG named .jpg, image/jpeg",
    );
    add(
        "ünïcødé фото 😀.jpg",
        good_jpeg.clone(),
        "image/jpeg",
        Ok,
        "non-ASCII file name in the key",
    );
    let mut jpeg_magic_noise = vec![0xFF, 0xD8, 0xFF];
    jpeg_magic_noise.extend(noise(20_000, 4));
    add(
        "jpeg-magic-noise.jpg",
        jpeg_magic_noise,
        "image/jpeg",
        Failed("corrupt_image"),
        "JPEG magic, then random bytes",
    );
    let mut png_magic_noise = b"\x89PNG\r\n\x1a\n".to_vec();
    png_magic_noise.extend(noise(20_000, 5));
    add(
        "png-magic-noise.png",
        png_magic_noise,
        "image/png",
        Failed("corrupt_image"),
        "PNG signature, then random bytes",
    );
    let mut webp_magic_noise = b"RIFF\xff\xff\xff\x0fWEBPJUNK".to_vec();
    webp_magic_noise.extend(noise(20_000, 6));
    add(
        "webp-magic-noise.webp",
        webp_magic_noise,
        "image/webp",
        Failed("corrupt_image"),
        "RIFF/WEBP, lying size, unknown chunk, random bytes",
    );

    // Truncated.
    add(
        "truncated-header.jpg",
        good_jpeg[..200].to_vec(),
        "image/jpeg",
        Failed("corrupt_image"),
        "JPEG cut inside its headers",
    );
    add(
        "truncated-scan.jpg",
        good_jpeg[..good_jpeg.len() / 2].to_vec(),
        "image/jpeg",
        Failed("corrupt_image"),
        "JPEG cut in the middle of the scan",
    );
    add(
        "truncated.png",
        good_png[..good_png.len() / 2].to_vec(),
        "image/png",
        Failed("corrupt_image"),
        "PNG cut in IDAT",
    );
    add(
        "truncated-ihdr.png",
        good_png[..20].to_vec(),
        "image/png",
        Failed("corrupt_image"),
        "PNG cut inside IHDR",
    );
    add(
        "truncated.webp",
        good_webp[..good_webp.len() / 2].to_vec(),
        "image/webp",
        Failed("corrupt_image"),
        "WebP cut in half",
    );
    let mut bad_crc = good_png.clone();
    let idat = bad_crc.windows(4).position(|w| w == b"IDAT").expect("IDAT");
    bad_crc[idat + 40] ^= 0xFF;
    add(
        "bad-crc.png",
        bad_crc,
        "image/png",
        Failed("corrupt_image"),
        "PNG with a corrupted IDAT byte (CRC mismatch)",
    );

    // Decompression bombs and impossible sizes.
    add(
        "bomb-header.png",
        png_header_only(50_000, 50_000),
        "image/png",
        Failed("too_many_pixels"),
        "PNG header declaring 50,000x50,000",
    );
    add(
        "bomb-real.png",
        png_bytes(
            20_000,
            20_000,
            png::ColorType::Grayscale,
            png::BitDepth::One,
            |_| {},
            &[vec![0u8; 2_500 * 20_000]],
        ),
        "image/png",
        Failed("too_many_pixels"),
        "real 20,000x20,000 PNG compressed to a few KB",
    );
    add(
        "bomb-header.jpg",
        jpeg_with_size(&good_jpeg, 50_000, 50_000),
        "image/jpeg",
        Failed("too_many_pixels"),
        "JPEG SOF declaring 50,000x50,000",
    );
    add(
        "bomb-vp8x.webp",
        riff_webp(&[
            vp8x(0, 16_384, 16_384),
            riff_chunk(b"VP8L", &good_webp[20..]),
        ]),
        "image/webp",
        Failed("too_many_pixels"),
        "WebP VP8X canvas of 16,384x16,384",
    );
    let mut vp8l_huge = good_webp.clone();
    // VP8L header: signature 0x2f at 20, then 14-bit width-1 and height-1.
    let bits: u32 = 0x3FFF | (0x3FFF << 14);
    vp8l_huge[21..25].copy_from_slice(&bits.to_le_bytes());
    add(
        "bomb-vp8l.webp",
        vp8l_huge,
        "image/webp",
        Failed("too_many_pixels"),
        "lossless WebP header of 16,384x16,384",
    );
    let mut gif_huge = b"GIF89a\xff\xff\xff\xff\x00\x00\x00".to_vec();
    gif_huge.push(b';');
    add(
        "bomb-screen.gif",
        gif_huge,
        "image/gif",
        Failed("too_many_pixels"),
        "GIF screen of 65,535x65,535",
    );
    add(
        "bomb-header.bmp",
        bmp_header_only(50_000, 50_000),
        "image/bmp",
        Failed("too_many_pixels"),
        "BMP header declaring 50,000x50,000",
    );
    add(
        "bomb-header.tif",
        tiff_header_only(50_000, 50_000),
        "image/tiff",
        Failed("too_many_pixels"),
        "TIFF IFD declaring 50,000x50,000",
    );
    add(
        "zero-size.png",
        png_header_only(0, 0),
        "image/png",
        Failed("corrupt_image"),
        "PNG declaring 0x0",
    );
    add(
        "zero-height.jpg",
        jpeg_with_size(&good_jpeg, 640, 0),
        "image/jpeg",
        Failed("corrupt_image"),
        "JPEG SOF with height 0 (DNL)",
    );

    // Extreme aspect ratios: valid, must give a 1-pixel-wide (or high) thumbnail.
    add(
        "tall-1x20000.png",
        png_bytes(
            1,
            20_000,
            png::ColorType::Grayscale,
            png::BitDepth::Eight,
            |_| {},
            &[noise(20_000, 8)],
        ),
        "image/png",
        Ok,
        "1x20,000 PNG",
    );
    add(
        "wide-20000x1.png",
        png_bytes(
            20_000,
            1,
            png::ColorType::Grayscale,
            png::BitDepth::Eight,
            |_| {},
            &[noise(20_000, 9)],
        ),
        "image/png",
        Ok,
        "20,000x1 PNG",
    );
    add(
        "tall-8x16000.jpg",
        jpeg(8, 16_000),
        "image/jpeg",
        Ok,
        "8x16,000 JPEG",
    );

    // Colour models and bit depths that are valid.
    let ycck = std::fs::read(corpus.join("compat/cmyk_ladybird.jpg"))
        .expect("shared/corpus/compat/cmyk_ladybird.jpg");
    let mut cmyk = ycck.clone();
    let adobe = cmyk
        .windows(5)
        .position(|w| w == b"Adobe")
        .expect("Adobe segment");
    cmyk[adobe + 11] = 0; // transform 0: plain CMYK (inverted, as Photoshop writes it)
    add(
        "ycck.jpg",
        ycck,
        "image/jpeg",
        Ok,
        "YCCK JPEG (Adobe transform 2)",
    );
    add(
        "cmyk.jpg",
        cmyk,
        "image/jpeg",
        Ok,
        "CMYK JPEG (Adobe transform 0)",
    );
    let rgb16: Vec<u8> = noise(96 * 64 * 6, 10);
    add(
        "rgb16.png",
        png_bytes(
            96,
            64,
            png::ColorType::Rgb,
            png::BitDepth::Sixteen,
            |_| {},
            &[rgb16],
        ),
        "image/png",
        Ok,
        "16-bit RGB PNG",
    );
    add(
        "gray-alpha16.png",
        png_bytes(
            96,
            64,
            png::ColorType::GrayscaleAlpha,
            png::BitDepth::Sixteen,
            |_| {},
            &[noise(96 * 64 * 4, 11)],
        ),
        "image/png",
        Ok,
        "16-bit grey+alpha PNG",
    );
    let palette: Vec<u8> = (0..=255u8).flat_map(|i| [i, 255 - i, i / 2]).collect();
    let trns: Vec<u8> = (0..=255u8).collect();
    add(
        "palette-trns.png",
        png_bytes(
            96,
            64,
            png::ColorType::Indexed,
            png::BitDepth::Eight,
            move |e| {
                e.set_palette(palette);
                e.set_trns(trns);
            },
            &[noise(96 * 64, 12)],
        ),
        "image/png",
        Ok,
        "palette PNG with per-entry transparency",
    );
    add(
        "palette-2bit.png",
        png_bytes(
            97,
            63,
            png::ColorType::Indexed,
            png::BitDepth::Two,
            |e| e.set_palette(vec![0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255]),
            &[noise(25 * 63, 13)],
        ),
        "image/png",
        Ok,
        "2-bit palette PNG with an odd width",
    );

    // Animations: the first frame is the photo.
    add(
        "animated.gif",
        gif_animated(80, 60, 3),
        "image/gif",
        Ok,
        "animated GIF, 3 frames",
    );
    add(
        "animated.png",
        png_bytes(
            80,
            60,
            png::ColorType::Rgb,
            png::BitDepth::Eight,
            |e| e.set_animated(3, 0).expect("apng"),
            &[
                noise(80 * 60 * 3, 14),
                noise(80 * 60 * 3, 15),
                noise(80 * 60 * 3, 16),
            ],
        ),
        "image/png",
        Ok,
        "APNG, 3 frames",
    );
    add(
        "animated.webp",
        animated_webp(80, 60, 3),
        "image/webp",
        Ok,
        "animated WebP, 3 frames",
    );
    let mut gif_cut = gif_animated(80, 60, 3);
    gif_cut.truncate(800);
    add(
        "truncated.gif",
        gif_cut,
        "image/gif",
        Failed("corrupt_image"),
        "animated GIF cut inside its first frame",
    );

    // EXIF: huge, many, malformed. The image itself is fine, so the photo must succeed.
    let huge: Vec<(u16, u16, u32, u32)> = std::iter::once((ORIENTATION, SHORT, 1, 6 << 16))
        .chain((0..5_400).map(|i| (0x010E, ASCII, 4, 0x4142_4300 | (i as u32 & 0xFF))))
        .collect();
    add(
        "exif-huge.jpg",
        with_segments(&good_jpeg, &[(0xE1, exif_app1(&huge, 0, &[]))]),
        "image/jpeg",
        Ok,
        "one 65 KB EXIF segment with 5,400 IFD entries",
    );
    let many: Vec<(u8, Vec<u8>)> = (0..64)
        .map(|i| {
            (
                0xE1,
                exif_app1(
                    &[(ORIENTATION, SHORT, 1, 3 << 16)],
                    0,
                    &noise(65_000, 100 + i),
                ),
            )
        })
        .collect();
    add(
        "exif-64-segments.jpg",
        with_segments(&good_jpeg, &many),
        "image/jpeg",
        Ok,
        "64 EXIF segments, 4 MB of metadata",
    );
    add(
        "exif-ifd-loop.jpg",
        with_segments(
            &good_jpeg,
            &[(0xE1, exif_app1(&[(ORIENTATION, SHORT, 1, 6 << 16)], 8, &[]))],
        ),
        "image/jpeg",
        Ok,
        "EXIF whose IFD0 points to itself as the next IFD",
    );
    add(
        "exif-bad-offsets.jpg",
        with_segments(
            &good_jpeg,
            &[(
                0xE1,
                exif_app1(
                    &[
                        (ORIENTATION, SHORT, 1000, 0xFFFF_FFF0),
                        (0x8769, 4, 1, 0x7FFF_FFFF),
                    ],
                    0xFFFF_0000,
                    &[],
                ),
            )],
        ),
        "image/jpeg",
        Ok,
        "EXIF with offsets far past the segment",
    );
    let mut short_ifd = exif_app1(&[(ORIENTATION, SHORT, 1, 6 << 16)], 0, &[]);
    short_ifd[14] = 0xFF; // entry count 0xFF01 with one entry's worth of data
    add(
        "exif-count-lies.jpg",
        with_segments(&good_jpeg, &[(0xE1, short_ifd)]),
        "image/jpeg",
        Ok,
        "EXIF IFD entry count far above the data",
    );
    add(
        "exif-orientation-99.jpg",
        with_segments(
            &good_jpeg,
            &[(
                0xE1,
                exif_app1(&[(ORIENTATION, SHORT, 1, 99 << 16)], 0, &[]),
            )],
        ),
        "image/jpeg",
        Ok,
        "EXIF orientation 99 (valid: 1-8)",
    );
    add(
        "exif-empty.jpg",
        with_segments(&good_jpeg, &[(0xE1, b"Exif\0\0".to_vec())]),
        "image/jpeg",
        Ok,
        "EXIF header with no TIFF data",
    );
    let mut app1_past_eof = good_jpeg[..2].to_vec();
    app1_past_eof.extend_from_slice(&[0xFF, 0xE1, 0xFF, 0xFF]);
    app1_past_eof.extend_from_slice(b"Exif\0\0MM\0\x2a");
    add(
        "app1-past-eof.jpg",
        app1_past_eof,
        "image/jpeg",
        Failed("corrupt_image"),
        "APP1 length running past the end of the file",
    );

    // Phone formats (HEIC, AVIF: the corpus's ladybird files) broken at the container level.
    let heic = std::fs::read(corpus.join("compat/ladybird.heic"))
        .expect("shared/corpus/compat/ladybird.heic");
    let avif = std::fs::read(corpus.join("compat/ladybird.avif"))
        .expect("shared/corpus/compat/ladybird.avif");
    add(
        "truncated.heic",
        heic[..heic.len() / 2].to_vec(),
        "image/heic",
        Failed("corrupt_image"),
        "HEIC cut in half (image data past the end)",
    );
    add(
        "truncated.avif",
        avif[..avif.len() * 2 / 3].to_vec(),
        "image/avif",
        Failed("corrupt_image"),
        "AVIF cut short",
    );
    add(
        "huge-ispe.heic",
        box_patched(&heic, b"ispe", |b| {
            // version/flags, then width and height: 100,000 x 100,000.
            b[4..8].copy_from_slice(&100_000u32.to_be_bytes());
            b[8..12].copy_from_slice(&100_000u32.to_be_bytes());
        }),
        "image/heic",
        Failed("too_many_pixels"),
        "HEIC declaring 100,000x100,000 pixels (ispe)",
    );
    add(
        "no-hvcc.heic",
        box_renamed(&heic, b"hvcC", b"free"),
        "image/heic",
        Failed("corrupt_image"),
        "HEIC whose HEVC decoder configuration (hvcC) is missing",
    );
    add(
        "no-av1c.avif",
        box_renamed(&avif, b"av1C", b"free"),
        "image/avif",
        Failed("corrupt_image"),
        "AVIF whose AV1 decoder configuration (av1C) is missing",
    );
    let mut brand_only = heic[..heic.len().min(32)].to_vec();
    brand_only.extend(noise(4096, 12));
    add(
        "brand-only.heic",
        brand_only,
        "image/heic",
        Failed("corrupt_image"),
        "a HEIC ftyp followed by random bytes",
    );
    v
}

/// `file` with every box of type `kind` passed to `patch` (the box from its version/flags on),
/// in place: an ISOBMFF edit that keeps every offset valid. Box headers are found by their
/// type; the corpus files are fixed, so the edit is deterministic.
fn box_patched(file: &[u8], kind: &[u8; 4], patch: impl Fn(&mut [u8])) -> Vec<u8> {
    let mut out = file.to_vec();
    let mut found = 0;
    let mut at = 4;
    while let Some(i) = out[at..].windows(4).position(|w| w == kind) {
        let start = at + i + 4;
        let size = u32::from_be_bytes(out[start - 8..start - 4].try_into().unwrap()) as usize;
        if size >= 20 && start - 8 + size <= out.len() {
            patch(&mut out[start..start - 8 + size]);
            found += 1;
        }
        at = start;
    }
    assert!(found > 0, "no {} box", String::from_utf8_lossy(kind));
    out
}

/// `file` with every box of type `kind` renamed to `to` (same size): readers then skip the
/// box, as if it were absent.
fn box_renamed(file: &[u8], kind: &[u8; 4], to: &[u8; 4]) -> Vec<u8> {
    let mut out = file.to_vec();
    let hits: Vec<usize> = (4..out.len().saturating_sub(4))
        .filter(|&i| &out[i..i + 4] == kind)
        .collect();
    assert!(!hits.is_empty(), "no {} box", String::from_utf8_lossy(kind));
    for i in hits {
        out[i..i + 4].copy_from_slice(to);
    }
    out
}

/// Build a raw webhook body from JSON text (so that invalid UTF-8 can be spliced in).
fn body(events: &str) -> Vec<u8> {
    format!(r#"{{"events":[{events}]}}"#).into_bytes()
}

fn created(bucket: &str, key_json: &str, id: &str) -> String {
    format!(
        r#"{{"accountId":"a","bucketId":"b","bucketName":"{bucket}","eventId":"{id}","eventTimestamp":1700000000000,"eventType":"b2:ObjectCreated:Upload","eventVersion":1,"matchedRuleName":"r","objectName":{key_json},"objectSize":10,"objectVersionId":"v-{id}"}}"#
    )
}

/// The hostile webhook bodies for a bucket; none of them may enqueue anything.
pub fn webhooks(bucket: &str, user: &str) -> Vec<HostileWebhook> {
    let mut invalid_utf8 = body(&created(
        bucket,
        &format!(r#""users/{user}/photos/X.jpg""#),
        "h-utf8",
    ));
    let x = invalid_utf8
        .windows(5)
        .position(|w| w == b"X.jpg")
        .expect("X");
    invalid_utf8
        .splice(x..x + 1, [0xC3, 0x28, 0xFF])
        .for_each(drop);
    let deep = format!(
        r#"{{"events":{}{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    )
    .into_bytes();
    let long_key = format!(r#""users/{user}/photos/{}.jpg""#, "a".repeat(1100));
    vec![
        HostileWebhook {
            name: "empty",
            body: vec![],
            status: 400,
            rejected: 0,
            about: "empty body",
        },
        HostileWebhook {
            name: "not-json",
            body: b"{\"events\": [".to_vec(),
            status: 400,
            rejected: 0,
            about: "truncated JSON",
        },
        HostileWebhook {
            name: "array",
            body: b"[]".to_vec(),
            status: 400,
            rejected: 0,
            about: "JSON of the wrong shape",
        },
        HostileWebhook {
            name: "events-null",
            body: br#"{"events":null}"#.to_vec(),
            status: 400,
            rejected: 0,
            about: "events: null",
        },
        HostileWebhook {
            name: "deep-nesting",
            body: deep,
            status: 400,
            rejected: 0,
            about: "10,000 nested arrays",
        },
        HostileWebhook {
            name: "invalid-utf8-key",
            body: invalid_utf8,
            status: 400,
            rejected: 0,
            about: "object key with invalid UTF-8 bytes",
        },
        HostileWebhook {
            name: "lone-surrogate-key",
            body: body(&created(
                bucket,
                &format!(r#""users/{user}/photos/\udc80.jpg""#),
                "h-surrogate",
            )),
            status: 400,
            rejected: 0,
            about: "object key with an unpaired UTF-16 surrogate escape",
        },
        HostileWebhook {
            name: "missing-event-type",
            body: br#"{"events":[{"objectName":"users/u/photos/a.jpg"}]}"#.to_vec(),
            status: 400,
            rejected: 0,
            about: "event without eventType",
        },
        HostileWebhook {
            name: "timestamp-string",
            body: body(
                &created(bucket, r#""users/u/photos/a.jpg""#, "h-ts")
                    .replace("1700000000000", "\"yesterday\""),
            ),
            status: 400,
            rejected: 0,
            about: "eventTimestamp of the wrong type",
        },
        HostileWebhook {
            name: "oversized",
            body: body(
                &vec![
                    created(
                        bucket,
                        &format!(r#""users/{user}/photos/big.jpg""#),
                        "h-big"
                    );
                    1_200
                ]
                .join(","),
            ),
            status: 413,
            rejected: 0,
            about: "1,200 events, over the 256 KiB body limit",
        },
        HostileWebhook {
            name: "outside-prefix",
            body: body(
                &[
                    created(bucket, &format!(r#""other/{user}/photos/a.jpg""#), "h-out1"),
                    created(
                        bucket,
                        &format!(r#""users/{user}/thumbs/a.jpg.jpg""#),
                        "h-out2",
                    ),
                    created(bucket, r#""users/../photos/a.jpg""#, "h-out3"),
                    created(bucket, r#""users/ünï/photos/a.jpg""#, "h-out4"),
                    created(bucket, r#""users//photos/a.jpg""#, "h-out5"),
                    created(bucket, &format!(r#""users/{user}/photos/""#), "h-out6"),
                ]
                .join(","),
            ),
            status: 200,
            rejected: 6,
            about: "keys outside users/{user_id}/photos/ and bad user ids",
        },
        HostileWebhook {
            name: "control-chars",
            body: body(
                &[
                    created(
                        bucket,
                        &format!(r#""users/{user}/photos/a\u0000.jpg""#),
                        "h-ctl1",
                    ),
                    created(
                        bucket,
                        &format!(r#""users/{user}/photos/a\nb.jpg""#),
                        "h-ctl2",
                    ),
                    created(
                        bucket,
                        &format!(r#""users/{user}/photos/a\u007f.jpg""#),
                        "h-ctl3",
                    ),
                ]
                .join(","),
            ),
            status: 200,
            rejected: 3,
            about: "keys with NUL, newline and DEL (B2 allows none of them)",
        },
        HostileWebhook {
            name: "key-too-long",
            body: body(&created(bucket, &long_key, "h-long")),
            status: 200,
            rejected: 1,
            about: "a key over B2's 1,024-byte limit",
        },
        HostileWebhook {
            name: "missing-fields",
            body: body(
                r#"{"eventType":"b2:ObjectCreated:Upload","objectName":"users/u/photos/a.jpg"}"#,
            ),
            status: 200,
            rejected: 1,
            about: "object-created event without bucket and event id",
        },
    ]
}

/// Write the corpus to `dir` (`photos/` and `webhooks/`) with a `manifest.tsv` of
/// name, expected outcome and what each case tries.
pub fn write_corpus(dir: &Path, corpus: &Path) -> std::io::Result<usize> {
    use std::io::Write;
    std::fs::create_dir_all(dir.join("photos"))?;
    std::fs::create_dir_all(dir.join("webhooks"))?;
    let mut manifest = std::fs::File::create(dir.join("manifest.tsv"))?;
    writeln!(manifest, "file\tcontent_type\texpect\tabout")?;
    let mut n = 0;
    for p in photos(corpus) {
        std::fs::write(dir.join("photos").join(&p.name), &p.bytes)?;
        let expect = match p.expect {
            Expect::Ok => "ok".to_string(),
            Expect::Failed(r) => format!("failed:{r}"),
        };
        writeln!(
            manifest,
            "photos/{}\t{}\t{expect}\t{}",
            p.name, p.content_type, p.about
        )?;
        n += 1;
    }
    for w in webhooks("photos", "hostile") {
        std::fs::write(
            dir.join("webhooks").join(format!("{}.json", w.name)),
            &w.body,
        )?;
        writeln!(
            manifest,
            "webhooks/{}.json\tapplication/json\thttp:{} rejected:{}\t{}",
            w.name, w.status, w.rejected, w.about
        )?;
        n += 1;
    }
    Ok(n)
}
