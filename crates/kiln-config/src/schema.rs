//! The configuration types. Every field has a default, so an empty file is a valid config
//! once `data.source` is given.

use serde::{Deserialize, Serialize};

/// A whole run: data, features, model, trainer and outputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Seed for splits, initialisation, shuffling and dropout. Same seed, same result.
    pub seed: u64,
    /// Compute device: `cpu` (Burn's Flex backend), `auto`, `gpu`, `gpu:N`, `vulkan`, `cuda`
    /// (see [`crate::DeviceRequest`]).
    pub device: String,
    /// Where the data comes from and how it is cleaned and split.
    pub data: DataConfig,
    /// Per-feature overrides; columns not listed get inferred types and the data defaults.
    pub features: Vec<FeatureConfig>,
    /// The network.
    pub model: ModelConfig,
    /// Optimisation.
    pub trainer: TrainerConfig,
    /// Tokenizer and corpus settings (language models and text features).
    pub text: TextConfig,
    /// Low-rank adapters on a pretrained encoder (`rank = 0`: none).
    pub lora: LoraConfig,
    /// Knowledge distillation from a trained teacher run.
    pub distill: DistillConfig,
    /// Where the run directory goes.
    pub output: OutputConfig,
}

impl Config {
    /// The `device` key, parsed.
    pub fn device_request(&self) -> Result<crate::DeviceRequest, String> {
        self.device.parse()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            seed: 42,
            device: "cpu".into(),
            data: DataConfig::default(),
            features: Vec::new(),
            model: ModelConfig::default(),
            trainer: TrainerConfig::default(),
            text: TextConfig::default(),
            lora: LoraConfig::default(),
            distill: DistillConfig::default(),
            output: OutputConfig::default(),
        }
    }
}

/// What kind of prediction the target asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Predict one of a fixed set of classes (two or more).
    Classification,
    /// Predict a real number.
    Regression,
}

/// The data source and cleaning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// `builtin:NAME` (digits, iris, breast_cancer, diabetes, wine_quality), a CSV, JSON
    /// Lines, Parquet or Arrow file, a directory of Parquet part files, a folder of class
    /// folders of images, or an IDX prefix (`DIR/train` for `DIR/train-images-idx3-ubyte.gz`).
    pub source: String,
    /// Optional separate test set in the same format (e.g. the IDX `t10k` files). When set,
    /// the split takes only validation rows from `source`.
    pub test_source: Option<String>,
    /// Target column. Built-in and IDX sources name theirs `target` / `label`.
    pub target: Option<String>,
    /// Classification or regression; inferred from the target column when absent.
    pub task: Option<Task>,
    /// A column carried through to predictions (a submission's id), not used as a feature.
    pub id_column: Option<String>,
    /// With `id_column` unset, take an id-like column as the id: every value present and
    /// distinct, and either strings, or integers named like an id (`id`, `user_id`,
    /// `PassengerId`, `rownames`, `index`) or numbering the rows.
    pub detect_id: bool,
    /// How `source` is read: `auto` (by extension and content), `csv` (also TSV and
    /// other delimiters), `jsonl`, `parquet`, `arrow` or `images`.
    pub format: DataFormat,
    /// CSV delimiter; sniffed from the header line when absent.
    pub delimiter: Option<char>,
    /// Remove exact duplicate rows before splitting (the count is reported).
    pub drop_duplicates: bool,
    /// Default handling of missing numeric values.
    pub missing_numeric: MissingStrategy,
    /// Default handling of missing categorical and binary values.
    pub missing_categorical: MissingStrategy,
    /// Default normalisation of numeric features.
    pub normalization: Normalization,
    /// Default encoding of categorical features.
    pub encoding: CategoricalEncoding,
    /// Rows whose fields fail to parse: `error` stops with the file and line, `skip` drops
    /// them and reports the count.
    pub bad_rows: BadRows,
    /// How the rows are split into train, validation and test.
    pub split: SplitConfig,
    /// How images are read: a folder of class folders, or a column of image paths.
    pub image: ImageConfig,
    /// Random changes to training images, drawn anew every epoch.
    pub augment: AugmentConfig,
    /// Train from a source larger than memory (Parquet, or a plain CSV or JSON Lines file):
    /// read a row group (or a run of records) at a time, in a new order every epoch, with the
    /// preprocessing fitted in one pass first. `"auto"` (the default) streams a source that,
    /// held in memory, would take more than half the machine's (four times its columns' size),
    /// when nothing in the config needs every row at once.
    pub streaming: Streaming,
    /// With `streaming`, the training rows shuffled together: row groups are read into a
    /// buffer of at least this many rows, which is shuffled before it is cut into batches.
    pub shuffle_buffer: usize,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            source: String::new(),
            test_source: None,
            target: None,
            task: None,
            id_column: None,
            detect_id: true,
            format: DataFormat::Auto,
            delimiter: None,
            drop_duplicates: false,
            missing_numeric: MissingStrategy::Mean,
            missing_categorical: MissingStrategy::Mode,
            normalization: Normalization::Zscore,
            encoding: CategoricalEncoding::OneHot,
            bad_rows: BadRows::Error,
            split: SplitConfig::default(),
            image: ImageConfig::default(),
            augment: AugmentConfig::default(),
            streaming: Streaming::Auto,
            shuffle_buffer: 1 << 18,
        }
    }
}

/// How images are decoded and brought to one size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageConfig {
    /// `[height, width]` every image is brought to; when absent, the images' own size, which
    /// must then be the same for all.
    pub size: Option<[usize; 2]>,
    /// Colour channels: `auto` (grey when every image is grey, RGB when every image has
    /// colour, an error when they are mixed), `grey` or `rgb` (converting as needed).
    pub channels: ImageChannels,
    /// How an image of another shape reaches `size`.
    pub fit: ImageFit,
    /// In a table (CSV, Parquet, ...), the column of image paths, relative to the table's
    /// folder; the images become the column's values.
    pub column: Option<String>,
}

impl Default for ImageConfig {
    fn default() -> Self {
        Self {
            size: None,
            channels: ImageChannels::Auto,
            fit: ImageFit::Crop,
            column: None,
        }
    }
}

/// Colour channels of decoded images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageChannels {
    /// As the images are, when they all agree.
    Auto,
    /// One channel (luma).
    Grey,
    /// Three channels.
    Rgb,
}

/// Resizing to `data.image.size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageFit {
    /// Scale the shorter side to fit, then cut the centre (torchvision's Resize + CenterCrop).
    Crop,
    /// Scale each side to fit (the aspect ratio changes).
    Stretch,
}

/// Training-time image augmentation; off by default. Evaluation and prediction always see
/// the images as they are. Each row's changes are drawn from the seed, the step and its place
/// in the batch, so a resumed run sees the same ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AugmentConfig {
    /// Mirror left-right with probability 0.5.
    pub flip: bool,
    /// Pad every side by this many pixels (black), then cut a random crop of the image's
    /// size (0: off).
    pub crop_padding: usize,
    /// Rotate by a random angle in ±this many degrees (0: off).
    pub rotate_degrees: f64,
    /// Scale brightness by a random factor in [1 − b, 1 + b] (0: off).
    pub brightness: f64,
    /// Scale contrast around the image's mean grey by a factor in [1 − c, 1 + c].
    pub contrast: f64,
    /// Scale saturation by a factor in [1 − s, 1 + s] (RGB only).
    pub saturation: f64,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            flip: false,
            crop_padding: 0,
            rotate_degrees: 0.0,
            brightness: 0.0,
            contrast: 0.0,
            saturation: 0.0,
        }
    }
}

impl AugmentConfig {
    /// Whether any change is switched on.
    pub fn enabled(&self) -> bool {
        self.flip
            || self.crop_padding > 0
            || self.rotate_degrees != 0.0
            || self.brightness != 0.0
            || self.contrast != 0.0
            || self.saturation != 0.0
    }
}

/// What to do with a missing value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingStrategy {
    /// Drop the whole row (counted in the report).
    Drop,
    /// Fill with the training mean (numeric only).
    Mean,
    /// Fill with the training median (numeric only).
    Median,
    /// Fill with the most frequent training value.
    Mode,
    /// Fill with the feature's `fill_value`.
    Constant,
}

/// Numeric feature scaling, fitted on the training split only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Normalization {
    /// Leave values as they are.
    None,
    /// (x - mean) / std.
    Zscore,
    /// (x - min) / (max - min).
    MinMax,
    /// (x - median) / IQR.
    Robust,
}

/// How a categorical feature enters the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CategoricalEncoding {
    /// One input per category (plus one for unknown).
    OneHot,
    /// A learned embedding vector.
    Embedding,
}

/// The file format of a data source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataFormat {
    /// From the extension (`.parquet`, `.arrow`/`.feather`, `.jsonl`/`.ndjson`/`.json`;
    /// `.gz` and `.zst` looked through) and the first bytes; CSV otherwise. A directory holds
    /// Parquet part files, or class folders of images.
    #[default]
    Auto,
    /// Delimited text with a header row.
    Csv,
    /// JSON Lines: one object per line.
    Jsonl,
    /// Apache Parquet: a file, or a directory of part files.
    Parquet,
    /// Arrow IPC file (Feather v2) or stream.
    Arrow,
    /// A folder with one sub-folder of images per class (PNG, JPEG, BMP, WebP).
    Images,
}

/// `data.streaming`: `true`, `false` or `"auto"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Streaming {
    /// Stream when the source would take more than half the memory and the config allows.
    #[default]
    Auto,
    /// Always stream.
    On,
    /// Never stream: the source is read whole.
    Off,
}

impl Serialize for Streaming {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Streaming::Auto => s.serialize_str("auto"),
            Streaming::On => s.serialize_bool(true),
            Streaming::Off => s.serialize_bool(false),
        }
    }
}

impl<'de> Deserialize<'de> for Streaming {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Choice;
        impl serde::de::Visitor<'_> for Choice {
            type Value = Streaming;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("true, false or \"auto\"")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> std::result::Result<Streaming, E> {
                Ok(if v { Streaming::On } else { Streaming::Off })
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<Streaming, E> {
                match v {
                    "auto" => Ok(Streaming::Auto),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
        }
        d.deserialize_any(Choice)
    }
}

/// Handling of rows that fail to parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadRows {
    /// Stop with an error naming the file and line.
    Error,
    /// Drop them, count them, and report the first few.
    Skip,
}

/// How rows are divided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplitMethod {
    /// Shuffled, seeded.
    Random,
    /// Shuffled within each class, so every split keeps the class balance.
    Stratified,
    /// By the value of `split.column`: `train`, `validation`/`valid`/`val`, `test`.
    Column,
    /// k-fold: fold `split.fold` of `split.folds` is the test split.
    Kfold,
}

/// Split settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SplitConfig {
    /// Split method; `stratified` for classification and `random` for regression when absent.
    pub method: Option<SplitMethod>,
    /// Fraction of rows for validation (taken from the non-test rows).
    pub validation: f64,
    /// Fraction of rows for test (ignored with `test_source`, `column` or `kfold`).
    pub test: f64,
    /// Column holding the split name for `method = "column"`.
    pub column: Option<String>,
    /// Number of folds for `kfold`.
    pub folds: usize,
    /// Which fold is the test split for `kfold` (0-based).
    pub fold: usize,
    /// Seed of the split alone (unset: the run's `seed`), so runs that differ in their
    /// initialisation can share one split (an ensemble's members, a spread over seeds).
    pub seed: Option<u64>,
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self {
            method: None,
            validation: 0.1,
            test: 0.2,
            column: None,
            folds: 5,
            fold: 0,
            seed: None,
        }
    }
}

/// The type of a feature column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureType {
    /// A real number.
    Numeric,
    /// One of a set of strings.
    Categorical,
    /// Two values (true/false, yes/no, 0/1, or any two strings).
    Binary,
    /// Pixels (IDX sources).
    Image,
    /// Free text, tokenized (`[text]` settings) and read by a transformer encoder
    /// (`model.type = "transformer"`).
    Text,
    /// Carried through to predictions, not a feature.
    Id,
    /// Not used.
    Ignore,
}

/// Overrides for one column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureConfig {
    /// Column name.
    pub name: String,
    /// Column type; inferred when absent.
    #[serde(rename = "type")]
    pub kind: Option<FeatureType>,
    /// Missing-value handling for this column.
    pub missing: Option<MissingStrategy>,
    /// Fill value for `missing = "constant"`.
    pub fill_value: Option<String>,
    /// Normalisation for this numeric column.
    pub normalization: Option<Normalization>,
    /// Encoding for this categorical column.
    pub encoding: Option<CategoricalEncoding>,
    /// Embedding width for `encoding = "embedding"`.
    pub embedding_dim: Option<usize>,
}

/// Which network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// Multi-layer perceptron (no hidden layers: a linear/logistic model).
    Mlp,
    /// A linear model: an MLP with no hidden layers (the baseline).
    Linear,
    /// Convolutional network over image features, then an MLP head.
    Cnn,
    /// A nanoGPT-style decoder language model trained on a text corpus.
    Gpt,
    /// A transformer encoder over a `text` feature (token + position embeddings, encoder
    /// blocks, mean pooling), joined with any other features before the MLP head.
    Transformer,
}

/// Hidden-layer activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// max(0, x).
    Relu,
    /// Gaussian error linear unit.
    Gelu,
    /// Hyperbolic tangent.
    Tanh,
    /// Logistic sigmoid.
    Sigmoid,
    /// max(0.01 x, x).
    LeakyRelu,
    /// x * sigmoid(x).
    Silu,
}

/// One convolution block: conv, optional batch norm, activation, optional max-pool, dropout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConvLayer {
    /// Output channels.
    pub filters: usize,
    /// Square kernel size.
    #[serde(default = "default_kernel")]
    pub kernel: usize,
    /// Stride.
    #[serde(default = "one")]
    pub stride: usize,
    /// Zero padding on each side.
    #[serde(default)]
    pub padding: usize,
    /// Max-pool window after the activation (0 or 1: none).
    #[serde(default)]
    pub pool: usize,
    /// Batch normalisation after the convolution.
    #[serde(default)]
    pub batch_norm: bool,
    /// Dropout after the block.
    #[serde(default)]
    pub dropout: f64,
}

fn default_kernel() -> usize {
    3
}
fn one() -> usize {
    1
}

/// The network's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelConfig {
    /// Network family.
    #[serde(rename = "type")]
    pub kind: ModelKind,
    /// Widths of the hidden fully connected layers.
    pub hidden: Vec<usize>,
    /// Activation after each hidden layer and convolution.
    pub activation: Activation,
    /// Dropout after each hidden layer.
    pub dropout: f64,
    /// Batch normalisation after each hidden linear layer.
    pub batch_norm: bool,
    /// Convolution blocks (CNN only), applied in order before the fully connected head.
    pub conv: Vec<ConvLayer>,
    /// Transformer blocks (GPT, transformer).
    pub layers: usize,
    /// Attention heads (GPT, transformer).
    pub heads: usize,
    /// Embedding width (GPT, transformer).
    pub embd: usize,
    /// Context length in tokens (GPT); longest text read, in tokens (transformer: longer
    /// texts keep their first `context` tokens).
    pub context: usize,
    /// Biases in Linear and LayerNorm (GPT, transformer).
    pub bias: bool,
    /// Tie the output head to the token embedding (GPT).
    pub tied_head: bool,
    /// How the text encoder turns token states into one vector (transformer).
    pub pooling: Pooling,
    /// A pretrained Hugging Face encoder folder (`config.json`, `model.safetensors`,
    /// `tokenizer.json`) to fine-tune (`type = "transformer"`): its tokenizer reads the text
    /// feature and the head sits on its pooled output. `layers`, `heads`, `embd` and `bias`
    /// come from its `config.json`; `context` is the longest text in tokens, special tokens
    /// included.
    pub pretrained: Option<String>,
    /// Start from the pretrained weights (`false`: the architecture and tokenizer of
    /// `pretrained` with fresh weights, the baseline that shows what pretraining gives).
    pub pretrained_weights: bool,
    /// Which part of a pretrained encoder is not trained: `"none"` (full fine-tuning),
    /// `"encoder"` (features only: the head alone learns), or a number K: the embeddings and
    /// the first K layers.
    pub freeze: Freeze,
    /// Causal attention in a text encoder (transformer): each token sees only itself and the
    /// tokens before it. Unset: as the model was made (a pretrained GPT causal, a BERT or a
    /// from-scratch encoder not); `false` lets a pretrained GPT's tokens see the whole text
    /// while it is fine-tuned.
    pub causal: Option<bool>,
}

/// The frozen part of a pretrained encoder (`model.freeze`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Freeze {
    /// Every weight trains.
    #[default]
    None,
    /// The whole encoder is frozen; only the head trains.
    Encoder,
    /// The embeddings and the first this many layers are frozen.
    Layers(usize),
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum FreezeSetting {
    Layers(usize),
    Name(String),
}

impl Serialize for Freeze {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            Freeze::None => FreezeSetting::Name("none".into()),
            Freeze::Encoder => FreezeSetting::Name("encoder".into()),
            Freeze::Layers(k) => FreezeSetting::Layers(k),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Freeze {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match FreezeSetting::deserialize(d)? {
            FreezeSetting::Layers(0) => Ok(Freeze::None),
            FreezeSetting::Layers(k) => Ok(Freeze::Layers(k)),
            FreezeSetting::Name(n) if n == "none" => Ok(Freeze::None),
            FreezeSetting::Name(n) if n == "encoder" => Ok(Freeze::Encoder),
            FreezeSetting::Name(n) => Err(serde::de::Error::custom(format!(
                "unknown freeze \"{n}\", expected \"none\", \"encoder\" or a number of layers"
            ))),
        }
    }
}

/// The projections of a BERT layer that LoRA can adapt, by their Hugging Face names.
pub const LORA_TARGETS: [&str; 6] = [
    "query",
    "key",
    "value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
];

/// Low-rank adapters (Hu et al. 2021, as PEFT's `LoraConfig`): each targeted projection
/// `W` of the pretrained encoder becomes `W + (alpha / rank) · A·B` with `A` `[in, rank]`,
/// `B` `[rank, out]` (zero at the start); the encoder's own weights are frozen, the adapters
/// and the head train.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank of each adapter (0 = no LoRA).
    pub rank: usize,
    /// Scale numerator: the update is scaled by `alpha / rank`.
    pub alpha: f64,
    /// Dropout on an adapter's input.
    pub dropout: f64,
    /// Projections adapted in every layer ([`LORA_TARGETS`]).
    pub targets: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            rank: 0,
            alpha: 16.0,
            dropout: 0.1,
            targets: vec!["query".into(), "value".into()],
        }
    }
}

/// Knowledge distillation (Hinton et al. 2015): the loss is
/// `alpha · T² · KL(softmax(teacher / T) ‖ softmax(student / T)) + (1 − alpha) · CE(labels)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DistillConfig {
    /// Run directory of the trained teacher (classification, same classes), or several
    /// whose probabilities are averaged (an ensemble).
    pub teacher: Option<Teachers>,
    /// Softmax temperature `T` of both teacher and student in the soft term.
    pub temperature: f64,
    /// Weight of the soft-target term; `1 − alpha` weighs the hard labels.
    pub alpha: f64,
    /// Whether the teacher's logits are computed once per training row, before training.
    /// `false` (with `data.augment`) runs the teacher on every batch as the student sees
    /// it, augmented ("function matching", Beyer et al. 2022): slower, a consistent target.
    pub cache: bool,
}

/// One teacher run directory, or a list of them (an ensemble).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged, expecting = "a run directory or a list of run directories")]
pub enum Teachers {
    /// One run.
    One(String),
    /// An ensemble: the runs' softmax outputs at the distillation temperature are averaged.
    Many(Vec<String>),
}

impl Teachers {
    /// The run directories.
    pub fn dirs(&self) -> Vec<&str> {
        match self {
            Teachers::One(dir) => vec![dir],
            Teachers::Many(dirs) => dirs.iter().map(String::as_str).collect(),
        }
    }
}

impl Default for DistillConfig {
    fn default() -> Self {
        Self {
            teacher: None,
            temperature: 2.0,
            alpha: 0.5,
            cache: true,
        }
    }
}

/// Per-class loss weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassWeights {
    /// Every row counts the same.
    #[default]
    None,
    /// Inverse class frequency, averaging 1 over the training rows.
    Balanced,
}

/// Pooling of a text encoder's token states over the real (non-padding) tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// The mean.
    #[default]
    Mean,
    /// The element-wise maximum: one strong token anywhere counts.
    Max,
    /// Mean and maximum side by side (ULMFiT's concat pooling), twice the width.
    MeanMax,
    /// The first token's state (BERT's `[CLS]`).
    Cls,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            kind: ModelKind::Mlp,
            hidden: vec![128, 64],
            activation: Activation::Relu,
            dropout: 0.1,
            batch_norm: false,
            conv: Vec::new(),
            layers: 4,
            heads: 4,
            embd: 128,
            context: 64,
            bias: false,
            tied_head: true,
            pooling: Pooling::Mean,
            pretrained: None,
            pretrained_weights: true,
            freeze: Freeze::None,
            causal: None,
        }
    }
}

/// Batch size: `"full"` (full-batch gradient descent) or a number of samples (1 is SGD).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSize {
    /// The whole training split in every step.
    Full,
    /// Mini-batches of this many samples.
    Samples(usize),
}

impl Serialize for BatchSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            BatchSize::Full => s.serialize_str("full"),
            BatchSize::Samples(n) => s.serialize_u64(*n as u64),
        }
    }
}

impl<'de> Deserialize<'de> for BatchSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = BatchSize;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(r#"a positive integer or "full""#)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<BatchSize, E> {
                if v >= 1 {
                    Ok(BatchSize::Samples(v as usize))
                } else {
                    Err(E::custom(format!(
                        r#"batch size must be at least 1 or "full", got {v}"#
                    )))
                }
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<BatchSize, E> {
                self.visit_i64(v as i64)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<BatchSize, E> {
                match v {
                    "full" => Ok(BatchSize::Full),
                    other => other
                        .parse::<i64>()
                        .map_err(|_| {
                            E::custom(format!(
                                r#"expected a positive integer or "full", got "{other}""#
                            ))
                        })
                        .and_then(|n| self.visit_i64(n)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// Optimizer family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// Stochastic gradient descent, optionally with (Nesterov) momentum.
    Sgd,
    /// Adam (L2 weight decay added to the gradient).
    Adam,
    /// AdamW (decoupled weight decay).
    Adamw,
    /// RMSProp.
    Rmsprop,
    /// AdaGrad.
    Adagrad,
}

/// The arithmetic of training's forward and backward passes (`trainer.precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Precision {
    /// Everything in f32.
    #[default]
    #[serde(rename = "f32")]
    F32,
    /// Products (linear layers, convolutions, attention's two products, the output head) in
    /// bfloat16 from f32 master weights; normalisation, softmax, the loss, gradients and the
    /// optimizer in f32 (PyTorch's `autocast(dtype=torch.bfloat16)`).
    #[serde(rename = "bf16-mixed")]
    Bf16Mixed,
    /// As `bf16-mixed` in float16, with dynamic loss scaling (PyTorch's `GradScaler`): the
    /// loss is multiplied by a scale before the backward pass, steps whose gradients overflow
    /// are skipped and halve the scale, and 2000 good steps in a row double it.
    #[serde(rename = "f16-mixed")]
    F16Mixed,
}

impl Precision {
    /// The accepted names.
    pub const CHOICES: &'static str = r#""f32", "bf16-mixed" or "f16-mixed""#;

    /// The name a config spells.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16Mixed => "bf16-mixed",
            Precision::F16Mixed => "f16-mixed",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Learning-rate schedule after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Constant.
    Constant,
    /// Multiply by `gamma` every `step_epochs` epochs.
    Step,
    /// Multiply by `gamma` every epoch.
    Exponential,
    /// Cosine decay to `min_lr` over the run.
    Cosine,
    /// Linear decay to `min_lr` over the run (Hugging Face's default).
    Linear,
    /// Multiply by `plateau_factor` when the monitored validation metric stops improving for
    /// `plateau_patience` epochs.
    Plateau,
}

/// Optimisation settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainerConfig {
    /// Passes over the training split.
    pub epochs: usize,
    /// `"full"`, or samples per step.
    pub batch_size: BatchSize,
    /// Optimizer.
    pub optimizer: OptimizerKind,
    /// Peak learning rate.
    pub lr: f64,
    /// SGD/RMSProp momentum.
    pub momentum: f64,
    /// Nesterov momentum (SGD).
    pub nesterov: bool,
    /// Adam/AdamW first-moment decay.
    pub beta1: f64,
    /// Adam/AdamW second-moment decay.
    pub beta2: f64,
    /// Numerical epsilon of adaptive optimizers.
    pub eps: f64,
    /// RMSProp smoothing constant.
    pub alpha: f64,
    /// Weight decay (L2 for SGD/Adam/RMSProp/AdaGrad, decoupled for AdamW).
    pub weight_decay: f64,
    /// Learning-rate schedule.
    pub schedule: ScheduleKind,
    /// Linear warm-up from 0 to `lr` over this many optimizer steps (any schedule).
    pub warmup_steps: usize,
    /// Period of the step schedule, in epochs.
    pub step_epochs: usize,
    /// Decay factor of the step and exponential schedules.
    pub gamma: f64,
    /// Floor of the cosine schedule.
    pub min_lr: f64,
    /// Reduce-on-plateau factor.
    pub plateau_factor: f64,
    /// Reduce-on-plateau patience in epochs.
    pub plateau_patience: usize,
    /// Clip gradients so their global L2 norm is at most this (0 = off).
    pub grad_clip_norm: f64,
    /// Training arithmetic: `"f32"`, `"bf16-mixed"` or `"f16-mixed"` (see [`Precision`]).
    /// Evaluation, prediction and serving compute in f32 whatever the training precision.
    pub precision: Precision,
    /// Pretrained encoders: layer-wise learning-rate decay. The top layer trains at `lr`,
    /// each layer below at `layer_lr_decay` times the one above, the embeddings below the
    /// first layer (1 = one rate for all).
    pub layer_lr_decay: f64,
    /// Learning rate of the head on a pretrained encoder, when it differs from `lr` (it
    /// follows the same schedule).
    pub head_lr: Option<f64>,
    /// Micro-batches whose gradients are summed into one optimizer step.
    pub grad_accum_steps: usize,
    /// Validation metric that early stopping, plateau and best-model selection watch:
    /// `loss`, `accuracy`, `f1_macro`, `roc_auc`, `rmse`, `mae`, `r2`.
    pub monitor: String,
    /// Stop after this many epochs without improvement (0 = never).
    pub early_stopping_patience: usize,
    /// Keep the weights of the epoch with the best monitored validation value as the final
    /// model (HF's `load_best_model_at_end`); otherwise the last epoch's.
    pub keep_best: bool,
    /// Text data: batch texts of similar length (HF's `group_by_length`): rows are shuffled,
    /// sorted by length within windows of 50 batches, and the batches shuffled, so little
    /// compute goes to padding.
    pub group_by_length: bool,
    /// Classification: weight each class's loss. `"balanced"` weights class `c` by
    /// `rows / (classes * rows of c)` in the training split (scikit-learn's
    /// `class_weight="balanced"`: the weights average 1 over the training rows), so a rare
    /// class counts as much as a common one.
    pub class_weights: ClassWeights,
    /// Write a resumable checkpoint every this many optimizer steps (0 = only at epoch ends).
    pub checkpoint_every_steps: usize,
    /// Record training loss every this many optimizer steps.
    pub log_every_steps: usize,
    /// Language models: optimizer steps to run (instead of epochs).
    pub max_steps: usize,
    /// Language models: validate every this many steps.
    pub eval_every_steps: usize,
    /// Language models: validation batches per evaluation.
    pub eval_batches: usize,
    /// Data-parallel training (`mpirun -np N kiln train`): gradients are all-reduced in
    /// buckets of about this many megabytes (PyTorch DDP's default, 25).
    pub bucket_mb: f64,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        Self {
            epochs: 30,
            batch_size: BatchSize::Samples(64),
            optimizer: OptimizerKind::Adam,
            lr: 1e-3,
            momentum: 0.0,
            nesterov: false,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            alpha: 0.99,
            weight_decay: 0.0,
            schedule: ScheduleKind::Constant,
            warmup_steps: 0,
            step_epochs: 10,
            gamma: 0.1,
            min_lr: 0.0,
            plateau_factor: 0.5,
            plateau_patience: 3,
            grad_clip_norm: 0.0,
            precision: Precision::F32,
            layer_lr_decay: 1.0,
            head_lr: None,
            grad_accum_steps: 1,
            monitor: "loss".into(),
            early_stopping_patience: 0,
            keep_best: false,
            group_by_length: true,
            class_weights: ClassWeights::None,
            checkpoint_every_steps: 0,
            log_every_steps: 10,
            max_steps: 2000,
            eval_every_steps: 250,
            eval_batches: 20,
            bucket_mb: 25.0,
        }
    }
}

/// Tokenizer and corpus settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TextConfig {
    /// `char`, `bpe`, or the path of an existing `tokenizer.json`.
    pub tokenizer: String,
    /// BPE vocabulary size.
    pub vocab_size: usize,
    /// Lowercase text before tokenizing (char and BPE tokenizers kiln trains).
    pub lowercase: bool,
    /// Fraction of the corpus (its end) held out for validation.
    pub val_fraction: f64,
    /// Which tokens of a text longer than the windows hold a text feature keeps.
    pub truncation: Truncation,
    /// Windows of `model.context` tokens a text classifier reads per text (1: one window). A
    /// longer text is cut into consecutive windows, each with the model's special tokens;
    /// the model pools each window and averages the windows that hold text (Hugging Face's
    /// overflowing tokens, averaged per document).
    pub windows: usize,
    /// Tokens each window repeats from the end of the one before it (Hugging Face's
    /// `stride`), so no token loses all its context at a window boundary.
    pub window_overlap: usize,
}

/// Which tokens of a text longer than the model's context a text feature keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Truncation {
    /// The first tokens.
    #[default]
    Head,
    /// The last tokens.
    Tail,
    /// The first quarter of the context from the start, the rest from the end (Sun et al.
    /// 2019, "How to Fine-Tune BERT for Text Classification": 128 + 382 of 512 was best).
    HeadTail,
}

impl Truncation {
    /// How many of `max` kept tokens come from the start of a long text.
    pub fn head_tokens(self, max: usize) -> usize {
        match self {
            Truncation::Head => max,
            Truncation::Tail => 0,
            Truncation::HeadTail => max / 4,
        }
    }
}

impl Default for TextConfig {
    fn default() -> Self {
        Self {
            tokenizer: "char".into(),
            vocab_size: 2000,
            lowercase: false,
            val_fraction: 0.1,
            truncation: Truncation::Head,
            windows: 1,
            window_overlap: 0,
        }
    }
}

/// Run directory settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputConfig {
    /// Parent directory of run directories.
    pub dir: String,
    /// Run name; `<data>-<model>-<timestamp>` when absent.
    pub name: Option<String>,
    /// Draw loss/metric/LR curves, confusion matrix and ROC curve as SVG.
    pub plots: bool,
}

impl Default for OutputConfig {
    fn default() -> Self {
        Self {
            dir: "runs".into(),
            name: None,
            plots: true,
        }
    }
}
