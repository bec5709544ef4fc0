//! Corpus preparation and memory-mapped token files.

use std::io::Write;
use std::path::{Path, PathBuf};

use kiln_rng::SplitMix64;
use serde::{Deserialize, Serialize};

use crate::tokenizer::TextTokenizer;
use crate::{Result, TextError};

/// Width of the stored token ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenDtype {
    /// Little-endian u16 (vocabularies up to 65 536).
    U16,
    /// Little-endian u32.
    U32,
}

impl TokenDtype {
    /// The narrowest type for `vocab_size`.
    pub fn for_vocab(vocab_size: usize) -> Self {
        if vocab_size <= 1 << 16 {
            TokenDtype::U16
        } else {
            TokenDtype::U32
        }
    }
    /// Bytes per token.
    pub fn width(self) -> usize {
        match self {
            TokenDtype::U16 => 2,
            TokenDtype::U32 => 4,
        }
    }
}

/// `meta.json` next to the token files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenFileMeta {
    /// Vocabulary size of the tokenizer that wrote the files.
    pub vocab_size: usize,
    /// Token width.
    pub dtype: TokenDtype,
    /// Tokens in `train.bin`.
    pub train_tokens: u64,
    /// Tokens in `val.bin`.
    pub val_tokens: u64,
    /// Characters in the training text.
    pub train_chars: u64,
    /// Characters in the validation text (for bits per character).
    pub val_chars: u64,
    /// CRC-32 of the tokenizer.json that wrote the files (a mismatch means another tokenizer).
    pub tokenizer_crc32: u32,
}

/// What [`prepare_corpus`] did.
pub type CorpusReport = TokenFileMeta;

/// Reads text files as one corpus (joined with newlines). Non-UTF-8 bytes are an error
/// naming the file, byte offset and line; an all-empty corpus is an error.
pub fn read_corpus(paths: &[PathBuf]) -> Result<String> {
    let mut text = String::new();
    for path in paths {
        let display = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| TextError::Io {
            path: display.clone(),
            source: e,
        })?;
        match String::from_utf8(bytes) {
            Ok(s) => {
                if !text.is_empty() && !text.ends_with('\n') {
                    text.push('\n');
                }
                text.push_str(&s);
            }
            Err(e) => {
                let offset = e.utf8_error().valid_up_to();
                let line = e.as_bytes()[..offset]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count()
                    + 1;
                return Err(TextError::NotUtf8 {
                    path: display,
                    offset,
                    line,
                });
            }
        }
    }
    if text.trim().is_empty() {
        let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(TextError::EmptyCorpus(names.join(", ")));
    }
    Ok(text)
}

/// Writes `ids` as a token file.
pub fn write_token_file(path: &Path, ids: &[u32], dtype: TokenDtype) -> Result<()> {
    let io = |e| TextError::Io {
        path: path.display().to_string(),
        source: e,
    };
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    for &id in ids {
        match dtype {
            TokenDtype::U16 => f.write_all(&(id as u16).to_le_bytes()).map_err(io)?,
            TokenDtype::U32 => f.write_all(&id.to_le_bytes()).map_err(io)?,
        }
    }
    f.into_inner()
        .map_err(|e| io(e.into_error()))?
        .sync_all()
        .map_err(io)
}

/// Tokenizes `text`, splits it (the last `val_fraction` of the characters is validation, as
/// nanoGPT) and writes `train.bin`, `val.bin`, `meta.json` and `tokenizer.json` to `out`.
pub fn prepare_corpus(
    text: &str,
    tokenizer: &TextTokenizer,
    out: &Path,
    val_fraction: f64,
) -> Result<CorpusReport> {
    std::fs::create_dir_all(out).map_err(|e| TextError::Io {
        path: out.display().to_string(),
        source: e,
    })?;
    let total_chars = text.chars().count();
    let val_chars = ((total_chars as f64) * val_fraction).round() as usize;
    let split_at = text
        .char_indices()
        .nth(total_chars - val_chars)
        .map(|(i, _)| i)
        .unwrap_or(text.len());
    let (train_text, val_text) = text.split_at(split_at);
    let dtype = TokenDtype::for_vocab(tokenizer.vocab_size());
    let train = tokenizer.encode_long(train_text)?;
    let val = tokenizer.encode_long(val_text)?;
    write_token_file(&out.join("train.bin"), &train, dtype)?;
    write_token_file(&out.join("val.bin"), &val, dtype)?;
    tokenizer.save(&out.join("tokenizer.json"))?;
    let meta = TokenFileMeta {
        vocab_size: tokenizer.vocab_size(),
        dtype,
        train_tokens: train.len() as u64,
        val_tokens: val.len() as u64,
        train_chars: (total_chars - val_chars) as u64,
        val_chars: val_chars as u64,
        tokenizer_crc32: crc32(&tokenizer.to_json()?),
    };
    let meta_path = out.join("meta.json");
    std::fs::write(&meta_path, serde_json::to_vec_pretty(&meta).expect("meta")).map_err(|e| {
        TextError::Io {
            path: meta_path.display().to_string(),
            source: e,
        }
    })?;
    Ok(meta)
}

/// CRC-32 (IEEE) of a string, for tokenizer fingerprints.
pub fn crc32(s: &str) -> u32 {
    let mut crc = !0u32;
    for &b in s.as_bytes() {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A token file read through a memory map: opening is O(1) in memory whatever its size.
pub struct TokenFile {
    path: PathBuf,
    map: memmap2::Mmap,
    dtype: TokenDtype,
    len: usize,
}

impl TokenFile {
    /// Maps `path`, whose tokens are `dtype`, checking every id is below `vocab_size` lazily
    /// (ids are checked as windows are read).
    pub fn open(path: &Path, dtype: TokenDtype) -> Result<Self> {
        let display = path.display().to_string();
        let file = std::fs::File::open(path).map_err(|e| TextError::Io {
            path: display.clone(),
            source: e,
        })?;
        // SAFETY: the map is read-only and kiln never writes a token file it has open; a file
        // truncated by another process underneath would fault, as with any mmap reader.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| TextError::Io {
            path: display.clone(),
            source: e,
        })?;
        if map.len() % dtype.width() != 0 {
            return Err(TextError::TokenFile {
                path: display,
                message: format!(
                    "{} bytes is not a whole number of {:?} tokens",
                    map.len(),
                    dtype
                ),
            });
        }
        let len = map.len() / dtype.width();
        #[cfg(unix)]
        let _ = map.advise(memmap2::Advice::Random);
        Ok(Self {
            path: path.to_path_buf(),
            map,
            dtype,
            len,
        })
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the file has no tokens.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Token `i`.
    pub fn get(&self, i: usize) -> u32 {
        match self.dtype {
            TokenDtype::U16 => u16::from_le_bytes([self.map[2 * i], self.map[2 * i + 1]]) as u32,
            TokenDtype::U32 => u32::from_le_bytes(self.map[4 * i..4 * i + 4].try_into().unwrap()),
        }
    }

    /// Unmaps the pages around tokens `start..start + count` once they have been copied out.
    ///
    /// The kernel maps page-cache pages into the process in large folios (up to 2 MiB) on a
    /// fault, so random windows over a multi-gigabyte file would otherwise map most of it and
    /// count it as resident. Dropping the 2 MiB blocks just read keeps resident memory at a few
    /// blocks; the data stays in the page cache, so a later read is a minor fault.
    fn release(&self, start: usize, count: usize) {
        #[cfg(unix)]
        {
            const BLOCK: usize = 2 << 20;
            let first = (start * self.dtype.width()) / BLOCK * BLOCK;
            let end = ((start + count) * self.dtype.width()).div_ceil(BLOCK) * BLOCK;
            let end = end.min(self.map.len());
            // SAFETY: the map is a read-only shared file mapping and no slice of it outlives
            // this call's caller (windows are copied out first); MADV_DONTNEED on such a map
            // only drops page-table entries, and the next access reads the same file data.
            let _ = unsafe {
                self.map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    first,
                    end - first,
                )
            };
        }
        #[cfg(not(unix))]
        let _ = (start, count);
    }

    /// `count` tokens from `start`.
    pub fn window(&self, start: usize, count: usize) -> Vec<u32> {
        (start..start + count).map(|i| self.get(i)).collect()
    }

    /// A batch of `batch` random windows of `context + 1` tokens drawn by `rng`: inputs are
    /// the first `context`, targets the last `context` of each window (row-major, `i64`).
    pub fn random_batch(
        &self,
        rng: &mut SplitMix64,
        batch: usize,
        context: usize,
        vocab_size: usize,
    ) -> Result<(Vec<i64>, Vec<i64>)> {
        if self.len < context + 1 {
            return Err(TextError::TokenFile {
                path: self.path.display().to_string(),
                message: format!(
                    "{} tokens is shorter than one window of context {} + 1",
                    self.len, context
                ),
            });
        }
        let mut x = Vec::with_capacity(batch * context);
        let mut y = Vec::with_capacity(batch * context);
        for _ in 0..batch {
            let start = rng.below(self.len - context);
            let w = self.window(start, context + 1);
            if let Some(bad) = w.iter().find(|&&t| t as usize >= vocab_size) {
                return Err(TextError::TokenFile {
                    path: self.path.display().to_string(),
                    message: format!(
                        "token id {bad} is outside the vocabulary of {vocab_size}: file and tokenizer do not match"
                    ),
                });
            }
            x.extend(w[..context].iter().map(|&t| t as i64));
            y.extend(w[1..].iter().map(|&t| t as i64));
            self.release(start, context + 1);
        }
        Ok((x, y))
    }
}
