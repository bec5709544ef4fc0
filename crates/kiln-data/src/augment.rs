//! Training-time image augmentation on encoded rows: random crop (after padding), mirror,
//! rotation and colour jitter, in the order torchvision's usual pipeline applies them.
//!
//! A row arrives normalised (`(pixel / 255 - mean) / std` per channel, CHW); it is taken back
//! to [0, 1], changed, clamped and normalised again. Every random draw comes from the
//! generator the caller passes, so the same seed, step and row give the same image.

use kiln_config::AugmentConfig;
use kiln_rng::SplitMix64;

use crate::preprocess::{ImageInput, Preprocessor};
use crate::{DataError, Result};

/// Applies a config's augmentation to rows of an image model's input.
#[derive(Debug, Clone)]
pub struct ImageAugmenter {
    config: AugmentConfig,
    channels: usize,
    height: usize,
    width: usize,
    mean: Vec<f32>,
    std: Vec<f32>,
}

/// Uniform in [0, 1).
fn uniform(rng: &mut SplitMix64) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Uniform in [1 - amount, 1 + amount].
fn factor(rng: &mut SplitMix64, amount: f64) -> f32 {
    (1.0 + amount * (2.0 * uniform(rng) - 1.0)) as f32
}

/// Luma weights (ITU-R BT.601, as torchvision's `rgb_to_grayscale`).
const LUMA: [f32; 3] = [0.299, 0.587, 0.114];

impl ImageAugmenter {
    /// The augmenter for `config`, or `None` when every change is off. A config that asks
    /// for augmentation of a model whose input is not one image is an error.
    pub fn new(config: &AugmentConfig, preprocessor: &Preprocessor) -> Result<Option<Self>> {
        if !config.enabled() {
            return Ok(None);
        }
        let Some(ImageInput {
            channels,
            height,
            width,
            mean,
            std,
        }) = preprocessor.image_input()
        else {
            return Err(DataError::Invalid(
                "data.augment changes images, but this model's input is not an image column".into(),
            ));
        };
        if config.saturation > 0.0 && channels != 3 {
            return Err(DataError::Invalid(
                "data.augment.saturation needs colour images; these are grey".into(),
            ));
        }
        Ok(Some(Self {
            config: config.clone(),
            channels,
            height,
            width,
            mean: mean.to_vec(),
            std: std.to_vec(),
        }))
    }

    /// Values in one row.
    pub fn row_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Changes one encoded row in place, drawing from `rng`. `scratch` is reused between
    /// calls.
    pub fn apply(&self, row: &mut [f32], rng: &mut SplitMix64, scratch: &mut Vec<f32>) {
        let (h, w) = (self.height, self.width);
        let plane = h * w;
        let c = &self.config;
        // Draw everything first, in a fixed order, whatever is switched on.
        let pad = c.crop_padding as i64;
        let shift_y = rng.below(2 * c.crop_padding + 1) as i64 - pad;
        let shift_x = rng.below(2 * c.crop_padding + 1) as i64 - pad;
        let flip = c.flip && rng.next_u64() & 1 == 1;
        let angle = (c.rotate_degrees * (2.0 * uniform(rng) - 1.0)).to_radians();
        let brightness = factor(rng, c.brightness);
        let contrast = factor(rng, c.contrast);
        let saturation = factor(rng, c.saturation);

        // Back to [0, 1].
        scratch.clear();
        scratch.extend_from_slice(row);
        for (ch, values) in scratch.chunks_exact_mut(plane).enumerate() {
            let (m, s) = (self.mean[ch], self.std[ch]);
            for v in values {
                *v = *v * s + m;
            }
        }
        // Geometry: each output pixel samples the source at the inverse of crop, flip and
        // rotation (bilinear; black outside). Without a rotation every sample is a pixel.
        let geometric = shift_x != 0 || shift_y != 0 || flip || angle != 0.0;
        if geometric {
            let (sin, cos) = (angle.sin() as f32, angle.cos() as f32);
            let (cy, cx) = ((h as f32 - 1.0) / 2.0, (w as f32 - 1.0) / 2.0);
            for y in 0..h {
                for x in 0..w {
                    // Undo the rotation (about the centre), the mirror, then the crop.
                    let (dx, dy) = (x as f32 - cx, y as f32 - cy);
                    let xr = cos * dx + sin * dy + cx;
                    let yr = -sin * dx + cos * dy + cy;
                    let xf = if flip { w as f32 - 1.0 - xr } else { xr };
                    let (sx, sy) = (xf + shift_x as f32, yr + shift_y as f32);
                    for ch in 0..self.channels {
                        let src = &scratch[ch * plane..(ch + 1) * plane];
                        row[ch * plane + y * w + x] = bilinear(src, h, w, sy, sx);
                    }
                }
            }
        } else {
            row.copy_from_slice(scratch);
        }
        // Colour: brightness, contrast, saturation (torchvision's ColorJitter arithmetic).
        if c.brightness > 0.0 {
            for v in row.iter_mut() {
                *v = (*v * brightness).clamp(0.0, 1.0);
            }
        }
        if c.contrast > 0.0 {
            let grey_mean = self.grey(row).iter().sum::<f32>() / plane as f32;
            for v in row.iter_mut() {
                *v = (contrast * *v + (1.0 - contrast) * grey_mean).clamp(0.0, 1.0);
            }
        }
        if c.saturation > 0.0 && self.channels == 3 {
            let grey = self.grey(row);
            for values in row.chunks_exact_mut(plane) {
                for (v, g) in values.iter_mut().zip(&grey) {
                    *v = (saturation * *v + (1.0 - saturation) * g).clamp(0.0, 1.0);
                }
            }
        }
        // Normalised again.
        for (ch, values) in row.chunks_exact_mut(plane).enumerate() {
            let (m, s) = (self.mean[ch], self.std[ch]);
            for v in values {
                *v = (*v - m) / s;
            }
        }
    }

    /// Grey value of each pixel of a [0, 1] row.
    fn grey(&self, row: &[f32]) -> Vec<f32> {
        let plane = self.height * self.width;
        if self.channels == 1 {
            return row.to_vec();
        }
        (0..plane)
            .map(|i| (0..3).map(|ch| LUMA[ch] * row[ch * plane + i]).sum())
            .collect()
    }
}

/// `src` (`h x w`) at (`y`, `x`), bilinear, 0 outside.
fn bilinear(src: &[f32], h: usize, w: usize, y: f32, x: f32) -> f32 {
    let (y0, x0) = (y.floor(), x.floor());
    let (fy, fx) = (y - y0, x - x0);
    let at = |yy: f32, xx: f32| -> f32 {
        if yy < 0.0 || xx < 0.0 || yy >= h as f32 || xx >= w as f32 {
            0.0
        } else {
            src[yy as usize * w + xx as usize]
        }
    };
    if fy == 0.0 && fx == 0.0 {
        return at(y0, x0);
    }
    let top = at(y0, x0) * (1.0 - fx) + at(y0, x0 + 1.0) * fx;
    let bottom = at(y0 + 1.0, x0) * (1.0 - fx) + at(y0 + 1.0, x0 + 1.0) * fx;
    top * (1.0 - fy) + bottom * fy
}
