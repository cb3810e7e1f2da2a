//! `wasi:cli/run` components: one store for the whole run, exit status from `wasi:cli/exit`.

use std::sync::Arc;

use wasmtime::{Engine, Store, UpdateDeadline};
use wasmtime_wasi::I32Exit;
use wasmtime_wasi::p2::bindings::CommandPre;
use wisp_sandbox::ExitStatus;

use crate::host::{CtxTemplate, Host};

/// Exit code reported for a sandbox ended by `kill` (or a `stop` past its grace).
pub(crate) const KILLED: i32 = 137;

pub(crate) fn exit(exit_code: i32, reason: Option<&str>) -> ExitStatus {
    ExitStatus {
        exit_code,
        reason: reason.map(str::to_owned),
    }
}

/// Runs the command to completion. Cancel it by dropping the future: the guest yields to the
/// executor on every epoch tick, so even a spinning guest is dropped within one tick.
pub(crate) async fn run(engine: Engine, pre: CommandPre<Host>, template: Arc<CtxTemplate>) -> ExitStatus {
    let host = match template.build() {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!(error = %e, "cannot build the guest's context");
            return exit(1, Some("ContainerCannotRun"));
        }
    };
    let mut store = Store::new(&engine, host);
    store.limiter(|h| &mut h.limiter);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Yield(1)));
    let counters = template.usage.clone();
    let result = wisp_sandbox::usage::cpu_timed(&counters.cpu_ns, async {
        let command = pre.instantiate_async(&mut store).await?;
        command.wasi_cli_run().call_run(&mut store).await
    })
    .await;
    match result {
        Ok(Ok(())) => exit(0, None),
        Ok(Err(())) => exit(1, Some("Error")),
        Err(e) => {
            if let Some(I32Exit(code)) = e.downcast_ref::<I32Exit>() {
                return exit(*code, (*code != 0).then_some("Error"));
            }
            if store.data().limiter.denied {
                tracing::info!(error = %format!("{e:#}"), "guest ran out of memory");
                return exit(KILLED, Some("OOMKilled"));
            }
            tracing::info!(error = %format!("{e:#}"), "guest trapped");
            exit(1, Some("Trapped"))
        }
    }
}
