//! The replicas of a data-parallel training run (`marnflow train --workers N`): Open MPI starts
//! them (`mpirun -n N`, on one machine or several), and [`MpiCollective`] carries the trainer's
//! exchange ([`marnflow_model::Collective`]) over MPI's collectives.

use std::sync::Mutex;

use marnflow_model::{Collective, Error as ModelError};
use mpi::collective::SystemOperation;
use mpi::datatype::PartitionMut;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;
use mpi::Count;

/// MPI's world communicator of this run. Created once per process ([`MpiCollective::init`]);
/// dropping the last reference finalizes MPI.
pub struct MpiCollective {
    // MPI is called from one thread at a time (this lock), which is what it was initialized for
    // (`Threading::Serialized`); each call takes the world communicator's handle anew.
    lock: Mutex<()>,
    rank: usize,
    size: usize,
    // Finalizes MPI when dropped.
    _universe: Universe,
}

impl std::fmt::Debug for MpiCollective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpiCollective").field("rank", &self.rank).field("size", &self.size).finish()
    }
}

/// Elements per MPI call: its counts are 32-bit.
const CHUNK: usize = 1 << 28;

impl MpiCollective {
    /// Initializes MPI (once per process; a second call is an error).
    pub fn init() -> anyhow::Result<Self> {
        let (universe, threading) = mpi::initialize_with_threading(mpi::Threading::Serialized)
            .ok_or_else(|| anyhow::anyhow!("MPI was already initialized in this process"))?;
        if !matches!(threading, mpi::Threading::Serialized | mpi::Threading::Multiple) {
            anyhow::bail!("this MPI library gives thread level {threading:?}; data-parallel training needs Serialized");
        }
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        Ok(Self { lock: Mutex::new(()), rank, size, _universe: universe })
    }

    /// The world communicator, with the lock that keeps MPI's calls one at a time.
    fn world(&self) -> marnflow_model::Result<(std::sync::MutexGuard<'_, ()>, SimpleCommunicator)> {
        let guard = self.lock.lock().map_err(|_| ModelError::Config("the MPI lock is poisoned".into()))?;
        Ok((guard, SimpleCommunicator::world()))
    }

    fn gather<T: Equivalence + Default + Clone>(&self, local: &[T]) -> marnflow_model::Result<Vec<Vec<T>>> {
        let (_guard, world) = self.world()?;
        let n = Count::try_from(local.len())
            .map_err(|_| ModelError::Config(format!("{} values are too many for one all-gather", local.len())))?;
        let mut counts = vec![0 as Count; self.size];
        world.all_gather_into(&n, &mut counts[..]);
        let displs: Vec<Count> = counts
            .iter()
            .scan(0 as Count, |acc, &c| {
                let d = *acc;
                *acc += c;
                Some(d)
            })
            .collect();
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        let mut all = vec![T::default(); total];
        {
            let mut partition = PartitionMut::new(&mut all[..], &counts[..], &displs[..]);
            world.all_gather_varcount_into(local, &mut partition);
        }
        Ok(counts.iter().zip(&displs).map(|(&c, &d)| all[d as usize..(d + c) as usize].to_vec()).collect())
    }
}

impl Collective for MpiCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn all_reduce_sum(&self, local: &[f32]) -> marnflow_model::Result<Vec<f32>> {
        let (_guard, world) = self.world()?;
        let mut out = vec![0f32; local.len()];
        for (send, recv) in local.chunks(CHUNK).zip(out.chunks_mut(CHUNK)) {
            world.all_reduce_into(send, recv, SystemOperation::sum());
        }
        Ok(out)
    }

    fn all_gather_i64(&self, local: &[i64]) -> marnflow_model::Result<Vec<Vec<i64>>> {
        self.gather(local)
    }

    fn all_gather_f32(&self, local: &[f32]) -> marnflow_model::Result<Vec<Vec<f32>>> {
        self.gather(local)
    }

    fn abort(&self, code: i32) -> ! {
        SimpleCommunicator::world().abort(code)
    }

    fn broadcast(&self, bytes: Vec<u8>) -> marnflow_model::Result<Vec<u8>> {
        let (_guard, world) = self.world()?;
        let root = world.process_at_rank(0);
        let mut len = bytes.len() as u64;
        root.broadcast_into(&mut len);
        let mut buf = if self.rank == 0 { bytes } else { vec![0u8; len as usize] };
        for chunk in buf.chunks_mut(CHUNK) {
            root.broadcast_into(chunk);
        }
        Ok(buf)
    }
}
