//! Progress bars drawn from the trainer's observer callbacks.

use indicatif::{ProgressBar, ProgressStyle};
use kiln::train::{EpochRecord, Observer, StartInfo, StepRecord};

/// A progress bar over optimizer steps with loss, validation metric and samples/s.
pub struct Bars {
    hidden: bool,
    bar: Option<ProgressBar>,
    last_val: String,
}

impl Bars {
    pub fn new(hidden: bool) -> Self {
        Self {
            hidden,
            bar: None,
            last_val: String::new(),
        }
    }
}

impl Observer for Bars {
    fn on_start(&mut self, info: &StartInfo) {
        if self.hidden {
            return;
        }
        let bar = ProgressBar::new(info.total_steps);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps  {msg}",
            )
            .expect("valid template"),
        );
        bar.set_position(info.steps_done);
        bar.println(format!(
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
        self.bar = Some(bar);
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
        if let Some(bar) = &self.bar {
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
            bar.println(format!(
                "epoch {:>3}  train_loss {:.4}{val}  {:.1}s{}",
                r.epoch + 1,
                r.train_loss,
                r.seconds,
                if r.improved { "  *" } else { "" }
            ));
        }
    }

    fn on_event(&mut self, message: &str) {
        if let Some(bar) = &self.bar
            && !message.starts_with("checkpoint")
        {
            bar.println(message);
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
