//! Local image work of the skills engine (resize, crop, convert, compose): decoded
//! under the same limits as every image Easel takes in, done on a blocking thread.

use super::engine::Img;
use super::nodes::LocalOp;
use crate::http::ApiError;
use crate::imaging::{self, Limits};
use image::imageops::FilterType;
use image::{DynamicImage, GenericImageView, ImageFormat, Rgba, RgbaImage};

fn failed(e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(
        "image_failed",
        format!("the image could not be processed: {e}"),
    )
}

/// Encodes `image` as `media_type` (JPEG at `quality`, onto `background`).
pub fn encode(
    image: &DynamicImage,
    media_type: &str,
    quality: u8,
    background: [u8; 4],
) -> Result<Img, ApiError> {
    let mut out = Vec::new();
    let media_type = match media_type {
        "image/jpeg" => {
            let [r, g, b, _] = background;
            out = imaging::to_jpeg_onto(image, quality, [r, g, b]).map_err(failed)?;
            "image/jpeg"
        }
        "image/webp" => {
            image
                .to_rgba8()
                .write_to(&mut std::io::Cursor::new(&mut out), ImageFormat::WebP)
                .map_err(failed)?;
            "image/webp"
        }
        _ => {
            image
                .write_to(&mut std::io::Cursor::new(&mut out), ImageFormat::Png)
                .map_err(failed)?;
            "image/png"
        }
    };
    Ok(Img {
        bytes: out.into(),
        media_type: media_type.into(),
        width: image.width(),
        height: image.height(),
    })
}

/// The format an edited image is written in: JPEG stays JPEG, the rest become PNG.
fn keep(media_type: &str) -> &'static str {
    if media_type == "image/jpeg" {
        "image/jpeg"
    } else {
        "image/png"
    }
}

/// Applies one operation.
pub fn apply(
    op: &LocalOp,
    img: &Img,
    background: Option<&Img>,
    limits: Limits,
) -> Result<Img, ApiError> {
    let image = imaging::decode(&img.bytes, limits)
        .map_err(|e| ApiError::bad_request("invalid_image", e.to_string()))?
        .image;
    let white = [255, 255, 255, 255];
    match op {
        LocalOp::Resize { width, height, fit } => {
            let (w0, h0) = image.dimensions();
            let (w, h) = match (width, height) {
                (Some(w), Some(h)) => (*w, *h),
                (Some(w), None) => (
                    *w,
                    ((u64::from(h0) * u64::from(*w)) / u64::from(w0.max(1))).max(1) as u32,
                ),
                (None, Some(h)) => (
                    ((u64::from(w0) * u64::from(*h)) / u64::from(h0.max(1))).max(1) as u32,
                    *h,
                ),
                (None, None) => (w0, h0),
            };
            if u64::from(w) * u64::from(h) > limits.max_pixels {
                return Err(ApiError::bad_request(
                    "image_too_large",
                    format!(
                        "{w}x{h} is more pixels than the limit of {}",
                        limits.max_pixels
                    ),
                ));
            }
            let out = match fit.as_str() {
                "cover" => image.resize_to_fill(w, h, FilterType::Lanczos3),
                "fill" => image.resize_exact(w, h, FilterType::Lanczos3),
                _ => image.resize(w, h, FilterType::Lanczos3),
            };
            encode(&out, keep(&img.media_type), 90, white)
        }
        LocalOp::Crop {
            aspect,
            x,
            y,
            width,
            height,
        } => {
            let (w0, h0) = image.dimensions();
            let (cx, cy, cw, ch) = match aspect {
                Some((aw, ah)) => {
                    let (aw, ah) = (u64::from(*aw), u64::from(*ah));
                    let (w0l, h0l) = (u64::from(w0), u64::from(h0));
                    let (cw, ch) = if w0l * ah > h0l * aw {
                        ((h0l * aw / ah).max(1), h0l)
                    } else {
                        (w0l, (w0l * ah / aw).max(1))
                    };
                    (
                        ((w0l - cw) / 2) as u32,
                        ((h0l - ch) / 2) as u32,
                        cw as u32,
                        ch as u32,
                    )
                }
                None => {
                    if x.saturating_add(*width) > w0 || y.saturating_add(*height) > h0 {
                        return Err(ApiError::bad_request(
                            "crop_outside",
                            format!(
                                "the box {width}x{height} at {x},{y} reaches outside the {w0}x{h0} image"
                            ),
                        ));
                    }
                    (*x, *y, *width, *height)
                }
            };
            encode(
                &image.crop_imm(cx, cy, cw, ch),
                keep(&img.media_type),
                90,
                white,
            )
        }
        LocalOp::Convert {
            format,
            quality,
            background,
        } => {
            let media_type = match format.as_str() {
                "jpeg" => "image/jpeg",
                "webp" => "image/webp",
                _ => "image/png",
            };
            encode(&image, media_type, *quality, *background)
        }
        LocalOp::Compose {
            width,
            height,
            color,
            padding,
        } => {
            let (w, h) = (*width, *height);
            if u64::from(w) * u64::from(h) > limits.max_pixels {
                return Err(ApiError::bad_request(
                    "image_too_large",
                    format!(
                        "a {w}x{h} canvas is more pixels than the limit of {}",
                        limits.max_pixels
                    ),
                ));
            }
            let mut canvas: RgbaImage = match background {
                Some(bg) => imaging::decode(&bg.bytes, limits)
                    .map_err(|e| {
                        ApiError::bad_request("invalid_image", format!("the background: {e}"))
                    })?
                    .image
                    .resize_to_fill(w, h, FilterType::Lanczos3)
                    .to_rgba8(),
                None => RgbaImage::from_pixel(w, h, Rgba(*color)),
            };
            let inner_w = (u64::from(w) * u64::from(100 - 2 * padding) / 100).max(1) as u32;
            let inner_h = (u64::from(h) * u64::from(100 - 2 * padding) / 100).max(1) as u32;
            let product = image
                .resize(inner_w, inner_h, FilterType::Lanczos3)
                .to_rgba8();
            let x = i64::from((w - product.width()) / 2);
            let y = i64::from((h - product.height()) / 2);
            image::imageops::overlay(&mut canvas, &product, x, y);
            let out = DynamicImage::ImageRgba8(canvas);
            if background.is_none() && color[3] == 255 {
                // An opaque canvas holds no transparency worth a larger file.
                return encode(
                    &DynamicImage::ImageRgb8(out.to_rgb8()),
                    "image/png",
                    90,
                    white,
                );
            }
            encode(&out, "image/png", 90, white)
        }
    }
}
