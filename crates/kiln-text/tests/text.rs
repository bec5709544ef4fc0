//! Tokenizer round trips (English and Chinese), token files, bad input.

use kiln_rng::SplitMix64;
use kiln_text::{TextTokenizer, TokenDtype, TokenFile, prepare_corpus, read_corpus};

const SAMPLE: &str = "人民日报 1998年1月 新年贺词\nThe quick brown fox jumps over the lazy dog.\n  tabs\tand  spaces \n中华人民共和国成立五十周年。\n";

#[test]
fn char_tokenizer_round_trips_and_maps_unknowns() {
    let tk = TextTokenizer::train_char(&[SAMPLE]).unwrap();
    let ids = tk.encode(SAMPLE).unwrap();
    assert_eq!(ids.len(), SAMPLE.chars().count(), "one token per character");
    assert_eq!(tk.decode(&ids).unwrap(), SAMPLE);
    let unk = tk.unk_id().unwrap();
    let ids = tk.encode("fox 猫").unwrap();
    assert_eq!(ids.len(), 5);
    assert_eq!(ids[4], unk, "an unseen character is <unk>");
}

#[test]
fn bpe_round_trips_any_text_and_compresses() {
    let text = SAMPLE.repeat(50);
    let tk = TextTokenizer::train_bpe(&[&text], 400).unwrap();
    assert!(tk.vocab_size() <= 400 && tk.vocab_size() > 257);
    let ids = tk.encode_long(&text).unwrap();
    assert_eq!(tk.decode(&ids).unwrap(), text);
    assert!(ids.len() < text.len() / 2, "BPE merges frequent byte pairs");
    // Byte-level: text never seen still round-trips.
    let novel = "Ünïcödé ✓ 新词 🙂";
    assert_eq!(tk.decode(&tk.encode(novel).unwrap()).unwrap(), novel);
}

#[test]
fn tokenizer_json_saves_and_loads() {
    let dir = tempfile::tempdir().unwrap();
    let tk = TextTokenizer::train_bpe(&[&SAMPLE.repeat(20)], 300).unwrap();
    let p = dir.path().join("tokenizer.json");
    tk.save(&p).unwrap();
    let back = TextTokenizer::from_file(&p).unwrap();
    assert_eq!(back.encode(SAMPLE).unwrap(), tk.encode(SAMPLE).unwrap());
    std::fs::write(&p, "{ not json").unwrap();
    assert!(
        TextTokenizer::from_file(&p)
            .unwrap_err()
            .to_string()
            .contains("not a valid tokenizer.json")
    );
}

#[test]
fn prepared_corpus_is_memory_mapped_and_batches_are_seeded() {
    let dir = tempfile::tempdir().unwrap();
    let text = SAMPLE.repeat(30);
    let tk = TextTokenizer::train_char(&[&text]).unwrap();
    let meta = prepare_corpus(&text, &tk, dir.path(), 0.1).unwrap();
    assert_eq!(meta.dtype, TokenDtype::U16);
    assert_eq!(
        (meta.train_tokens + meta.val_tokens) as usize,
        text.chars().count()
    );
    let train = TokenFile::open(&dir.path().join("train.bin"), meta.dtype).unwrap();
    assert_eq!(train.len() as u64, meta.train_tokens);
    let (x, y) = train
        .random_batch(&mut SplitMix64::new(5), 4, 16, meta.vocab_size)
        .unwrap();
    assert_eq!((x.len(), y.len()), (64, 64));
    assert_eq!(&x[1..16], &y[..15], "targets are inputs shifted by one");
    let again = train
        .random_batch(&mut SplitMix64::new(5), 4, 16, meta.vocab_size)
        .unwrap();
    assert_eq!(again.0, x);
    // A vocabulary smaller than the ids in the file is a mismatch, not a panic.
    let err = train
        .random_batch(&mut SplitMix64::new(5), 4, 16, 3)
        .unwrap_err()
        .to_string();
    assert!(err.contains("do not match"), "{err}");
}

#[test]
fn non_utf8_and_empty_corpora_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.txt");
    std::fs::write(&bad, b"line one\nline \xff two\n").unwrap();
    let err = read_corpus(&[bad]).unwrap_err().to_string();
    assert!(
        err.contains("bad.txt") && err.contains("byte 14") && err.contains("line 2"),
        "{err}"
    );
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "\n  \n").unwrap();
    assert!(
        read_corpus(&[empty])
            .unwrap_err()
            .to_string()
            .contains("empty")
    );
}

#[test]
fn long_texts_encode_in_chunks_at_char_boundaries() {
    // Far longer than one 64 KiB chunk, multi-byte characters, few newlines.
    let text = "中华人民共和国成立五十周年".repeat(3000) + "\n" + &"新年贺词".repeat(9000);
    let tk = TextTokenizer::train_char(&[&text]).unwrap();
    let ids = tk.encode_long(&text).unwrap();
    assert_eq!(ids.len(), text.chars().count());
    assert_eq!(tk.decode(&ids).unwrap(), text);
}

/// The People's Daily corpus from `scripts/setup-text-data.sh`.
fn peoples_daily() -> Option<String> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/peoples_daily.txt");
    std::fs::read_to_string(p).ok()
}

#[test]
#[ignore = "needs data/peoples_daily.txt (scripts/setup-text-data.sh)"]
fn bpe_round_trips_the_peoples_daily_validation_text() {
    let text = peoples_daily().expect("run scripts/setup-text-data.sh first");
    let cut = text
        .char_indices()
        .nth(text.chars().count() * 9 / 10)
        .unwrap()
        .0;
    let (train, val) = text.split_at(cut);
    let tk = TextTokenizer::train_bpe(&[train], 6000).unwrap();
    let ids = tk.encode_long(val).unwrap();
    assert_eq!(
        tk.decode(&ids).unwrap(),
        val,
        "decode(encode(x)) == x on the validation text"
    );
    println!(
        "{} validation characters -> {} BPE tokens",
        val.chars().count(),
        ids.len()
    );
}

#[test]
fn encode_head_keeps_the_same_first_tokens_as_a_full_encode() {
    let words = [
        "spam", "offer", "free", "money", "meeting", "notes", "日本", "新年",
    ];
    let mut rng = SplitMix64::new(5);
    let text: String = (0..3000)
        .map(|_| format!("{} ", words[rng.below(words.len())]))
        .collect();
    let tk = TextTokenizer::train_bpe(&[&text], 300).unwrap();
    let full = tk.encode(&text).unwrap();
    for max in [1, 7, 64, 256] {
        let (head, truncated) = tk.encode_head(&text, max).unwrap();
        assert_eq!(head, full[..max], "max {max}");
        assert!(truncated);
    }
    let (all, truncated) = tk.encode_head("free money", 64).unwrap();
    assert_eq!(all, tk.encode("free money").unwrap());
    assert!(!truncated);
}

#[test]
fn encode_head_tail_keeps_both_ends_of_a_full_encode() {
    let words = [
        "spam", "offer", "free", "money", "meeting", "notes", "日本", "新年", "\n", "  ",
    ];
    let mut rng = SplitMix64::new(6);
    let text: String = (0..3000)
        .map(|_| format!("{} ", words[rng.below(words.len())]))
        .collect();
    for tk in [
        TextTokenizer::train_bpe(&[&text], 300).unwrap(),
        TextTokenizer::build(&kiln_text::TokenizerKind::Char, &[&text]).unwrap(),
    ] {
        let full = tk.encode(&text).unwrap();
        for (max, head) in [(64, 16), (256, 64), (7, 0), (9, 9), (300, 299), (1, 0)] {
            let (ids, truncated) = tk.encode_head_tail(&text, max, head).unwrap();
            let mut want = full[..head].to_vec();
            want.extend_from_slice(&full[full.len() - (max - head)..]);
            assert_eq!(ids, want, "max {max} head {head}");
            assert!(truncated);
        }
        // A short text is kept whole, whatever the split.
        let (all, truncated) = tk.encode_head_tail("free money", 64, 16).unwrap();
        assert_eq!(all, tk.encode("free money").unwrap());
        assert!(!truncated);
    }
}

#[test]
fn lowercase_tokenizers_read_upper_and_lower_case_alike() {
    use kiln_text::TokenizerKind;
    let text = "Free MONEY now, free money later. Meeting Notes.";
    for kind in [TokenizerKind::Char, TokenizerKind::Bpe { vocab_size: 300 }] {
        let tk = TextTokenizer::build_normalized(&kind, &[text], true).unwrap();
        assert_eq!(
            tk.encode("FREE Money").unwrap(),
            tk.encode("free money").unwrap(),
            "{kind:?}"
        );
        // The normalizer travels with the saved tokenizer.
        let back = TextTokenizer::from_json(&tk.to_json().unwrap()).unwrap();
        assert_eq!(
            back.encode("MEETING").unwrap(),
            tk.encode("meeting").unwrap()
        );
        let cased = TextTokenizer::build(&kind, &[text]).unwrap();
        assert_ne!(cased.encode("FREE").unwrap(), cased.encode("free").unwrap());
    }
}
