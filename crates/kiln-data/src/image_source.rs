//! Images: a folder of class folders (`root/<class>/*.png`), or a table column of image
//! paths. Decoded with the `image` crate on rayon's workers, brought to one size and channel
//! count, and held as one [`Column::Image`] of CHW bytes.

use std::path::{Path, PathBuf};

use image::imageops::FilterType;
use image::{DynamicImage, ImageDecoder, ImageReader};
use kiln_config::{BadRows, DataConfig, ImageChannels, ImageConfig, ImageFit};
use rayon::prelude::*;

use crate::table::{Column, LoadReport, Table};
use crate::{DataError, Result};

/// The most values one image may hold (`channels x height x width`), as the fitted
/// preprocessor allows: 16 Mi (a 2 364 x 2 364 colour image).
pub const MAX_IMAGE_VALUES: usize = 1 << 24;

/// Folders below a class folder followed at most (a symbolic-link loop ends here).
const MAX_DEPTH: usize = 32;

/// File extensions read as images (compared without case).
pub const IMAGE_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "bmp", "webp"];

/// Whether `path` names an image kiln decodes, by its extension.
fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

fn hidden(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

fn io_error(path: &Path, source: std::io::Error) -> DataError {
    DataError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The entries of `dir`, sorted by name, hidden ones left out.
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_error(dir, e))? {
        let path = entry.map_err(|e| io_error(dir, e))?.path();
        if !hidden(&path) {
            entries.push(path);
        }
    }
    entries.sort();
    Ok(entries)
}

/// The images under `dir` and its sub-folders (at most `depth` levels), sorted by path.
fn images_under(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
    for path in sorted_entries(dir)? {
        if path.is_dir() {
            if depth == 0 {
                return Err(DataError::Invalid(format!(
                    "{}: folders nested deeper than {MAX_DEPTH} levels (a symbolic-link loop?)",
                    path.display()
                )));
            }
            images_under(&path, depth - 1, out)?;
        } else if is_image(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// Whether `dir` looks like a folder of class folders: no Parquet part files, and a
/// sub-folder with an image somewhere under it.
pub(crate) fn is_image_folder(dir: &Path) -> bool {
    let Ok(entries) = sorted_entries(dir) else {
        return false;
    };
    let parquet = entries.iter().any(|p| {
        p.extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("parquet") || e.eq_ignore_ascii_case("pq"))
    });
    !parquet
        && entries
            .iter()
            .any(|p| is_image(p) || (p.is_dir() && holds_image(p, MAX_DEPTH)))
}

/// Whether `dir` holds images directly and no sub-folder of them: new images to predict,
/// without class folders.
pub fn is_flat_image_folder(dir: &Path) -> bool {
    sorted_entries(dir).is_ok_and(|entries| {
        entries.iter().any(|p| is_image(p))
            && !entries
                .iter()
                .any(|p| p.is_dir() && holds_image(p, MAX_DEPTH))
    })
}

/// Reads the images directly in `root` (`*.{png,jpg,jpeg,bmp,webp}`, in name order, no class
/// folders) into two columns: `image` and `path` (the file name, which kiln takes as the id):
/// new images for `kiln predict`.
pub fn read_image_files(root: &Path, config: &DataConfig) -> Result<Table> {
    let origin = root.display().to_string();
    let paths: Vec<PathBuf> = sorted_entries(root)?
        .into_iter()
        .filter(|p| is_image(p))
        .collect();
    if paths.is_empty() {
        return Err(DataError::Empty {
            path: origin,
            detail: format!(": no images ({})", IMAGE_EXTENSIONS.join(", ")),
        });
    }
    let names: Vec<String> = paths
        .iter()
        .map(|p| {
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let decoded = decode_images(&paths, &config.image, config.bad_rows)?;
    let mut report = LoadReport {
        rows_read: paths.len(),
        ..Default::default()
    };
    let kept = decoded.kept(&names, &mut report);
    Ok(Table {
        origin,
        names: vec!["image".into(), "path".into()],
        columns: vec![
            decoded.column,
            Column::texts(kept.iter().map(|&i| Some(names[i].as_str()))),
        ],
        lines: kept.iter().map(|&i| i as u64 + 1).collect(),
        report,
    })
}

/// Whether an image lies in `dir` or below it, at most `depth` levels (stops at the first).
fn holds_image(dir: &Path, depth: usize) -> bool {
    sorted_entries(dir).is_ok_and(|entries| {
        entries.iter().any(|p| {
            if p.is_dir() {
                depth > 0 && holds_image(p, depth - 1)
            } else {
                is_image(p)
            }
        })
    })
}

/// Reads `root/<class>/**/*.{png,jpg,jpeg,bmp,webp}` into a table of three columns: `image`,
/// `label` (the class folder's name) and `path` (relative to `root`, which kiln takes as the
/// id). Classes are the sub-folders in name order; each needs at least one image, and there
/// must be two classes or more.
pub fn read_image_folder(root: &Path, config: &DataConfig) -> Result<Table> {
    let origin = root.display().to_string();
    let mut paths = Vec::new();
    let mut labels = Vec::new();
    let mut loose = 0;
    for entry in sorted_entries(root)? {
        if !entry.is_dir() {
            loose += usize::from(is_image(&entry));
            continue;
        }
        let class = entry
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let start = paths.len();
        images_under(&entry, MAX_DEPTH, &mut paths)?;
        if paths.len() == start {
            return Err(DataError::Invalid(format!(
                "{}: class folder \"{class}\" holds no images ({})",
                entry.display(),
                IMAGE_EXTENSIONS.join(", ")
            )));
        }
        labels.extend(std::iter::repeat_n(class, paths.len() - start));
    }
    let classes = {
        let mut c = labels.clone();
        c.dedup();
        c
    };
    match classes.len() {
        0 if loose > 0 => {
            return Err(DataError::Invalid(format!(
                "{origin}: {loose} images lie in the folder itself; an image folder holds one sub-folder per class (ROOT/<class>/*.png)"
            )));
        }
        0 => {
            return Err(DataError::Empty {
                path: origin,
                detail: format!(
                    ": no class folders with images ({}); an image folder holds one sub-folder per class",
                    IMAGE_EXTENSIONS.join(", ")
                ),
            });
        }
        1 => {
            return Err(DataError::Invalid(format!(
                "{origin}: only one class folder (\"{}\"); a classifier needs two or more",
                classes[0]
            )));
        }
        _ => {}
    }
    let relative: Vec<String> = paths
        .iter()
        .map(|p| {
            let rel = p.strip_prefix(root).unwrap_or(p);
            rel.components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/")
        })
        .collect();
    let decoded = decode_images(&paths, &config.image, config.bad_rows)?;
    let mut report = LoadReport {
        rows_read: paths.len(),
        ..Default::default()
    };
    let kept = decoded.kept(&relative, &mut report);
    Ok(Table {
        origin,
        names: vec!["image".into(), "label".into(), "path".into()],
        columns: vec![
            decoded.column,
            Column::texts(kept.iter().map(|&i| Some(labels[i].as_str()))),
            Column::texts(kept.iter().map(|&i| Some(relative[i].as_str()))),
        ],
        lines: kept.iter().map(|&i| i as u64 + 1).collect(),
        report,
    })
}

/// Replaces the table's column `name` of image paths (relative to `base`, the table's folder)
/// by the images. A missing path is a bad row, as is an image that does not decode.
pub fn decode_path_column(
    table: &mut Table,
    name: &str,
    base: &Path,
    config: &DataConfig,
) -> Result<()> {
    let Some(index) = table.names.iter().position(|n| n == name) else {
        return Err(DataError::UnknownColumn {
            path: table.origin.clone(),
            column: name.to_string(),
            role: "data.image.column",
            available: table.names.join(", "),
        });
    };
    let column = &table.columns[index];
    if !matches!(column, Column::Text(_)) {
        return Err(DataError::Invalid(format!(
            "{}: column \"{name}\" (data.image.column) holds numbers, expected image paths",
            table.origin
        )));
    }
    let mut rows = Vec::with_capacity(table.num_rows());
    let mut paths = Vec::with_capacity(table.num_rows());
    let mut missing = Vec::new();
    for r in 0..table.num_rows() {
        match column.str(r) {
            Some(p) if !p.trim().is_empty() => {
                rows.push(r);
                paths.push(base.join(p.trim()));
            }
            _ => missing.push(r),
        }
    }
    let mut report = table.report.clone();
    if let Some(&r) = missing.first() {
        if config.bad_rows == BadRows::Error {
            return Err(DataError::BadValue {
                path: table.origin.clone(),
                line: table.lines[r],
                column: name.to_string(),
                message: "no image path".into(),
            });
        }
        for &r in &missing {
            report.skip(table.lines[r], &format!("column \"{name}\": no image path"));
        }
    }
    let decoded = decode_images(&paths, &config.image, config.bad_rows)?;
    let described: Vec<String> = rows
        .iter()
        .zip(&paths)
        .map(|(&r, p)| format!("line {} ({})", table.lines[r], p.display()))
        .collect();
    let kept = decoded.kept(&described, &mut report);
    let keep: Vec<usize> = kept.iter().map(|&i| rows[i]).collect();
    let mut selected = if keep.len() == table.num_rows() {
        table.clone()
    } else {
        table.select(&keep)
    };
    selected.columns[index] = decoded.column;
    selected.report = report;
    *table = selected;
    Ok(())
}

/// What [`decode_images`] made: the images that decoded, and the indices of those that did not.
struct Decoded {
    column: Column,
    failed: Vec<(usize, String)>,
    count: usize,
}

impl Decoded {
    /// Indices of the images kept; each failure counted in `report`, named by `names[i]`.
    fn kept(&self, names: &[String], report: &mut LoadReport) -> Vec<usize> {
        for (i, reason) in &self.failed {
            report.skip_named(&names[*i], reason);
        }
        let mut failed = self.failed.iter().map(|(i, _)| *i).peekable();
        (0..self.count)
            .filter(|i| {
                if failed.peek() == Some(i) {
                    failed.next();
                    false
                } else {
                    true
                }
            })
            .collect()
    }
}

/// Why one image could not be used.
enum Problem {
    /// It does not open or decode: a bad row (`data.bad_rows`).
    Unreadable(String),
    /// It decodes but disagrees with the others (channels or size): always an error.
    Mismatch(String),
}

/// The target shape: the configured size and channels, else the first readable image's.
fn target_shape(
    paths: &[PathBuf],
    image: &ImageConfig,
    bad_rows: BadRows,
) -> Result<Option<(usize, usize, usize, PathBuf)>> {
    for path in paths {
        let header = ImageReader::open(path)
            .and_then(ImageReader::with_guessed_format)
            .map_err(|e| e.to_string())
            .and_then(|r| r.into_decoder().map_err(|e| e.to_string()));
        let decoder = match header {
            Ok(d) => d,
            Err(_) if bad_rows == BadRows::Skip => continue,
            Err(message) => {
                return Err(DataError::Image {
                    path: path.display().to_string(),
                    message,
                });
            }
        };
        let channels: usize = match image.channels {
            ImageChannels::Grey => 1,
            ImageChannels::Rgb => 3,
            ImageChannels::Auto if decoder.color_type().has_color() => 3,
            ImageChannels::Auto => 1,
        };
        let (w, h) = decoder.dimensions();
        let [height, width] = image.size.unwrap_or([h as usize, w as usize]);
        let values = channels
            .checked_mul(height)
            .and_then(|v| v.checked_mul(width))
            .filter(|&v| v > 0 && v <= MAX_IMAGE_VALUES);
        if values.is_none() {
            return Err(DataError::Invalid(format!(
                "{}: a {height}x{width} image with {channels} channel(s) is more than the {MAX_IMAGE_VALUES} values kiln takes; set data.image.size = [height, width] to resize",
                path.display(),
            )));
        }
        return Ok(Some((channels, height, width, path.clone())));
    }
    Ok(None)
}

/// Decodes every path (in parallel) to `channels x height x width` bytes. A file that does
/// not decode is an error, or with `bad_rows = "skip"` left out and listed in `failed`.
fn decode_images(paths: &[PathBuf], image: &ImageConfig, bad_rows: BadRows) -> Result<Decoded> {
    let Some((channels, height, width, first)) = target_shape(paths, image, bad_rows)? else {
        return Ok(Decoded {
            column: Column::Image {
                pixels: Vec::new(),
                channels: 1,
                height: 1,
                width: 1,
            },
            failed: (0..paths.len())
                .map(|i| (i, "cannot be read".into()))
                .collect(),
            count: paths.len(),
        });
    };
    let size = channels * height * width;
    let too_many = || {
        DataError::Invalid(format!(
            "{} images of {size} bytes do not fit in memory; set a smaller data.image.size",
            paths.len()
        ))
    };
    let total = size.checked_mul(paths.len()).ok_or_else(too_many)?;
    let mut pixels = Vec::new();
    pixels.try_reserve_exact(total).map_err(|_| too_many())?;
    pixels.resize(total, 0u8);
    let outcomes: Vec<std::result::Result<(), Problem>> = pixels
        .par_chunks_mut(size)
        .zip(paths.par_iter())
        .map(|(out, path)| decode_into(path, out, image, (channels, height, width), &first))
        .collect();
    let mut failed = Vec::new();
    for (i, outcome) in outcomes.into_iter().enumerate() {
        match outcome {
            Ok(()) => {}
            Err(Problem::Mismatch(message)) => return Err(DataError::Invalid(message)),
            Err(Problem::Unreadable(message)) if bad_rows == BadRows::Skip => {
                failed.push((i, message));
            }
            Err(Problem::Unreadable(message)) => {
                return Err(DataError::Image {
                    path: paths[i].display().to_string(),
                    message,
                });
            }
        }
    }
    if !failed.is_empty() {
        // Close the gaps the failed images left.
        let mut write = 0;
        let mut failed_at = failed.iter().map(|(i, _)| *i).peekable();
        for read in 0..paths.len() {
            if failed_at.peek() == Some(&read) {
                failed_at.next();
                continue;
            }
            if read != write {
                pixels.copy_within(read * size..(read + 1) * size, write * size);
            }
            write += 1;
        }
        pixels.truncate(write * size);
    }
    Ok(Decoded {
        column: Column::Image {
            pixels,
            channels,
            height,
            width,
        },
        failed,
        count: paths.len(),
    })
}

/// Decodes `path` into `out` (`channels` planes of `height x width`).
fn decode_into(
    path: &Path,
    out: &mut [u8],
    config: &ImageConfig,
    (channels, height, width): (usize, usize, usize),
    first: &Path,
) -> std::result::Result<(), Problem> {
    let img = ImageReader::open(path)
        .map_err(|e| Problem::Unreadable(e.to_string()))?
        .with_guessed_format()
        .map_err(|e| Problem::Unreadable(e.to_string()))?
        .decode()
        .map_err(|e| Problem::Unreadable(e.to_string()))?;
    let colour = img.color().has_color();
    if config.channels == ImageChannels::Auto && colour != (channels == 3) {
        let what = |c: bool| if c { "colour" } else { "grey" };
        return Err(Problem::Mismatch(format!(
            "{} is {} but {} is {}: images of mixed channel counts; set data.image.channels = \"rgb\" or \"grey\" to convert them all",
            path.display(),
            what(colour),
            first.display(),
            what(!colour)
        )));
    }
    let (w, h) = (img.width() as usize, img.height() as usize);
    let img = if (h, w) == (height, width) {
        img
    } else if config.size.is_none() {
        return Err(Problem::Mismatch(format!(
            "{} is {h}x{w} but {} is {height}x{width}: images of different sizes; set data.image.size = [height, width] to resize them",
            path.display(),
            first.display()
        )));
    } else {
        fit(&img, height, width, config.fit)
    };
    let plane = height * width;
    if channels == 1 {
        out.copy_from_slice(img.to_luma8().as_raw());
    } else {
        let rgb = img.to_rgb8();
        for (i, px) in rgb.as_raw().chunks_exact(3).enumerate() {
            out[i] = px[0];
            out[plane + i] = px[1];
            out[2 * plane + i] = px[2];
        }
    }
    Ok(())
}

/// `img` brought to `height x width`: stretched, or scaled to cover and cut at the centre.
fn fit(img: &DynamicImage, height: usize, width: usize, how: ImageFit) -> DynamicImage {
    let (th, tw) = (height as u32, width as u32);
    match how {
        ImageFit::Stretch => img.resize_exact(tw, th, FilterType::Triangle),
        ImageFit::Crop => {
            // The centre window of the target's aspect ratio, in source pixels, then scaled:
            // a very long image is never scaled whole.
            let (w, h) = (img.width() as f64, img.height() as f64);
            let scale = (tw as f64 / w).max(th as f64 / h);
            let cw = ((tw as f64 / scale).round() as u32).clamp(1, img.width());
            let ch = ((th as f64 / scale).round() as u32).clamp(1, img.height());
            img.crop_imm((img.width() - cw) / 2, (img.height() - ch) / 2, cw, ch)
                .resize_exact(tw, th, FilterType::Triangle)
        }
    }
}
