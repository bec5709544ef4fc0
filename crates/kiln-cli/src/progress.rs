//! Progress from the trainer's observer callbacks: a bar with an ETA on a terminal, plain
//! `tracing` lines (one per epoch, evaluation or event) when stderr is a pipe or a file.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use kiln::train::{EpochRecord, Observer, StartInfo, StepRecord};

/// A progress bar over optimizer steps with loss, validation metric, samples/s and ETA, or
/// plain log lines where no terminal would show the bar.
pub struct Bars {
    hidden: bool,
    plain: bool,
    bar: Option<ProgressBar>,
    last_val: String,
}

impl Bars {
    pub fn new(hidden: bool) -> Self {
        Self {
            hidden,
            plain: !std::io::stderr().is_terminal(),
            bar: None,
            last_val: String::new(),
        }
    }

    /// Prints a line above the bar, or logs it.
    fn line(&self, text: String) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None if self.plain && !self.hidden => tracing::info!("{text}"),
            None => {}
        }
    }
}

impl Observer for Bars {
    fn on_start(&mut self, info: &StartInfo) {
        if self.hidden {
            return;
        }
        if !self.plain {
            let bar = ProgressBar::new(info.total_steps);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise} < {eta}] {bar:30} {pos}/{len} steps  {msg}",
                )
                .expect("valid template"),
            );
            bar.set_position(info.steps_done);
            self.bar = Some(bar);
        }
        self.line(format!(
            "training {} parameters on {} rows, {} steps per epoch{}",
            info.parameters,
            info.train_rows,
            info.steps_per_epoch,
            if info.steps_done > 0 {
                format!(", resuming at step {}", info.steps_done)
            } else {
                String::new()
            }
        ));
    }

    fn on_step(&mut self, r: &StepRecord) {
        if let Some(bar) = &self.bar {
            bar.set_position(r.step);
            bar.set_message(format!(
                "epoch {} loss {:.4}{} lr {:.2e} {:.0} samples/s",
                r.epoch + 1,
                r.loss,
                self.last_val,
                r.lr,
                r.samples_per_sec
            ));
        }
    }

    fn on_epoch(&mut self, r: &EpochRecord) {
        if let Some(v) = &r.validation {
            self.last_val = match (
                v.get("accuracy").and_then(|a| a.as_f64()),
                v.get("r2").and_then(|a| a.as_f64()),
            ) {
                (Some(a), _) => format!(" val_acc {a:.4}"),
                (_, Some(r2)) => format!(" val_r2 {r2:.4}"),
                _ => String::new(),
            };
        }
        if !self.hidden {
            let val = r
                .validation
                .as_ref()
                .map(|v| {
                    format!(
                        " val_loss {:.4}{}",
                        v["loss"].as_f64().unwrap_or(f64::NAN),
                        self.last_val
                    )
                })
                .unwrap_or_default();
            self.line(format!(
                "epoch {:>3}  train_loss {:.4}{val}  {:.1}s{}",
                r.epoch + 1,
                r.train_loss,
                r.seconds,
                if r.improved { "  *" } else { "" }
            ));
        }
    }

    fn on_event(&mut self, message: &str) {
        if !message.starts_with("checkpoint") {
            self.line(message.to_string());
        }
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
