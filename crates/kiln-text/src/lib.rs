//! kiln's text pipeline.
//!
//! [`TextTokenizer`] wraps HuggingFace `tokenizers`: a character-level tokenizer and a
//! byte-level BPE trained on the user's corpus (both saved as `tokenizer.json`), or any
//! existing `tokenizer.json`. [`prepare_corpus`] turns text into binary token files (`u16`
//! or `u32` by vocabulary size) split into train and validation; [`TokenFile`] reads them by
//! memory-mapping, so a corpus larger than RAM trains in constant memory, and draws seeded
//! random windows.
#![warn(missing_docs)]

mod corpus;
mod tokenizer;

pub use corpus::{
    CorpusReport, TokenDtype, TokenFile, TokenFileMeta, prepare_corpus, read_corpus,
    write_token_file,
};
pub use tokenizer::{TextTokenizer, TokenizerKind};

/// Text pipeline errors, naming the file and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// A file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A corpus file is not UTF-8.
    #[error(
        "{path}: not valid UTF-8 at byte {offset} (line {line}); kiln reads text corpora as UTF-8"
    )]
    NotUtf8 {
        /// The file.
        path: String,
        /// Byte offset of the first bad byte.
        offset: usize,
        /// 1-based line of it.
        line: usize,
    },
    /// No text at all.
    #[error("{0}: the corpus is empty")]
    EmptyCorpus(String),
    /// The tokenizer library failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A token file is malformed or does not match.
    #[error("{path}: {message}")]
    TokenFile {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// Result alias.
pub type Result<T, E = TextError> = std::result::Result<T, E>;
