//! The glue between the exported `run` function and a plugin's `run`.

use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::{
    Context, Error, Output, Phase, Result,
    bindings::{StepError, StepInput, StepOutput},
};

/// Called by the code [`export!`](crate::export) generates: enters the
/// workspace, builds the [`Context`], runs the plugin and converts its
/// result for the host.
pub fn dispatch(input: StepInput, run: impl FnOnce(Context) -> Result<Output>) -> Result<StepOutput, StepError> {
    install_panic_hook();
    let workspace = if input.workspace.is_empty() { crate::WORKSPACE.to_owned() } else { input.workspace.clone() };
    if let Err(e) = std::env::set_current_dir(&workspace) {
        return Err(StepError {
            message: format!("cannot enter the workspace `{workspace}`: {e}"),
            outputs: Vec::new(),
            summary: None,
        });
    }
    let ctx = Context::from(input);
    let phase = ctx.phase();
    // wasm32-wasip2 has no unwinding: a panic aborts (the host reports the
    // trap, and the hook below has logged the message). Should a target
    // with unwinding run this, the panic becomes a clean step error.
    match catch_unwind(AssertUnwindSafe(move || run(ctx))) {
        Ok(Ok(output)) => Ok(into_step_output(output, phase)),
        Ok(Err(error)) => Err(into_step_error(error)),
        Err(payload) => Err(StepError {
            message: format!("plugin panicked: {}", panic_message(&*payload)),
            outputs: Vec::new(),
            summary: None,
        }),
    }
}

fn into_step_output(output: Output, phase: Phase) -> StepOutput {
    let (outputs, summary, post_state) = output.into_parts();
    // A post state only means something in the main phase.
    let post_state = if phase == Phase::Main { post_state } else { None };
    StepOutput { outputs, summary, post_state }
}

/// The host shows one line as the step's error: a longer message goes to
/// the log in full, and its first line becomes the error. Outputs and
/// summary go through as they are.
fn into_step_error(error: Error) -> StepError {
    let (message, outputs, summary) = error.into_parts();
    let message = message.trim();
    let message = match message.split_once('\n') {
        Some((first, _)) => {
            crate::log::error(message);
            format!("{} (details in the log)", first.trim_end())
        }
        None if message.is_empty() => "the plugin failed without a message".to_owned(),
        None => message.to_owned(),
    };
    StepError { message, outputs, summary }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Logs a panic's message and location at error level before the trap, so
/// the step log says what happened (the host reports the trap itself).
#[cfg(target_arch = "wasm32")]
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        crate::log::error(format!("plugin panicked{at}: {}", panic_message(info.payload())));
    }));
}

/// Native builds (unit tests) keep the test harness's hook.
#[cfg(not(target_arch = "wasm32"))]
fn install_panic_hook() {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::viaduct::plugin::types::{Phase as WitPhase, RunMeta};

    fn input(phase: WitPhase) -> StepInput {
        StepInput {
            phase,
            with: vec![("name".into(), "\"x\"".into())],
            env: vec![],
            meta: RunMeta {
                run_id: "r".into(),
                job_id: "j".into(),
                job_name: "build".into(),
                step_index: 1,
                step_id: String::new(),
                pipeline: "p".into(),
                repo: String::new(),
                branch: "main".into(),
                tag: String::new(),
                commit: String::new(),
                event: "api".into(),
                runner: "local".into(),
            },
            // The native test needs a directory that exists.
            workspace: std::env::temp_dir().to_string_lossy().into_owned(),
            state: None,
        }
    }

    #[test]
    fn ok_error_and_panic() {
        let out = dispatch(input(WitPhase::Main), |ctx| {
            let name: String = ctx.input("name")?.unwrap_or_default();
            Ok(Output::new().set("name", name).post_state("s"))
        })
        .unwrap();
        assert_eq!(out.outputs, vec![("name".to_string(), "x".to_string())]);
        assert_eq!(out.post_state.as_deref(), Some("s"));
        assert_eq!(std::env::current_dir().unwrap(), std::env::temp_dir().canonicalize().unwrap());

        let out = dispatch(input(WitPhase::Post), |_| Ok(Output::new().post_state("dropped"))).unwrap();
        assert_eq!(out.post_state, None);

        let err = dispatch(input(WitPhase::Main), |_| Err(Error::msg("first\nsecond").output("k", "v"))).unwrap_err();
        assert_eq!(err.message, "first (details in the log)");
        assert_eq!(err.outputs, vec![("k".to_string(), "v".to_string())]);
        assert_eq!(err.summary, None);

        let err = dispatch(input(WitPhase::Main), |_| Err(Output::new().set("k", 1).summary("| t |").fail("bad")))
            .unwrap_err();
        assert_eq!((err.message.as_str(), err.summary.as_deref()), ("bad", Some("| t |")));

        let err = dispatch(input(WitPhase::Main), |_| -> Result<Output> { panic!("boom {}", 1) }).unwrap_err();
        assert_eq!(err.message, "plugin panicked: boom 1");
    }
}
