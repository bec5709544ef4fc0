//! Knowledge distillation: a trained teacher run's logits for the student's training rows,
//! computed once before training, and the teacher-versus-student comparison of the report.

use std::path::Path;
use std::time::Instant;

use burn::prelude::Device;
use kiln_config::Task;
use kiln_data::{Encoded, ImageInput};
use kiln_models::Network;
use kiln_runtime::inference::{predict, raw_outputs};
use kiln_runtime::run::{self, LoadedRun};
use kiln_train::evaluate::{Evaluation, score};
use serde::Serialize;

use crate::pipeline::PreparedData;
use crate::{KilnError, Result};

/// A loaded teacher and its logits for the student's training rows.
pub struct Teacher {
    /// The teacher run.
    pub run: LoadedRun,
    /// `[training rows, classes]`, in the order of the student's encoded training rows
    /// (empty when the teacher runs on each batch).
    pub logits: Vec<f32>,
    /// With `distill.cache = false`: the teacher in inference mode and the per-channel map
    /// of the student's image inputs to its own (scale, shift).
    pub live: Option<(Network, Vec<f32>, Vec<f32>)>,
    /// Classes.
    pub classes: usize,
    /// The student's training rows as the teacher's preprocessing encodes them (the first
    /// few only when the teacher runs on each batch: they time it).
    pub rows: Encoded,
}

/// The teacher next to the student, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct DistillSummary {
    /// Teacher run directory.
    pub teacher: String,
    /// Whether the teacher's logits were computed once (`false`: on each augmented batch).
    pub cached: bool,
    /// Teacher parameters.
    pub teacher_parameters: usize,
    /// The teacher's scores on the student's test rows (serialised as the student's are).
    #[serde(serialize_with = "evaluation_summary")]
    pub teacher_test: Option<Evaluation>,
    /// Median milliseconds of the teacher's forward over one row.
    pub teacher_latency_ms: f64,
    /// Median milliseconds of the student's forward over one row.
    pub student_latency_ms: f64,
}

fn evaluation_summary<S: serde::Serializer>(
    e: &Option<Evaluation>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    e.as_ref().map(Evaluation::summary).serialize(s)
}

fn teacher_error(dir: &Path, message: impl std::fmt::Display) -> KilnError {
    KilnError::Invalid(format!("distill.teacher = {}: {message}", dir.display()))
}

/// Loads the teacher run at `dir` and, with `cache`, computes its logits for `data`'s
/// training rows (read from the same table through the teacher's own preprocessing);
/// without, checks that it takes the student's images and maps their standardisation. The
/// teacher must be a classifier of exactly the student's classes, in the same order.
pub fn load_teacher(
    dir: &Path,
    data: &PreparedData,
    device: &Device,
    cache: bool,
) -> Result<Teacher> {
    let run = run::load(dir, device).map_err(|e| teacher_error(dir, e))?;
    let student_classes = data.preprocessor.classes();
    if run.preprocessor.task != Task::Classification || student_classes.is_none() {
        return Err(teacher_error(
            dir,
            format!(
                "distillation needs a classifier teacher and student; the teacher's task is {:?}, the student's {:?}",
                run.preprocessor.task, data.preprocessor.task
            ),
        ));
    }
    if run.preprocessor.classes() != student_classes {
        return Err(teacher_error(
            dir,
            format!(
                "the teacher's classes {:?} differ from the student's {:?}",
                run.preprocessor.classes().unwrap_or_default(),
                student_classes.unwrap_or_default()
            ),
        ));
    }
    let classes = data.preprocessor.num_outputs();
    let source_rows = &data.train.source_rows;
    let encoded = run
        .preprocessor
        .transform(
            &data.table,
            if cache {
                source_rows
            } else {
                &source_rows[..source_rows.len().min(32)]
            },
            false,
            false,
        )
        .map_err(|e| teacher_error(dir, format!("its preprocessing cannot read the data: {e}")))?;
    if !cache {
        let (Some(student), Some(teacher)) = (
            data.preprocessor.image_input(),
            run.preprocessor.image_input(),
        ) else {
            return Err(teacher_error(
                dir,
                "distill.cache = false runs the teacher on the student's augmented images: both models must take one image column",
            ));
        };
        let (scale, shift) = image_map(&student, &teacher).map_err(|e| teacher_error(dir, e))?;
        let model = burn::module::Module::valid(&run.model);
        return Ok(Teacher {
            run,
            logits: Vec::new(),
            live: Some((model, scale, shift)),
            classes,
            rows: encoded,
        });
    }
    let logits = raw_outputs(&run.model, &encoded, device);
    if let Some(i) = logits.iter().position(|v| !v.is_finite()) {
        return Err(teacher_error(
            dir,
            format!(
                "its output for training row {} is not finite",
                i / classes.max(1)
            ),
        ));
    }
    Ok(Teacher {
        run,
        logits,
        live: None,
        classes,
        rows: encoded,
    })
}

/// The per-channel `(scale, shift)` taking the student's standardised pixels to the
/// teacher's: `(p − m_s) / s_s` becomes `(p − m_t) / s_t`. Both inputs must be one image of
/// the same shape.
fn image_map(
    s: &ImageInput<'_>,
    t: &ImageInput<'_>,
) -> std::result::Result<(Vec<f32>, Vec<f32>), String> {
    if (s.channels, s.height, s.width) != (t.channels, t.height, t.width) {
        return Err(format!(
            "distill.cache = false runs the teacher on the student's images: the teacher takes {}×{}×{} images, the student {}×{}×{}",
            t.channels, t.height, t.width, s.channels, s.height, s.width
        ));
    }
    Ok((0..s.channels)
        .map(|c| (s.std[c] / t.std[c], (s.mean[c] - t.mean[c]) / t.std[c]))
        .unzip())
}

/// The teacher's test scores and both models' latencies.
pub fn summarize(
    teacher: &Teacher,
    student: &Network,
    data: &PreparedData,
    config_data: &kiln_config::DataConfig,
    device: &Device,
) -> Result<DistillSummary> {
    let t = &teacher.run;
    // The student's test rows, read again through the teacher's preprocessing: from the
    // training table, or from the separate test file.
    let teacher_test = match &data.summary.test_source {
        _ if data.test.rows == 0 => None,
        Some(path) => {
            let text_columns = t.preprocessor.text_columns();
            let mut table = kiln_data::load_source_columns(path, config_data, None, &text_columns)?;
            kiln_data::drop_bad_values(&mut table, &data.schema, config_data.bad_rows)?;
            Some(teacher_scores(t, &table, &data.test.source_rows, device)?)
        }
        None => Some(teacher_scores(
            t,
            &data.table,
            &data.test.source_rows,
            device,
        )?),
    };
    Ok(DistillSummary {
        teacher: t.dir.display().to_string(),
        cached: teacher.live.is_none(),
        teacher_parameters: burn::module::Module::num_params(&t.model),
        teacher_test,
        teacher_latency_ms: latency_ms(&t.model, &teacher.rows, device),
        student_latency_ms: latency_ms(student, &data.train, device),
    })
}

/// The teacher's scores on `rows` of `table`.
fn teacher_scores(
    t: &LoadedRun,
    table: &kiln_data::Table,
    rows: &[usize],
    device: &Device,
) -> Result<Evaluation> {
    let encoded = t.preprocessor.transform(table, rows, false, true)?;
    let predictions = predict(&t.model, &encoded, &t.preprocessor, device);
    Ok(score(&encoded, &predictions, &t.preprocessor)?)
}

/// Median milliseconds of a forward over one row, over the first 32 rows (after two
/// warm-up rows).
pub fn latency_ms(model: &Network, rows: &Encoded, device: &Device) -> f64 {
    let n = rows.rows.min(32);
    if n == 0 {
        return f64::NAN;
    }
    for i in 0..n.min(2) {
        raw_outputs(model, &rows.select(&[i]), device);
    }
    let mut times: Vec<f64> = (0..n)
        .map(|i| {
            let one = rows.select(&[i]);
            let started = Instant::now();
            raw_outputs(model, &one, device);
            started.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[n / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_map_takes_the_students_pixels_to_the_teachers() {
        let (mean_s, std_s) = ([0.2f32, 0.5, 0.7], [0.3f32, 0.25, 1.0]);
        let (mean_t, std_t) = ([0.25f32, 0.4, 0.6], [0.2f32, 0.3, 0.5]);
        let image = |mean, std| ImageInput {
            channels: 3,
            height: 2,
            width: 2,
            mean,
            std,
        };
        let (scale, shift) = image_map(&image(&mean_s, &std_s), &image(&mean_t, &std_t)).unwrap();
        for c in 0..3 {
            for p in [0.0f32, 0.1, 0.5, 1.0] {
                let student = (p - mean_s[c]) / std_s[c];
                let teacher = (p - mean_t[c]) / std_t[c];
                assert!((student * scale[c] + shift[c] - teacher).abs() < 1e-5);
            }
        }
        let small = ImageInput {
            height: 1,
            ..image(&mean_t, &std_t)
        };
        let err = image_map(&image(&mean_s, &std_s), &small).unwrap_err();
        assert!(err.contains("3×1×2") && err.contains("3×2×2"), "{err}");
    }
}
