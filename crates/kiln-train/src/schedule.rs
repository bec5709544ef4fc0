//! Learning-rate schedules: constant, step, exponential, cosine and reduce-on-plateau, each
//! with optional linear warm-up. The schedule is a pure function of the step and epoch
//! except for plateau's small state, which is checkpointed.

use kiln_config::{ScheduleKind, TrainerConfig};
use serde::{Deserialize, Serialize};

/// A learning-rate schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    kind: ScheduleKind,
    base_lr: f64,
    min_lr: f64,
    warmup_steps: u64,
    total_steps: u64,
    step_epochs: usize,
    gamma: f64,
    plateau_factor: f64,
    plateau_patience: usize,
    higher_is_better: bool,
    /// Reduce-on-plateau state.
    plateau: PlateauState,
}

/// What reduce-on-plateau remembers between epochs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlateauState {
    /// Current learning rate.
    pub lr: f64,
    /// Best monitored value so far.
    pub best: Option<f64>,
    /// Epochs since the best.
    pub bad_epochs: usize,
}

impl LrSchedule {
    /// The schedule of `config` for a run of `total_steps` optimizer steps.
    pub fn new(config: &TrainerConfig, total_steps: u64) -> Self {
        Self {
            kind: config.schedule,
            base_lr: config.lr,
            min_lr: config.min_lr,
            warmup_steps: config.warmup_steps as u64,
            total_steps: total_steps.max(1),
            step_epochs: config.step_epochs,
            gamma: config.gamma,
            plateau_factor: config.plateau_factor,
            plateau_patience: config.plateau_patience,
            higher_is_better: kiln_config::monitor_higher_is_better(&config.monitor),
            plateau: PlateauState {
                lr: config.lr,
                best: None,
                bad_epochs: 0,
            },
        }
    }

    /// Stretches the schedule over `total_steps` (a resumed run extended to more epochs or
    /// steps; the Hugging Face Trainer rebuilds its scheduler likewise). The plateau state
    /// is kept.
    pub fn set_total_steps(&mut self, total_steps: u64) {
        self.total_steps = total_steps.max(1);
    }

    /// Learning rate for optimizer step `step` (0-based) in epoch `epoch` (0-based).
    pub fn lr(&self, step: u64, epoch: usize) -> f64 {
        let lr = match self.kind {
            ScheduleKind::Constant => self.base_lr,
            ScheduleKind::Step => self.base_lr * self.gamma.powi((epoch / self.step_epochs) as i32),
            ScheduleKind::Exponential => self.base_lr * self.gamma.powi(epoch as i32),
            ScheduleKind::Cosine => {
                let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
                let progress = (step.saturating_sub(self.warmup_steps) as f64 / span).min(1.0);
                self.min_lr
                    + (self.base_lr - self.min_lr)
                        * 0.5
                        * (1.0 + (std::f64::consts::PI * progress).cos())
            }
            ScheduleKind::Linear => {
                let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
                let progress = (step.saturating_sub(self.warmup_steps) as f64 / span).min(1.0);
                self.min_lr + (self.base_lr - self.min_lr) * (1.0 - progress)
            }
            ScheduleKind::Plateau => self.plateau.lr,
        };
        if step < self.warmup_steps {
            lr * (step + 1) as f64 / self.warmup_steps as f64
        } else {
            lr
        }
    }

    /// Feeds the epoch's monitored validation value to reduce-on-plateau. Returns true when
    /// the rate was reduced.
    pub fn observe(&mut self, value: f64) -> bool {
        if self.kind != ScheduleKind::Plateau || !value.is_finite() {
            return false;
        }
        let improved = match self.plateau.best {
            None => true,
            Some(best) => {
                if self.higher_is_better {
                    value > best + 1e-12
                } else {
                    value < best - 1e-12
                }
            }
        };
        if improved {
            self.plateau.best = Some(value);
            self.plateau.bad_epochs = 0;
            return false;
        }
        self.plateau.bad_epochs += 1;
        if self.plateau.bad_epochs > self.plateau_patience {
            self.plateau.lr = (self.plateau.lr * self.plateau_factor).max(self.min_lr);
            self.plateau.bad_epochs = 0;
            return true;
        }
        false
    }
}
