//! The signals that would end chaos-user (SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2,
//! SIGALRM) as a stream, each with whether the terminal sent it, so that a session always
//! cleans up.

use signal_hook::{
    consts::{SIGALRM, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2},
    iterator::{SignalsInfo, exfiltrator::WithOrigin},
    low_level::siginfo::Cause,
};
use tokio::sync::mpsc;

/// One signal received.
#[derive(Clone, Copy, Debug)]
pub struct Received {
    pub signal: i32,
    /// Sent by the kernel on behalf of the terminal (Ctrl-C), so the whole foreground process
    /// group, a command started by `run` included, has it already.
    pub from_terminal: bool,
}

/// Starts watching; the process no longer dies of these signals.
pub fn watch() -> anyhow::Result<mpsc::UnboundedReceiver<Received>> {
    let mut signals = SignalsInfo::<WithOrigin>::new([
        SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGALRM,
    ])?;
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for origin in signals.forever() {
                let received = Received {
                    signal: origin.signal,
                    from_terminal: matches!(origin.cause, Cause::Kernel),
                };
                if tx.send(received).is_err() {
                    break;
                }
            }
        })?;
    Ok(rx)
}
