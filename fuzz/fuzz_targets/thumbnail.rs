//! Fuzz image decode + thumbnail (`processor::thumbnail::render`) with the pixel limit on:
//! any bytes must give a thumbnail inside the box or a failure with a reason, never a panic, an
//! abort or an allocation beyond libFuzzer's RSS limit (`scripts/fuzz` sets 2 GiB).
#![no_main]

use libfuzzer_sys::fuzz_target;
use processor::thumbnail::render::{RenderOptions, Renderer};
use std::cell::RefCell;

thread_local! {
    static RENDERER: RefCell<Renderer> = RefCell::new(
        Renderer::new(RenderOptions {
            max_width: 64,
            max_height: 64,
            quality: 80,
            // Small, so the fuzzer spends its time in parsers rather than in huge decodes.
            max_pixels: 4_000_000,
        })
        .expect("renderer"),
    );
}

fuzz_target!(|data: &[u8]| {
    RENDERER.with(|r| match r.borrow_mut().render(data) {
        Ok(t) => {
            assert!((1..=64).contains(&t.width) && (1..=64).contains(&t.height));
            assert!(t.jpeg.starts_with(&[0xFF, 0xD8]));
        }
        Err(f) => assert!(!f.detail.is_empty()),
    });
});
