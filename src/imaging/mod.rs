//! Image intake: the one way an image from outside becomes pixels. Used by alt text and
//! the asset library, and later by skills.
//!
//! Nothing here touches the disk: [`decode`] works on bytes in memory, and
//! [`decode_reader`] on a reader (the library's, which opens a sealed file). In order:
//! 1. refuse empty input and input over the byte limit;
//! 2. tell the format from the first bytes (never from a file name or a declared
//!    type): JPEG, PNG, GIF, WebP and BMP are read; SVG, HEIC/AVIF, TIFF and anything
//!    else are refused with a message that says what to send instead;
//! 3. read the dimensions from the header and refuse more than the pixel limit
//!    *before* decoding, so a small file declaring a huge image (a decompression
//!    bomb) costs nothing; the decoder also gets an allocation limit;
//! 4. decode (the first frame of an animated GIF) and apply the EXIF orientation.
//!
//! An image that is only going to be scaled down ([`decode_within`]) may be decoded
//! smaller in the first place: a JPEG at least twice the size wanted is decoded at
//! 1/2, 1/4 or 1/8 of its size by the decoder's scaled IDCT, which skips most of the
//! work of decoding and then reducing all of its pixels.

use crate::http::ApiError;
use actix_web::http::StatusCode;
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader};
use std::io::Cursor;

/// What intake accepts.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_pixels: u64,
}

/// Why an image was refused.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("the image is empty (0 bytes)")]
    Empty,
    #[error("the image is {size} bytes; the limit is {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    #[error("the image is {width}×{height} pixels ({pixels} in all); the limit is {limit} pixels")]
    TooManyPixels {
        width: u32,
        height: u32,
        pixels: u64,
        limit: u64,
    },
    #[error("{0}")]
    Unsupported(String),
    #[error("the image cannot be read: {0}")]
    Broken(String),
}

impl From<IntakeError> for ApiError {
    fn from(e: IntakeError) -> ApiError {
        let (status, code) = match &e {
            IntakeError::Empty => (StatusCode::BAD_REQUEST, "empty_image"),
            IntakeError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "image_too_large"),
            IntakeError::TooManyPixels { .. } => (StatusCode::BAD_REQUEST, "image_too_many_pixels"),
            IntakeError::Unsupported(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_image")
            }
            IntakeError::Broken(_) => (StatusCode::BAD_REQUEST, "invalid_image"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// The formats intake reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Jpeg,
    Png,
    Gif,
    Webp,
    Bmp,
}

impl Format {
    fn image_format(self) -> ImageFormat {
        match self {
            Format::Jpeg => ImageFormat::Jpeg,
            Format::Png => ImageFormat::Png,
            Format::Gif => ImageFormat::Gif,
            Format::Webp => ImageFormat::WebP,
            Format::Bmp => ImageFormat::Bmp,
        }
    }

    /// The media type.
    pub fn media_type(self) -> &'static str {
        match self {
            Format::Jpeg => "image/jpeg",
            Format::Png => "image/png",
            Format::Gif => "image/gif",
            Format::Webp => "image/webp",
            Format::Bmp => "image/bmp",
        }
    }
}

const SEND_INSTEAD: &str = "send a JPEG, PNG, GIF, WebP or BMP image";

/// Tells the format from the first bytes.
pub fn sniff(bytes: &[u8]) -> Result<Format, IntakeError> {
    let starts = |m: &[u8]| bytes.starts_with(m);
    if starts(&[0xFF, 0xD8, 0xFF]) {
        return Ok(Format::Jpeg);
    }
    if starts(b"\x89PNG\r\n\x1a\n") {
        return Ok(Format::Png);
    }
    if starts(b"GIF87a") || starts(b"GIF89a") {
        return Ok(Format::Gif);
    }
    if bytes.len() >= 12 && starts(b"RIFF") && &bytes[8..12] == b"WEBP" {
        return Ok(Format::Webp);
    }
    if starts(b"BM") && bytes.len() >= 26 {
        return Ok(Format::Bmp);
    }
    let head = &bytes[..bytes.len().min(1024)];
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    let what = if text.contains("<svg") {
        format!(
            "SVG images are not supported (they are drawings, and can carry scripts); export it as PNG, or {SEND_INSTEAD}"
        )
    } else if bytes.len() >= 12 && &bytes[4..8] == b"ftyp" {
        format!("HEIC and AVIF images are not supported; {SEND_INSTEAD}")
    } else if starts(b"II*\0") || starts(b"MM\0*") {
        format!("TIFF images are not supported; {SEND_INSTEAD}")
    } else if text.trim_start().starts_with('<') {
        format!("this is HTML or XML, not an image; {SEND_INSTEAD}")
    } else {
        format!("this is not an image format Easel reads; {SEND_INSTEAD}")
    };
    Err(IntakeError::Unsupported(what))
}

/// Whether a JPEG's last scan is followed by its end-of-image marker. JPEG decoders
/// fill a cut-off image with grey rather than fail, so a truncated upload would
/// otherwise be described as if it were whole. Inside entropy-coded data every 0xFF
/// is followed by 0x00, so the last start-of-scan marker (FF DA) found is the real
/// one, and an end marker (FF D9) must come after it (trailing bytes after it are
/// fine; an embedded thumbnail's own markers come earlier). Fed in pieces, so a file
/// streamed to disk is checked without holding it.
#[derive(Debug, Default, Clone)]
pub struct JpegEnd {
    at: u64,
    after_ff: bool,
    last_sos: Option<u64>,
    last_eoi: Option<u64>,
}

impl JpegEnd {
    /// Reads the next piece of the file.
    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.after_ff {
                match b {
                    0xDA => self.last_sos = Some(self.at),
                    0xD9 => self.last_eoi = Some(self.at),
                    _ => {}
                }
            }
            self.after_ff = b == 0xFF;
            self.at += 1;
        }
    }

    /// Whether the file so far ends its last scan.
    pub fn complete(&self) -> bool {
        matches!((self.last_sos, self.last_eoi), (Some(sos), Some(eoi)) if eoi > sos)
    }
}

fn jpeg_complete(bytes: &[u8]) -> bool {
    let mut end = JpegEnd::default();
    end.feed(bytes);
    end.complete()
}

/// A decoded image, upright.
pub struct Intake {
    pub image: DynamicImage,
    pub format: Format,
}

/// Checks, decodes and orients `bytes`.
pub fn decode(bytes: &[u8], limits: Limits) -> Result<Intake, IntakeError> {
    let format = checked(bytes, limits)?;
    decode_reader(Cursor::new(bytes), format, limits)
}

/// The checks made on the bytes before decoding: not empty, within the byte limit, a
/// format Easel reads, and a JPEG not cut off. Returns the format.
fn checked(bytes: &[u8], limits: Limits) -> Result<Format, IntakeError> {
    if bytes.is_empty() {
        return Err(IntakeError::Empty);
    }
    let size = bytes.len() as u64;
    if size > limits.max_bytes {
        return Err(IntakeError::TooLarge {
            size,
            limit: limits.max_bytes,
        });
    }
    let format = sniff(bytes)?;
    if format == Format::Jpeg && !jpeg_complete(bytes) {
        return Err(IntakeError::Broken(
            "the JPEG is truncated (its data ends before the end-of-image marker)".into(),
        ));
    }
    Ok(format)
}

/// Decodes an image of a known `format` from a reader (a sealed file being opened, so
/// the encoded bytes need not be in memory): the pixel limit is checked from the
/// header first, and the EXIF orientation applied. [`decode`] checks the bytes first.
pub fn decode_reader<R: std::io::BufRead + std::io::Seek>(
    reader: R,
    format: Format,
    limits: Limits,
) -> Result<Intake, IntakeError> {
    let broken = |e: image::ImageError| IntakeError::Broken(e.to_string());
    let reader = ImageReader::with_format(reader, format.image_format());
    let mut decoder = reader.into_decoder().map_err(broken)?;
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels {
        return Err(IntakeError::TooManyPixels {
            width,
            height,
            pixels,
            limit: limits.max_pixels,
        });
    }
    if pixels == 0 {
        return Err(IntakeError::Broken("it has no pixels".into()));
    }
    // Defence in depth: the decoder may not allocate more than the pixels allowed at
    // 16 bytes each (RGBA at 32 bits a channel), plus room for its own buffers.
    let mut dl = image::Limits::default();
    dl.max_alloc = Some(
        limits
            .max_pixels
            .saturating_mul(16)
            .saturating_add(64 << 20),
    );
    decoder.set_limits(dl).map_err(broken)?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(broken)?;
    image.apply_orientation(orientation);
    Ok(Intake { image, format })
}

/// Like [`decode`] for an image that will be scaled down to at most `longest` pixels
/// on its longest side: a large JPEG may come back smaller than it is (never below
/// `longest`, so [`downscale`] still makes the final size).
pub fn decode_within(bytes: &[u8], limits: Limits, longest: u32) -> Result<Intake, IntakeError> {
    let format = checked(bytes, limits)?;
    if format == Format::Jpeg
        && let Some(image) = jpeg_scaled(Cursor::new(bytes), limits, longest)
    {
        return Ok(Intake { image, format });
    }
    decode_reader(Cursor::new(bytes), format, limits)
}

/// A JPEG decoded at the smallest DCT scale (1/8, 1/4, 1/2) that keeps its longest
/// side at `longest` or more, upright. `None` when no reduction applies or this
/// decoder cannot read it (CMYK, 16-bit, anything it refuses): the caller then takes
/// the ordinary path, which reports what is wrong, if anything.
fn jpeg_scaled<R: std::io::Read>(reader: R, limits: Limits, longest: u32) -> Option<DynamicImage> {
    // A hostile file must not take the thread down with a decoder panic.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        jpeg_scaled_inner(reader, limits, longest)
    }))
    .ok()
    .flatten()
}

fn jpeg_scaled_inner<R: std::io::Read>(
    reader: R,
    limits: Limits,
    longest: u32,
) -> Option<DynamicImage> {
    let mut d = jpeg_decoder::Decoder::new(reader);
    d.read_info().ok()?;
    let info = d.info()?;
    let (w, h) = (u32::from(info.width), u32::from(info.height));
    let side = w.max(h);
    let pixels = u64::from(w) * u64::from(h);
    let longest = longest.max(1);
    if side < longest.saturating_mul(2) || pixels == 0 || pixels > limits.max_pixels {
        return None;
    }
    if !matches!(
        info.pixel_format,
        jpeg_decoder::PixelFormat::L8 | jpeg_decoder::PixelFormat::RGB24
    ) {
        return None;
    }
    // The smallest scale whose longest side is still at least `longest`.
    let want =
        |n: u32| u16::try_from((u64::from(n) * u64::from(longest)).div_ceil(u64::from(side))).ok();
    let (sw, sh) = d.scale(want(w)?, want(h)?).ok()?;
    let (sw, sh) = (u32::from(sw), u32::from(sh));
    if sw.max(sh) >= side || sw.max(sh) < longest {
        return None;
    }
    d.set_max_decoding_buffer_size(usize::try_from(limits.max_pixels.saturating_mul(4)).ok()?);
    let pixels = d.decode().ok()?;
    let mut image = match info.pixel_format {
        jpeg_decoder::PixelFormat::L8 => {
            DynamicImage::ImageLuma8(image::GrayImage::from_raw(sw, sh, pixels)?)
        }
        _ => DynamicImage::ImageRgb8(image::RgbImage::from_raw(sw, sh, pixels)?),
    };
    let orientation = d
        .exif_data()
        .and_then(image::metadata::Orientation::from_exif_chunk)
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    image.apply_orientation(orientation);
    Some(image)
}

/// `image` scaled down (never up) so its longest side is at most `longest`, keeping
/// its proportions. Area-averaging, which is sharp and alias-free for large
/// reductions: a whole-factor box reduction first (integer sums), then an exact area
/// average to the final size (fixed-point weights), each split across the cores.
pub fn downscale(image: DynamicImage, longest: u32) -> DynamicImage {
    let longest = longest.max(1);
    let side = image.width().max(image.height());
    if side <= longest {
        return image;
    }
    let f = side / longest;
    let image = if f >= 2 {
        match image {
            DynamicImage::ImageRgb8(i) => DynamicImage::ImageRgb8(box_reduce::<_, 3>(&i, f)),
            DynamicImage::ImageRgba8(i) => DynamicImage::ImageRgba8(box_reduce::<_, 4>(&i, f)),
            DynamicImage::ImageLuma8(i) => DynamicImage::ImageLuma8(box_reduce::<_, 1>(&i, f)),
            DynamicImage::ImageLumaA8(i) => DynamicImage::ImageLumaA8(box_reduce::<_, 2>(&i, f)),
            other => other,
        }
    } else {
        image
    };
    // The rest (a factor below 2): an exact area average.
    let (w, h) = (image.width(), image.height());
    let scale = f64::from(longest) / f64::from(w.max(h));
    if scale >= 1.0 {
        return image;
    }
    let nw = ((f64::from(w) * scale).round() as u32).clamp(1, longest);
    let nh = ((f64::from(h) * scale).round() as u32).clamp(1, longest);
    match image {
        DynamicImage::ImageRgb8(i) => DynamicImage::ImageRgb8(area_resize::<_, 3>(&i, nw, nh)),
        DynamicImage::ImageRgba8(i) => DynamicImage::ImageRgba8(area_resize::<_, 4>(&i, nw, nh)),
        DynamicImage::ImageLuma8(i) => DynamicImage::ImageLuma8(area_resize::<_, 1>(&i, nw, nh)),
        DynamicImage::ImageLumaA8(i) => DynamicImage::ImageLumaA8(area_resize::<_, 2>(&i, nw, nh)),
        other => other.resize_exact(nw, nh, image::imageops::FilterType::Triangle),
    }
}

/// Fixed-point one of area weights.
const ONE: u32 = 1 << 16;

/// For each of `to` output samples spanning `from` input samples (`to <= from`): the
/// first input it covers and the weights (summing to [`ONE`]) of the inputs it covers,
/// by how much of each falls inside it.
fn area_weights(from: usize, to: usize) -> Vec<(usize, Vec<u32>)> {
    let scale = from as f64 / to as f64;
    (0..to)
        .map(|o| {
            let (a, b) = (o as f64 * scale, ((o + 1) as f64 * scale).min(from as f64));
            let first = (a.floor() as usize).min(from - 1);
            let last = (b.ceil() as usize).clamp(first + 1, from);
            let mut w: Vec<u32> = (first..last)
                .map(|i| {
                    let cover = b.min(i as f64 + 1.0) - a.max(i as f64);
                    (cover.max(0.0) / (b - a) * f64::from(ONE)).round() as u32
                })
                .collect();
            // Rounding must not make the weights add up to more or less than one.
            let sum: u32 = w.iter().sum();
            if let Some(top) = w.iter_mut().max() {
                *top = (*top + ONE).saturating_sub(sum);
            }
            (first, w)
        })
        .collect()
}

/// `img` averaged down to `nw`×`nh` (each no larger than the input's), by area:
/// across, then down, each pass split across the cores. `C` is the channel count.
fn area_resize<P, const C: usize>(
    img: &image::ImageBuffer<P, Vec<u8>>,
    nw: u32,
    nh: u32,
) -> image::ImageBuffer<P, Vec<u8>>
where
    P: image::Pixel<Subpixel = u8>,
{
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (nw, nh) = ((nw as usize).clamp(1, w), (nh as usize).clamp(1, h));
    let src: &[u8] = img.as_raw();
    let round = |acc: u32| ((acc + ONE / 2) >> 16).min(255) as u8;
    let across = area_weights(w, nw);
    let mut wide = vec![0u8; nw * h * C];
    in_bands(&mut wide, nw * C, |y, dst| {
        let line = &src[y * w * C..(y + 1) * w * C];
        for ((first, weights), out) in across.iter().zip(dst.chunks_exact_mut(C)) {
            let mut acc = [0u32; C];
            for (j, wt) in weights.iter().enumerate() {
                let px = &line[(first + j) * C..(first + j + 1) * C];
                for k in 0..C {
                    acc[k] += wt * u32::from(px[k]);
                }
            }
            for k in 0..C {
                out[k] = round(acc[k]);
            }
        }
    });
    let down = area_weights(h, nh);
    let mut out = vec![0u8; nw * nh * C];
    let row_len = nw * C;
    in_bands(&mut out, row_len, |oy, dst| {
        let (first, weights) = &down[oy];
        let mut acc = vec![0u32; row_len];
        for (j, wt) in weights.iter().enumerate() {
            let line = &wide[(first + j) * row_len..(first + j + 1) * row_len];
            for (a, &v) in acc.iter_mut().zip(line) {
                *a += wt * u32::from(v);
            }
        }
        for (d, a) in dst.iter_mut().zip(acc) {
            *d = round(a);
        }
    });
    image::ImageBuffer::from_raw(nw as u32, nh as u32, out).unwrap_or_else(|| {
        // The buffer is made to the exact size above; this cannot be reached.
        image::ImageBuffer::new(nw as u32, nh as u32)
    })
}

/// Fills `out`, rows of `row_len` bytes, calling `row(index, row)` for each, in bands
/// of rows split across the cores.
fn in_bands(out: &mut [u8], row_len: usize, row: impl Fn(usize, &mut [u8]) + Sync) {
    let rows = out.len() / row_len.max(1);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(rows)
        .max(1);
    let per = rows.div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        for (i, band) in out.chunks_mut(per * row_len).enumerate() {
            let row = &row;
            scope.spawn(move || {
                for (j, dst) in band.chunks_mut(row_len).enumerate() {
                    row(i * per + j, dst);
                }
            });
        }
    });
}

/// Averages each `f`×`f` block into one pixel (a remainder of fewer than `f` pixels
/// at the right and bottom edges is dropped). `C` is the pixel's channel count.
fn box_reduce<P, const C: usize>(
    img: &image::ImageBuffer<P, Vec<u8>>,
    f: u32,
) -> image::ImageBuffer<P, Vec<u8>>
where
    P: image::Pixel<Subpixel = u8>,
{
    let c = C;
    let (w, h) = (img.width() as usize, img.height() as usize);
    let f = f as usize;
    let (ow, oh) = ((w / f).max(1), (h / f).max(1));
    let src: &[u8] = img.as_raw();
    let mut out = vec![0u8; ow * oh * c];
    let area = (f.min(w) * f.min(h)) as u32;
    let row = |oy: usize, dst: &mut [u8]| {
        let mut acc = vec![0u32; ow * c];
        for y in oy * f..((oy + 1) * f).min(h) {
            let line = &src[y * w * c..(y + 1) * w * c];
            for (ox, a) in acc.chunks_exact_mut(C).enumerate() {
                let block = &line[ox * f * C..((ox + 1) * f).min(w) * C];
                let mut sum = [0u32; C];
                for px in block.chunks_exact(C) {
                    for k in 0..C {
                        sum[k] += u32::from(px[k]);
                    }
                }
                for k in 0..C {
                    a[k] += sum[k];
                }
            }
        }
        for (d, s) in dst.iter_mut().zip(&acc) {
            *d = ((s + area / 2) / area) as u8;
        }
    };
    in_bands(&mut out, ow * c, row);
    image::ImageBuffer::from_raw(ow as u32, oh as u32, out).unwrap_or_else(|| {
        // The buffer is made to the exact size above; this cannot be reached.
        image::ImageBuffer::new(ow as u32, oh as u32)
    })
}

const WHITE: [u8; 3] = [255, 255, 255];

/// The pixels as RGB, any transparency laid over white.
pub fn flatten(image: &DynamicImage) -> image::RgbImage {
    flatten_onto(image, WHITE)
}

/// The pixels as RGB, any transparency laid over `background`.
pub fn flatten_onto(image: &DynamicImage, background: [u8; 3]) -> image::RgbImage {
    if !image.color().has_alpha() {
        return image.to_rgb8();
    }
    let rgba = image.to_rgba8();
    image::RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let p = rgba.get_pixel(x, y).0;
        let a = u16::from(p[3]);
        let mix = |c: u8, b: u8| ((u16::from(c) * a + u16::from(b) * (255 - a) + 127) / 255) as u8;
        image::Rgb([
            mix(p[0], background[0]),
            mix(p[1], background[1]),
            mix(p[2], background[2]),
        ])
    })
}

/// `image` as a JPEG of `quality` (1-100): the compact form sent to providers.
pub fn to_jpeg(image: &DynamicImage, quality: u8) -> Result<Vec<u8>, IntakeError> {
    to_jpeg_onto(image, quality, WHITE)
}

/// A `data:` URI of `bytes`.
pub fn data_uri(media_type: &str, bytes: &[u8]) -> String {
    use base64::Engine as _;
    format!(
        "data:{media_type};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// The bytes of an image sent as base64 text: bare, or a `data:…;base64,` URI;
/// whitespace (line breaks) is ignored. `None` when it is not base64.
pub fn from_base64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let data = match text.split_once(";base64,") {
        Some((head, data)) if head.starts_with("data:") => data,
        _ => text,
    };
    let cleaned: String = data.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(cleaned.as_bytes())
        .ok()
}

/// [`to_jpeg`] with transparency laid over `background`.
pub fn to_jpeg_onto(
    image: &DynamicImage,
    quality: u8,
    background: [u8; 3],
) -> Result<Vec<u8>, IntakeError> {
    let rgb = flatten_onto(image, background);
    let mut out = Vec::with_capacity((rgb.width() * rgb.height() / 4) as usize);
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, quality.clamp(1, 100))
        .encode_image(&rgb)
        .map_err(|e| IntakeError::Broken(format!("cannot re-encode it: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_bytes: 1 << 20,
        max_pixels: 1_000_000,
    };

    fn png(w: u32, h: u32) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]));
        let mut out = Vec::new();
        DynamicImage::ImageRgb8(img)
            .write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .unwrap();
        out
    }

    #[test]
    fn every_supported_format_decodes() {
        let img = DynamicImage::ImageRgb8(image::RgbImage::from_pixel(
            20,
            10,
            image::Rgb([200, 10, 10]),
        ));
        for (f, fmt) in [
            (Format::Jpeg, ImageFormat::Jpeg),
            (Format::Png, ImageFormat::Png),
            (Format::Gif, ImageFormat::Gif),
            (Format::Webp, ImageFormat::WebP),
            (Format::Bmp, ImageFormat::Bmp),
        ] {
            let mut out = Vec::new();
            img.write_to(&mut Cursor::new(&mut out), fmt).unwrap();
            let got = decode(&out, LIMITS).unwrap();
            assert_eq!(got.format, f);
            assert_eq!((got.image.width(), got.image.height()), (20, 10), "{f:?}");
        }
    }

    #[test]
    fn a_huge_declared_size_is_refused_before_decoding() {
        // A valid PNG header declaring 100000×100000, then garbage: nothing is decoded.
        let mut bomb = png(1, 1);
        bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        // The header's CRC no longer matches; fix it so the header is read.
        let crc = crc32(&bomb[12..29]);
        bomb[29..33].copy_from_slice(&crc.to_be_bytes());
        let err = decode(&bomb, LIMITS).err().expect("refused");
        assert!(
            matches!(err, IntakeError::TooManyPixels { width: 100_000, .. }),
            "{err}"
        );
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in data {
            crc ^= u32::from(b);
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

    #[test]
    fn bad_input_is_refused_with_a_reason() {
        assert!(matches!(decode(&[], LIMITS), Err(IntakeError::Empty)));
        let big = vec![0u8; (LIMITS.max_bytes + 1) as usize];
        assert!(matches!(
            decode(&big, LIMITS),
            Err(IntakeError::TooLarge { .. })
        ));
        let svg = b"<?xml version=\"1.0\"?><svg xmlns=\"http://www.w3.org/2000/svg\"/>";
        let err = decode(svg, LIMITS).err().unwrap().to_string();
        assert!(err.contains("SVG"), "{err}");
        let html = b"<!doctype html><html></html>";
        let err = decode(html, LIMITS).err().unwrap().to_string();
        assert!(err.contains("HTML"), "{err}");
        let full = png(50, 50);
        let err = decode(&full[..full.len() / 2], LIMITS).err().unwrap();
        assert!(matches!(err, IntakeError::Broken(_)), "{err}");
        let mut jpeg = Vec::new();
        DynamicImage::ImageRgb8(image::RgbImage::new(64, 64))
            .write_to(&mut Cursor::new(&mut jpeg), ImageFormat::Jpeg)
            .unwrap();
        let err = decode(&jpeg[..jpeg.len() - 40], LIMITS).err().unwrap();
        assert!(err.to_string().contains("truncated"), "{err}");
        let mut trailing = jpeg.clone();
        trailing.extend_from_slice(b"trailing bytes some cameras add");
        assert!(decode(&trailing, LIMITS).is_ok());
    }

    /// `jpeg` with an EXIF APP1 segment carrying `orientation`.
    fn with_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
        let mut tiff = Vec::new();
        tiff.extend_from_slice(b"II*\0");
        tiff.extend_from_slice(&8u32.to_le_bytes());
        tiff.extend_from_slice(&1u16.to_le_bytes()); // one entry
        tiff.extend_from_slice(&0x0112u16.to_le_bytes()); // Orientation
        tiff.extend_from_slice(&3u16.to_le_bytes()); // SHORT
        tiff.extend_from_slice(&1u32.to_le_bytes());
        tiff.extend_from_slice(&orientation.to_le_bytes());
        tiff.extend_from_slice(&[0, 0]);
        tiff.extend_from_slice(&0u32.to_le_bytes()); // no next IFD
        let mut app1 = b"Exif\0\0".to_vec();
        app1.extend_from_slice(&tiff);
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1]);
        out.extend_from_slice(&((app1.len() + 2) as u16).to_be_bytes());
        out.extend_from_slice(&app1);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    #[test]
    fn the_exif_orientation_is_applied() {
        let img = DynamicImage::ImageRgb8(image::RgbImage::new(20, 10));
        let mut jpeg = Vec::new();
        img.write_to(&mut Cursor::new(&mut jpeg), ImageFormat::Jpeg)
            .unwrap();
        let upright = decode(&jpeg, LIMITS).unwrap().image;
        assert_eq!((upright.width(), upright.height()), (20, 10));
        let turned = decode(&with_orientation(&jpeg, 6), LIMITS).unwrap().image;
        assert_eq!((turned.width(), turned.height()), (10, 20));
    }

    /// A smooth photo-like picture with a sharp edge, as a JPEG (q90).
    fn photo(w: u32, h: u32, gray: bool) -> Vec<u8> {
        let rgb = image::RgbImage::from_fn(w, h, |x, y| {
            let edge = if x > w / 3 { 60 } else { 0 };
            image::Rgb([
                (x * 200 / w + edge) as u8,
                (y * 220 / h) as u8,
                ((x + y) % 97 + 80) as u8,
            ])
        });
        let img = if gray {
            DynamicImage::ImageLuma8(DynamicImage::ImageRgb8(rgb).to_luma8())
        } else {
            DynamicImage::ImageRgb8(rgb)
        };
        let mut out = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
            .encode_image(&img)
            .unwrap();
        out
    }

    fn mean_abs_diff(a: &DynamicImage, b: &DynamicImage) -> f64 {
        let (a, b) = (a.to_rgb8(), b.to_rgb8());
        assert_eq!(a.dimensions(), b.dimensions());
        let sum: u64 = a
            .as_raw()
            .iter()
            .zip(b.as_raw())
            .map(|(x, y)| u64::from(x.abs_diff(*y)))
            .sum();
        sum as f64 / a.as_raw().len() as f64
    }

    #[test]
    fn a_large_jpeg_decoded_smaller_looks_like_the_full_decode_scaled() {
        let limits = Limits {
            max_bytes: 16 << 20,
            max_pixels: 50_000_000,
        };
        for (w, h, gray, orientation, longest) in [
            (1200, 800, false, 1, 256), // 1/4
            (800, 1200, true, 1, 300),  // 1/2, grey
            (1600, 700, false, 6, 180), // 1/8, turned a quarter
        ] {
            let jpeg = with_orientation(&photo(w, h, gray), orientation);
            let full = downscale(decode(&jpeg, limits).unwrap().image, longest);
            let within = decode_within(&jpeg, limits, longest).unwrap();
            assert_eq!(within.format, Format::Jpeg);
            let side = within.image.width().max(within.image.height());
            assert!(
                side >= longest && side < w.max(h) / 2 + 8,
                "{w}×{h} to {longest}: decoded at {side}, smaller but not below the target"
            );
            let small = downscale(within.image, longest);
            assert_eq!(small.color().channel_count(), full.color().channel_count());
            // Rounding may leave the short side a pixel apart (88 rows at 1/8 where
            // whole-factor boxes keep 87): compare at the same size.
            let (fw, fh) = (full.width(), full.height());
            assert_eq!(small.width().max(small.height()), fw.max(fh));
            assert!(small.width().abs_diff(fw) + small.height().abs_diff(fh) <= 1);
            let small = small.resize_exact(fw, fh, image::imageops::FilterType::Triangle);
            let diff = mean_abs_diff(&small, &full);
            assert!(
                diff < 2.5,
                "{w}×{h} to {longest}: off by {diff:.2} a channel on average"
            );
        }
        // Too small to reduce, or not a JPEG: the ordinary decode, same pixels.
        for bytes in [photo(900, 600, false), png(300, 200)] {
            let a = decode_within(&bytes, limits, 512).unwrap().image;
            let b = decode(&bytes, limits).unwrap().image;
            assert_eq!(a.as_bytes(), b.as_bytes());
        }
        // Bad input gets the ordinary reasons.
        let jpeg = photo(1200, 800, false);
        let err = decode_within(&jpeg[..jpeg.len() / 2], limits, 256)
            .err()
            .unwrap();
        assert!(err.to_string().contains("truncated"), "{err}");
        let tight = Limits {
            max_bytes: 16 << 20,
            max_pixels: 500_000,
        };
        assert!(matches!(
            decode_within(&jpeg, tight, 256),
            Err(IntakeError::TooManyPixels { .. })
        ));
        let mut hostile = jpeg.clone();
        for b in hostile.iter_mut().skip(600).step_by(97) {
            *b ^= 0x5A;
        }
        // Whatever the damaged scan gives, it is an answer or a refusal, never a panic.
        let _ = decode_within(&hostile, limits, 256);
    }

    #[test]
    fn the_area_average_weighs_each_pixel_by_how_much_of_it_is_covered() {
        // 3 pixels to 2: each output covers one and a half inputs.
        let row = image::GrayImage::from_raw(3, 1, vec![0, 90, 180]).unwrap();
        assert_eq!(area_resize::<_, 1>(&row, 2, 1).into_raw(), [30, 150]);
        for (from, to) in [(7, 4), (1000, 999), (1999, 1024), (5, 1)] {
            let weights = area_weights(from, to);
            assert_eq!(weights.len(), to);
            for (first, w) in &weights {
                assert_eq!(w.iter().sum::<u32>(), ONE, "{from}→{to}");
                assert!(first + w.len() <= from);
            }
        }
        // A flat colour stays flat; a gradient keeps its mean.
        let flat = image::RgbImage::from_pixel(301, 203, image::Rgb([12, 200, 77]));
        let out = area_resize::<_, 3>(&flat, 200, 135);
        assert!(out.pixels().all(|p| p.0 == [12, 200, 77]));
        let ramp = image::GrayImage::from_fn(300, 10, |x, _| image::Luma([(x * 255 / 299) as u8]));
        let out = area_resize::<_, 1>(&ramp, 170, 7);
        let mean = |v: &[u8]| v.iter().map(|&b| f64::from(b)).sum::<f64>() / v.len() as f64;
        assert!((mean(ramp.as_raw()) - mean(out.as_raw())).abs() < 0.6);
    }

    #[test]
    fn downscale_keeps_proportions_and_never_enlarges() {
        let img = DynamicImage::ImageRgb8(image::RgbImage::new(400, 100));
        let d = downscale(img.clone(), 200);
        assert_eq!((d.width(), d.height()), (200, 50));
        let big = DynamicImage::ImageRgba8(image::RgbaImage::from_fn(1000, 700, |x, _| {
            image::Rgba([if x % 2 == 0 { 255 } else { 0 }, 10, 20, 255])
        }));
        let d = downscale(big, 100);
        assert_eq!((d.width(), d.height()), (100, 70));
        // Stripes one pixel wide average to grey, not alias to black or white.
        let p = d.to_rgba8().get_pixel(50, 35).0;
        assert!((120..=135).contains(&p[0]) && p[1] == 10, "{p:?}");
        let same = downscale(img, 1000);
        assert_eq!((same.width(), same.height()), (400, 100));
    }

    #[test]
    fn transparency_is_laid_over_white() {
        let img = DynamicImage::ImageRgba8(image::RgbaImage::from_pixel(
            2,
            2,
            image::Rgba([0, 0, 0, 0]),
        ));
        assert_eq!(flatten(&img).get_pixel(0, 0).0, [255, 255, 255]);
        let jpeg = to_jpeg(&img, 85).unwrap();
        assert_eq!(sniff(&jpeg).unwrap(), Format::Jpeg);
    }
}
