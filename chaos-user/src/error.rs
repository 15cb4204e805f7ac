//! How a failure maps to the exit status table of the architecture page.

use std::fmt;

/// Which row of the exit status table a failure belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Bad input: arguments, a fault spec, a target that may not be used (exit 2).
    BadInput,
    /// The environment refused: privileges, a kernel feature, a program the kernel would not
    /// load, the target vanished (exit 3).
    Environment,
}

impl Class {
    /// The exit status of `inject`, `recover` and `doctor` for this class.
    pub fn exit_status(self) -> i32 {
        match self {
            Class::BadInput => 2,
            Class::Environment => 3,
        }
    }
}

/// Implemented by every error enum of the library, so that the CLI can find the class of a
/// failure anywhere in an `anyhow` chain.
pub trait Classify {
    fn class(&self) -> Class;
    /// What the user can do about it, when there is something to say.
    fn hint(&self) -> Option<String> {
        None
    }
}

/// The class of the first classified error in the chain; unknown errors count as the
/// environment's refusal, never as the user's fault.
pub fn classify(err: &anyhow::Error) -> (Class, Option<String>) {
    for cause in err.chain() {
        let found: Option<&dyn Classify> = if let Some(e) =
            cause.downcast_ref::<crate::spec::SpecError>()
        {
            Some(e)
        } else if let Some(e) = cause.downcast_ref::<crate::cgroup::CgroupError>() {
            Some(e)
        } else if let Some(e) = cause.downcast_ref::<crate::loader::LoadError>() {
            Some(e)
        } else if let Some(e) = cause.downcast_ref::<UsageError>() {
            Some(e)
        } else if let Some(e) = cause.downcast_ref::<crate::sockdiag::SockDiagError>() {
            Some(e)
        } else if let Some(e) = cause.downcast_ref::<crate::dns::DnsError>() {
            Some(e)
        } else if let Some(e) = cause.downcast_ref::<crate::tc::FqMissing>() {
            Some(e)
        } else if let Some(e) = cause.downcast_ref::<crate::claim::Taken>() {
            Some(e)
        } else if let Some(e) = cause.downcast_ref::<crate::experiment::scenario::ScenarioError>() {
            Some(e)
        } else {
            None
        };
        if let Some(e) = found {
            return (e.class(), e.hint());
        }
    }
    (Class::Environment, None)
}

/// A command line that parses but asks for something impossible.
#[derive(Debug)]
pub struct UsageError {
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for UsageError {}

impl Classify for UsageError {
    fn class(&self) -> Class {
        Class::BadInput
    }
    fn hint(&self) -> Option<String> {
        self.hint.clone()
    }
}
