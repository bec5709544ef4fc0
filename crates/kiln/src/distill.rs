//! Knowledge distillation: a trained teacher run's (or an ensemble's) logits for the
//! student's training rows, computed once before training or on each augmented batch, and
//! the teacher-versus-student comparison of the report.

use std::path::Path;
use std::time::Instant;

use burn::prelude::Device;
use kiln_config::Task;
use kiln_data::{Encoded, ImageInput};
use kiln_models::Network;
use kiln_runtime::inference::{Predictions, predict, raw_outputs};
use kiln_runtime::run::{self, LoadedRun};
use kiln_train::evaluate::{Evaluation, score};
use serde::Serialize;

use crate::pipeline::PreparedData;
use crate::{KilnError, Result};

/// One loaded teacher run.
pub struct Member {
    /// The run.
    pub run: LoadedRun,
    /// With `distill.cache = false`: the model in inference mode and the per-channel map of
    /// the student's image inputs to its own (scale, shift).
    pub live: Option<(Network, Vec<f32>, Vec<f32>)>,
    /// The student's first training rows as this run's preprocessing encodes them (they
    /// time it).
    pub rows: Encoded,
}

/// The loaded teacher (one run, or an ensemble) and its logits for the student's training
/// rows.
pub struct Teacher {
    /// The runs.
    pub members: Vec<Member>,
    /// `[training rows, classes]`, in the order of the student's encoded training rows, an
    /// ensemble's combined (empty when the teachers run on each batch).
    pub logits: Vec<f32>,
    /// Whether `logits` holds them (`distill.cache`).
    pub cached: bool,
    /// Classes.
    pub classes: usize,
}

impl Teacher {
    /// How the trainer takes the teacher's logits.
    pub fn source(&self) -> kiln_train::TeacherSource<'_> {
        if !self.cached {
            kiln_train::TeacherSource::Live(kiln_train::LiveTeacher {
                members: self
                    .members
                    .iter()
                    .filter_map(|m| m.live.as_ref())
                    .map(|(model, scale, shift)| (model, scale.clone(), shift.clone()))
                    .collect(),
            })
        } else {
            kiln_train::TeacherSource::Cached(&self.logits)
        }
    }
}

/// The teacher next to the student, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct DistillSummary {
    /// Teacher run directory (an ensemble's, joined by ", ").
    pub teacher: String,
    /// Teacher runs: 1, or the size of an ensemble.
    pub teachers: usize,
    /// Whether the teacher's logits were computed once (`false`: on each augmented batch).
    pub cached: bool,
    /// Teacher parameters (an ensemble's, summed).
    pub teacher_parameters: usize,
    /// The teacher's scores on the student's validation rows (what to choose a teacher by);
    /// only when every teacher was split as the student was (same data source, split settings
    /// and split seed), so that no teacher trained on those rows.
    #[serde(serialize_with = "evaluation_summary")]
    pub teacher_validation: Option<Evaluation>,
    /// The teacher's scores on the student's test rows (serialised as the student's are).
    #[serde(serialize_with = "evaluation_summary")]
    pub teacher_test: Option<Evaluation>,
    /// Median milliseconds of the teacher's forward over one row (an ensemble's, summed).
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

/// Loads the teacher runs at `dirs` (several: an ensemble) and, with `cache`, computes their
/// logits for `data`'s training rows (read from the same table through each run's own
/// preprocessing), combined at `temperature`; without, checks that each takes the student's
/// images and maps their standardisation. Each must be a classifier of exactly the
/// student's classes, in the same order.
pub fn load_teacher(
    dirs: &[&str],
    data: &PreparedData,
    device: &Device,
    cache: bool,
    temperature: f64,
) -> Result<Teacher> {
    let classes = data.preprocessor.num_outputs();
    let mut members = Vec::with_capacity(dirs.len());
    let mut logits = Vec::with_capacity(if cache { dirs.len() } else { 0 });
    for dir in dirs {
        let (member, member_logits) = load_member(Path::new(dir), data, device, cache)?;
        members.push(member);
        logits.extend(member_logits);
    }
    Ok(Teacher {
        members,
        logits: kiln_train::ensemble_logits(&logits, classes, temperature),
        cached: cache,
        classes,
    })
}

/// One teacher run, and its logits for the training rows with `cache`.
fn load_member(
    dir: &Path,
    data: &PreparedData,
    device: &Device,
    cache: bool,
) -> Result<(Member, Option<Vec<f32>>)> {
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
    let read = |rows: &[usize]| {
        run.preprocessor
            .transform(&data.table, rows, false, false)
            .map_err(|e| teacher_error(dir, format!("its preprocessing cannot read the data: {e}")))
    };
    let first = source_rows.len().min(32);
    if !cache {
        let first_rows = read(&source_rows[..first])?;
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
        let member = Member {
            run,
            live: Some((model, scale, shift)),
            rows: first_rows,
        };
        return Ok((member, None));
    }
    let encoded = read(source_rows)?;
    let first_rows = encoded.select(&(0..first).collect::<Vec<_>>());
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
    let member = Member {
        run,
        live: None,
        rows: first_rows,
    };
    Ok((member, Some(logits)))
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

/// The teacher's validation and test scores and both models' latencies.
pub fn summarize(
    teacher: &Teacher,
    student: &Network,
    data: &PreparedData,
    config: &kiln_config::Config,
    device: &Device,
) -> Result<DistillSummary> {
    let config_data = &config.data;
    let runs: Vec<&LoadedRun> = teacher.members.iter().map(|m| &m.run).collect();
    // The student's test rows, read again through each teacher's preprocessing: from the
    // training table, or from the separate test file.
    let teacher_test = match &data.summary.test_source {
        _ if data.test.rows == 0 => None,
        Some(path) => {
            let mut text_columns: Vec<String> = Vec::new();
            for t in &runs {
                for column in t.preprocessor.text_columns() {
                    if !text_columns.contains(&column) {
                        text_columns.push(column);
                    }
                }
            }
            let mut table = kiln_data::load_source_columns(path, config_data, None, &text_columns)?;
            kiln_data::drop_bad_values(&mut table, &data.schema, config_data.bad_rows)?;
            Some(teacher_scores(
                &runs,
                &table,
                &data.test.source_rows,
                device,
            )?)
        }
        None => Some(teacher_scores(
            &runs,
            &data.table,
            &data.test.source_rows,
            device,
        )?),
    };
    let same_split = runs.iter().all(|t| split_alike(config, &t.config));
    let teacher_validation = match data.validation.rows {
        0 => None,
        _ if !same_split => None,
        _ => Some(teacher_scores(
            &runs,
            &data.table,
            &data.validation.source_rows,
            device,
        )?),
    };
    Ok(DistillSummary {
        teacher_validation,
        teacher: runs
            .iter()
            .map(|t| t.dir.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        teachers: runs.len(),
        cached: teacher.cached,
        teacher_parameters: runs
            .iter()
            .map(|t| burn::module::Module::num_params(&t.model))
            .sum(),
        teacher_test,
        teacher_latency_ms: teacher
            .members
            .iter()
            .map(|m| latency_ms(&m.run.model, &m.rows, device))
            .sum(),
        student_latency_ms: latency_ms(student, &data.train, device),
    })
}

/// Whether runs of configs `a` and `b` split their data alike: the same source, split
/// settings and split seed.
fn split_alike(a: &kiln_config::Config, b: &kiln_config::Config) -> bool {
    let split_seed = |c: &kiln_config::Config| c.data.split.seed.unwrap_or(c.seed);
    let settings = |c: &kiln_config::Config| kiln_config::SplitConfig {
        seed: None,
        ..c.data.split.clone()
    };
    split_seed(a) == split_seed(b)
        && settings(a) == settings(b)
        && a.data.source == b.data.source
        && a.data.test_source == b.data.test_source
}

/// The teachers' scores on `rows` of `table`: an ensemble's averaged probabilities.
fn teacher_scores(
    runs: &[&LoadedRun],
    table: &kiln_data::Table,
    rows: &[usize],
    device: &Device,
) -> Result<Evaluation> {
    let mut mean: Option<(Encoded, Predictions)> = None;
    for t in runs {
        let encoded = t.preprocessor.transform(table, rows, false, true)?;
        let predictions = predict(&t.model, &encoded, &t.preprocessor, device);
        match &mut mean {
            None => mean = Some((encoded, predictions)),
            Some((_, sum)) => sum
                .values
                .iter_mut()
                .zip(&predictions.values)
                .for_each(|(s, p)| *s += p),
        }
    }
    let Some((encoded, mut predictions)) = mean else {
        return Err(KilnError::Invalid(
            "distill.teacher: no teacher runs".into(),
        ));
    };
    if runs.len() > 1 {
        let n = runs.len() as f32;
        predictions.values.iter_mut().for_each(|v| *v /= n);
    }
    Ok(score(&encoded, &predictions, &runs[0].preprocessor)?)
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
