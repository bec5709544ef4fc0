//! CSV parsing, type inference, splits and fitted preprocessing.

use std::collections::HashSet;

use kiln_config::{
    BadRows, CategoricalEncoding, Config, FeatureConfig, FeatureType, MissingStrategy,
    Normalization, SplitMethod, Task,
};
use kiln_data::{Column, Preprocessor, Target, infer_schema, load_builtin, read_csv, split_rows};

fn csv_table(text: &str) -> kiln_data::Table {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.csv");
    std::fs::write(&p, text).unwrap();
    read_csv(&p, None, BadRows::Error, &[]).unwrap()
}

fn config(target: &str) -> Config {
    let mut c = Config::default();
    c.data.source = "t.csv".into();
    c.data.target = Some(target.into());
    c
}

#[test]
fn csv_quotes_semicolons_missing_tokens_and_bom() {
    let t = csv_table("\u{feff}name;note;value\n\"Smith; J\";\"said \"\"hi\"\"\";1.5\nDoe;NA;\n");
    assert_eq!(t.names, ["name", "note", "value"]);
    assert_eq!(t.num_rows(), 2);
    assert!(matches!(t.columns[0], Column::Text(_)));
    assert_eq!(t.columns[0].str(0), Some("Smith; J"));
    assert_eq!(t.columns[1].str(0), Some("said \"hi\""));
    assert_eq!(t.columns[1].str(1), None, "NA is missing");
    assert_eq!(
        t.columns[2],
        Column::numbers([Some(1.5), None]),
        "empty is missing"
    );
    assert_eq!(t.lines, [2, 3]);
}

fn csv_table_with_text(text: &str, text_columns: &[&str]) -> kiln_data::Table {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.csv");
    std::fs::write(&p, text).unwrap();
    let names: Vec<String> = text_columns.iter().map(|c| c.to_string()).collect();
    read_csv(&p, None, BadRows::Error, &names).unwrap()
}

fn column_texts(t: &kiln_data::Table, name: &str) -> Vec<Option<String>> {
    let c = &t.columns[t.column_index(name).unwrap()];
    (0..c.len()).map(|i| c.text(i)).collect()
}

/// A CSV column of numbers is held as f64s, however they are written; a column that turns out
/// to hold text (a word after numbers, codes with leading zeros, integers past 2^53, inf) keeps
/// every value exactly as written, and so do the columns the caller names.
#[test]
fn csv_numbers_read_as_numbers_and_names_stay_as_written() {
    let t = csv_table_with_text(
        "x,code,zip,big,odd,label\n\
         0.1230,1.50,02134,9007199254740993,1,1.0\n\
         -0.0000,2,10001,1,inf,2.0\n\
         3,1e-07,,2,2,2.0\n\
         1e-07,-0.0000,00501,3,3,1.0\n\
         12.50,x,99999,4,4,1.0\n",
        &["label"],
    );
    assert_eq!(
        t.columns[0],
        Column::numbers([0.123, -0.0, 3.0, 1e-7, 12.5].map(Some))
    );
    let texts = |v: &[&str]| -> Vec<Option<String>> {
        v.iter()
            .map(|s| (!s.is_empty()).then(|| s.to_string()))
            .collect()
    };
    assert!(matches!(t.columns[1], Column::Text(_)));
    assert_eq!(
        column_texts(&t, "code"),
        texts(&["1.50", "2", "1e-07", "-0.0000", "x"])
    );
    assert_eq!(
        column_texts(&t, "zip"),
        texts(&["02134", "10001", "", "00501", "99999"])
    );
    assert_eq!(
        column_texts(&t, "big"),
        texts(&["9007199254740993", "1", "2", "3", "4"])
    );
    assert_eq!(column_texts(&t, "odd"), texts(&["1", "inf", "2", "3", "4"]));
    assert!(matches!(t.columns[5], Column::Text(_)), "named: text");
    assert_eq!(
        column_texts(&t, "label"),
        texts(&["1.0", "2.0", "2.0", "1.0", "1.0"])
    );
}

/// Whatever plain spellings come before the first word (any number of decimals, signs,
/// zeros, missing values), the text column they turn into holds them exactly as written.
#[test]
fn a_number_column_turns_into_its_exact_text() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut written = Vec::new();
    for _ in 0..5000 {
        let r = next();
        let magnitude = 10f64.powi((r % 13) as i32 - 6);
        let v = (next() as f64 / u64::MAX as f64 - 0.5) * magnitude;
        let decimals = (next() % 9) as usize;
        written.push(match r % 17 {
            0 => String::new(),
            1 => format!("{v:e}"),
            _ => format!("{v:.decimals$}"),
        });
    }
    // A second column, so that an empty value is a missing value rather than a blank line.
    let rows: Vec<String> = written.iter().map(|w| format!("{w},a")).collect();
    let numbers = format!("v,w\n{}\n", rows.join("\n"));
    let t = csv_table(&numbers);
    assert!(matches!(t.columns[0], Column::Number(_)));
    for (i, w) in written.iter().enumerate() {
        assert_eq!(
            t.columns[0].number(i),
            w.parse::<f64>().ok(),
            "row {i}: {w}"
        );
    }
    let t = csv_table(&format!("{numbers}word,a\n"));
    let mut want: Vec<Option<String>> = written
        .iter()
        .map(|w| (!w.is_empty()).then(|| w.clone()))
        .collect();
    want.push(Some("word".into()));
    assert_eq!(column_texts(&t, "v"), want);
}

/// Fits feature `name` as `kind` on `fitted` (target `y`), then checks that the first `rows`
/// rows of `other` encode exactly as `fitted`'s, with no value taken for unknown.
fn assert_same_encoding(
    fitted: &kiln_data::Table,
    name: &str,
    kind: FeatureType,
    other: &kiln_data::Table,
    rows: usize,
) {
    let mut c = config("y");
    c.features = vec![FeatureConfig {
        name: name.into(),
        kind: Some(kind),
        missing: None,
        fill_value: None,
        normalization: None,
        encoding: None,
        embedding_dim: None,
    }];
    let s = infer_schema(fitted, &c).unwrap();
    let all: Vec<usize> = (0..fitted.num_rows()).collect();
    let pre = Preprocessor::fit(fitted, &s, &all, &all).unwrap();
    let rows: Vec<usize> = (0..rows).collect();
    let a = pre.transform(fitted, &rows, false, true).unwrap();
    let b = pre.transform(other, &rows, false, true).unwrap();
    assert_eq!(a.x, b.x);
    assert!(
        b.unknown_categories.is_empty(),
        "{:?}",
        b.unknown_categories
    );
}

/// A binary feature fitted on `0.0`/`1.0` (a column kept as text) matches the same numbers
/// read as numbers, which print as `0` and `1`.
#[test]
fn a_binary_feature_matches_its_values_however_a_number_is_written() {
    let text = "b,x,y\n0.0,1,p\n1.0,2,q\n0.0,3,p\n1.0,4,q\n";
    let numbers = csv_table(text);
    assert!(matches!(numbers.columns[0], Column::Number(_)));
    let spelled = csv_table_with_text(text, &["b"]);
    assert_same_encoding(&spelled, "b", FeatureType::Binary, &numbers, 4);
}

/// A category fitted from a text column (`1.50` beside `n/k`) matches the same number in a
/// file whose column holds only numbers (read as numbers, printed `1.5`): a test file or a
/// teacher's input is encoded as the training file was.
#[test]
fn a_category_matches_its_number_read_from_a_column_of_numbers() {
    let train = csv_table("g,x,y\n1.50,1,p\n2.00,2,q\nn/k,3,p\n1.50,4,q\n");
    assert!(matches!(train.columns[0], Column::Text(_)));
    let test = csv_table("g,x,y\n1.50,1,p\n2.00,2,q\n");
    assert!(matches!(test.columns[0], Column::Number(_)));
    assert_same_encoding(&train, "g", FeatureType::Categorical, &test, 2);
}

#[test]
fn blank_lines_are_skipped_but_an_empty_value_of_a_one_column_file_is_a_row() {
    // One column: `""` and a whitespace-only line are empty texts (rows), an empty line is not.
    let t = csv_table("text\nfoo\n\n\"\"\n   \nbar\n");
    assert_eq!(
        t.columns[0],
        Column::texts([Some("foo"), None, None, Some("bar")])
    );
    assert_eq!(t.lines.len(), 4);
    // Two columns: a whitespace-only line is a blank line, skipped.
    let t = csv_table("a,b\n1,2\n   \n3,4\n");
    assert_eq!(t.columns[0], Column::numbers([Some(1.0), Some(3.0)]));
}

#[test]
fn inference_of_types_and_task() {
    let mut text = String::from("id,age,city,member,score,label\n");
    for i in 0..60 {
        text.push_str(&format!(
            "u{i},{},{},{},{}.5,{}\n",
            20 + i,
            ["a", "b", "c"][i % 3],
            if i % 2 == 0 { "yes" } else { "no" },
            i,
            i % 2
        ));
    }
    let t = csv_table(&text);
    let s = infer_schema(&t, &config("label")).unwrap();
    assert_eq!(s.task, Task::Classification);
    let kind = |n: &str| s.features.iter().find(|f| f.name == n).map(|f| f.kind);
    assert_eq!(kind("age"), Some(FeatureType::Numeric));
    assert_eq!(kind("city"), Some(FeatureType::Categorical));
    assert_eq!(kind("member"), Some(FeatureType::Binary));
    assert_eq!(kind("id"), None, "unique strings are ignored");
    assert!(s.ignored.iter().any(|(n, _)| n == "id"));
    let s = infer_schema(&t, &config("score")).unwrap();
    assert_eq!(s.task, Task::Regression);
}

#[test]
fn stratified_split_keeps_balance_and_is_seeded() {
    let t = load_builtin("breast_cancer").unwrap();
    let mut c = config("target");
    c.data.source = "builtin:breast_cancer".into();
    let s = infer_schema(&t, &c).unwrap();
    let a = split_rows(&t, &s, &c.data, 1).unwrap();
    let b = split_rows(&t, &s, &c.data, 1).unwrap();
    let other = split_rows(&t, &s, &c.data, 2).unwrap();
    assert_eq!(a, b);
    assert_ne!(a.train, other.train);
    // `data.split.seed` fixes the split whatever the run's seed.
    c.data.split.seed = Some(1);
    assert_eq!(split_rows(&t, &s, &c.data, 2).unwrap(), a);
    c.data.split.seed = None;
    let all: HashSet<usize> = a
        .train
        .iter()
        .chain(&a.validation)
        .chain(&a.test)
        .copied()
        .collect();
    assert_eq!(all.len(), t.num_rows(), "splits partition the rows");
    let target = &t.columns[t.column_index("target").unwrap()];
    let share = |rows: &[usize]| {
        rows.iter()
            .filter(|&&r| target.text(r).as_deref() == Some("1"))
            .count() as f64
            / rows.len() as f64
    };
    let overall = share(&(0..t.num_rows()).collect::<Vec<_>>());
    assert!((share(&a.test) - overall).abs() < 0.02);
    assert!((share(&a.train) - overall).abs() < 0.02);
}

#[test]
fn kfold_folds_partition_the_rows() {
    let t = load_builtin("iris").unwrap();
    let mut c = config("target");
    c.data.split.method = Some(SplitMethod::Kfold);
    c.data.split.folds = 5;
    let s = infer_schema(&t, &c).unwrap();
    let mut seen = HashSet::new();
    for fold in 0..5 {
        c.data.split.fold = fold;
        let sp = split_rows(&t, &s, &c.data, 9).unwrap();
        assert_eq!(sp.test.len(), 30);
        for r in &sp.test {
            assert!(seen.insert(*r), "row {r} in two test folds");
        }
    }
    assert_eq!(seen.len(), 150);
}

#[test]
fn preprocessing_fits_on_train_only_and_round_trips() {
    let t = csv_table("x,c,y\n1,a,p\n2,b,q\n3,a,p\n,a,q\n100,zz,p\n");
    let mut c = config("y");
    c.features = vec![
        FeatureConfig {
            name: "x".into(),
            kind: None,
            missing: Some(MissingStrategy::Median),
            fill_value: None,
            normalization: Some(Normalization::MinMax),
            encoding: None,
            embedding_dim: None,
        },
        FeatureConfig {
            name: "c".into(),
            kind: Some(FeatureType::Categorical),
            missing: None,
            fill_value: None,
            normalization: None,
            encoding: Some(CategoricalEncoding::OneHot),
            embedding_dim: None,
        },
    ];
    let s = infer_schema(&t, &c).unwrap();
    let train = [0, 1, 2, 3];
    let pre = Preprocessor::fit(&t, &s, &train, &[0, 1, 2, 3, 4]).unwrap();
    let e = pre.transform(&t, &[0, 1, 2, 3, 4], false, true).unwrap();
    // x: min 1, max 3 on train; median 2 fills row 3; row 4 (100) is outside the fitted range.
    // c: categories by frequency [a, b]; "zz" is unknown: all zeros, counted.
    assert_eq!(e.shape.size(), 3);
    let rows: Vec<&[f32]> = e.x.chunks(3).collect();
    assert_eq!(rows[0], [0.0, 1.0, 0.0]);
    assert_eq!(rows[1], [0.5, 0.0, 1.0]);
    assert_eq!(rows[3], [0.5, 1.0, 0.0]);
    assert_eq!(rows[4], [49.5, 0.0, 0.0]);
    assert_eq!(e.unknown_categories.get("c"), Some(&1));
    assert_eq!(e.missing_filled, 1);
    assert_eq!(e.y, Some(Target::Classes(vec![0, 1, 0, 1, 0])));
    let json = serde_json::to_string(&pre).unwrap();
    let back: Preprocessor = serde_json::from_str(&json).unwrap();
    assert_eq!(back, pre);
}

#[test]
fn zscore_has_zero_mean_on_train_and_drop_counts_rows() {
    let t = load_builtin("diabetes").unwrap();
    let mut c = config("target");
    c.data.task = Some(Task::Regression);
    let s = infer_schema(&t, &c).unwrap();
    let rows: Vec<usize> = (0..t.num_rows()).collect();
    let pre = Preprocessor::fit(&t, &s, &rows, &rows).unwrap();
    let e = pre.transform(&t, &rows, true, true).unwrap();
    let w = e.shape.size();
    for f in 0..w {
        let mean: f64 = (0..e.rows).map(|r| e.x[r * w + f] as f64).sum::<f64>() / e.rows as f64;
        assert!(mean.abs() < 1e-4, "feature {f} mean {mean}");
    }
    let Some(Target::Values(y)) = &e.y else {
        panic!()
    };
    let ym: f64 = y.iter().map(|&v| v as f64).sum::<f64>() / y.len() as f64;
    assert!(ym.abs() < 1e-4, "standardised target");

    let t = csv_table("x,y\n1,a\n,b\n3,a\n4,b\n");
    let mut c = config("y");
    c.data.missing_numeric = MissingStrategy::Drop;
    let s = infer_schema(&t, &c).unwrap();
    let pre = Preprocessor::fit(&t, &s, &[0, 1, 2, 3], &[0, 1, 2, 3]).unwrap();
    let train = pre.transform(&t, &[0, 1, 2, 3], true, true).unwrap();
    assert_eq!((train.rows, train.missing_dropped), (3, 1));
    let predict = pre.transform(&t, &[0, 1, 2, 3], false, false).unwrap();
    assert_eq!(predict.rows, 4, "predict keeps every row");
}

#[test]
fn duplicates_are_dropped_and_counted() {
    let mut t = csv_table("a,b\n1,x\n1,x\n2,y\n1,x\n");
    assert_eq!(t.drop_duplicates(), 2);
    assert_eq!(t.num_rows(), 2);
    assert_eq!(t.report.duplicates_dropped, 2);
}

#[test]
fn builtin_sets_load() {
    for (name, rows, cols) in [
        ("digits", 1797, 65),
        ("iris", 150, 5),
        ("breast_cancer", 569, 31),
        ("diabetes", 442, 11),
        ("wine_quality", 1599, 12),
    ] {
        let t = load_builtin(name).unwrap();
        assert_eq!((t.num_rows(), t.names.len()), (rows, cols), "{name}");
    }
    assert!(load_builtin("nope").is_err());
}

fn reviews(rows: usize) -> String {
    let words = [
        "good", "bad", "plot", "film", "actors", "slow", "fine", "music",
    ];
    let mut text = String::from("id,review,label\n");
    for i in 0..rows {
        let review: Vec<&str> = (0..4 + i % 5).map(|w| words[(i * 7 + w * 3) % 8]).collect();
        let review = if i == 3 {
            "x".to_string()
        } else {
            review.join(" ")
        };
        text.push_str(&format!("{i},\"{review} {i}\",{}\n", ["a", "b"][i % 2]));
    }
    text
}

#[test]
fn free_text_is_inferred_for_a_transformer_and_left_out_otherwise() {
    let t = csv_table(&reviews(40));
    // Without the review, only the numeric id is left: keep it a feature here.
    let mut c = config("label");
    c.data.detect_id = false;
    let tabular = infer_schema(&t, &c).unwrap();
    assert!(tabular.features.iter().all(|f| f.name != "review"));
    let reason = &tabular
        .ignored
        .iter()
        .find(|(n, _)| n == "review")
        .unwrap()
        .1;
    assert!(reason.contains("free text"), "{reason}");
    let mut c = config("label");
    c.model.kind = kiln_config::ModelKind::Transformer;
    let schema = infer_schema(&t, &c).unwrap();
    let review = schema.features.iter().find(|f| f.name == "review").unwrap();
    assert_eq!(review.kind, FeatureType::Text);
    assert_eq!(review.max_tokens, c.model.context);
}

/// A transformer over [`reviews`]' text with a char tokenizer and `context` tokens, the id
/// column ignored.
fn char_text_config(context: usize) -> Config {
    let mut c = config("label");
    c.model.kind = kiln_config::ModelKind::Transformer;
    c.model.context = context;
    c.text.tokenizer = "char".into();
    c.features = vec![FeatureConfig {
        name: "id".into(),
        kind: Some(FeatureType::Ignore),
        missing: None,
        fill_value: None,
        normalization: None,
        encoding: None,
        embedding_dim: None,
    }];
    c
}

#[test]
fn text_becomes_shifted_token_ids_padded_and_truncated() {
    let t = csv_table(&reviews(40));
    let mut c = char_text_config(12);
    let schema = infer_schema(&t, &c).unwrap();
    let rows: Vec<usize> = (0..40).collect();
    let p = Preprocessor::fit(&t, &schema, &rows, &rows).unwrap();
    let (vocab, max_tokens) = p.text_input().unwrap();
    assert_eq!(max_tokens, 12);
    let e = p.transform(&t, &rows, true, true).unwrap();
    assert_eq!(e.seq_len, 12);
    assert_eq!(e.tokens.len(), 40 * 12);
    assert!(e.tokens.iter().all(|&id| (id as usize) < vocab));
    // Row 3's text is "x 3": three characters, then padding.
    let row3 = &e.tokens[3 * 12..4 * 12];
    assert!(row3[..3].iter().all(|&id| id > 0));
    assert!(row3[3..].iter().all(|&id| id == 0));
    assert_eq!(e.text_lengths()[3], 3);
    // Every other review is longer than 12 characters and is cut.
    assert_eq!(e.texts_truncated, 39);
    // The fitted tokenizer survives a save/load of the preprocessor.
    let json = serde_json::to_string(&p).unwrap();
    let back: Preprocessor = serde_json::from_str(&json).unwrap();
    assert_eq!(
        back.transform(&t, &rows, true, true).unwrap().tokens,
        e.tokens
    );

    // head_tail keeps the first 3 (a quarter of 12) and the last 9 characters; tail the last 12.
    for (truncation, head) in [
        (kiln_config::Truncation::HeadTail, 3),
        (kiln_config::Truncation::Tail, 0),
    ] {
        c.text.truncation = truncation;
        let schema = infer_schema(&t, &c).unwrap();
        let p = Preprocessor::fit(&t, &schema, &rows, &rows).unwrap();
        let e = p.transform(&t, &rows, true, true).unwrap();
        assert_eq!(e.texts_truncated, 39);
        let text = t.column("review", "feature").unwrap().text(0).unwrap();
        let chars: Vec<char> = text.chars().collect();
        assert!(chars.len() > 12, "{text}");
        let mut kept: String = chars[..head].iter().collect();
        kept.extend(&chars[chars.len() - (12 - head)..]);
        let json = p.features.iter().find_map(|f| match f {
            kiln_data::FeatureTransform::Text { tokenizer, .. } => Some(tokenizer),
            _ => None,
        });
        let tk = kiln_text::TextTokenizer::from_json(json.unwrap()).unwrap();
        let decoded: String = e.tokens[..12]
            .iter()
            .map(|&id| tk.decode(&[id - 1]).unwrap())
            .collect();
        assert_eq!(decoded, kept, "{truncation:?}");
    }
}

#[test]
fn a_long_text_is_cut_into_overlapping_windows_each_padded_to_the_context() {
    let t = csv_table(&reviews(40));
    let mut c = char_text_config(8);
    c.text.windows = 3;
    c.text.window_overlap = 2;
    let schema = infer_schema(&t, &c).unwrap();
    let rows: Vec<usize> = (0..40).collect();
    let p = Preprocessor::fit(&t, &schema, &rows, &rows).unwrap();
    assert_eq!(p.text_input().unwrap().1, 8, "max_tokens is one window");
    assert_eq!(p.text_windows(), 3);
    let e = p.transform(&t, &rows, true, true).unwrap();
    assert_eq!((e.seq_len, e.windows, e.window_len()), (24, 3, 8));
    assert_eq!(e.tokens.len(), 40 * 24);
    let json = p.features.iter().find_map(|f| match f {
        kiln_data::FeatureTransform::Text { tokenizer, .. } => Some(tokenizer),
        _ => None,
    });
    let tk = kiln_text::TextTokenizer::from_json(json.unwrap()).unwrap();
    let text_of = |ids: &[u32]| -> String {
        ids.iter()
            .filter(|&&id| id > 0)
            .map(|&id| tk.decode(&[id - 1]).unwrap())
            .collect()
    };
    let column = t.column("review", "feature").unwrap();
    let mut truncated = 0;
    for r in 0..40 {
        let chars: Vec<char> = column.text(r).unwrap().chars().collect();
        // Windows of 8 characters starting every 6: 8 + 6 + 6 = 20 characters kept.
        let windows: Vec<String> = (0..3)
            .map(|w| text_of(&e.tokens[r * 24 + w * 8..r * 24 + (w + 1) * 8]))
            .collect();
        for (w, window) in windows.iter().enumerate() {
            let start = (6 * w).min(chars.len());
            let expected: String = if w > 0 && 6 * w + 2 >= chars.len() {
                String::new() // the window before held the end of the text
            } else {
                chars[start..(start + 8).min(chars.len())].iter().collect()
            };
            assert_eq!(*window, expected, "row {r} window {w}");
            let len = e.window_text_len(r, w);
            assert_eq!(len, window.chars().count(), "padding only after the text");
        }
        truncated += usize::from(chars.len() > 20);
    }
    assert_eq!(e.texts_truncated, truncated);
    assert!(truncated > 0 && truncated < 40, "{truncated}");
    // head_tail splits the 20 kept characters: the first 6 (a quarter of 3 × 8), the last 14.
    c.text.truncation = kiln_config::Truncation::HeadTail;
    let schema = infer_schema(&t, &c).unwrap();
    let p = Preprocessor::fit(&t, &schema, &rows, &rows).unwrap();
    let e = p.transform(&t, &rows, true, true).unwrap();
    let r = (0..40)
        .find(|&r| column.text(r).unwrap().chars().count() > 20)
        .unwrap();
    let chars: Vec<char> = column.text(r).unwrap().chars().collect();
    let mut kept: Vec<char> = chars[..6].to_vec();
    kept.extend(&chars[chars.len() - 14..]);
    let windows: Vec<String> = (0..3)
        .map(|w| text_of(&e.tokens[r * 24 + w * 8..r * 24 + (w + 1) * 8]))
        .collect();
    let expected: Vec<String> = [0, 6, 12]
        .iter()
        .map(|&s| kept[s..s + 8].iter().collect())
        .collect();
    assert_eq!(windows, expected);
    // An overlap that leaves a window no new text is refused when fitting.
    c.text.window_overlap = 8;
    let schema = infer_schema(&t, &c).unwrap();
    let err = Preprocessor::fit(&t, &schema, &rows, &rows).unwrap_err();
    assert!(err.to_string().contains("window_overlap"), "{err}");
}

/// Numbers that are finite in f64 but not in f32 are not numbers to kiln: they would reach
/// the model as `inf`.
#[test]
fn values_beyond_f32_are_bad_values_naming_line_and_column() {
    let mut csv = String::from("x,y\n");
    for i in 0..20 {
        csv.push_str(&format!("{i},{}\n", i % 2));
    }
    csv.push_str("1e300,1\n");
    let mut t = csv_table(&csv);
    let c = config("y");
    let s = infer_schema(&t, &c).unwrap();
    let err = kiln_data::drop_bad_values(&mut t, &s, BadRows::Error).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("line 22")
            && message.contains("column \"x\"")
            && message.contains("outside the range of 32-bit floats"),
        "{message}"
    );
    kiln_data::drop_bad_values(&mut t, &s, BadRows::Skip).unwrap();
    assert_eq!(t.num_rows(), 20);
    assert_eq!(t.report.bad_rows_skipped, 1);
    // Such a value does not change what a column is inferred to be: a regression target
    // with one 1e39 stays a regression target, and the value is the bad one.
    let mut csv = String::from("x,y\n");
    for i in 0..40 {
        csv.push_str(&format!("{i},{}.25\n", i * 7));
    }
    csv.push_str("3,1e39\n");
    let mut t = csv_table(&csv);
    let s = infer_schema(&t, &config("y")).unwrap();
    assert_eq!(s.task, Task::Regression);
    let message = kiln_data::drop_bad_values(&mut t, &s, BadRows::Error)
        .unwrap_err()
        .to_string();
    assert!(
        message.contains("line 42") && message.contains("column \"y\""),
        "{message}"
    );
}

/// A value that is an f32 but overflows once normalised with the training statistics is an
/// error naming line and column at transform time (predict, eval), never an `inf` input.
#[test]
fn transform_refuses_values_that_overflow_once_normalised() {
    let t = csv_table("x,y\n0.001,a\n0.002,b\n0.003,a\n0.004,b\n3e38,a\n");
    let mut c = config("y");
    c.data.normalization = Normalization::Zscore;
    let s = infer_schema(&t, &c).unwrap();
    let pre = Preprocessor::fit(&t, &s, &[0, 1, 2, 3], &[0, 1, 2, 3, 4]).unwrap();
    pre.validate().unwrap();
    let err = pre
        .transform(&t, &[0, 1, 2, 3, 4], false, false)
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("line 6")
            && message.contains("column \"x\"")
            && message.contains("too far"),
        "{message}"
    );
    // The same value through the dense path the server uses names row and feature.
    let err = pre.normalise_dense(&[0.002, 3e38]).unwrap_err().to_string();
    assert!(err.contains("row 1") && err.contains("x = "), "{err}");
    assert!(pre.normalise_dense(&[0.002, f32::NAN]).unwrap()[1].is_finite());
}

/// A preprocessor read from disk is checked before use: unusable statistics and tokenizer
/// sizes are errors naming the feature.
#[test]
fn validate_names_the_feature_with_an_unusable_statistic() {
    let t = csv_table("x,z,y\n1,5,a\n2,6,b\n3,7,a\n4,8,b\n");
    let c = config("y");
    let s = infer_schema(&t, &c).unwrap();
    let pre = Preprocessor::fit(&t, &s, &[0, 1, 2, 3], &[0, 1, 2, 3]).unwrap();
    let mut json: serde_json::Value = serde_json::to_value(&pre).unwrap();
    for (key, value) in [
        ("scale", serde_json::json!(0.0)),
        ("scale", serde_json::json!(-2.0)),
        ("shift", serde_json::json!(1e300)),
        ("fill", serde_json::json!(-1e39)),
    ] {
        let mut broken = json.clone();
        broken["features"][1][key] = value.clone();
        let pre: Preprocessor = serde_json::from_value(broken).unwrap();
        let err = pre.validate().unwrap_err().to_string();
        assert!(
            err.contains("feature \"z\"") && err.contains(key),
            "{key} = {value}: {err}"
        );
    }
    json["target"]["classes"] = serde_json::json!(["a"]);
    let pre: Preprocessor = serde_json::from_value(json).unwrap();
    assert!(pre.validate().unwrap_err().to_string().contains("class"));
}

#[test]
fn id_like_columns_are_detected_and_kept_out_of_the_features() {
    let row = |i: usize| format!("{},{},{}", 20 + (i * 7) % 13, ["a", "b", "c"][i % 3], i % 2);
    let with = |header: &str, id: &dyn Fn(usize) -> String, rows: usize| {
        let mut text = format!("{header},age,city,label\n");
        for i in 0..rows {
            text.push_str(&format!("{},{}\n", id(i), row(i)));
        }
        infer_schema(&csv_table(&text), &config("label")).unwrap()
    };
    // Distinct integers named like an id; a shuffled row numbering under any name; distinct
    // strings without spaces.
    for (header, id, rows) in [
        (
            "PassengerId",
            &(|i: usize| format!("{}", 1000 + i * 3)) as &dyn Fn(usize) -> String,
            5,
        ),
        ("user_id", &|i: usize| format!("{}", 7 * i), 5),
        ("rownames", &|i: usize| format!("{}", i + 1), 5),
        ("n", &|i: usize| format!("{}", (i * 7) % 30), 30),
        ("ticket", &|i: usize| format!("T-{i:04}"), 30),
    ] {
        let s = with(header, id, rows);
        assert_eq!(s.id_column.as_deref(), Some(header), "{header}");
        assert!(s.features.iter().all(|f| f.name != header), "{header}");
        let why = &s.ignored.iter().find(|(n, _)| n == header).unwrap().1;
        assert!(
            why.contains("id column") && why.contains("detect_id"),
            "{why}"
        );
    }
    // Not ids: repeated values, a numbered column with gaps under a plain name, a missing
    // value, multi-word strings, and any column when detection is off.
    for (header, id, rows) in [
        (
            "PassengerId",
            &(|i: usize| format!("{}", i % 4)) as &dyn Fn(usize) -> String,
            30,
        ),
        ("n", &|i: usize| format!("{}", i * 2), 30),
        (
            "user_id",
            &|i: usize| {
                if i == 3 {
                    String::new()
                } else {
                    format!("{i}")
                }
            },
            30,
        ),
        ("note", &|i: usize| format!("\"seen on day {i}\""), 30),
    ] {
        let s = with(header, id, rows);
        assert_eq!(s.id_column, None, "{header}");
    }
    let mut text = String::from("id,age,label\n");
    for i in 0..30 {
        text.push_str(&format!("{i},{},{}\n", 20 + i % 7, i % 2));
    }
    let mut c = config("label");
    c.data.detect_id = false;
    let s = infer_schema(&csv_table(&text), &c).unwrap();
    assert_eq!(s.id_column, None);
    assert!(s.features.iter().any(|f| f.name == "id"));
    // A configured id column wins over a detected one.
    c.data.detect_id = true;
    c.data.id_column = Some("age".into());
    let s = infer_schema(&csv_table(&text), &c).unwrap();
    assert_eq!(s.id_column.as_deref(), Some("age"));
    assert!(s.features.iter().any(|f| f.name == "id"));
}

fn load(
    name: &str,
    bytes: &[u8],
    format: kiln_config::DataFormat,
) -> kiln_data::Result<kiln_data::Table> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    let mut data = Config::default().data;
    data.format = format;
    kiln_data::load_source(p.to_str().unwrap(), &data)
}

#[test]
fn json_lines_flatten_nested_objects_in_first_seen_order() {
    let text = concat!(
        "{\"id\": 1, \"user\": {\"name\": \"ann\", \"age\": 31}, \"paid\": true, \"plan\": \"pro\"}\n",
        "\n",
        "{\"plan\": \"\", \"id\": 2, \"paid\": false, \"user\": {\"age\": null}, \"note\": \"new\"}\n",
        "{\"id\": 3, \"user\": {\"name\": \"eve\", \"age\": 7.5}}\n",
    );
    for name in ["t.jsonl", "t.ndjson", "t.json", "t.csv", "t.txt"] {
        let t = load(name, text.as_bytes(), kiln_config::DataFormat::Auto).unwrap();
        assert_eq!(
            t.names,
            ["id", "user.name", "user.age", "paid", "plan", "note"],
            "{name}"
        );
        assert_eq!(t.lines, [1, 3, 4]);
        let column = |n: &str| &t.columns[t.column_index(n).unwrap()];
        let col = |n: &str| -> Vec<Option<String>> {
            let c = column(n);
            assert!(matches!(c, kiln_data::Column::Text(_)), "{n}");
            (0..c.len()).map(|r| c.text(r)).collect()
        };
        assert_eq!(
            *column("user.age"),
            kiln_data::Column::numbers([Some(31.0), None, Some(7.5)])
        );
        assert_eq!(
            *column("id"),
            kiln_data::Column::numbers([Some(1.0), Some(2.0), Some(3.0)])
        );
        assert_eq!(
            col("paid"),
            [Some("true".into()), Some("false".into()), None]
        );
        assert_eq!(col("plan"), [Some("pro".into()), None, None]);
        assert_eq!(col("note"), [None, Some("new".into()), None]);
    }
    // Gzip too, chosen by the name under .gz.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, text.as_bytes()).unwrap();
    let t = load(
        "t.jsonl.gz",
        &gz.finish().unwrap(),
        kiln_config::DataFormat::Auto,
    )
    .unwrap();
    assert_eq!(t.num_rows(), 3);
}

/// JSON strings stay text whatever they hold; JSON numbers are numbers, except integers an
/// f64 cannot hold exactly and the columns named as text (the target), kept as written.
#[test]
fn json_lines_strings_stay_text_and_numbers_are_numbers() {
    let text = concat!(
        "{\"zip\": \"02134\", \"x\": 1e-7, \"big\": 9007199254740993, \"label\": 1.0}\n",
        "{\"zip\": \"1.50\", \"x\": 2, \"big\": 1, \"label\": 2.5}\n",
    );
    let t = load("t.jsonl", text.as_bytes(), kiln_config::DataFormat::Auto).unwrap();
    let texts = |n: &str| -> Vec<Option<String>> {
        let c = &t.columns[t.column_index(n).unwrap()];
        assert!(matches!(c, Column::Text(_)), "{n}");
        (0..c.len()).map(|r| c.text(r)).collect()
    };
    assert_eq!(texts("zip"), [Some("02134".into()), Some("1.50".into())]);
    assert_eq!(
        texts("big"),
        [Some("9007199254740993".into()), Some("1".into())]
    );
    assert_eq!(texts("label"), [Some("1.0".into()), Some("2.5".into())]);
    assert_eq!(t.columns[1], Column::numbers([Some(1e-7), Some(2.0)]));
}

#[test]
fn json_lines_errors_name_the_line_and_bad_lines_can_be_skipped() {
    use kiln_config::DataFormat::{Auto, Csv};
    let text = "{\"a\": 1, \"b\": \"x\"}\n{\"a\": 2, \"b\": }\n[1, 2]\n{\"a\": 4, \"b\": \"y\"}\n";
    let err = load("t.jsonl", text.as_bytes(), Auto)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("t.jsonl") && err.contains("line 2") && err.contains("column 15"),
        "{err}"
    );
    let mut data = Config::default().data;
    data.bad_rows = BadRows::Skip;
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.jsonl");
    std::fs::write(&p, text).unwrap();
    let t = kiln_data::load_source(p.to_str().unwrap(), &data).unwrap();
    assert_eq!(t.lines, [1, 4]);
    assert_eq!(t.report.bad_rows_skipped, 2);
    assert!(t.report.bad_row_examples[1].contains("line 3: expected a JSON object, found a list"));
    let err = load("t.jsonl", b"{\"a\": [1, 2]}\n", Auto)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 1") && err.contains("field \"a\" is a list"),
        "{err}"
    );
    let err = load("t.jsonl", b"{\"a\": {\"b\": 1}, \"a.b\": 2}\n", Auto)
        .unwrap_err()
        .to_string();
    assert!(err.contains("field \"a.b\" appears twice"), "{err}");
    let err = load("t.jsonl", b"\n\n", Auto).unwrap_err().to_string();
    assert!(err.contains("no JSON objects"), "{err}");
    // data.format = "csv" reads a file as CSV whatever it holds.
    let t = load("t.jsonl", b"a,b\n1,2\n", Csv).unwrap();
    assert_eq!(t.names, ["a", "b"]);
    // One type a field: a string where earlier lines had numbers names both lines; null and
    // "" are missing in any field; under `skip` the row goes.
    let mixed = "{\"a\": null, \"b\": true}\n{\"a\": 1.5, \"b\": \"\"}\n{\"a\": \"2\", \"b\": false}\n{\"a\": 3}\n";
    let err = load("m.jsonl", mixed.as_bytes(), Auto)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("m.jsonl, line 3: field \"a\" is a string here but a number on line 2"),
        "{err}"
    );
    std::fs::write(&p, mixed).unwrap();
    let t = kiln_data::load_source(p.to_str().unwrap(), &data).unwrap();
    assert_eq!(t.lines, [1, 2, 4]);
    assert_eq!(t.report.bad_rows_skipped, 1);
}

#[test]
fn formats_kiln_does_not_read_are_named_never_parsed_as_csv() {
    use kiln_config::DataFormat::Auto;
    for (name, bytes, says) in [
        ("d.xlsx", &b"PK\x03\x04"[..], "a spreadsheet"),
        ("d.csv", &b"PK\x03\x04"[..], "a zip archive"),
        ("d.csv", &b"\x28\xb5\x2f\xfd"[..], "name it NAME.csv.zst"),
        ("d.csv", &b"\x1f\x8b\x08\0"[..], "gzip-compressed"),
        ("d.csv", &b"a,b\n\0\x01\x02"[..], "binary data"),
        ("d.json", &b"[{\"a\": 1}]"[..], "one JSON array"),
        (
            "d.parquet.gz",
            &b"\x1f\x8b\x08\0"[..],
            "a compressed Parquet or Arrow file",
        ),
    ] {
        let err = load(name, bytes, Auto).unwrap_err().to_string();
        assert!(
            err.contains(says) && err.contains("kiln reads CSV/TSV"),
            "{name}: {err}"
        );
    }
    let err = load("d.xlsx", b"PK\x03\x04", Auto).unwrap_err().to_string();
    assert!(err.contains("pd.read_excel("), "{err}");
}

#[test]
fn corrupt_parquet_and_arrow_files_are_errors_naming_the_file() {
    use kiln_config::DataFormat::Auto;
    for (name, bytes, says) in [
        // A Parquet header without a footer, by extension and by magic under another name.
        (
            "d.parquet",
            &b"PAR1\x15\x04"[..],
            "not a readable Parquet file",
        ),
        (
            "d.csv",
            &b"PAR1\x15\x04\x15\x04\x15\x04"[..],
            "not a readable Parquet file",
        ),
        (
            "d.feather",
            &b"ARROW1\0\0"[..],
            "not a readable Arrow IPC / Feather file",
        ),
        (
            "d",
            &b"ARROW1\0\0"[..],
            "not a readable Arrow IPC / Feather file",
        ),
        (
            "d.arrows",
            &b"\xff\xff\xff\xff\x10"[..],
            "not a readable Arrow IPC / Feather file",
        ),
        ("d.feather", &b"FEA1\0\0\0\0"[..], "a Feather v1 file"),
    ] {
        let err = load(name, bytes, Auto).unwrap_err().to_string();
        assert!(err.contains(says) && err.contains(name), "{name}: {err}");
    }
}

#[test]
fn a_csv_read_in_chunks_gives_the_rows_of_the_whole_file_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.csv");
    // Row 5 is malformed; row 8 turns column b into text in its chunk only.
    let mut text = String::from("a,b,label\n");
    for i in 0..12 {
        match i {
            5 => text.push_str("1,2\n"),
            8 => text.push_str("8,eight,x\n"),
            _ => text.push_str(&format!("{i},{},{}\n", i * 10, ["x", "y"][i % 2])),
        }
    }
    std::fs::write(&p, &text).unwrap();
    let spec = p.to_str().unwrap();
    let mut data = kiln_config::DataConfig {
        bad_rows: BadRows::Skip,
        ..Default::default()
    };
    let whole = kiln_data::load_source(spec, &data).unwrap();
    let mut chunks = kiln_data::source_chunks(spec, &data, None, &[]).unwrap();
    assert!(chunks.streams());
    let (mut lines, mut a, mut b, mut labels, mut skipped, mut sizes) =
        (vec![], vec![], vec![], vec![], 0, vec![]);
    while let Some(t) = chunks.next_chunk(4).unwrap() {
        sizes.push(t.num_rows());
        lines.extend(t.lines.iter().copied());
        skipped += t.report.bad_rows_skipped;
        a.extend(column_texts(&t, "a"));
        b.extend(column_texts(&t, "b"));
        labels.extend(column_texts(&t, "label"));
    }
    assert_eq!(sizes, [4, 4, 3]);
    assert_eq!(lines, whole.lines);
    assert_eq!(skipped, 1);
    assert_eq!(a, column_texts(&whole, "a"));
    assert_eq!(b, column_texts(&whole, "b"));
    assert_eq!(labels, column_texts(&whole, "label"));

    // Only a header: the error of the whole file. Other formats come whole.
    std::fs::write(&p, "a,b\n").unwrap();
    let err = kiln_data::source_chunks(spec, &data, None, &[])
        .unwrap()
        .next_chunk(4)
        .unwrap_err()
        .to_string();
    assert!(err.contains("only a header"), "{err}");
    let mut chunks = kiln_data::source_chunks("builtin:iris", &data, None, &[]).unwrap();
    assert!(!chunks.streams());
    assert_eq!(chunks.next_chunk(2).unwrap().unwrap().num_rows(), 150);
    assert!(chunks.next_chunk(2).unwrap().is_none());

    // JSON Lines streams too: a field first seen in a later chunk, a field asked for that never
    // comes (a column of missing values in every chunk), and a type change across chunks.
    let jsonl = dir.path().join("t.jsonl");
    std::fs::write(
        &jsonl,
        "{\"a\": 1}\n{\"a\": 2}\n\n{\"a\": 3, \"b\": \"x\"}\n",
    )
    .unwrap();
    data.bad_rows = BadRows::Error;
    let wanted = ["a".to_string(), "z".to_string()];
    let spec = jsonl.to_str().unwrap();
    let mut chunks = kiln_data::source_chunks(spec, &data, Some(&wanted), &[]).unwrap();
    assert!(chunks.streams());
    let first = chunks.next_chunk(2).unwrap().unwrap();
    assert_eq!(
        (first.names.clone(), first.lines.clone()),
        (vec!["a".into(), "z".into()], vec![1, 2])
    );
    let second = chunks.next_chunk(2).unwrap().unwrap();
    assert_eq!(second.names, ["a", "z", "b"]);
    assert_eq!(second.lines, [4]);
    assert_eq!(column_texts(&second, "b"), [Some("x".to_string())]);
    assert!(chunks.next_chunk(2).unwrap().is_none());
    std::fs::write(&jsonl, "{\"a\": 1}\n{\"a\": 2}\n{\"a\": \"three\"}\n").unwrap();
    let mut chunks = kiln_data::source_chunks(spec, &data, None, &[]).unwrap();
    chunks.next_chunk(2).unwrap();
    let err = chunks.next_chunk(2).unwrap_err().to_string();
    assert!(err.contains("line 3") && err.contains("on line 1"), "{err}");
}

/// 3 000 rows: `x` uniform in [0, 10) with a value missing every 50th row, `y` spread wide,
/// a category `c` of 3 levels, and a label.
fn mixed_csv() -> String {
    let mut rng = kiln_rng::SplitMix64::new(7);
    let mut text = String::from("x,y,c,label\n");
    for i in 0..3000 {
        let x = (rng.next_u64() % 10_000) as f64 / 1000.0;
        let y = (rng.next_u64() % 1_000_000) as f64 * 1e3 - 4e8;
        let x = if i % 50 == 0 {
            String::new()
        } else {
            x.to_string()
        };
        let c = ["red", "green", "blue"][(rng.next_u64() % 3) as usize];
        let label = if rng.next_u64().is_multiple_of(2) {
            "a"
        } else {
            "b"
        };
        text.push_str(&format!("{x},{y},{c},{label}\n"));
    }
    text
}

/// A pass fed the table in chunks of `chunk` rows.
fn fit_in_chunks(
    table: &kiln_data::Table,
    schema: &kiln_data::Schema,
    chunk: usize,
    limits: kiln_data::FitLimits,
) -> kiln_data::Result<Preprocessor> {
    let rows: Vec<usize> = (0..table.num_rows()).collect();
    let mut pass = kiln_data::FitPass::new(schema, limits);
    for part in rows.chunks(chunk) {
        let t = table.select(part);
        let all: Vec<usize> = (0..t.num_rows()).collect();
        pass.observe(&t, &all, &all)?;
    }
    assert_eq!(pass.kept_train_rows(), (3000, 60));
    pass.finish("t.csv", |_| unreachable!("no images or text"))
}

#[test]
fn a_fit_in_chunks_matches_the_fit_of_the_whole_table() {
    let table = csv_table(&mixed_csv());
    let schema = infer_schema(&table, &config("label")).unwrap();
    let rows: Vec<usize> = (0..table.num_rows()).collect();
    let whole = Preprocessor::fit(&table, &schema, &rows, &rows).unwrap();
    let chunked = fit_in_chunks(&table, &schema, 700, kiln_data::FitLimits::STREAMING).unwrap();
    assert_eq!(whole.target, chunked.target);
    assert_eq!(whole.features.len(), 3);
    for (a, b) in whole.features.iter().zip(&chunked.features) {
        match (a, b) {
            (
                kiln_data::FeatureTransform::Numeric {
                    fill: f1,
                    shift: s1,
                    scale: c1,
                    ..
                },
                kiln_data::FeatureTransform::Numeric {
                    fill: f2,
                    shift: s2,
                    scale: c2,
                    ..
                },
            ) => {
                for (u, v) in [(f1, f2), (s1, s2), (c1, c2)] {
                    assert!((u - v).abs() <= 1e-12 * u.abs().max(1.0), "{u} vs {v}");
                }
            }
            _ => assert_eq!(a, b),
        }
    }
}

#[test]
fn a_streamed_fit_samples_quantiles_and_caps_categories() {
    let table = csv_table(&mixed_csv());
    let mut c = config("label");
    c.data.normalization = Normalization::Robust;
    c.data.missing_numeric = MissingStrategy::Median;
    let schema = infer_schema(&table, &c).unwrap();
    let rows: Vec<usize> = (0..table.num_rows()).collect();
    let exact = Preprocessor::fit(&table, &schema, &rows, &rows).unwrap();
    let sampled = kiln_data::FitLimits {
        sample: 500,
        distinct: 100,
    };
    let fitted = fit_in_chunks(&table, &schema, 700, sampled).unwrap();
    let x = |p: &Preprocessor| match &p.features[0] {
        kiln_data::FeatureTransform::Numeric {
            fill, shift, scale, ..
        } => (*fill, *shift, *scale),
        other => panic!("x is {other:?}"),
    };
    let ((fill, shift, scale), (fill2, shift2, scale2)) = (x(&exact), x(&fitted));
    // A 500-value sample of a uniform [0, 10): median and quartiles within about 0.3.
    assert!(
        (fill - 5.0).abs() < 0.3 && (fill2 - fill).abs() < 0.5,
        "{fill} {fill2}"
    );
    assert!((shift2 - shift).abs() < 0.5, "{shift} {shift2}");
    assert!((scale2 - scale).abs() < 0.8, "{scale} {scale2}");
    // The same seed draws the same sample.
    assert_eq!(
        fitted,
        fit_in_chunks(&table, &schema, 700, sampled).unwrap()
    );
    let capped = kiln_data::FitLimits {
        sample: 500,
        distinct: 2,
    };
    let err = fit_in_chunks(&table, &schema, 700, capped)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"c\" has more than 2 distinct values"),
        "{err}"
    );
}
