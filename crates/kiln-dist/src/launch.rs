//! Which launcher started this process, read from the variables it sets.

/// A multi-process launch, as the launcher's environment describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// `mpirun (Open MPI)`, `mpiexec (MPICH)` or `srun (PMIx)`.
    pub launcher: &'static str,
    /// This process's rank.
    pub rank: usize,
    /// Processes launched.
    pub size: usize,
}

/// The launch the environment describes, if an MPI launcher started this process.
pub fn detect_launch() -> Option<Launch> {
    detect_from(|name| std::env::var(name).ok())
}

pub(crate) fn detect_from(var: impl Fn(&str) -> Option<String>) -> Option<Launch> {
    let number = |name: &str| var(name).and_then(|v| v.trim().parse::<usize>().ok());
    let candidates: [(&'static str, &str, &str); 3] = [
        (
            "mpirun (Open MPI)",
            "OMPI_COMM_WORLD_RANK",
            "OMPI_COMM_WORLD_SIZE",
        ),
        ("mpiexec (MPICH)", "PMI_RANK", "PMI_SIZE"),
        // srun --mpi=pmix: a batch script's own shell has SLURM_NTASKS but no step.
        ("srun (PMIx)", "PMIX_RANK", "SLURM_STEP_NUM_TASKS"),
    ];
    candidates.iter().find_map(|&(launcher, rank, size)| {
        Some(Launch {
            launcher,
            rank: number(rank)?,
            size: number(size)?,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn launchers_are_recognised_by_their_variables() {
        assert_eq!(detect_from(env(&[])), None);
        let ompi = detect_from(env(&[
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
        ]));
        assert_eq!(
            ompi.map(|l| (l.launcher, l.rank, l.size)),
            Some(("mpirun (Open MPI)", 1, 2))
        );
        let srun = detect_from(env(&[("PMIX_RANK", "3"), ("SLURM_STEP_NUM_TASKS", "4")]));
        assert_eq!(srun.map(|l| (l.rank, l.size)), Some((3, 4)));
        // A Slurm batch script's shell is one process, whatever SLURM_NTASKS says.
        assert_eq!(
            detect_from(env(&[("SLURM_NTASKS", "4"), ("SLURM_PROCID", "0")])),
            None
        );
    }
}
