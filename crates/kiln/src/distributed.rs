//! What a run does differently when several processes train it: a scratch directory for
//! the ranks that do not write the run, and the check that every rank runs the same binary
//! on the same config, data and model.

use std::path::PathBuf;

use kiln_config::Config;
use kiln_train::World;

use crate::Result;

/// A private, temporary run directory for a rank other than 0 (removed when dropped): such
/// ranks go through the same steps as rank 0, but what they would write is never read.
pub(crate) struct Scratch(PathBuf);

impl Scratch {
    /// A scratch directory for this rank, or `None` on rank 0.
    pub(crate) fn for_rank(world: &World) -> Result<Option<Scratch>> {
        if world.is_leader() {
            return Ok(None);
        }
        let dir =
            std::env::temp_dir().join(format!("kiln-rank{}-{}", world.rank(), std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| crate::KilnError::Output {
            path: dir.display().to_string(),
            message: e.to_string(),
        })?;
        Ok(Some(Scratch(dir)))
    }

    /// `config` writing its run under this scratch directory.
    pub(crate) fn redirect(&self, config: &Config) -> Config {
        let mut config = config.clone();
        config.output.dir = self.0.display().to_string();
        config
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// CRC-32 of this executable, so ranks started from different builds are told apart.
fn executable_crc() -> u32 {
    std::env::current_exe()
        .and_then(std::fs::read)
        .map(|bytes| crc32fast::hash(&bytes))
        .unwrap_or(0)
}

/// Checks that every rank runs rank 0's binary on rank 0's config (its output location
/// aside); every rank stops if one differs, before rank 0 writes anything.
pub(crate) fn check_program(world: &World, config: &Config) -> Result<()> {
    if world.size() == 1 {
        return Ok(());
    }
    world.check_same(
        "the kiln binary",
        &format!("{} {:08x}", env!("CARGO_PKG_VERSION"), executable_crc()),
    )?;
    let mut config = config.clone();
    config.output.dir.clear();
    world.check_same(
        "the config",
        &toml::to_string(&config).expect("configs serialize"),
    )?;
    Ok(())
}

/// Checks that every rank built rank 0's model from the same data (`facts`: sizes, fitted
/// preprocessing, the checkpoint a resumed run starts from).
pub(crate) fn check_model_and_data(
    world: &World,
    model: &impl serde::Serialize,
    facts: &str,
) -> Result<()> {
    if world.size() == 1 {
        return Ok(());
    }
    let model = serde_json::to_string_pretty(model).expect("model specs serialize");
    world.check_same("the model", &model)?;
    world.check_same("the data", facts)?;
    Ok(())
}

/// What identifies the checkpoint a resumed run starts from, for [`check_model_and_data`]:
/// every rank must load the same one.
pub(crate) fn checkpoint_facts(
    checkpoint: Option<&kiln_train::checkpoint::LoadedCheckpoint>,
) -> String {
    let Some(ck) = checkpoint else {
        return String::new();
    };
    let crc = |name: &str| ck.file(name).map(crc32fast::hash).unwrap_or(0);
    format!(
        ", resuming at step {} (weights {:08x}, state {:08x})",
        ck.step,
        crc("model.safetensors"),
        crc("trainer_state.json")
    )
}

/// With several processes, `trainer.batch_size` is the global batch and must split evenly;
/// checked before anything is written.
pub(crate) fn check_batch_splits(world: &World, config: &Config) -> Result<()> {
    if let kiln_config::BatchSize::Samples(n) = config.trainer.batch_size
        && n % world.size() != 0
    {
        return Err(crate::KilnError::Invalid(format!(
            "trainer.batch_size: {n} does not split evenly over {} processes; it is the global \
             batch, so give a multiple of {}",
            world.size(),
            world.size()
        )));
    }
    Ok(())
}
