//! What both image stages need from a photo's bytes before their own work starts: decoding
//! the formats that need a library of their own (HEIC/HEIF and AVIF through libheif, [`heif`])
//! and turning pixels in a tagged colour space into sRGB ([`colour`]), so that the thumbnail
//! and the embed input are made from the same, correctly coloured pixels.

pub mod colour;
pub mod heif;
