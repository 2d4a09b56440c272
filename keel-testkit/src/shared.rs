//! One stack per test binary. Tests in one binary run in parallel, each on its own runtime;
//! starting a stack per test would be slow, and keeping one in a plain static would never stop
//! it (statics are not dropped at exit). So the static holds a `Weak`: every test that calls
//! [`shared`] holds the stack, and it stops when the last of them lets go. A test that calls
//! after that starts a new one.

use std::sync::{Arc, Weak};

use tokio::sync::Mutex;

use crate::{KeelStack, Result};

static SHARED: Mutex<Weak<KeelStack>> = Mutex::const_new(Weak::new());

/// The test binary's stack, started on the first call with the images of the `KEEL_*_IMAGE`
/// variables. Concurrent first calls wait for one start.
pub async fn shared() -> Result<Arc<KeelStack>> {
    // Held across the start, so that parallel tests wait for the one stack instead of each
    // starting their own.
    let mut slot = SHARED.lock().await;
    if let Some(stack) = slot.upgrade() {
        return Ok(stack);
    }
    let stack = Arc::new(KeelStack::builder().start().await?);
    *slot = Arc::downgrade(&stack);
    Ok(stack)
}
