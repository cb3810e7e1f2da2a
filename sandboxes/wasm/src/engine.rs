//! The node's one wasmtime [`Engine`]: Cranelift, component model, epoch interruption driven
//! by a ticker thread, the pooling allocator when the host allows it, and wasmtime's on-disk
//! compilation cache.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use wasmtime::{
    Cache, CacheConfig, Config, Enabled, Engine, InstanceAllocationStrategy, OptLevel,
    PoolingAllocationConfig,
};

use crate::WasmConfig;

/// An engine plus the thread that advances its epoch; the thread ends when this is dropped.
pub(crate) struct EngineHandle {
    pub(crate) engine: Engine,
    pub(crate) pooling: bool,
    stop: Option<mpsc::Sender<()>>,
    ticker: Option<JoinHandle<()>>,
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        // Dropping the sender wakes the ticker, which then returns.
        self.stop.take();
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
    }
}

fn base_config(config: &WasmConfig) -> Config {
    let mut c = Config::new();
    c.wasm_component_model(true)
        .epoch_interruption(true)
        .cranelift_opt_level(OptLevel::Speed)
        .max_wasm_stack(config.max_wasm_stack)
        .parallel_compilation(true);
    c
}

fn pooling_config(config: &WasmConfig) -> PoolingAllocationConfig {
    let n = config.max_instances.max(1);
    let mut p = PoolingAllocationConfig::new();
    p.total_component_instances(n)
        // Rust guests: one main module plus a few small shims per component.
        .total_core_instances(n.saturating_mul(8))
        .total_memories(n.saturating_mul(2))
        .total_tables(n.saturating_mul(8))
        .total_stacks(n)
        .max_memory_size(config.max_memory_per_instance)
        // Keep the first pages of memories and tables resident between instances: instance
        // reset then costs no page faults (DESIGN.md, "Performance facts": 10–15% per request).
        .linear_memory_keep_resident(config.keep_resident)
        .table_keep_resident(config.keep_resident / 8)
        // On by default (see `WasmConfig::pagemap_scan`): reset only what the instance
        // dirtied there.
        .pagemap_scan(if config.pagemap_scan {
            Enabled::Auto
        } else {
            Enabled::No
        });
    p
}

fn cache(dir: &Path) -> wasmtime::Result<Cache> {
    std::fs::create_dir_all(dir)?;
    let mut c = CacheConfig::new();
    c.with_directory(dir);
    Cache::new(c)
}

/// Builds the engine: pooling when possible (else on-demand, logged), cache under
/// `<cache_dir>/compiled`.
pub(crate) fn build(config: &WasmConfig) -> wasmtime::Result<EngineHandle> {
    let cache_dir: PathBuf = config.cache_dir.join("compiled");
    let cache = cache(&cache_dir)?;
    let mut engine = None;
    if config.pooling {
        let mut c = base_config(config);
        c.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling_config(config)));
        c.cache(Some(cache.clone()));
        match Engine::new(&c) {
            Ok(e) => engine = Some((e, true)),
            Err(e) => tracing::warn!(
                error = %e,
                "pooling allocator unavailable on this host; using on-demand allocation"
            ),
        }
    }
    let (engine, pooling) = match engine {
        Some(e) => e,
        None => {
            let mut c = base_config(config);
            c.allocation_strategy(InstanceAllocationStrategy::OnDemand);
            c.cache(Some(cache));
            (Engine::new(&c)?, false)
        }
    };
    let (stop, ticks) = mpsc::channel::<()>();
    let tick = config.epoch_tick;
    let weak = engine.weak();
    let ticker = std::thread::Builder::new()
        .name("wisp-wasm-epoch".into())
        .spawn(move || epoch_ticker(&weak, &ticks, tick))?;
    Ok(EngineHandle {
        engine,
        pooling,
        stop: Some(stop),
        ticker: Some(ticker),
    })
}

fn epoch_ticker(engine: &wasmtime::EngineWeak, stop: &mpsc::Receiver<()>, tick: Duration) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(tick) {
        match engine.upgrade() {
            Some(e) => e.increment_epoch(),
            None => return,
        }
    }
}
