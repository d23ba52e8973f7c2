//! The TAP pool's work (see [`crate::tap_pool`]): adopting pool TAPs a previous daemon left,
//! filling the pool in the background, and handing a boot a ready TAP.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use banger_net::plan::{is_pool_tap, pool_tap_name};
use banger_store::VmRow;

use crate::error::{OpError, chain};
use crate::state::AppState;

/// How long a refill that failed waits before it tries again.
const RETRY: Duration = Duration::from_secs(30);

/// Marks the bridge up when it already exists and this daemon has VMs (a daemon restarted
/// on a host whose VMs ran). A daemon without VMs leaves a bridge it finds alone until its
/// first boot: another banger on the host (or a test's) may own it.
pub async fn note_bridge(state: &Arc<AppState>) {
    if state.vm_rows().map(|rows| rows.is_empty()).unwrap_or(true) {
        return;
    }
    let net = state.host.net.clone();
    let bridge = state.opts.config.bridge_name.clone();
    let exists = tokio::task::spawn_blocking(move || net.link_exists(&bridge))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r.map_err(|e| chain(&e)));
    match exists {
        Ok(true) => state.bridge_up(),
        Ok(false) => {}
        Err(error) => tracing::warn!(%error, "cannot tell whether the bridge exists"),
    }
}

/// Keeps config `tap_pool_size` idle TAPs on the bridge once it exists: adopts the pool TAPs
/// no VM row names, then refills after every take. Runs until the daemon stops.
pub async fn keep_tap_pool(state: Arc<AppState>) {
    if state.tap_pool.wanted() == 0 {
        return;
    }
    state.bridge_ready().await;
    adopt(&state).await;
    loop {
        if let Err(error) = fill(&state).await {
            tracing::warn!(%error, "cannot fill the TAP pool; trying again later");
            tokio::select! {
                _ = state.tap_pool.wait_taken() => {}
                _ = tokio::time::sleep(RETRY) => {}
            }
            continue;
        }
        state.tap_pool.wait_taken().await;
    }
}

/// The TAP names VM rows hold: never a pool TAP's.
fn row_taps(rows: &[VmRow]) -> BTreeSet<String> {
    rows.iter().filter_map(|r| r.tap.clone()).collect()
}

/// Adopts the pool TAPs that exist and no VM row names (a previous daemon's pool); deletes
/// those beyond the pool's size.
async fn adopt(state: &Arc<AppState>) {
    let Ok(rows) = state.vm_rows() else { return };
    let held = row_taps(&rows);
    let net = state.host.net.clone();
    let links =
        tokio::task::spawn_blocking(move || net.list_links(banger_net::plan::POOL_TAP_PREFIX))
            .await;
    let Ok(Ok(links)) = links else {
        tracing::warn!("cannot list the pool TAPs a previous daemon left");
        return;
    };
    let mut extra = Vec::new();
    for name in links
        .into_iter()
        .filter(|n| is_pool_tap(n) && !held.contains(n))
    {
        if !state.tap_pool.add(name.clone()) {
            extra.push(name);
        }
    }
    if !state.tap_pool.idle().is_empty() {
        tracing::info!(taps = ?state.tap_pool.idle(), "adopted the idle TAP pool");
    }
    let net = state.host.net.clone();
    let _ = tokio::task::spawn_blocking(move || {
        for name in extra {
            if let Err(e) = net.delete_tap(&name) {
                tracing::warn!(tap = %name, error = %chain(&e), "cannot delete a surplus pool TAP");
            }
        }
    })
    .await;
}

/// Makes the pool's missing TAPs (the bridge first, which may have been deleted meanwhile).
async fn fill(state: &Arc<AppState>) -> Result<(), String> {
    let missing = state.tap_pool.missing();
    if missing == 0 {
        return Ok(());
    }
    let rows = state.vm_rows().map_err(|e| chain(&e))?;
    let mut used = row_taps(&rows);
    used.extend(state.tap_pool.idle());
    let net = state.host.net.clone();
    let bridge = state.opts.config.bridge_name.clone();
    let subnet = state.subnet;
    let uid = state.uid;
    let bridge_lock = state.bridge_lock.clone();
    let made = tokio::task::spawn_blocking(move || -> Result<Vec<String>, String> {
        {
            let _made = bridge_lock.lock().unwrap_or_else(|e| e.into_inner());
            net.ensure_bridge(&bridge, &subnet).map_err(|e| chain(&e))?;
        }
        used.extend(
            net.list_links(banger_net::plan::POOL_TAP_PREFIX)
                .map_err(|e| chain(&e))?,
        );
        let mut made = Vec::new();
        let free = (0..).map(pool_tap_name).filter(|n| !used.contains(n));
        for name in free.take(missing as usize) {
            net.create_tap(&name, &bridge, Some(uid))
                .map_err(|e| chain(&e))?;
            made.push(name);
        }
        Ok(made)
    })
    .await
    .map_err(|e| e.to_string())??;
    for name in made {
        if !state.tap_pool.add(name.clone()) {
            // Filled meanwhile by no one else: the pool only grows here; keep the host tidy.
            let net = state.host.net.clone();
            let _ = tokio::task::spawn_blocking(move || net.delete_tap(&name)).await;
        }
    }
    tracing::debug!(idle = ?state.tap_pool.idle(), "TAP pool filled");
    Ok(())
}

/// Gives `row` an idle pool TAP, if there is one: recorded in its row (stored at once, so a
/// reconcile after a crash releases that TAP). True when it got one: the TAP is attached
/// and owned already, and the boot need not make the bridge or a TAP.
pub(super) fn take_pooled(state: &Arc<AppState>, row: &mut VmRow) -> Result<bool, OpError> {
    let Some(tap) = state.tap_pool.take() else {
        return Ok(false);
    };
    row.tap = Some(tap);
    state.set_vm(row)?;
    Ok(true)
}
