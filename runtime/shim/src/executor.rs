//! The workload executor handed to libcontainer: loads the bundle's compiled seccomp program
//! (see `keelson_shim_proto::seccomp`) as the very last step before `execve`, then executes
//! the process like libcontainer's default executor.
//!
//! Bundles without a program (no profile, or one libcontainer loads itself because the process
//! has neither `no_new_privs` nor `CAP_SYS_ADMIN`) run exactly as with the default executor.
//! `validate` runs before the container is reported created, with capabilities already
//! dropped: it refuses a process that could not load its program, so the failure is a create
//! error and never an unconfined process.

use std::path::Path;
use std::sync::Arc;

use keelson_shim_proto::seccomp::{Program, BUNDLE_FILTER};
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use oci_spec::runtime::Spec;

/// libcontainer's default executor plus our seccomp program.
#[derive(Debug, Clone, Default)]
pub struct SeccompExecutor {
    program: Option<Arc<Program>>,
}

impl SeccompExecutor {
    /// The executor for a bundle: with its program if it has one.
    pub fn for_bundle(bundle: &Path) -> Result<Self, String> {
        let path = bundle.join(BUNDLE_FILTER);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(format!("read {}: {e}", path.display())),
        };
        let program = Program::parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self { program: Some(Arc::new(program)) })
    }
}

/// Whether the calling thread may install a filter: `no_new_privs`, or CAP_SYS_ADMIN in its
/// effective set.
fn may_load_filter() -> bool {
    // SAFETY: PR_GET_NO_NEW_PRIVS takes no pointers.
    if unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) } == 1 {
        return true;
    }
    caps::has_cap(None, caps::CapSet::Effective, caps::Capability::CAP_SYS_ADMIN).unwrap_or(false)
}

impl Executor for SeccompExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        if let Some(p) = &self.program {
            p.load().map_err(|e| ExecutorError::Other(format!("load seccomp filter: {e}")))?;
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        if self.program.is_some() && !may_load_filter() {
            return Err(ExecutorValidationError::ArgValidationError(
                "the process has neither no_new_privs nor CAP_SYS_ADMIN to load its seccomp filter"
                    .into(),
            ));
        }
        DefaultExecutor {}.validate(spec)
    }
}
