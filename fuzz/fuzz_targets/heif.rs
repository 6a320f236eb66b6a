//! Fuzz the HEIC/HEIF and AVIF decoder (`processor::photo::heif`, libheif with libde265 and
//! dav1d) with the pixel limit on: any bytes must decode to an image of the size it reports or
//! give a failure with a reason, never a panic, an abort or an allocation beyond libFuzzer's
//! RSS limit. Seeds are tiny HEIC and AVIF files (heif-enc of a 64×64 PNG).
#![no_main]

use libfuzzer_sys::fuzz_target;
use processor::photo::heif;

fuzz_target!(|data: &[u8]| {
    match heif::decode(data, "heic", 4_000_000) {
        Ok(img) => {
            assert!(u64::from(img.width) * u64::from(img.height) <= 4_000_000);
            assert_eq!(img.rgb.len(), img.width as usize * img.height as usize * 3);
        }
        Err(f) => assert!(!f.detail.is_empty()),
    }
});
