//! keel-testkit: one call starts a whole keel stack in containers for a test and hands back its
//! endpoints, so a downstream team tests against the real thing without compiling keel.
//!
//! - [`images`]: which image each container runs (the `KEEL_*_IMAGE` variables the compose file
//!   reads too) and which broker flavour the broker image is.
//! - [`preflight`]: every image is inspected on the engine before anything is created; a missing
//!   one fails naming the command that builds it. The testkit never pulls.
//! - [`credentials`]: the stack's server secret, admin key and database password, fresh per stack.
//! - [`containers`]: the four container requests and how they reach each other (the broker's one
//!   advertised listener is the design point; see there).
//! - [`stack`]: [`KeelStack`] starts them in order, waits for keel's readiness and removes every
//!   container and the network when dropped; [`Endpoints`] is what a test connects to.
//! - [`shared`]: one stack per test binary, stopped when the last test holding it lets go.
//! - [`reaper`]: stacks left by test processes killed with SIGKILL are removed before the next
//!   stack starts.
//!
//! Every published port is bound to 127.0.0.1.

mod containers;
mod credentials;
mod error;
pub mod images;
pub mod preflight;
pub mod reaper;
mod shared;
pub mod stack;

pub use error::{Error, Result};
pub use images::{BrokerFlavor, Images};
pub use shared::shared;
pub use stack::{Builder, Endpoints, KeelStack};
