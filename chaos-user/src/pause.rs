//! `pause`: the whole target cgroup frozen for a while, again and again (the cgroup v2 freezer,
//! `cgroup.freeze`). A frozen cgroup stays frozen when the injector dies, so the undo log holds
//! the cgroup before the first freeze and `recover` thaws it.

use std::{
    fs, io,
    path::Path,
    time::{Duration, Instant},
};

use crate::spec::PauseSpec;

/// The schedule and tally of one `pause`.
pub struct Pause {
    /// Position among the session's faults.
    pub fault: usize,
    spec: PauseSpec,
    rng: fastrand::Rng,
    /// The seed of the random schedule (`random=true`), for the report.
    pub seed: u64,
    next: Instant,
    frozen_since: Option<Instant>,
    /// How many times the cgroup was frozen, and for how long in all.
    pub rounds: u64,
    pub frozen_for: Duration,
}

impl Pause {
    /// A schedule whose first pause comes after one gap from `now`.
    pub fn new(fault: usize, spec: PauseSpec, now: Instant) -> Pause {
        let seed = spec.seed.unwrap_or_else(|| fastrand::u64(..));
        let mut pause = Pause {
            fault,
            spec,
            rng: fastrand::Rng::with_seed(seed),
            seed,
            next: now,
            frozen_since: None,
            rounds: 0,
            frozen_for: Duration::ZERO,
        };
        pause.next = now + pause.gap();
        pause
    }

    /// The running time between two pauses: `interval - for`, or with `random=true` an
    /// exponential draw of that mean, so that pauses come at random moments, `interval` apart
    /// on average.
    fn gap(&mut self) -> Duration {
        let mean = self.spec.interval - self.spec.length;
        if !self.spec.random {
            return mean;
        }
        // 1 - u lies in (0, 1]: its logarithm is finite.
        let u = 1.0 - self.rng.f64();
        mean.mul_f64(-u.ln()).min(mean * 20)
    }

    /// When this schedule next freezes or thaws.
    pub fn next(&self) -> Instant {
        self.next
    }

    /// Freezes or thaws `cgroup` if that is due at `now`.
    pub fn step(&mut self, cgroup: &Path, now: Instant) -> io::Result<()> {
        if now < self.next {
            return Ok(());
        }
        match self.frozen_since.take() {
            None => {
                set_frozen(cgroup, true)?;
                self.frozen_since = Some(now);
                self.rounds += 1;
                self.next = now + self.spec.length;
            }
            Some(since) => {
                set_frozen(cgroup, false)?;
                self.frozen_for += now - since;
                self.next = now + self.gap();
            }
        }
        Ok(())
    }
}

/// Whether a cgroup is frozen (by its own `cgroup.freeze`) now.
pub fn is_frozen(cgroup: &Path) -> io::Result<bool> {
    let text = fs::read_to_string(cgroup.join("cgroup.freeze")).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "{} has no freezer (the root cgroup has none; cgroup v2 from kernel 5.2): {e}",
                cgroup.display()
            ),
        )
    })?;
    Ok(text.trim() == "1")
}

/// Freezes or thaws a cgroup and what is below it.
pub fn set_frozen(cgroup: &Path, frozen: bool) -> io::Result<()> {
    fs::write(cgroup.join("cgroup.freeze"), if frozen { "1" } else { "0" })
}
