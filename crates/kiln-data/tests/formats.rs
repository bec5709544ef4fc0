//! Parquet, Arrow IPC and zstd sources, and columnar output.

use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{Int64Builder, ListBuilder, StringDictionaryBuilder};
use arrow_array::types::Int32Type;
use arrow_array::{
    ArrayRef, BooleanArray, Date32Array, Float32Array, Float64Array, Int32Array, Int64Array,
    RecordBatch, StringArray, StructArray, TimestampMillisecondArray, UInt64Array,
};
use arrow_schema::{DataType, Field, Fields};
use kiln_config::{BadRows, DataFormat};
use kiln_data::{Column, ColumnarFormat, OutputColumn, Table};

fn write_parquet(path: &Path, batches: &[RecordBatch]) {
    let file = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batches[0].schema(), None).unwrap();
    for b in batches {
        w.write(b).unwrap();
    }
    w.close().unwrap();
}

fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
    RecordBatch::try_from_iter(columns).unwrap()
}

/// Every type kiln maps, with missing values, in two record batches.
fn typed_batches() -> Vec<RecordBatch> {
    let make = |offset: i64| {
        let user = StructArray::from(vec![
            (
                Arc::new(Field::new("age", DataType::Int32, true)),
                Arc::new(Int32Array::from(vec![Some(31), None])) as ArrayRef,
            ),
            (
                Arc::new(Field::new("name", DataType::Utf8, true)),
                Arc::new(StringArray::from(vec![Some("ann"), Some("bo")])) as ArrayRef,
            ),
        ]);
        let mut plan = StringDictionaryBuilder::<Int32Type>::new();
        plan.append_value("pro");
        plan.append_null();
        batch(vec![
            (
                "row_id",
                Arc::new(Int64Array::from(vec![offset, offset + 1])) as ArrayRef,
            ),
            (
                "big",
                Arc::new(Int64Array::from(vec![1_i64 << 60, 7])) as ArrayRef,
            ),
            (
                "huge",
                Arc::new(UInt64Array::from(vec![u64::MAX, 1])) as ArrayRef,
            ),
            (
                "x",
                Arc::new(Float32Array::from(vec![Some(0.5), None])) as ArrayRef,
            ),
            (
                "y",
                Arc::new(Float64Array::from(vec![f64::NAN, -2.25])) as ArrayRef,
            ),
            (
                "paid",
                Arc::new(BooleanArray::from(vec![Some(true), None])) as ArrayRef,
            ),
            ("plan", Arc::new(plan.finish()) as ArrayRef),
            (
                "day",
                Arc::new(Date32Array::from(vec![Some(19_000), None])) as ArrayRef,
            ),
            (
                "at",
                Arc::new(TimestampMillisecondArray::from(vec![Some(1_500), None])) as ArrayRef,
            ),
            ("user", Arc::new(user) as ArrayRef),
            (
                "note",
                Arc::new(StringArray::from(vec![None, Some("héllo")])) as ArrayRef,
            ),
        ])
    };
    vec![make(0), make(2)]
}

fn data(format: DataFormat, bad_rows: BadRows) -> kiln_config::DataConfig {
    let mut d = kiln_config::Config::default().data;
    d.format = format;
    d.bad_rows = bad_rows;
    d
}

fn load(path: &Path, columns: Option<&[String]>) -> kiln_data::Result<Table> {
    kiln_data::load_source_columns(
        path.to_str().unwrap(),
        &data(DataFormat::Auto, BadRows::Error),
        columns,
        &[],
    )
}

fn texts(t: &Table, name: &str) -> Vec<Option<String>> {
    let c = &t.columns[t.column_index(name).unwrap()];
    (0..c.len()).map(|r| c.text(r)).collect()
}

fn is_number(t: &Table, name: &str) -> bool {
    matches!(t.columns[t.column_index(name).unwrap()], Column::Number(_))
}

fn check_typed(t: &Table) {
    assert_eq!(
        t.names,
        [
            "row_id",
            "big",
            "huge",
            "x",
            "y",
            "paid",
            "plan",
            "day",
            "at",
            "user.age",
            "user.name",
            "note"
        ]
    );
    assert_eq!(t.num_rows(), 4);
    assert_eq!(t.lines, [1, 2, 3, 4]);
    for n in ["row_id", "x", "y", "user.age"] {
        assert!(is_number(t, n), "{n} is a number column");
    }
    for n in [
        "big",
        "huge",
        "paid",
        "plan",
        "day",
        "at",
        "user.name",
        "note",
    ] {
        assert!(!is_number(t, n), "{n} is a text column");
    }
    let s = |v: &[Option<&str>]| v.iter().map(|v| v.map(str::to_string)).collect::<Vec<_>>();
    assert_eq!(
        texts(t, "row_id"),
        s(&[Some("0"), Some("1"), Some("2"), Some("3")])
    );
    // Beyond 2^53 an integer would lose digits as a float: the column stays exact, as text.
    assert_eq!(texts(t, "big")[0].as_deref(), Some("1152921504606846976"));
    assert_eq!(texts(t, "huge")[0].as_deref(), Some("18446744073709551615"));
    assert_eq!(texts(t, "x"), s(&[Some("0.5"), None, Some("0.5"), None]));
    // NaN is how pandas writes a missing float.
    assert_eq!(
        texts(t, "y"),
        s(&[None, Some("-2.25"), None, Some("-2.25")])
    );
    assert_eq!(
        texts(t, "paid"),
        s(&[Some("true"), None, Some("true"), None])
    );
    assert_eq!(texts(t, "plan"), s(&[Some("pro"), None, Some("pro"), None]));
    assert_eq!(texts(t, "day")[0].as_deref(), Some("2022-01-08"));
    assert_eq!(
        texts(t, "at")[0].as_deref(),
        Some("1970-01-01T00:00:01.500")
    );
    assert_eq!(
        texts(t, "user.age"),
        s(&[Some("31"), None, Some("31"), None])
    );
    assert_eq!(texts(t, "user.name")[1].as_deref(), Some("bo"));
    assert_eq!(texts(t, "note")[1].as_deref(), Some("héllo"));
}

#[test]
fn parquet_and_arrow_columns_keep_their_types() {
    let dir = tempfile::tempdir().unwrap();
    let parquet = dir.path().join("t.parquet");
    write_parquet(&parquet, &typed_batches());
    check_typed(&load(&parquet, None).unwrap());
    // Found by its magic under any name.
    let renamed = dir.path().join("t.bin");
    std::fs::copy(&parquet, &renamed).unwrap();
    check_typed(&load(&renamed, None).unwrap());

    let batches = typed_batches();
    let feather = dir.path().join("t.feather");
    let mut w = arrow_ipc::writer::FileWriter::try_new(
        std::fs::File::create(&feather).unwrap(),
        &batches[0].schema(),
    )
    .unwrap();
    batches.iter().for_each(|b| w.write(b).unwrap());
    w.finish().unwrap();
    check_typed(&load(&feather, None).unwrap());

    let stream = dir.path().join("t.arrows");
    let mut w = arrow_ipc::writer::StreamWriter::try_new(
        std::fs::File::create(&stream).unwrap(),
        &batches[0].schema(),
    )
    .unwrap();
    batches.iter().for_each(|b| w.write(b).unwrap());
    w.finish().unwrap();
    check_typed(&load(&stream, None).unwrap());
}

#[test]
fn a_projection_decodes_only_the_named_columns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.parquet");
    write_parquet(&path, &typed_batches());
    // A dotted name reads its struct; a name the file lacks selects nothing (the caller's
    // column checks name it).
    let wanted = ["y".to_string(), "user.name".to_string(), "nope".to_string()];
    let t = load(&path, Some(&wanted)).unwrap();
    assert_eq!(t.names, ["y", "user.age", "user.name"]);
}

#[test]
fn part_files_of_a_directory_are_read_in_name_order_with_one_schema() {
    let dir = tempfile::tempdir().unwrap();
    let parts = dir.path().join("parts");
    std::fs::create_dir(&parts).unwrap();
    let b = typed_batches();
    write_parquet(&parts.join("part-00001.parquet"), &b[1..]);
    write_parquet(&parts.join("part-00000.parquet"), &b[..1]);
    std::fs::write(parts.join("_SUCCESS"), "").unwrap();
    let t = load(&parts, None).unwrap();
    check_typed(&t);
    assert_eq!(t.origin, parts.display().to_string());

    // A bad value in the second part names that part and its own row.
    let v = |x: f64| {
        batch(vec![(
            "v",
            Arc::new(Float64Array::from(vec![1.0, x])) as ArrayRef,
        )])
    };
    let inf = dir.path().join("inf");
    std::fs::create_dir(&inf).unwrap();
    write_parquet(&inf.join("a.parquet"), &[v(2.0)]);
    write_parquet(&inf.join("b.parquet"), &[v(f64::INFINITY)]);
    let err = load(&inf, None).unwrap_err().to_string();
    assert!(err.contains("b.parquet, line 2, column \"v\""), "{err}");

    let other = batch(vec![(
        "row_id",
        Arc::new(Int64Array::from(vec![9])) as ArrayRef,
    )]);
    write_parquet(&parts.join("part-00002.parquet"), &[other]);
    let err = load(&parts, None).unwrap_err().to_string();
    assert!(
        err.contains("part-00002.parquet") && err.contains("same schema"),
        "{err}"
    );

    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let err = load(&empty, None).unwrap_err().to_string();
    assert!(err.contains("without *.parquet files"), "{err}");
}

#[test]
fn lists_are_refused_by_name_unless_projected_away_and_infinities_are_bad_values() {
    let dir = tempfile::tempdir().unwrap();
    let mut tags = ListBuilder::new(Int64Builder::new());
    tags.values().append_value(1);
    tags.append(true);
    tags.append(false);
    let path = dir.path().join("l.parquet");
    write_parquet(
        &path,
        &[batch(vec![
            ("tags", Arc::new(tags.finish()) as ArrayRef),
            (
                "v",
                Arc::new(Float64Array::from(vec![1.0, f64::INFINITY])) as ArrayRef,
            ),
        ])],
    );
    let err = load(&path, None).unwrap_err().to_string();
    assert!(
        err.contains("l.parquet") && err.contains("column \"tags\"") && err.contains("List"),
        "{err}"
    );
    let err = load(&path, Some(&["v".to_string()]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("l.parquet, line 2, column \"v\"")
            && err.contains("inf is not a finite number"),
        "{err}"
    );
    let t = kiln_data::load_source_columns(
        path.to_str().unwrap(),
        &data(DataFormat::Auto, BadRows::Skip),
        Some(&["v".to_string()]),
        &[],
    )
    .unwrap();
    assert_eq!(t.num_rows(), 1);
    assert_eq!(t.report.bad_rows_skipped, 1);
    assert_eq!(t.report.rows_read, 2);
    // Two bad values in one row skip one row.
    let two = dir.path().join("two.parquet");
    write_parquet(
        &two,
        &[batch(vec![
            (
                "v",
                Arc::new(Float64Array::from(vec![1.0, f64::INFINITY])) as ArrayRef,
            ),
            (
                "w",
                Arc::new(Float64Array::from(vec![1.0, f64::NEG_INFINITY])) as ArrayRef,
            ),
        ])],
    );
    let t = kiln_data::load_source(
        two.to_str().unwrap(),
        &data(DataFormat::Auto, BadRows::Skip),
    )
    .unwrap();
    assert_eq!((t.num_rows(), t.report.bad_rows_skipped), (1, 1));
}

#[test]
fn odd_columns_are_errors_or_exact_never_panics() {
    use arrow_array::{Decimal128Array, DictionaryArray, NullArray};
    let dir = tempfile::tempdir().unwrap();
    // A struct field flattened as `a.b` meeting a column named `a.b`.
    let inner = StructArray::from(vec![(
        Arc::new(Field::new("b", DataType::Int32, true)),
        Arc::new(Int32Array::from(vec![1])) as ArrayRef,
    )]);
    let clash = dir.path().join("clash.parquet");
    write_parquet(
        &clash,
        &[batch(vec![
            ("a", Arc::new(inner) as ArrayRef),
            ("a.b", Arc::new(Int32Array::from(vec![2])) as ArrayRef),
        ])],
    );
    let err = load(&clash, None).unwrap_err().to_string();
    assert!(err.contains("two columns are named \"a.b\""), "{err}");
    // A category column with no values at all, a wide decimal (exact, as text), a null column.
    let empty: DictionaryArray<Int32Type> = DictionaryArray::try_new(
        Int32Array::from(vec![None, None]),
        Arc::new(StringArray::from(Vec::<&str>::new())),
    )
    .unwrap();
    let wide = Decimal128Array::from(vec![Some(12_345_678_901_234_567_891_i128), None])
        .with_precision_and_scale(20, 0)
        .unwrap();
    let narrow = Decimal128Array::from(vec![Some(1234_i128), Some(-5)])
        .with_precision_and_scale(6, 2)
        .unwrap();
    let odd = dir.path().join("odd.feather");
    let b = batch(vec![
        ("c", Arc::new(empty) as ArrayRef),
        ("wide", Arc::new(wide) as ArrayRef),
        ("narrow", Arc::new(narrow) as ArrayRef),
        ("nothing", Arc::new(NullArray::new(2)) as ArrayRef),
    ]);
    let mut w =
        arrow_ipc::writer::FileWriter::try_new(std::fs::File::create(&odd).unwrap(), &b.schema())
            .unwrap();
    w.write(&b).unwrap();
    w.finish().unwrap();
    let t = load(&odd, None).unwrap();
    assert_eq!(texts(&t, "c"), [None, None]);
    assert_eq!(
        texts(&t, "wide")[0].as_deref(),
        Some("12345678901234567891")
    );
    assert_eq!(
        texts(&t, "narrow"),
        [Some("12.34".into()), Some("-0.05".into())]
    );
    assert_eq!(texts(&t, "nothing"), [None, None]);
}

#[test]
fn zstd_csv_is_read_like_plain_csv() {
    let dir = tempfile::tempdir().unwrap();
    let text = "a,b\n1,x\n2,y\n";
    let path = dir.path().join("t.csv.zst");
    std::fs::write(&path, zstd::encode_all(text.as_bytes(), 3).unwrap()).unwrap();
    let t = load(&path, None).unwrap();
    assert_eq!(t.names, ["a", "b"]);
    assert_eq!(texts(&t, "b")[1].as_deref(), Some("y"));
}

#[test]
fn columnar_output_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let names = [
        "id".to_string(),
        "label".to_string(),
        "proba_yes".to_string(),
    ];
    for (format, file) in [
        (ColumnarFormat::Parquet, "p.parquet"),
        (ColumnarFormat::ArrowIpc, "p.arrow"),
    ] {
        let bytes = kiln_data::write_columnar(
            format,
            &names,
            vec![
                OutputColumn::Text(vec!["a".into(), "b".into()]),
                OutputColumn::Text(vec!["yes".into(), "no".into()]),
                OutputColumn::Float(vec![0.75, 0.125]),
            ],
        )
        .unwrap();
        let path = dir.path().join(file);
        std::fs::write(&path, bytes).unwrap();
        let t = load(&path, None).unwrap();
        assert_eq!(t.names, names);
        assert_eq!(texts(&t, "label"), [Some("yes".into()), Some("no".into())]);
        assert_eq!(t.columns[2], Column::numbers([Some(0.75), Some(0.125)]));
    }
    let err = kiln_data::write_columnar(
        ColumnarFormat::Parquet,
        &names,
        vec![OutputColumn::Float(vec![1.0])],
    )
    .unwrap_err();
    assert!(err.to_string().contains("3 names for 1 columns"), "{err}");
}

#[test]
fn a_struct_of_a_null_parent_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let fields = Fields::from(vec![Field::new("age", DataType::Int32, true)]);
    let user = StructArray::new(
        fields,
        vec![Arc::new(Int32Array::from(vec![5, 6])) as ArrayRef],
        Some(vec![true, false].into()),
    );
    let path = dir.path().join("s.parquet");
    write_parquet(&path, &[batch(vec![("user", Arc::new(user) as ArrayRef)])]);
    let t = load(&path, None).unwrap();
    assert_eq!(texts(&t, "user.age"), [Some("5".into()), None]);
}

#[test]
fn files_written_by_pyarrow_read_with_their_types() {
    // scripts/make-columnar-fixtures.py: snappy and zstd Parquet, LZ4 Feather v2.
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for file in [
        "pyarrow_snappy.parquet",
        "pyarrow_zstd.parquet",
        "pyarrow.feather",
    ] {
        let t = load(&fixtures.join(file), None).unwrap();
        assert_eq!(
            t.names,
            [
                "id",
                "score",
                "count",
                "flag",
                "city",
                "at",
                "user.name",
                "user.age"
            ],
            "{file}"
        );
        assert_eq!(t.num_rows(), 4, "{file}");
        for n in ["id", "score", "count", "user.age"] {
            assert!(is_number(&t, n), "{file}: {n}");
        }
        let s = |v: &[Option<&str>]| v.iter().map(|v| v.map(str::to_string)).collect::<Vec<_>>();
        assert_eq!(
            texts(&t, "score"),
            s(&[Some("0.5"), None, Some("-1.25"), Some("3")])
        );
        assert_eq!(
            texts(&t, "count"),
            s(&[Some("10"), None, Some("30"), Some("40")])
        );
        assert_eq!(
            texts(&t, "flag"),
            s(&[Some("true"), Some("false"), None, Some("true")])
        );
        assert_eq!(
            texts(&t, "city"),
            s(&[Some("Lyon"), Some("Nice"), Some("Lyon"), None])
        );
        assert_eq!(
            texts(&t, "at"),
            s(&[
                Some("1970-01-01T00:00:00Z"),
                Some("1970-01-01T00:00:01Z"),
                None,
                Some("1970-01-02T00:00:00Z")
            ])
        );
        assert_eq!(
            texts(&t, "user.name"),
            s(&[Some("ann"), Some("bo"), None, Some("cy")])
        );
        assert_eq!(
            texts(&t, "user.age"),
            s(&[Some("31"), None, None, Some("7")])
        );
    }
    let brotli = fixtures.join("pyarrow_brotli.parquet");
    let err = load(&brotli, None).unwrap_err().to_string();
    assert!(
        err.contains("pyarrow_brotli.parquet: its pages are brotli-compressed"),
        "{err}"
    );
}

#[test]
fn parquet_read_in_chunks_gives_the_rows_of_the_whole_source_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let parts = dir.path().join("parts");
    std::fs::create_dir(&parts).unwrap();
    let v = |values: &[f64]| {
        batch(vec![(
            "v",
            Arc::new(Float64Array::from(values.to_vec())) as ArrayRef,
        )])
    };
    write_parquet(&parts.join("part-0.parquet"), &[v(&[1.0, 2.0])]);
    write_parquet(&parts.join("part-1.parquet"), &[v(&[3.0]), v(&[4.0, 5.0])]);
    write_parquet(&parts.join("part-2.parquet"), &[v(&[6.0, f64::INFINITY])]);
    let spec = parts.to_str().unwrap();
    let data = kiln_config::DataConfig::default();
    let mut chunks = kiln_data::source_chunks(spec, &data, None, &[]).unwrap();
    assert!(chunks.streams());
    let (mut values, mut lines) = (vec![], vec![]);
    let err = loop {
        match chunks.next_chunk(1) {
            Ok(Some(t)) => {
                lines.extend(t.lines.clone());
                values.extend((0..t.num_rows()).map(|r| t.columns[0].number(r).unwrap()));
            }
            Ok(None) => panic!("the infinite value was not refused"),
            Err(e) => break e.to_string(),
        }
    };
    // Whole record batches: a chunk holds at least one, and never spans a file's end.
    assert_eq!(values, [1.0, 2.0, 3.0, 4.0, 5.0]);
    assert_eq!(lines, [1, 2, 3, 4, 5]);
    // Errors name the part file and the row within it, as the whole read does.
    assert!(
        err.contains("part-2.parquet, line 2, column \"v\""),
        "{err}"
    );
}

#[test]
fn an_arrow_file_read_in_chunks_cuts_its_batches_and_keeps_row_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rows.arrow");
    let v = |values: &[f64]| {
        batch(vec![(
            "v",
            Arc::new(Float64Array::from(values.to_vec())) as ArrayRef,
        )])
    };
    let batches = [v(&[1.0, 2.0, 3.0]), v(&[4.0]), v(&[5.0, f64::INFINITY])];
    let file = std::fs::File::create(&path).unwrap();
    let mut w = arrow_ipc::writer::FileWriter::try_new(file, &batches[0].schema()).unwrap();
    for b in &batches {
        w.write(b).unwrap();
    }
    w.finish().unwrap();
    let data = kiln_config::DataConfig::default();
    let mut chunks = kiln_data::source_chunks(path.to_str().unwrap(), &data, None, &[]).unwrap();
    assert!(chunks.streams());
    let mut seen = vec![];
    let err = loop {
        match chunks.next_chunk(2) {
            Ok(Some(t)) => seen.push((
                t.lines.clone(),
                (0..t.num_rows())
                    .map(|r| t.columns[0].number(r).unwrap())
                    .collect::<Vec<_>>(),
            )),
            Ok(None) => panic!("the infinite value was not refused"),
            Err(e) => break e.to_string(),
        }
    };
    // Two rows a chunk, a batch cut where a chunk ends, a chunk spanning batches.
    assert_eq!(
        seen,
        [(vec![1, 2], vec![1.0, 2.0]), (vec![3, 4], vec![3.0, 4.0])]
    );
    assert!(err.contains("rows.arrow, line 6, column \"v\""), "{err}");
}

#[test]
fn a_streamed_source_notices_a_changed_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rows.parquet");
    let write = |rows: usize| {
        let bytes = kiln_data::write_columnar(
            kiln_data::ColumnarFormat::Parquet,
            &["x".to_string(), "label".to_string()],
            vec![
                kiln_data::OutputColumn::Float((0..rows).map(|i| i as f32).collect()),
                kiln_data::OutputColumn::Text((0..rows).map(|i| format!("c{}", i % 2)).collect()),
            ],
        )
        .unwrap();
        std::fs::write(&path, bytes).unwrap();
    };
    write(10);
    let config = kiln_config::DataConfig {
        streaming: kiln_config::Streaming::On,
        ..Default::default()
    };
    let source = kiln_data::StreamSource::open(path.to_str().unwrap(), &config).unwrap();
    assert_eq!(source.rows(), 10);
    source.check_unchanged().unwrap();
    write(12);
    let err = source.check_unchanged().unwrap_err().to_string();
    assert!(
        err.contains("rows.parquet") && err.contains("changed while a streamed run"),
        "{err}"
    );
    // A compressed file cannot be read from the middle.
    let csv = dir.path().join("rows.csv.zst");
    std::fs::write(&csv, "x,label\n1,a\n").unwrap();
    let err = kiln_data::StreamSource::open(csv.to_str().unwrap(), &config)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("rows.csv.zst") && err.contains("decompress it first"),
        "{err}"
    );
}

/// The lines of every chunk a streamed source's pass reads, and of every shard read again.
fn pass_and_shards(path: &Path, config: &kiln_config::DataConfig) -> (Vec<u64>, Vec<Vec<u64>>) {
    let mut source = kiln_data::StreamSource::open(path.to_str().unwrap(), config).unwrap();
    let mut seen = Vec::new();
    source
        .pass(&mut |t| {
            seen.extend(t.lines.clone());
            Ok(())
        })
        .unwrap();
    let shards = source.shard_rows();
    let read: Vec<Vec<u64>> = (0..shards.len())
        .map(|i| {
            let mut lines = Vec::new();
            source
                .read_shard(i, &mut |t| {
                    lines.extend(t.lines.clone());
                    Ok(())
                })
                .unwrap();
            assert_eq!(lines.len(), shards[i], "shard {i} of {}", path.display());
            lines
        })
        .collect();
    (seen, read)
}

#[test]
fn a_streamed_source_reads_each_shard_as_its_pass_saw_it() {
    let dir = tempfile::tempdir().unwrap();
    // A quarter of the buffer, 256 rows, a shard.
    let config = kiln_config::DataConfig {
        streaming: kiln_config::Streaming::On,
        shuffle_buffer: 1024,
        bad_rows: kiln_config::BadRows::Skip,
        ..Default::default()
    };
    // A CSV of exactly two shards: no empty third one at the end.
    let csv = dir.path().join("rows.csv");
    let text: String = std::iter::once("x,label\n".to_string())
        .chain((0..512).map(|i| format!("{i},c{}\n", i % 2)))
        .collect();
    std::fs::write(&csv, text).unwrap();
    let (seen, shards) = pass_and_shards(&csv, &config);
    assert_eq!(shards.iter().map(Vec::len).collect::<Vec<_>>(), [256, 256]);
    assert_eq!(shards.concat(), seen);

    // Arrow rows with bad values (skipped): a shard is read again as far as the pass read it.
    let arrow = dir.path().join("rows.arrow");
    let values: Vec<f64> = (0..600)
        .map(|i| if i % 7 == 3 { f64::INFINITY } else { i as f64 })
        .collect();
    let file = std::fs::File::create(&arrow).unwrap();
    let b = batch(vec![(
        "x",
        Arc::new(Float64Array::from(values)) as ArrayRef,
    )]);
    let mut w = arrow_ipc::writer::FileWriter::try_new(file, &b.schema()).unwrap();
    for start in (0..600).step_by(200) {
        w.write(&b.slice(start, 200)).unwrap();
    }
    w.finish().unwrap();
    let (seen, shards) = pass_and_shards(&arrow, &config);
    assert_eq!(seen.len(), 600 - 86);
    assert_eq!(shards.concat(), seen);

    // JSON Lines whose field changes type in a later shard (skipped there): each shard's
    // lines are checked against the type the field had first in the file.
    let jsonl = dir.path().join("rows.jsonl");
    let text: String = (0..600)
        .map(|i| match i {
            256 => "{\"x\": \"a word\", \"label\": \"c0\"}\n".to_string(),
            _ => format!("{{\"x\": {i}, \"label\": \"c{}\"}}\n", i % 2),
        })
        .collect();
    std::fs::write(&jsonl, text).unwrap();
    let (seen, shards) = pass_and_shards(&jsonl, &config);
    assert_eq!(seen.len(), 599);
    assert!(!seen.contains(&257));
    assert_eq!(shards.concat(), seen);
}
