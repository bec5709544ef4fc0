use serde::{Deserialize, Serialize};

/// Shape of one model input row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InputShape {
    /// A flat vector.
    Flat {
        /// Its length.
        width: usize,
    },
    /// A `channels x height x width` image.
    Image {
        /// Channels.
        channels: usize,
        /// Height.
        height: usize,
        /// Width.
        width: usize,
    },
}

impl InputShape {
    /// Number of `f32` values per row.
    pub fn size(&self) -> usize {
        match *self {
            InputShape::Flat { width } => width,
            InputShape::Image {
                channels,
                height,
                width,
            } => channels * height * width,
        }
    }
}
