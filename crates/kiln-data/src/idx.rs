//! gzip IDX files (the MNIST / Fashion-MNIST format).

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::table::{Column, LoadReport, Table};
use crate::{DataError, Result};

/// Images read from an IDX3 file.
#[derive(Debug, Clone, PartialEq)]
pub struct IdxImages {
    /// Row-major pixels, `count * height * width` bytes.
    pub pixels: Vec<u8>,
    /// Number of images.
    pub count: usize,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
}

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let display = path.display().to_string();
    let io = |source| DataError::Io {
        path: display.clone(),
        source,
    };
    let mut raw = Vec::new();
    std::fs::File::open(path)
        .map_err(io)?
        .read_to_end(&mut raw)
        .map_err(io)?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(|e| DataError::Idx {
                path: display.clone(),
                message: format!("gzip stream is corrupt or truncated: {e}"),
            })?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn header(bytes: &[u8], path: &Path, magic: u32, dims: usize) -> Result<Vec<usize>> {
    let err = |message: String| DataError::Idx {
        path: path.display().to_string(),
        message,
    };
    if bytes.len() < 4 + 4 * dims {
        return Err(err(format!(
            "{} bytes is shorter than the header",
            bytes.len()
        )));
    }
    let got = u32::from_be_bytes(bytes[0..4].try_into().unwrap());
    if got != magic {
        return Err(err(format!(
            "magic number {got:#010x}, expected {magic:#010x}"
        )));
    }
    let shape: Vec<usize> = (0..dims)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize)
        .collect();
    let expected = 4 + 4 * dims + shape.iter().product::<usize>();
    if bytes.len() != expected {
        return Err(err(format!(
            "header promises {expected} bytes, file has {}",
            bytes.len()
        )));
    }
    Ok(shape)
}

/// Reads an IDX3 image file (`.gz` or raw).
pub fn read_idx_images(path: &Path) -> Result<IdxImages> {
    let bytes = read_maybe_gz(path)?;
    let shape = header(&bytes, path, 0x0000_0803, 3)?;
    Ok(IdxImages {
        pixels: bytes[16..].to_vec(),
        count: shape[0],
        height: shape[1],
        width: shape[2],
    })
}

/// Reads an IDX1 label file (`.gz` or raw).
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>> {
    let bytes = read_maybe_gz(path)?;
    header(&bytes, path, 0x0000_0801, 1)?;
    Ok(bytes[8..].to_vec())
}

fn with_suffix(prefix: &str, suffix: &str) -> Option<PathBuf> {
    [
        format!("{prefix}-{suffix}.gz"),
        format!("{prefix}-{suffix}"),
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

/// If `spec` is an IDX prefix (`DIR/train` with `DIR/train-images-idx3-ubyte[.gz]` next to it),
/// returns it.
pub(crate) fn idx_prefix(spec: &str) -> Option<String> {
    let spec = spec.strip_prefix("idx:").unwrap_or(spec);
    with_suffix(spec, "images-idx3-ubyte").map(|_| spec.to_string())
}

/// Loads `PREFIX-images-idx3-ubyte[.gz]` and `PREFIX-labels-idx1-ubyte[.gz]` as a table with an
/// `image` column and a `label` column.
pub(crate) fn load_idx_table(prefix: &str) -> Result<Table> {
    let images_path = with_suffix(prefix, "images-idx3-ubyte").expect("checked by idx_prefix");
    let labels_path = with_suffix(prefix, "labels-idx1-ubyte").ok_or_else(|| {
        DataError::Invalid(format!(
            "{prefix}-labels-idx1-ubyte.gz not found next to the images"
        ))
    })?;
    let images = read_idx_images(&images_path)?;
    let labels = read_idx_labels(&labels_path)?;
    if labels.len() != images.count {
        return Err(DataError::Idx {
            path: labels_path.display().to_string(),
            message: format!("{} labels for {} images", labels.len(), images.count),
        });
    }
    if images.count == 0 {
        return Err(DataError::Empty {
            path: images_path.display().to_string(),
            detail: String::new(),
        });
    }
    Ok(Table {
        origin: prefix.to_string(),
        names: vec!["image".into(), "label".into()],
        columns: vec![
            Column::Image {
                pixels: images.pixels,
                channels: 1,
                height: images.height,
                width: images.width,
            },
            Column::Number(labels.iter().map(|&l| Some(l as f64)).collect()),
        ],
        lines: (1..=images.count as u64).collect(),
        report: LoadReport {
            rows_read: images.count,
            ..Default::default()
        },
    })
}
