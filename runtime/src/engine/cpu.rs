//! The CPU engine on tract.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::tract_linalg::multithread::{self, Executor};

use super::{Engine, EngineKind, EngineState};
use crate::error::{Error, Result};

type Plan = TypedSimplePlan;
type State = TypedSimpleState;

/// An optimized tract plan plus the thread pool it runs on.
pub(crate) struct CpuEngine {
    plan: Arc<Plan>,
    executor: Option<Executor>,
    threads: usize,
}

impl std::fmt::Debug for CpuEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuEngine")
            .field("nodes", &self.plan.model().nodes().len())
            .field("threads", &self.threads)
            .finish()
    }
}

impl CpuEngine {
    /// Optimizes a decluttered typed model into a runnable plan.
    pub(crate) fn new(model: TypedModel, threads: usize) -> Result<Self> {
        let plan = guarded("optimizing", || {
            let optimized = model.into_optimized()?;
            optimized.into_runnable()
        })?;
        let threads = threads.max(1);
        let executor = (threads > 1).then(|| Executor::multithread(threads));
        Ok(CpuEngine {
            plan,
            executor,
            threads,
        })
    }
}

impl CpuEngine {
    pub(crate) fn plan_nodes(&self) -> usize {
        self.plan.model().nodes().len()
    }
}

impl Engine for CpuEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Cpu
    }

    fn spawn(&self) -> Result<Box<dyn EngineState>> {
        let state = guarded("preparing a session", || self.plan.spawn())?;
        Ok(Box::new(CpuState {
            state,
            executor: self.executor.clone(),
        }))
    }
}

struct CpuState {
    state: State,
    executor: Option<Executor>,
}

impl EngineState for CpuState {
    fn run(&mut self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>> {
        let inputs: TVec<TValue> = inputs.into_iter().map(|t| t.into_tvalue()).collect();
        let state = &mut self.state;
        let outputs = match &self.executor {
            Some(ex) => multithread::multithread_tract_scope(ex.clone(), || {
                guarded("running", || state.run(inputs))
            }),
            None => guarded("running", || state.run(inputs)),
        }?;
        Ok(outputs.into_iter().map(|v| v.into_tensor()).collect())
    }
}

/// Runs a tract call, turning both its errors and its panics into
/// [`Error::Engine`].
///
/// Design: tract validates much, but not everything (a graph output that no
/// node produces panics inside `parse_graph`; some tensor loaders end in
/// `unimplemented!`). We never let a model file take the process down, so
/// every entry into tract goes through here.
pub(crate) fn guarded<T>(stage: &'static str, f: impl FnOnce() -> TractResult<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Error::Engine {
            engine: "cpu",
            stage,
            message: format!("{e:#}"),
        }),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "panic without message".into());
            Err(Error::Engine {
                engine: "cpu",
                stage,
                message: format!("engine panicked: {message}"),
            })
        }
    }
}
