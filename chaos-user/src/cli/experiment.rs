//! `chaos-user experiment`: scenario files run end to end.

use anyhow::Result;

use super::{ExperimentCommand, ExperimentRunArgs, report_leftovers, signals};
use crate::experiment::{self, scenario};

pub(super) fn main(command: ExperimentCommand) -> Result<i32> {
    match command {
        ExperimentCommand::Validate { file } => {
            let s = scenario::load(&file)?;
            let faults: usize = s.phases.iter().map(|p| p.faults.len()).sum();
            out!(
                "{}: valid: {} phase(s), {faults} fault(s), {} probe(s), {} verifier(s)",
                file.display(),
                s.phases.len(),
                s.probes.len(),
                s.verifiers.len()
            );
            Ok(0)
        }
        ExperimentCommand::Run(args) => run(&args),
    }
}

/// The signals that end an experiment early.
struct Signals(tokio::sync::mpsc::UnboundedReceiver<signals::Received>);

impl experiment::Interrupt for Signals {
    fn interrupted(&mut self) -> bool {
        self.0.try_recv().is_ok()
    }
}

fn run(args: &ExperimentRunArgs) -> Result<i32> {
    let scenario = scenario::load(&args.file)?;
    let faults: Vec<_> = scenario
        .phases
        .iter()
        .flat_map(|p| p.faults.iter().map(|(_, f)| f.clone()))
        .collect();
    super::check_paths(&faults)?;
    report_leftovers();
    if !faults.is_empty() {
        crate::loader::check_ready()?;
    }
    let mut signals = Signals(signals::watch()?);
    note!(
        "chaos-user: experiment `{}`: {} phase(s), {} probe(s)",
        scenario.name,
        scenario.phases.len(),
        scenario.probes.len()
    );
    let record = experiment::run(&scenario, &mut signals)?;
    let to_stdout = args.json.as_deref().is_some_and(|p| p.as_os_str() == "-");
    if to_stdout {
        note!("{}", record.summary().trim_end());
    } else {
        out!("{}", record.summary().trim_end());
    }
    if let Some(path) = &args.json {
        record.write_json(path)?;
    }
    if let Some(path) = &args.junit {
        record.write_junit(path)?;
    }
    Ok(if record.passed { 0 } else { 1 })
}
