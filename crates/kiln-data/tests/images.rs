//! Image folders and path columns: exact pixels, channels, sizes, bad images; per-channel
//! normalisation; augmentation.

use std::path::Path;

use image::{GrayImage, Luma, Rgb, RgbImage};
use kiln_config::{AugmentConfig, BadRows, Config, DataConfig, ImageChannels, ImageFit};
use kiln_data::{Column, FeatureTransform, ImageAugmenter, Preprocessor, Table};
use kiln_rng::SplitMix64;

/// A grey image whose pixel (x, y) is `base + 10 y + x`.
fn grey(w: u32, h: u32, base: u8) -> GrayImage {
    GrayImage::from_fn(w, h, |x, y| Luma([base + (10 * y + x) as u8]))
}

/// A colour image: red = x, green = y, blue = `blue`.
fn rgb(w: u32, h: u32, blue: u8) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| Rgb([x as u8, y as u8, blue]))
}

fn load(root: &Path, data: &DataConfig) -> Result<Table, kiln_data::DataError> {
    kiln_data::load_source(root.to_str().unwrap(), data)
}

fn image_column(t: &Table) -> (&[u8], usize, usize, usize) {
    let i = t.names.iter().position(|n| n == "image").unwrap();
    match &t.columns[i] {
        Column::Image {
            pixels,
            channels,
            height,
            width,
        } => (pixels, *channels, *height, *width),
        other => panic!("not images: {other:?}"),
    }
}

fn column_texts(t: &Table, name: &str) -> Vec<String> {
    let i = t.names.iter().position(|n| n == name).unwrap();
    (0..t.num_rows())
        .map(|r| t.columns[i].text(r).unwrap())
        .collect()
}

#[test]
fn a_folder_of_class_folders_reads_every_pixel_in_class_and_name_order() {
    let dir = tempfile::tempdir().unwrap();
    for (class, bases) in [("cat", [0u8, 50]), ("ant", [100, 150])] {
        std::fs::create_dir_all(dir.path().join(class)).unwrap();
        for (i, base) in bases.iter().enumerate() {
            grey(4, 3, *base)
                .save(dir.path().join(class).join(format!("{i}.png")))
                .unwrap();
        }
    }
    // Not images, hidden, or another format: left out.
    std::fs::write(dir.path().join("cat/notes.txt"), "x").unwrap();
    std::fs::write(dir.path().join("cat/.hidden.png"), "x").unwrap();
    let t = load(dir.path(), &DataConfig::default()).unwrap();
    assert_eq!(t.names, ["image", "label", "path"]);
    assert_eq!(column_texts(&t, "label"), ["ant", "ant", "cat", "cat"]);
    assert_eq!(
        column_texts(&t, "path"),
        ["ant/0.png", "ant/1.png", "cat/0.png", "cat/1.png"]
    );
    let (pixels, channels, height, width) = image_column(&t);
    assert_eq!((channels, height, width), (1, 3, 4));
    let expected: Vec<u8> = [100u8, 150, 0, 50]
        .iter()
        .flat_map(|&b| grey(4, 3, b).into_raw())
        .collect();
    assert_eq!(pixels, expected.as_slice());
}

#[test]
fn colour_images_are_channel_planes_and_grey_ones_convert_on_request() {
    let dir = tempfile::tempdir().unwrap();
    for class in ["a", "b"] {
        std::fs::create_dir_all(dir.path().join(class)).unwrap();
        rgb(3, 2, 200)
            .save(dir.path().join(class).join("x.png"))
            .unwrap();
    }
    let t = load(dir.path(), &DataConfig::default()).unwrap();
    let (pixels, channels, height, width) = image_column(&t);
    assert_eq!((channels, height, width), (3, 2, 3));
    // Red plane = x, green plane = y, blue plane = 200.
    assert_eq!(&pixels[..6], &[0, 1, 2, 0, 1, 2]);
    assert_eq!(&pixels[6..12], &[0, 0, 0, 1, 1, 1]);
    assert_eq!(&pixels[12..18], &[200; 6]);

    // A grey image among colour ones: an error naming both, unless channels are set.
    grey(3, 2, 0).save(dir.path().join("b/y.png")).unwrap();
    let err = load(dir.path(), &DataConfig::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("y.png is grey"), "{err}");
    assert!(err.contains("data.image.channels"), "{err}");
    let mut data = DataConfig::default();
    data.image.channels = ImageChannels::Rgb;
    let t = load(dir.path(), &data).unwrap();
    let (pixels, channels, ..) = image_column(&t);
    assert_eq!(channels, 3);
    // The grey image (third row) has the same value in every plane.
    let row = &pixels[2 * 18..3 * 18];
    assert_eq!(&row[..6], &row[6..12]);
    assert_eq!(&row[..6], &[0, 1, 2, 10, 11, 12]);
    data.image.channels = ImageChannels::Grey;
    let (_, channels, ..) = image_column(&load(dir.path(), &data).unwrap());
    assert_eq!(channels, 1);
}

#[test]
fn sizes_must_agree_unless_a_size_is_set_then_images_are_cropped_or_stretched() {
    let dir = tempfile::tempdir().unwrap();
    for class in ["a", "b"] {
        std::fs::create_dir_all(dir.path().join(class)).unwrap();
        grey(4, 4, 0)
            .save(dir.path().join(class).join("x.png"))
            .unwrap();
    }
    // 8 wide, 4 high: columns 0-1 and 6-7 are 0, the middle is 200.
    GrayImage::from_fn(8, 4, |x, _| {
        Luma([if (2..6).contains(&x) { 200 } else { 0 }])
    })
    .save(dir.path().join("b/wide.png"))
    .unwrap();
    let err = load(dir.path(), &DataConfig::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("wide.png is 4x8"), "{err}");
    assert!(err.contains("data.image.size"), "{err}");

    let mut data = DataConfig::default();
    data.image.size = Some([4, 4]);
    let t = load(dir.path(), &data).unwrap();
    let paths = column_texts(&t, "path");
    let wide = paths.iter().position(|p| p == "b/wide.png").unwrap();
    let (pixels, ..) = image_column(&t);
    // Crop: the 4x4 centre, all 200.
    assert_eq!(&pixels[wide * 16..(wide + 1) * 16], &[200; 16]);
    data.image.fit = ImageFit::Stretch;
    let t = load(dir.path(), &data).unwrap();
    let (pixels, ..) = image_column(&t);
    let row = &pixels[wide * 16..(wide + 1) * 16];
    // Stretch: the black edges are squeezed in, not cut off.
    assert!(row[0] < 100 && row[3] < 100 && row[1] > 100, "{row:?}");
}

#[test]
fn bad_images_and_folders_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("a")).unwrap();
    grey(2, 2, 0).save(root.join("a/ok.png")).unwrap();
    // One class.
    let err = load(root, &DataConfig::default()).unwrap_err().to_string();
    assert!(err.contains("only one class folder (\"a\")"), "{err}");
    // An empty class folder.
    std::fs::create_dir_all(root.join("b")).unwrap();
    let err = load(root, &DataConfig::default()).unwrap_err().to_string();
    assert!(err.contains("class folder \"b\" holds no images"), "{err}");
    // A file that does not decode: an error naming it, or skipped and counted.
    std::fs::write(root.join("b/broken.png"), b"not a png at all").unwrap();
    grey(2, 2, 9).save(root.join("b/z.png")).unwrap();
    let err = load(root, &DataConfig::default()).unwrap_err().to_string();
    assert!(err.contains("broken.png: cannot read the image"), "{err}");
    let data = DataConfig {
        bad_rows: BadRows::Skip,
        ..DataConfig::default()
    };
    let t = load(root, &data).unwrap();
    assert_eq!(t.num_rows(), 2);
    assert_eq!(t.report.bad_rows_skipped, 1);
    assert!(t.report.bad_row_examples[0].starts_with("b/broken.png: "));
    assert_eq!(column_texts(&t, "path"), ["a/ok.png", "b/z.png"]);
    let (pixels, ..) = image_column(&t);
    assert_eq!(&pixels[4..], grey(2, 2, 9).as_raw().as_slice());
    // Images in the folder itself, no class folders.
    let flat = tempfile::tempdir().unwrap();
    grey(2, 2, 0).save(flat.path().join("x.png")).unwrap();
    let data = DataConfig {
        format: kiln_config::DataFormat::Images,
        ..DataConfig::default()
    };
    let err = load(flat.path(), &data).unwrap_err().to_string();
    assert!(err.contains("one sub-folder per class"), "{err}");
}

#[test]
fn a_column_of_paths_becomes_images_read_beside_the_table() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("img")).unwrap();
    for i in 0..3u8 {
        grey(2, 2, 10 * i)
            .save(dir.path().join(format!("img/{i}.png")))
            .unwrap();
    }
    let csv = dir.path().join("list.csv");
    std::fs::write(
        &csv,
        "file,label\nimg/0.png,x\nimg/1.png,y\n,x\nimg/2.png,y\n",
    )
    .unwrap();
    let mut data = DataConfig::default();
    data.image.column = Some("file".into());
    let err = load(&csv, &data).unwrap_err().to_string();
    assert!(
        err.contains("line 4") && err.contains("no image path"),
        "{err}"
    );
    data.bad_rows = BadRows::Skip;
    let t = load(&csv, &data).unwrap();
    assert_eq!(t.num_rows(), 3);
    assert_eq!(t.lines, [2, 3, 5]);
    assert_eq!(column_texts(&t, "label"), ["x", "y", "y"]);
    let i = t.names.iter().position(|n| n == "file").unwrap();
    assert_eq!(
        t.columns[i].image(2).unwrap(),
        grey(2, 2, 20).as_raw().as_slice()
    );
    data.image.column = Some("nope".into());
    let err = load(&csv, &data).unwrap_err().to_string();
    assert!(
        err.contains("no column named \"nope\" (for data.image.column)"),
        "{err}"
    );
}

/// A fitted preprocessor of a colour image table.
fn fitted_rgb(pixels: Vec<u8>, rows: usize, h: usize, w: usize) -> (Table, Preprocessor) {
    let table = Table {
        origin: "mem".into(),
        names: vec!["image".into(), "label".into()],
        columns: vec![
            Column::Image {
                pixels,
                channels: 3,
                height: h,
                width: w,
            },
            Column::texts((0..rows).map(|r| Some(if r % 2 == 0 { "a" } else { "b" }))),
        ],
        lines: (1..=rows as u64).collect(),
        report: Default::default(),
    };
    let mut config = Config::default();
    config.data.source = "mem".into();
    config.model.kind = kiln_config::ModelKind::Cnn;
    let schema = kiln_data::infer_schema(&table, &config).unwrap();
    let all: Vec<usize> = (0..rows).collect();
    let pre = Preprocessor::fit(&table, &schema, &all, &all).unwrap();
    (table, pre)
}

#[test]
fn colour_images_are_normalised_per_channel_and_old_runs_still_load() {
    // Two 1x2 images: red 0/255, green always 51, blue 0/0/255/255.
    let pixels = vec![0, 255, 51, 51, 0, 0, 0, 255, 51, 51, 255, 255];
    let (table, pre) = fitted_rgb(pixels, 2, 1, 2);
    let FeatureTransform::Image { mean, std, .. } = &pre.features[0] else {
        panic!("not an image transform");
    };
    let close = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6);
    assert!(close(mean, &[0.5, 0.2, 0.5]), "{mean:?}");
    assert!(
        close(std, &[0.5, 1.0, 0.5]),
        "a constant channel divides by 1: {std:?}"
    );
    assert_eq!(pre.input_shape().size(), 6);
    let e = pre.transform(&table, &[0], false, false).unwrap();
    assert!(close(&e.x, &[-1.0, 1.0, 0.0, 0.0, -1.0, -1.0]), "{:?}", e.x);
    // A run written before colour images: one mean and std, no channels.
    let json = r#"{"type":"image","name":"image","height":28,"width":28,"mean":0.25,"std":0.5}"#;
    let old: FeatureTransform = serde_json::from_str(json).unwrap();
    assert_eq!(
        old,
        FeatureTransform::Image {
            name: "image".into(),
            channels: 1,
            height: 28,
            width: 28,
            mean: vec![0.25],
            std: vec![0.5],
        }
    );
}

/// An augmenter for a 1-channel `h x w` image normalised with mean 0, std 1 (so encoded
/// values are pixels / 255).
fn augmenter(config: AugmentConfig, h: usize, w: usize, channels: usize) -> ImageAugmenter {
    let mut pre = fitted_rgb(vec![0; 2 * 3 * h * w], 2, h, w).1;
    pre.features[0] = FeatureTransform::Image {
        name: "image".into(),
        channels,
        height: h,
        width: w,
        mean: vec![0.0; channels],
        std: vec![1.0; channels],
    };
    ImageAugmenter::new(&config, &pre).unwrap().unwrap()
}

fn ramp(h: usize, w: usize) -> Vec<f32> {
    (0..h * w).map(|i| (i + 1) as f32 / 100.0).collect()
}

#[test]
fn augmentation_mirrors_shifts_and_rotates_exactly_and_repeats_for_a_seed() {
    let (h, w) = (4, 5);
    let row = ramp(h, w);
    let mut scratch = Vec::new();
    // Mirror: each draw is the row or its exact mirror image, and both happen.
    let flip = augmenter(
        AugmentConfig {
            flip: true,
            ..Default::default()
        },
        h,
        w,
        1,
    );
    let mirrored: Vec<f32> = (0..h * w)
        .map(|i| row[(i / w) * w + (w - 1 - i % w)])
        .collect();
    let mut seen = [false; 2];
    for seed in 0..16 {
        let mut out = row.clone();
        flip.apply(&mut out, &mut SplitMix64::new(seed), &mut scratch);
        let close = |a: &[f32]| out.iter().zip(a).all(|(x, y)| (x - y).abs() < 1e-6);
        match (close(&row), close(&mirrored)) {
            (true, false) => seen[0] = true,
            (false, true) => seen[1] = true,
            _ => panic!("neither the image nor its mirror: {out:?}"),
        }
    }
    assert_eq!(seen, [true, true]);

    // Padding 1 and a random crop: a shift by at most one pixel, black where it came in.
    let crop = augmenter(
        AugmentConfig {
            crop_padding: 1,
            ..Default::default()
        },
        h,
        w,
        1,
    );
    let mut shifts = std::collections::HashSet::new();
    for seed in 0..64 {
        let mut out = row.clone();
        crop.apply(&mut out, &mut SplitMix64::new(seed), &mut scratch);
        let found = (-1i64..=1)
            .flat_map(|dy| (-1i64..=1).map(move |dx| (dy, dx)))
            .find(|&(dy, dx)| {
                (0..h as i64).all(|y| {
                    (0..w as i64).all(|x| {
                        let (sy, sx) = (y + dy, x + dx);
                        let want = if (0..h as i64).contains(&sy) && (0..w as i64).contains(&sx) {
                            row[(sy * w as i64 + sx) as usize]
                        } else {
                            0.0
                        };
                        (out[(y * w as i64 + x) as usize] - want).abs() < 1e-6
                    })
                })
            })
            .unwrap_or_else(|| panic!("not a shift of the image: {out:?}"));
        shifts.insert(found);
    }
    assert_eq!(shifts.len(), 9, "every shift in ±1 happens: {shifts:?}");

    // Rotation: about the centre, blending neighbours (never beyond the brightest).
    let turn = augmenter(
        AugmentConfig {
            rotate_degrees: 90.0,
            ..Default::default()
        },
        3,
        3,
        1,
    );
    let square = ramp(3, 3);
    for seed in 0..8 {
        let mut out = square.clone();
        turn.apply(&mut out, &mut SplitMix64::new(seed), &mut scratch);
        assert!((out[4] - square[4]).abs() < 1e-6, "the centre stays");
        assert!(
            out.iter().all(|v| (0.0..=0.09 + 1e-6).contains(v)),
            "{out:?}"
        );
        assert_ne!(out, square, "seed {seed} did not rotate");
    }

    // Same seed, same image; another seed, another.
    let all = augmenter(
        AugmentConfig {
            flip: true,
            crop_padding: 2,
            rotate_degrees: 15.0,
            brightness: 0.3,
            contrast: 0.3,
            saturation: 0.0,
        },
        h,
        w,
        1,
    );
    let draw = |seed| {
        let mut out = row.clone();
        all.apply(&mut out, &mut SplitMix64::new(seed), &mut Vec::new());
        out
    };
    assert_eq!(draw(3), draw(3));
    assert_ne!(draw(3), draw(4));
    assert!(
        draw(5).iter().all(|v| (0.0..=1.0).contains(v)),
        "clamped to the pixel range"
    );
}

#[test]
fn colour_jitter_scales_brightness_and_saturation_within_their_bounds() {
    let mut scratch = Vec::new();
    let bright = augmenter(
        AugmentConfig {
            brightness: 0.5,
            ..Default::default()
        },
        1,
        2,
        1,
    );
    for seed in 0..32 {
        let mut out = vec![0.2, 0.4];
        bright.apply(&mut out, &mut SplitMix64::new(seed), &mut scratch);
        let factor = out[0] / 0.2;
        assert!((0.5..=1.5).contains(&factor), "{factor}");
        assert!(
            (out[1] / 0.4 - factor).abs() < 1e-5,
            "one factor for the image"
        );
    }
    // Saturation keeps a grey pixel grey, and refuses grey images.
    let saturate = augmenter(
        AugmentConfig {
            saturation: 0.9,
            ..Default::default()
        },
        1,
        1,
        3,
    );
    let mut out = vec![0.5, 0.5, 0.5];
    saturate.apply(&mut out, &mut SplitMix64::new(1), &mut scratch);
    assert!(out.iter().all(|v| (v - 0.5).abs() < 1e-6), "{out:?}");
    let (_, mut pre) = fitted_rgb(vec![0; 6], 2, 1, 1);
    if let FeatureTransform::Image {
        channels,
        mean,
        std,
        ..
    } = &mut pre.features[0]
    {
        *channels = 1;
        mean.truncate(1);
        std.truncate(1);
    }
    let config = AugmentConfig {
        saturation: 0.5,
        ..Default::default()
    };
    let err = ImageAugmenter::new(&config, &pre).unwrap_err().to_string();
    assert!(err.contains("saturation needs colour images"), "{err}");
}

#[test]
fn huge_images_are_refused_before_memory_is_taken_and_parquet_parts_hold_paths() {
    let dir = tempfile::tempdir().unwrap();
    for class in ["a", "b"] {
        std::fs::create_dir_all(dir.path().join(class)).unwrap();
        GrayImage::new(5000, 4000)
            .save(dir.path().join(class).join("big.png"))
            .unwrap();
    }
    let err = load(dir.path(), &DataConfig::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("4000x5000") && err.contains("data.image.size"),
        "{err}"
    );
    let mut data = DataConfig::default();
    data.image.size = Some([40, 50]);
    let t = load(dir.path(), &data).unwrap();
    let (_, channels, height, width) = image_column(&t);
    assert_eq!((channels, height, width), (1, 40, 50));

    // A directory of Parquet part files whose `file` column names images beside them.
    let parts = tempfile::tempdir().unwrap();
    grey(2, 2, 7).save(parts.path().join("x.png")).unwrap();
    let batch = arrow_array::RecordBatch::try_from_iter([
        (
            "file",
            std::sync::Arc::new(arrow_array::StringArray::from(vec!["x.png", "x.png"]))
                as arrow_array::ArrayRef,
        ),
        (
            "label",
            std::sync::Arc::new(arrow_array::StringArray::from(vec!["p", "q"])),
        ),
    ])
    .unwrap();
    let file = std::fs::File::create(parts.path().join("part-0.parquet")).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let mut data = DataConfig::default();
    data.image.column = Some("file".into());
    let t = load(parts.path(), &data).unwrap();
    assert_eq!(
        t.columns[0].image(1).unwrap(),
        grey(2, 2, 7).as_raw().as_slice()
    );
}
