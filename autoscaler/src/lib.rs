//! The Viaduct autoscaler: watches the queue and starts, for each job that
//! waits and that its runners fit, one ephemeral runner **bound to that
//! job** (a job-bound registration token), through a [`provision::Provisioner`]
//! — a local process, a container or a Kubernetes Job. A runner made for a
//! job takes that job and no other, then exits; so the fleet follows the
//! queue down to zero.
//!
//! - [`scaler`] — the loop: what to start, what to stop, the cap.
//! - [`provision`] — the provisioner trait and its implementations.
//! - [`identity`] — who it is (an id kept in its state directory), so that
//!   it finds, once restarted, what it started before.

pub mod identity;
pub mod provision;
pub mod scaler;
