//! A small safe wrapper over libjpeg-turbo 3's TurboJPEG API (`turbojpeg-sys`, bundled build).
//!
//! We wrap the raw API rather than use the `turbojpeg` crate because the thumbnailer needs
//! parameters that crate does not expose: stop-on-warning (a truncated JPEG must fail, not be
//! padded with grey), a progressive-scan limit (CPU-exhaustion guard) and the pixel limit.

use std::ffi::CStr;
use turbojpeg_sys as raw;

/// An error reported by libjpeg-turbo, with its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JpegError(pub String);

impl std::fmt::Display for JpegError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Colour space of the compressed data, from the JPEG header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JpegColorspace {
    Rgb,
    YCbCr,
    Gray,
    Cmyk,
    Ycck,
}

/// What `read_header` learns without decoding pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JpegHeader {
    pub width: usize,
    pub height: usize,
    pub colorspace: JpegColorspace,
    pub progressive: bool,
}

/// Output pixel layout for decoding and input layout for encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelLayout {
    Rgb,
    Gray,
    Cmyk,
}

impl PixelLayout {
    fn raw(self) -> libc::c_int {
        (match self {
            Self::Rgb => raw::TJPF_TJPF_RGB,
            Self::Gray => raw::TJPF_TJPF_GRAY,
            Self::Cmyk => raw::TJPF_TJPF_CMYK,
        }) as libc::c_int
    }

    /// Bytes per pixel.
    pub fn channels(self) -> usize {
        match self {
            Self::Rgb => 3,
            Self::Gray => 1,
            Self::Cmyk => 4,
        }
    }
}

struct Handle(raw::tjhandle);

// The handle is only ever used by one thread at a time (it is owned, not shared).
unsafe impl Send for Handle {}

impl Handle {
    fn new(kind: raw::TJINIT) -> Result<Self, JpegError> {
        // SAFETY: tj3Init has no preconditions; a null return is handled.
        let ptr = unsafe { raw::tj3Init(kind as libc::c_int) };
        if ptr.is_null() {
            return Err(JpegError("libjpeg-turbo failed to initialise".into()));
        }
        Ok(Self(ptr))
    }

    fn error(&self) -> JpegError {
        // SAFETY: the handle is valid; tj3GetErrorStr returns a NUL-terminated static/handle-owned string.
        let msg = unsafe { CStr::from_ptr(raw::tj3GetErrorStr(self.0)) };
        JpegError(msg.to_string_lossy().into_owned())
    }

    fn set(&mut self, param: raw::TJPARAM, value: i64) -> Result<(), JpegError> {
        let value = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
        // SAFETY: valid handle; libjpeg-turbo validates param and value.
        if unsafe { raw::tj3Set(self.0, param as libc::c_int, value) } != 0 {
            return Err(self.error());
        }
        Ok(())
    }

    fn get(&self, param: raw::TJPARAM) -> libc::c_int {
        // SAFETY: valid handle.
        unsafe { raw::tj3Get(self.0, param as libc::c_int) }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: the handle came from tj3Init and is destroyed once.
        unsafe { raw::tj3Destroy(self.0) }
    }
}

/// A reusable JPEG decoder with the safety limits applied to every image.
pub struct JpegDecoder {
    handle: Handle,
    max_pixels: u64,
    max_scans: u32,
}

impl JpegDecoder {
    /// A decoder that fails on any libjpeg warning (truncated or corrupt data), refuses images
    /// above `max_pixels`, and refuses progressive files with more than `max_scans` scans.
    pub fn new(max_pixels: u64, max_scans: u32) -> Result<Self, JpegError> {
        Ok(Self {
            handle: Self::handle(max_pixels, max_scans)?,
            max_pixels,
            max_scans,
        })
    }

    fn handle(max_pixels: u64, max_scans: u32) -> Result<Handle, JpegError> {
        let mut handle = Handle::new(raw::TJINIT_TJINIT_DECOMPRESS)?;
        handle.set(raw::TJPARAM_TJPARAM_STOPONWARNING, 1)?;
        handle.set(raw::TJPARAM_TJPARAM_SCANLIMIT, max_scans as i64)?;
        handle.set(raw::TJPARAM_TJPARAM_MAXPIXELS, max_pixels as i64)?;
        Ok(handle)
    }

    /// The error of the last call, after which the handle is replaced by a fresh one: a
    /// libjpeg-turbo handle that has failed on one file (corrupt, truncated, over a limit) went
    /// on failing every later file (found by `processor/tests/hostile.rs`).
    fn failed(&mut self) -> JpegError {
        let err = self.handle.error();
        if let Ok(fresh) = Self::handle(self.max_pixels, self.max_scans) {
            self.handle = fresh;
        }
        err
    }

    /// Parse the header only.
    pub fn read_header(&mut self, data: &[u8]) -> Result<JpegHeader, JpegError> {
        // SAFETY: pointer and length describe `data`, which outlives the call.
        let rc = unsafe { raw::tj3DecompressHeader(self.handle.0, data.as_ptr(), data.len() as _) };
        if rc != 0 {
            return Err(self.failed());
        }
        let colorspace = match self.handle.get(raw::TJPARAM_TJPARAM_COLORSPACE) as raw::TJCS {
            raw::TJCS_TJCS_RGB => JpegColorspace::Rgb,
            raw::TJCS_TJCS_GRAY => JpegColorspace::Gray,
            raw::TJCS_TJCS_CMYK => JpegColorspace::Cmyk,
            raw::TJCS_TJCS_YCCK => JpegColorspace::Ycck,
            _ => JpegColorspace::YCbCr,
        };
        Ok(JpegHeader {
            width: self.handle.get(raw::TJPARAM_TJPARAM_JPEGWIDTH).max(0) as usize,
            height: self.handle.get(raw::TJPARAM_TJPARAM_JPEGHEIGHT).max(0) as usize,
            colorspace,
            progressive: self.handle.get(raw::TJPARAM_TJPARAM_PROGRESSIVE) == 1,
        })
    }

    /// Decode at `num/8` scale (DCT-domain shrink-on-load). `read_header` must have been called
    /// on the same data. Returns (pixels, width, height).
    pub fn decode_scaled(
        &mut self,
        data: &[u8],
        header: &JpegHeader,
        num: u8,
        layout: PixelLayout,
    ) -> Result<(Vec<u8>, usize, usize), JpegError> {
        // libjpeg-turbo lists its factors in lowest terms (1/4, not 2/8).
        let gcd = [8u8, 4, 2, 1]
            .into_iter()
            .find(|d| num.is_multiple_of(*d) && 8u8.is_multiple_of(*d))
            .unwrap_or(1);
        let factor = raw::tjscalingfactor {
            num: (num / gcd) as libc::c_int,
            denom: (8 / gcd) as libc::c_int,
        };
        // SAFETY: valid handle; the factor is validated by libjpeg-turbo.
        if unsafe { raw::tj3SetScalingFactor(self.handle.0, factor) } != 0 {
            return Err(self.failed());
        }
        let scaled = |d: usize| (d * num as usize).div_ceil(8);
        let (w, h) = (scaled(header.width), scaled(header.height));
        let pitch = w * layout.channels();
        let mut pixels = vec![0u8; pitch * h];
        // SAFETY: `pixels` holds exactly pitch*h bytes, the size libjpeg-turbo writes for the
        // scaled dimensions computed the same way (TJSCALED).
        let rc = unsafe {
            raw::tj3Decompress8(
                self.handle.0,
                data.as_ptr(),
                data.len() as _,
                pixels.as_mut_ptr(),
                pitch as libc::c_int,
                layout.raw(),
            )
        };
        if rc != 0 {
            return Err(self.failed());
        }
        Ok((pixels, w, h))
    }
}

/// A reusable baseline JPEG encoder.
pub struct JpegEncoder {
    handle: Handle,
}

impl JpegEncoder {
    /// Encoder at `quality` (1–100) with 4:2:0 chroma subsampling (sharp's default below q90).
    pub fn new(quality: u8) -> Result<Self, JpegError> {
        let mut handle = Handle::new(raw::TJINIT_TJINIT_COMPRESS)?;
        handle.set(raw::TJPARAM_TJPARAM_QUALITY, quality.clamp(1, 100) as i64)?;
        handle.set(raw::TJPARAM_TJPARAM_SUBSAMP, raw::TJSAMP_TJSAMP_420 as i64)?;
        Ok(Self { handle })
    }

    /// Write progressive JPEGs (used by tests to make progressive inputs).
    pub fn set_progressive(&mut self, on: bool) -> Result<(), JpegError> {
        self.handle.set(raw::TJPARAM_TJPARAM_PROGRESSIVE, on as i64)
    }

    /// Encode packed RGB pixels.
    pub fn encode_rgb(
        &mut self,
        pixels: &[u8],
        width: usize,
        height: usize,
    ) -> Result<Vec<u8>, JpegError> {
        assert_eq!(pixels.len(), width * height * 3, "RGB buffer size");
        let mut out: *mut libc::c_uchar = std::ptr::null_mut();
        let mut size = 0;
        // SAFETY: the source buffer matches width*height*3; libjpeg-turbo allocates `out`
        // (NOREALLOC is off), which we copy and free with tj3Free below.
        let rc = unsafe {
            raw::tj3Compress8(
                self.handle.0,
                pixels.as_ptr(),
                width as libc::c_int,
                (width * 3) as libc::c_int,
                height as libc::c_int,
                raw::TJPF_TJPF_RGB as libc::c_int,
                &mut out,
                &mut size,
            )
        };
        let result = if rc != 0 {
            Err(self.handle.error())
        } else {
            // SAFETY: on success `out` points at `size` initialised bytes.
            Ok(unsafe { std::slice::from_raw_parts(out, size as usize) }.to_vec())
        };
        if !out.is_null() {
            // SAFETY: `out` was allocated by libjpeg-turbo.
            unsafe { raw::tj3Free(out.cast()) };
        }
        result
    }
}
