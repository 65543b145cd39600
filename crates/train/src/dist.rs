//! Data-parallel training: the launch environment and the few collectives
//! the loop needs, on [`model::dist::ProcessGroup`] (libtorch's c10d: Gloo
//! on CPU, NCCL on CUDA).
//!
//! `train` started by `torchrun` (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`,
//! `MASTER_ADDR`, `MASTER_PORT`) or by SLURM's `srun` (`SLURM_PROCID`,
//! `SLURM_LOCALID`, `SLURM_STEP_NUM_TASKS` or `SLURM_NTASKS`, the master
//! from `MASTER_ADDR`/`MASTER_PORT` or else the first host of
//! `SLURM_JOB_NODELIST` and a port derived from `SLURM_JOB_ID`) joins a
//! group; a world of one joins nothing and trains exactly as a plain start.
//! Every rank reads its slice of the same global batch; the gradients are
//! averaged before clipping and the update, so every rank holds the same
//! weights after every step; rank 0 alone writes the run folder.

use anyhow::{Context, Result, bail};
use model::dist::{Backend, JoinOptions, ProcessGroup};
use std::time::Duration;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// Seconds the rendezvous and each collective wait for the other ranks
/// before failing (default [`DEFAULT_TIMEOUT_S`]).
pub const TIMEOUT_VAR: &str = "MMCLIP_DIST_TIMEOUT_S";

/// Default of [`TIMEOUT_VAR`]: long enough for rank 0 to write a ViT-B/16
/// checkpoint while the others wait, short enough that a dead peer is
/// reported within minutes.
pub const DEFAULT_TIMEOUT_S: u64 = 600;

/// This process's place in a data-parallel launch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// Global rank, `0..world_size`.
    pub rank: usize,
    /// Rank on this node: the CUDA device it trains on.
    pub local_rank: usize,
    /// Number of processes.
    pub world_size: usize,
    /// Host of rank 0's rendezvous store.
    pub master_addr: String,
    /// Its port.
    pub master_port: u16,
    /// How long to wait for the other ranks.
    pub timeout: Duration,
}

impl Launch {
    /// The launch described by the process environment; `None` when the
    /// world has one process (or no launcher set it).
    pub fn from_env() -> Result<Option<Launch>> {
        Launch::from_vars(|name| std::env::var(name).ok())
    }

    /// [`Launch::from_env`] over any lookup (for tests).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Launch>> {
        let number = |name: &str| -> Result<Option<u64>> {
            var(name)
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .with_context(|| format!("{name}={v:?} is not a whole number"))
                })
                .transpose()
        };
        let (rank, local_rank, world_size, slurm) = if let Some(world) = number("WORLD_SIZE")? {
            let rank = number("RANK")?.context("WORLD_SIZE is set but RANK is not")?;
            (rank, number("LOCAL_RANK")?.unwrap_or(rank), world, false)
        } else if let Some(rank) = number("SLURM_PROCID")? {
            // A step's own task count first: inside an `sbatch` script but
            // outside `srun`, SLURM_NTASKS is the job's, not this process's.
            let world = match number("SLURM_STEP_NUM_TASKS")? {
                Some(n) => n,
                None => number("SLURM_NTASKS")?
                    .context("SLURM_PROCID is set but SLURM_NTASKS is not")?,
            };
            (rank, number("SLURM_LOCALID")?.unwrap_or(0), world, true)
        } else {
            return Ok(None);
        };
        if world_size == 0 || rank >= world_size {
            bail!("rank {rank} is not in a world of {world_size} processes");
        }
        if world_size == 1 {
            return Ok(None);
        }
        let master_addr = match var("MASTER_ADDR") {
            Some(a) => a,
            None if slurm => {
                let list = var("SLURM_JOB_NODELIST")
                    .or_else(|| var("SLURM_NODELIST"))
                    .context("under SLURM without MASTER_ADDR, SLURM_JOB_NODELIST names rank 0's host; neither is set")?;
                first_host(&list)?
            }
            None => bail!("WORLD_SIZE={world_size} but MASTER_ADDR is not set"),
        };
        let master_port = match number("MASTER_PORT")? {
            Some(p) => {
                u16::try_from(p).with_context(|| format!("MASTER_PORT={p} is not a port"))?
            }
            None if slurm => {
                let job = number("SLURM_JOB_ID")?.context(
                    "under SLURM without MASTER_PORT, SLURM_JOB_ID picks the port; neither is set",
                )?;
                slurm_port(job)
            }
            None => bail!("WORLD_SIZE={world_size} but MASTER_PORT is not set"),
        };
        let timeout = Duration::from_secs(number(TIMEOUT_VAR)?.unwrap_or(DEFAULT_TIMEOUT_S));
        Ok(Some(Launch {
            rank: rank as usize,
            local_rank: local_rank as usize,
            world_size: world_size as usize,
            master_addr,
            master_port,
            timeout,
        }))
    }
}

/// A port in 15000..35000 from the job id, so two jobs sharing a node
/// rarely pick the same one (set MASTER_PORT where they must never).
pub fn slurm_port(job_id: u64) -> u16 {
    15000 + (job_id % 20000) as u16
}

/// The first host of a SLURM node list: `node[01-04,07],gpu3` → `node01`,
/// `a12,a13` → `a12`.
pub fn first_host(list: &str) -> Result<String> {
    let first = match list.find([',', '[']) {
        Some(i) if list.as_bytes()[i] == b'[' => {
            let close = list[i..]
                .find(']')
                .with_context(|| format!("SLURM node list {list:?}: an unclosed '['"))?;
            let inside = &list[i + 1..i + close];
            let item = inside.split([',', '-']).next().unwrap_or_default();
            format!("{}{}", &list[..i], item)
        }
        Some(i) => list[..i].to_string(),
        None => list.to_string(),
    };
    if first.trim().is_empty() {
        bail!("SLURM node list {list:?} names no host");
    }
    Ok(first.trim().to_string())
}

/// A joined data-parallel group. Variables travel in name order, the order
/// every rank agrees on.
pub struct Dist {
    group: ProcessGroup,
    launch: Launch,
}

/// The environment variable that sets the gradient buckets' size in MB
/// (DDP's `bucket_cap_mb`; default 25).
pub const BUCKET_VAR: &str = "MMCLIP_DIST_BUCKET_MB";

impl Dist {
    /// Joins the group of `launch`. `device` is the device asked for; a
    /// CUDA device becomes `cuda:LOCAL_RANK` (one process per GPU) and
    /// uses NCCL, the CPU uses Gloo. Returns the device to train on.
    pub fn join(launch: Launch, device: Device) -> Result<(Dist, Device)> {
        let (backend, device) = match device {
            Device::Cuda(_) => (
                Backend::Nccl {
                    device: launch.local_rank,
                },
                Device::Cuda(launch.local_rank),
            ),
            _ => (Backend::Gloo, device),
        };
        tracing::info!(
            "joining a group of {} at {}:{} as rank {} (local rank {}, {:?})",
            launch.world_size,
            launch.master_addr,
            launch.master_port,
            launch.rank,
            launch.local_rank,
            backend
        );
        let group = ProcessGroup::join(&JoinOptions {
            master_addr: launch.master_addr.clone(),
            master_port: launch.master_port,
            rank: launch.rank,
            world_size: launch.world_size,
            timeout: launch.timeout,
            backend,
        })
        .with_context(|| {
            format!(
                "joining the training group at {}:{} (waited at most {:?}; {TIMEOUT_VAR} sets it)",
                launch.master_addr, launch.master_port, launch.timeout
            )
        })?;
        Ok((Dist { group, launch }, device))
    }

    /// The launch this group was joined with.
    pub fn launch(&self) -> &Launch {
        &self.launch
    }

    /// The process group, for the model's collectives within a step.
    pub fn group(&self) -> &ProcessGroup {
        &self.group
    }

    /// Rank 0: the one that writes the run folder.
    pub fn is_main(&self) -> bool {
        self.launch.rank == 0
    }

    /// Every variable of `vs` (trainable or not) overwritten by rank 0's.
    pub fn broadcast_weights(&self, vs: &VarStore) -> Result<()> {
        let vars = sorted(vs.variables().into_iter());
        tch::no_grad(|| self.group.broadcast(&vars, 0)).context("broadcasting rank 0's weights")
    }

    /// Averages the gradients of `vs`'s trainable variables from now on,
    /// overlapped with the backward pass ([`ProcessGroup::watch_gradients`],
    /// DDP's 25 MB buckets, or `MMCLIP_DIST_BUCKET_MB`): arm before the last
    /// micro-batch's backward pass, then [`Dist::average_gradients`].
    pub fn watch_gradients(&mut self, vs: &VarStore) -> Result<()> {
        let bytes = match std::env::var(BUCKET_VAR) {
            Ok(v) => {
                let mb: f64 = v
                    .trim()
                    .parse()
                    .ok()
                    .filter(|mb: &f64| mb.is_finite() && *mb > 0.0)
                    .with_context(|| format!("{BUCKET_VAR}={v}: not a positive number of MB"))?;
                (mb * 1024.0 * 1024.0) as i64
            }
            Err(_) => model::dist::BUCKET_BYTES,
        };
        // Creation order: the same on every rank, and roughly the reverse of
        // the order the backward pass finishes the gradients in.
        self.group
            .watch_gradients(&vs.trainable_variables(), bytes)
            .context("watching the gradients")
    }

    /// Arms the next backward pass ([`ProcessGroup::arm_gradients`]).
    pub fn arm_gradients(&self) {
        self.group.arm_gradients();
    }

    /// Each trainable variable's gradient replaced by its mean over the
    /// ranks, after an armed backward pass. The gradients defined on any
    /// rank travel, those defined on none stay undefined (as on one
    /// process: the warm-up leaves logit_scale without one). A rank can
    /// lack one that another has (its slice of the batch had no report):
    /// it takes part with zeros, which is what its rows contribute.
    pub fn average_gradients(&self) -> Result<()> {
        let done = self
            .group
            .finish_gradients()
            .context("averaging the gradients")?;
        tracing::debug!(
            "{} of {} gradient buckets started before the backward pass ended{}",
            done.early,
            done.total,
            if done.rebuilt {
                "; the buckets are rebuilt in the order the gradients became ready"
            } else {
                ""
            }
        );
        Ok(())
    }

    /// Every rank's `value`, in rank order.
    pub fn gather(&self, value: f64) -> Result<Vec<f64>> {
        let all = self
            .group
            .all_gather(&Tensor::from_slice(&[value]))
            .context("gathering a value from every rank")?;
        Ok(Vec::<f64>::try_from(&all).expect("a double vector on the host"))
    }

    /// Fails unless every rank holds the same weights: a checksum of the
    /// variables (each one's sum, weighted by its place in name order) is
    /// compared exactly. The ranks apply the same averaged gradients to the
    /// same weights, so any difference is a bug, caught here at each
    /// checkpoint rather than found in the results.
    pub fn check_same_weights(&self, vs: &VarStore, step: u64) -> Result<()> {
        let sum = tch::no_grad(|| {
            sorted(vs.variables().into_iter())
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    t.to_kind(Kind::Double).sum(Kind::Double).double_value(&[]) * (i + 1) as f64
                })
                .sum::<f64>()
        });
        let sums = self.gather(sum)?;
        if sums.iter().any(|s| s.to_bits() != sums[0].to_bits()) {
            bail!("step {step}: the ranks' weights differ (checksum of each rank: {sums:?})");
        }
        Ok(())
    }

    /// Waits for every rank (the others, while rank 0 writes).
    pub fn barrier(&self, why: &str) -> Result<()> {
        self.group
            .barrier()
            .with_context(|| format!("waiting for every rank ({why})"))
    }
}

/// Checks that every rank starts from the same step (the same checkpoint
/// of a run folder they all see: a resume reads it on every rank), then
/// gives every rank rank 0's weights.
pub fn agree_on_start(dist: &Dist, vs: &VarStore, step: u64, out: &std::path::Path) -> Result<()> {
    let steps = dist.gather(step as f64)?;
    if steps.iter().any(|&s| s != steps[0]) {
        bail!(
            "{}: the ranks found different checkpoints to resume from (step of each rank: {steps:?}); \
             every rank must see the same run folder (a shared filesystem)",
            out.display()
        );
    }
    dist.broadcast_weights(vs)
}

/// Variables in name order, the order every rank agrees on.
fn sorted(vars: impl Iterator<Item = (String, Tensor)>) -> Vec<Tensor> {
    let mut vars: Vec<(String, Tensor)> = vars.collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars.into_iter().map(|(_, t)| t).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn launch(vars: &[(&str, &str)]) -> Result<Option<Launch>> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Launch::from_vars(|name| map.get(name).cloned())
    }

    #[test]
    fn reads_torchrun_variables() {
        let l = launch(&[
            ("RANK", "5"),
            ("LOCAL_RANK", "1"),
            ("WORLD_SIZE", "8"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "29400"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            l,
            Launch {
                rank: 5,
                local_rank: 1,
                world_size: 8,
                master_addr: "10.0.0.1".into(),
                master_port: 29400,
                timeout: Duration::from_secs(DEFAULT_TIMEOUT_S),
            }
        );
    }

    #[test]
    fn one_process_or_no_launcher_is_no_group() {
        assert_eq!(launch(&[]).unwrap(), None);
        assert_eq!(launch(&[("RANK", "0"), ("WORLD_SIZE", "1")]).unwrap(), None);
        assert_eq!(
            launch(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1")]).unwrap(),
            None
        );
    }

    #[test]
    fn slurm_takes_the_first_node_and_a_port_from_the_job() {
        let l = launch(&[
            ("SLURM_PROCID", "3"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_NTASKS", "4"),
            ("SLURM_JOB_NODELIST", "gpu[07-08]"),
            ("SLURM_JOB_ID", "123456"),
            (TIMEOUT_VAR, "30"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((l.rank, l.local_rank, l.world_size), (3, 1, 4));
        assert_eq!(l.master_addr, "gpu07");
        assert_eq!(l.master_port, 15000 + (123456 % 20000) as u16);
        assert_eq!(l.timeout, Duration::from_secs(30));
        // A step's task count wins over the job's.
        let l = launch(&[
            ("SLURM_PROCID", "1"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_STEP_NUM_TASKS", "2"),
            ("MASTER_ADDR", "head"),
            ("MASTER_PORT", "4000"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (l.world_size, l.master_addr.as_str(), l.master_port),
            (2, "head", 4000)
        );
    }

    #[test]
    fn first_host_of_node_lists() {
        assert_eq!(first_host("node[01-04]").unwrap(), "node01");
        assert_eq!(first_host("node[3,5-6],gpu1").unwrap(), "node3");
        assert_eq!(first_host("a12,a13").unwrap(), "a12");
        assert_eq!(first_host("single").unwrap(), "single");
        assert!(first_host("node[01-04").is_err());
        assert!(first_host("").is_err());
    }

    #[test]
    fn bad_launch_variables_are_errors_naming_them() {
        let e = launch(&[("RANK", "x"), ("WORLD_SIZE", "2")]).unwrap_err();
        assert!(format!("{e:#}").contains("RANK=\"x\""), "{e:#}");
        let e = launch(&[("RANK", "2"), ("WORLD_SIZE", "2")]).unwrap_err();
        assert!(format!("{e:#}").contains("rank 2"), "{e:#}");
        let e = launch(&[("RANK", "1"), ("WORLD_SIZE", "2")]).unwrap_err();
        assert!(format!("{e:#}").contains("MASTER_ADDR"), "{e:#}");
    }
}
