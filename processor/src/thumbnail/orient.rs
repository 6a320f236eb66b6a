//! EXIF orientation: reading the tag from a JPEG and applying it to a decoded pixel buffer.
//!
//! None of the fast decoders applies orientation, and phones store most portrait photos as
//! landscape pixels plus a tag, so the thumbnailer must. It applies the tag to the small,
//! already-resized image, where a transpose costs microseconds.

/// What a quick walk over a JPEG's header segments tells us before decoding.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct JpegMarkers {
    /// EXIF orientation tag, 1–8 (1 when absent or unreadable).
    pub orientation: u8,
    /// An Adobe APP14 segment is present: CMYK data is then stored inverted.
    pub adobe: bool,
    /// The embedded ICC profile (APP2 `ICC_PROFILE` chunks joined), if whole.
    pub icc: Option<Vec<u8>>,
}

/// Walk the JPEG segments up to the first scan. Malformed or hostile EXIF is ignored (the
/// photo is still shown, unrotated), never an error: orientation is a hint, not the image.
pub fn scan_jpeg_markers(data: &[u8]) -> JpegMarkers {
    let mut out = JpegMarkers {
        orientation: 1,
        adobe: false,
        icc: None,
    };
    // (sequence number, chunk count, bytes) of each ICC_PROFILE segment.
    let mut icc_chunks: Vec<(u8, u8, &[u8])> = Vec::new();
    let mut pos = 2; // after SOI
    while pos + 4 <= data.len() {
        if data[pos] != 0xFF {
            break;
        }
        let marker = data[pos + 1];
        if marker == 0xFF {
            pos += 1; // fill byte
            continue;
        }
        if marker == 0xDA || marker == 0xD9 {
            break; // start of scan / end of image
        }
        if (0xD0..=0xD7).contains(&marker) || marker == 0x01 {
            pos += 2;
            continue;
        }
        let len = u16::from_be_bytes([data[pos + 2], data[pos + 3]]) as usize;
        if len < 2 || pos + 2 + len > data.len() {
            break;
        }
        let payload = &data[pos + 4..pos + 2 + len];
        match marker {
            0xE1 if payload.starts_with(b"Exif\0\0") && out.orientation == 1 => {
                out.orientation = exif_orientation(&payload[6..]).unwrap_or(1);
            }
            0xEE if payload.starts_with(b"Adobe") => out.adobe = true,
            0xE2 if payload.starts_with(b"ICC_PROFILE\0") && payload.len() > 14 => {
                icc_chunks.push((payload[12], payload[13], &payload[14..]));
            }
            _ => {}
        }
        pos += 2 + len;
    }
    out.icc = crate::photo::colour::jpeg_icc_profile(&icc_chunks);
    out
}

/// Orientation tag from a raw TIFF/EXIF block, if present and valid.
pub fn exif_orientation(tiff: &[u8]) -> Option<u8> {
    let exif = exif::Reader::new().read_raw(tiff.to_vec()).ok()?;
    let field = exif.get_field(exif::Tag::Orientation, exif::In::PRIMARY)?;
    let v = field.value.get_uint(0)?;
    (1..=8).contains(&v).then_some(v as u8)
}

/// Whether the tag swaps width and height.
pub fn swaps_axes(orientation: u8) -> bool {
    (5..=8).contains(&orientation)
}

/// Apply EXIF `orientation` to a packed buffer of `channels` bytes per pixel.
/// Returns the new buffer and its (width, height).
pub fn apply(
    pixels: Vec<u8>,
    w: usize,
    h: usize,
    channels: usize,
    orientation: u8,
) -> (Vec<u8>, usize, usize) {
    if !(2..=8).contains(&orientation) {
        return (pixels, w, h);
    }
    let (ow, oh) = if swaps_axes(orientation) {
        (h, w)
    } else {
        (w, h)
    };
    let mut out = vec![0u8; pixels.len()];
    for y in 0..oh {
        for x in 0..ow {
            // Source pixel for output (x, y); see the EXIF 2.3 spec's orientation table.
            let (sx, sy) = match orientation {
                2 => (w - 1 - x, y),
                3 => (w - 1 - x, h - 1 - y),
                4 => (x, h - 1 - y),
                5 => (y, x),
                6 => (y, h - 1 - x),
                7 => (w - 1 - y, h - 1 - x),
                _ => (w - 1 - y, x), // 8
            };
            let s = (sy * w + sx) * channels;
            let d = (y * ow + x) * channels;
            out[d..d + channels].copy_from_slice(&pixels[s..s + channels]);
        }
    }
    (out, ow, oh)
}

#[cfg(test)]
mod tests {
    use super::*;

    // 3x2 image, one byte per pixel:  a b c / d e f
    const IMG: [u8; 6] = *b"abcdef";

    fn oriented(tag: u8) -> (String, usize, usize) {
        let (p, w, h) = apply(IMG.to_vec(), 3, 2, 1, tag);
        (String::from_utf8(p).unwrap(), w, h)
    }

    #[test]
    fn all_eight_orientations() {
        assert_eq!(oriented(1), ("abcdef".into(), 3, 2));
        assert_eq!(oriented(2), ("cbafed".into(), 3, 2));
        assert_eq!(oriented(3), ("fedcba".into(), 3, 2));
        assert_eq!(oriented(4), ("defabc".into(), 3, 2));
        assert_eq!(oriented(5), ("adbecf".into(), 2, 3));
        // 90° clockwise: the left column (a, d) becomes the top row read right-to-left.
        assert_eq!(oriented(6), ("daebfc".into(), 2, 3));
        assert_eq!(oriented(7), ("fcebda".into(), 2, 3));
        assert_eq!(oriented(8), ("cfbead".into(), 2, 3));
    }

    #[test]
    fn hostile_markers_do_not_panic() {
        assert_eq!(scan_jpeg_markers(&[]).orientation, 1);
        assert_eq!(
            scan_jpeg_markers(&[0xFF, 0xD8, 0xFF, 0xE1, 0xFF, 0xFF]).orientation,
            1
        );
        let mut exif = vec![0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x10];
        exif.extend_from_slice(b"Exif\0\0garbagegarbage");
        assert_eq!(scan_jpeg_markers(&exif).orientation, 1);
    }
}
