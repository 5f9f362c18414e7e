//! `gauntlet gc` for the Docker backend: removes the containers, networks
//! and volumes of runs whose harness is gone, found by their labels.

use std::collections::{BTreeSet, HashMap};
use std::fmt;

use testcontainers::bollard::Docker;
use testcontainers::bollard::query_parameters::{
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, ListVolumesOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveVolumeOptions,
};

use super::{LABEL_OWNER, LABEL_RUN, remove_network};
use crate::local::state::ProcessId;

/// What [`gc`] did.
#[derive(Debug, Default)]
pub struct DockerGcReport {
    /// Containers removed, by name.
    pub containers: Vec<String>,
    /// Networks removed.
    pub networks: Vec<String>,
    /// Volumes removed.
    pub volumes: Vec<String>,
    /// Runs left alone because their harness still runs.
    pub live_runs: BTreeSet<String>,
    /// What could not be removed.
    pub errors: Vec<String>,
}

impl fmt::Display for DockerGcReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.containers {
            writeln!(f, "removed container {c}")?;
        }
        for n in &self.networks {
            writeln!(f, "removed network {n}")?;
        }
        for v in &self.volumes {
            writeln!(f, "removed volume {v}")?;
        }
        for run in &self.live_runs {
            writeln!(f, "skipped docker run {run}: its harness is still running")?;
        }
        if self.containers.is_empty()
            && self.networks.is_empty()
            && self.volumes.is_empty()
            && self.live_runs.is_empty()
            && self.errors.is_empty()
        {
            writeln!(f, "docker: nothing to clean up")?;
        }
        Ok(())
    }
}

/// Waits, for at most `limit`, until process `pid` has exited (a zombie
/// counts as exited): `gauntlet gc --after-pid` cleans up after a harness
/// that a signal is ending.
pub fn wait_until_exited(pid: u32, limit: std::time::Duration) {
    if let Some(id) = ProcessId::of(pid) {
        crate::local::state::wait_until_gone(&[id], limit);
    }
}

/// Whether the owner label names a live process. A missing or unreadable
/// label means no owner can be proven alive, so the resources are removed.
fn owner_alive(labels: Option<&HashMap<String, String>>) -> bool {
    let Some(owner) = labels.and_then(|l| l.get(LABEL_OWNER)) else {
        return false;
    };
    let Some((pid, ticks)) = owner.split_once(':') else {
        return false;
    };
    match (pid.parse(), ticks.parse()) {
        (Ok(pid), Ok(start_ticks)) => ProcessId { pid, start_ticks }.is_alive(),
        _ => false,
    }
}

/// Removes every labelled container, network and volume whose owner is
/// gone; with `only_run`, those of that run only, whatever the owner.
pub async fn gc(docker: &Docker, only_run: Option<&str>) -> DockerGcReport {
    let mut report = DockerGcReport::default();
    let selector = match only_run {
        Some(run) => format!("{LABEL_RUN}={run}"),
        None => LABEL_RUN.to_owned(),
    };
    let filters: HashMap<String, Vec<String>> =
        HashMap::from([("label".to_owned(), vec![selector])]);
    let removable =
        |labels: Option<&HashMap<String, String>>| only_run.is_some() || !owner_alive(labels);
    let run_of = |labels: Option<&HashMap<String, String>>| {
        labels
            .and_then(|l| l.get(LABEL_RUN))
            .cloned()
            .unwrap_or_default()
    };

    match docker
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
    {
        Ok(containers) => {
            for c in containers {
                let name = c
                    .names
                    .as_ref()
                    .and_then(|n| n.first())
                    .map(|n| n.trim_start_matches('/').to_owned())
                    .or(c.id.clone())
                    .unwrap_or_default();
                if !removable(c.labels.as_ref()) {
                    report.live_runs.insert(run_of(c.labels.as_ref()));
                    continue;
                }
                let Some(id) = c.id.as_deref() else { continue };
                match docker
                    .remove_container(
                        id,
                        Some(
                            RemoveContainerOptionsBuilder::new()
                                .force(true)
                                .v(true)
                                .build(),
                        ),
                    )
                    .await
                {
                    Ok(()) => report.containers.push(name),
                    Err(e) => report
                        .errors
                        .push(format!("cannot remove container {name}: {e}")),
                }
            }
        }
        Err(e) => report.errors.push(format!("cannot list containers: {e}")),
    }

    match docker
        .list_networks(Some(
            ListNetworksOptionsBuilder::new().filters(&filters).build(),
        ))
        .await
    {
        Ok(networks) => {
            for n in networks {
                let name = n.name.clone().unwrap_or_default();
                if !removable(n.labels.as_ref()) {
                    report.live_runs.insert(run_of(n.labels.as_ref()));
                    continue;
                }
                match remove_network(docker, &name).await {
                    Ok(()) => report.networks.push(name),
                    Err(e) => report.errors.push(e),
                }
            }
        }
        Err(e) => report.errors.push(format!("cannot list networks: {e}")),
    }

    match docker
        .list_volumes(Some(
            ListVolumesOptionsBuilder::new().filters(&filters).build(),
        ))
        .await
    {
        Ok(list) => {
            for v in list.volumes.unwrap_or_default() {
                let labels: HashMap<String, String> = v.labels.clone();
                if !removable(Some(&labels)) {
                    report.live_runs.insert(run_of(Some(&labels)));
                    continue;
                }
                match docker
                    .remove_volume(&v.name, None::<RemoveVolumeOptions>)
                    .await
                {
                    Ok(()) => report.volumes.push(v.name.clone()),
                    Err(e) => report
                        .errors
                        .push(format!("cannot remove volume {}: {e}", v.name)),
                }
            }
        }
        Err(e) => report.errors.push(format!("cannot list volumes: {e}")),
    }
    report
}
