//! Tokenizers through the `tokenizers` crate.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::normalizers::Lowercase;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::{Result, TextError};

/// Which tokenizer to build.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TokenizerKind {
    /// One token per Unicode scalar value seen in the corpus, plus `<unk>`.
    Char,
    /// Byte-level BPE (GPT-2 style) trained on the corpus: every string round-trips.
    Bpe {
        /// Target vocabulary size (at least 256 + 1).
        vocab_size: usize,
    },
    /// An existing HuggingFace `tokenizer.json`.
    File {
        /// Its path.
        path: String,
    },
}

impl TokenizerKind {
    /// Parses the `[text] tokenizer` setting: `char`, `bpe` (with `vocab_size`), or the path
    /// of a `tokenizer.json`.
    pub fn from_setting(setting: &str, vocab_size: usize) -> Self {
        match setting {
            "char" => TokenizerKind::Char,
            "bpe" => TokenizerKind::Bpe { vocab_size },
            path => TokenizerKind::File {
                path: path.to_string(),
            },
        }
    }
}

/// Unknown-character token of the character-level tokenizer.
pub const UNK: &str = "<unk>";
/// End-of-text token of the BPE tokenizer.
pub const EOT: &str = "<|endoftext|>";

/// A tokenizer kiln trains or loads.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

fn tk_err(e: impl std::fmt::Display) -> TextError {
    TextError::Tokenizer(e.to_string())
}

impl TextTokenizer {
    /// Builds the tokenizer of `kind`, training on `texts` where it needs to.
    pub fn build(kind: &TokenizerKind, texts: &[&str]) -> Result<Self> {
        Self::build_normalized(kind, texts, false)
    }

    /// As [`build`](Self::build); with `lowercase`, a trained tokenizer lowercases text
    /// before tokenizing (its `tokenizer.json` carries a `Lowercase` normalizer, so encoding
    /// new text lowercases it too; decoding gives the lowercased text). A loaded
    /// `tokenizer.json` keeps its own normalizer.
    pub fn build_normalized(kind: &TokenizerKind, texts: &[&str], lowercase: bool) -> Result<Self> {
        match kind {
            TokenizerKind::Char if lowercase => {
                let lowered: Vec<String> = texts.iter().map(|t| t.to_lowercase()).collect();
                let lowered: Vec<&str> = lowered.iter().map(String::as_str).collect();
                let mut tk = Self::train_char(&lowered)?;
                tk.inner.with_normalizer(Some(Lowercase));
                Ok(tk)
            }
            TokenizerKind::Char => Self::train_char(texts),
            TokenizerKind::Bpe { vocab_size } => {
                Self::train_bpe_with(texts, *vocab_size, lowercase)
            }
            TokenizerKind::File { path } => Self::from_file(Path::new(path)),
        }
    }

    /// A character-level tokenizer over the characters of `texts` (ids in code-point order
    /// after `<unk>` = 0). Characters never seen map to `<unk>`.
    pub fn train_char(texts: &[&str]) -> Result<Self> {
        let chars: BTreeSet<char> = texts.iter().flat_map(|t| t.chars()).collect();
        if chars.is_empty() {
            return Err(TextError::EmptyCorpus("character vocabulary".into()));
        }
        let mut vocab = serde_json::Map::new();
        vocab.insert(UNK.into(), 0.into());
        for (i, c) in chars.iter().enumerate() {
            vocab.insert(c.to_string(), (i + 1).into());
        }
        let json = serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": [{"id": 0, "content": UNK, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
            "normalizer": null,
            "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(?s)."}, "behavior": "Isolated", "invert": false},
            "post_processor": null,
            "decoder": {"type": "Fuse"},
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": UNK},
        });
        let inner =
            Tokenizer::from_bytes(serde_json::to_vec(&json).expect("json")).map_err(tk_err)?;
        Ok(Self { inner })
    }

    /// A byte-level BPE tokenizer with about `vocab_size` tokens trained on `texts`.
    pub fn train_bpe(texts: &[&str], vocab_size: usize) -> Result<Self> {
        Self::train_bpe_with(texts, vocab_size, false)
    }

    fn train_bpe_with(texts: &[&str], vocab_size: usize, lowercase: bool) -> Result<Self> {
        if texts.iter().all(|t| t.is_empty()) {
            return Err(TextError::EmptyCorpus("BPE training text".into()));
        }
        if vocab_size < 257 {
            return Err(TextError::Tokenizer(format!(
                "BPE vocab_size must be at least 257 (256 bytes + <|endoftext|>), got {vocab_size}"
            )));
        }
        let mut inner = Tokenizer::new(BPE::default());
        if lowercase {
            inner.with_normalizer(Some(Lowercase));
        }
        let byte_level = ByteLevel::default()
            .add_prefix_space(false)
            .trim_offsets(false);
        inner.with_pre_tokenizer(Some(byte_level));
        inner.with_decoder(Some(byte_level));
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(2)
            .show_progress(false)
            .special_tokens(vec![AddedToken::from(EOT, true)])
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build()
            .into();
        // Train on line chunks so memory stays proportional to the vocabulary, not the text.
        let chunks = texts.iter().flat_map(|t| t.split_inclusive('\n'));
        inner.train(&mut trainer, chunks).map_err(tk_err)?;
        Ok(Self { inner })
    }

    /// Loads a HuggingFace `tokenizer.json` (BPE, WordPiece, Unigram, WordLevel ...), without
    /// the file's truncation and padding settings.
    pub fn from_file(path: &Path) -> Result<Self> {
        let mut tokenizer = Self::read_file(path)?;
        // kiln cuts and pads texts itself; a file's own settings (a pretrained tokenizer's
        // fixed padding to 128, say) would silently change every text.
        tokenizer.inner.with_padding(None);
        tokenizer
            .inner
            .with_truncation(None)
            .map_err(|e| TextError::Tokenizer(format!("{}: {e}", path.display())))?;
        Ok(tokenizer)
    }

    /// `tokenizer.json` as the file has it, truncation and padding included.
    fn read_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| TextError::Io {
            path: path.display().to_string(),
            source: e,
        })?;
        let inner = Tokenizer::from_bytes(&bytes).map_err(|e| {
            TextError::Tokenizer(format!(
                "{}: not a valid tokenizer.json: {e}",
                path.display()
            ))
        })?;
        Ok(Self { inner })
    }

    /// A pretrained model's `tokenizer.json` set up as the model's own code calls it: special
    /// tokens added by the tokenizer's post-processor (`[CLS] … [SEP]` for BERT), the text cut
    /// so that at most `max_tokens` ids come out (Hugging Face's longest-first truncation), no
    /// padding (batches are padded to their longest row by the caller, with [`Self::pad_id`]).
    pub fn from_pretrained_file(path: &Path, max_tokens: usize) -> Result<Self> {
        Self::read_file(path)?.for_model(max_tokens)
    }

    /// This tokenizer set up as [`Self::from_pretrained_file`] sets up a file's.
    pub fn for_model(self, max_tokens: usize) -> Result<Self> {
        let mut tokenizer = self;
        // Keep the padding settings (they name the pad token) but never pad a single text.
        if let Some(padding) = tokenizer.inner.get_padding_mut() {
            padding.strategy = tokenizers::PaddingStrategy::BatchLongest;
        }
        tokenizer
            .inner
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: max_tokens,
                ..Default::default()
            }))
            .map_err(tk_err)?;
        Ok(tokenizer)
    }

    /// Token ids of `text` as the model saw them in training, with the special tokens and the
    /// truncation of [`Self::from_pretrained_file`], and whether the text was cut.
    pub fn encode_for_model(&self, text: &str) -> Result<(Vec<u32>, bool)> {
        let encoding = self.inner.encode_fast(text, true).map_err(tk_err)?;
        Ok((
            encoding.get_ids().to_vec(),
            !encoding.get_overflowing().is_empty(),
        ))
    }

    /// The special token ids the tokenizer's post-processor puts before and after one text
    /// (`[CLS]` and `[SEP]` for BERT; none for a tokenizer without one).
    pub fn special_tokens_around(&self) -> Result<(Vec<u32>, Vec<u32>)> {
        let encoding = self.inner.encode_fast("a", true).map_err(tk_err)?;
        let sequence = encoding.get_sequence_ids();
        let first = sequence.iter().position(Option::is_some);
        let last = sequence.iter().rposition(Option::is_some);
        let (Some(first), Some(last)) = (first, last) else {
            return Err(TextError::Tokenizer(
                "the post-processor leaves no room for the text".into(),
            ));
        };
        let ids = encoding.get_ids();
        Ok((ids[..first].to_vec(), ids[last + 1..].to_vec()))
    }

    /// The id of the padding token: the one `tokenizer.json`'s padding names, else `[PAD]`,
    /// else `<pad>`.
    pub fn pad_id(&self) -> Option<u32> {
        self.inner
            .get_padding()
            .map(|p| p.pad_id)
            .or_else(|| self.inner.token_to_id("[PAD]"))
            .or_else(|| self.inner.token_to_id("<pad>"))
    }

    /// Parses `tokenizer.json` text (as [`TextTokenizer::to_json`] writes it).
    pub fn from_json(json: &str) -> Result<Self> {
        let inner = Tokenizer::from_bytes(json.as_bytes())
            .map_err(|e| TextError::Tokenizer(format!("not a valid tokenizer.json: {e}")))?;
        Ok(Self { inner })
    }

    /// Saves as `tokenizer.json`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = self.inner.to_string(true).map_err(tk_err)?;
        std::fs::write(path, json).map_err(|e| TextError::Io {
            path: path.display().to_string(),
            source: e,
        })
    }

    /// The serialised `tokenizer.json` text (compact).
    pub fn to_json(&self) -> Result<String> {
        self.inner.to_string(false).map_err(tk_err)
    }

    /// Vocabulary size, including special tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Token ids of `text` (no special tokens added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Ok(self
            .inner
            .encode_fast(text, false)
            .map_err(tk_err)?
            .get_ids()
            .to_vec())
    }

    /// The first `max` token ids of `text`, and whether the text had more. Only a prefix of a
    /// long text is encoded (cut at whitespace, with a margin of tokens past `max` so the cut
    /// cannot change the kept ones); the whole text only when the prefix falls short.
    pub fn encode_head(&self, text: &str, max: usize) -> Result<(Vec<u32>, bool)> {
        const MARGIN: usize = 16;
        let budget = (max + MARGIN).saturating_mul(8);
        if text.len() > budget {
            let mut cut = budget;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            if let Some(space) = text[..cut].rfind(char::is_whitespace) {
                cut = space;
            }
            let ids = self.encode(&text[..cut])?;
            if ids.len() >= max + MARGIN {
                return Ok((ids[..max].to_vec(), true));
            }
        }
        let mut ids = self.encode(text)?;
        let truncated = ids.len() > max;
        ids.truncate(max);
        Ok((ids, truncated))
    }

    /// At most `max` token ids of `text`, and whether the text had more: the first `head` of a
    /// longer text's tokens followed by its last `max - head` (`head >= max` keeps the start,
    /// `head = 0` the end; Sun et al. 2019 found a quarter head, three quarters tail best for
    /// long-document classification). The kept tokens equal those of a full encode; only the
    /// two ends of a long text are encoded.
    pub fn encode_head_tail(
        &self,
        text: &str,
        max: usize,
        head: usize,
    ) -> Result<(Vec<u32>, bool)> {
        if head >= max {
            return self.encode_head(text, max);
        }
        let tail = max - head;
        let (mut ids, truncated) = self.encode_head(text, max)?;
        if !truncated {
            return Ok((ids, false));
        }
        ids.truncate(head);
        ids.extend(self.encode_tail(text, tail)?);
        Ok((ids, true))
    }

    /// The last `max` token ids of `text` (all of them when it has fewer): only a suffix of a
    /// long text is encoded, cut at whitespace with a margin of tokens before the kept ones.
    fn encode_tail(&self, text: &str, max: usize) -> Result<Vec<u32>> {
        const MARGIN: usize = 16;
        let budget = (max + MARGIN).saturating_mul(8);
        if text.len() > budget {
            let mut cut = text.len() - budget;
            while !text.is_char_boundary(cut) {
                cut += 1;
            }
            // Start at the last character of a whitespace run, where a word's own leading
            // space begins (byte-level BPE glues it to the word).
            if let Some(offset) = text[cut..].find(|c: char| !c.is_whitespace()) {
                let word = cut + offset;
                if let Some((space, _)) = text[..word].char_indices().next_back()
                    && space >= cut
                {
                    cut = space;
                }
            }
            let ids = self.encode(&text[cut..])?;
            if ids.len() >= max + MARGIN {
                return Ok(ids[ids.len() - max..].to_vec());
            }
        }
        let ids = self.encode(text)?;
        Ok(ids[ids.len().saturating_sub(max)..].to_vec())
    }

    /// Token ids of a long text, encoded line-chunk by line-chunk to bound memory.
    pub fn encode_long(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::with_capacity(text.len() / 2);
        let mut start = 0;
        const CHUNK: usize = 1 << 16;
        while start < text.len() {
            let mut end = (start + CHUNK).min(text.len());
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            if end < text.len()
                && let Some(i) = text[start..end].rfind('\n')
            {
                // Cut after a newline when there is one, so chunks end where lines do.
                end = start + i + 1;
            }
            ids.extend(self.encode(&text[start..end])?);
            start = end;
        }
        Ok(ids)
    }

    /// Text of `ids`.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(tk_err)
    }

    /// Id of the `<unk>` token, when the tokenizer has one.
    pub fn unk_id(&self) -> Option<u32> {
        self.inner.token_to_id(UNK)
    }
}
