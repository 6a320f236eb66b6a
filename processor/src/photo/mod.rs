//! What both image stages need from a photo's bytes before their own work starts: decoding
//! the formats that need a library of their own (HEIC/HEIF and AVIF through libheif, [`heif`])
//! and turning pixels in a tagged colour space into sRGB ([`colour`]), so that the thumbnail
//! and the embed input are made from the same, correctly coloured pixels.

pub mod colour;
pub mod heif;

/// Composite RGBA8 pixels over white, appending RGB8 to `out`: a thumbnail is a JPEG, so
/// transparency must become a colour, and white is what people expect behind a cut-out or logo.
pub fn flatten_on_white(rgba: &[u8], out: &mut Vec<u8>) {
    for p in rgba.chunks_exact(4) {
        let a = p[3] as u32;
        for &c in &p[..3] {
            out.push(((c as u32 * a + 255 * (255 - a) + 127) / 255) as u8);
        }
    }
}
