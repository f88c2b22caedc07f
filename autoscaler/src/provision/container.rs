//! `viaduct-runner` in a container, one per job, through the Docker Engine
//! API (Docker, or Podman's API service): a fresh container of an image
//! that has the runner (`cargo xtask dist`'s, or the operator's own), the
//! token mounted read-only from the instance's directory, removed once it
//! exits. Each container is labelled with its job ([`JOB_LABEL`]) and its
//! autoscaler ([`OWNER_LABEL`]): the same autoscaler, restarted, finds the
//! containers it left by that label, and touches no other.

use std::{collections::HashMap, time::Duration};

use bollard::{
    ClientVersion, Docker,
    models::{ContainerCreateBody, HostConfig},
    query_parameters::{
        CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
        StopContainerOptionsBuilder,
    },
};

use super::{Instance, Launch, Leftover, OWNER_LABEL, Owner, ProvisionError, Provisioner, Result, instance_dir};

/// The oldest Docker Engine API it speaks (Podman serves it).
const API: ClientVersion = ClientVersion { major_version: 1, minor_version: 41 };
/// Label on every container it starts (value: the job).
pub const JOB_LABEL: &str = "dev.viaduct.autoscaler.job";
/// Where the token directory is mounted in the container.
const TOKEN_DIR: &str = "/run/viaduct";

/// Starts runners in containers.
pub struct Containers {
    docker: Docker,
    /// The image (it must have `viaduct-runner` on its PATH).
    pub image: String,
    /// The network mode (`host`, `bridge`, a network's name).
    pub network: String,
}

fn engine(e: bollard::errors::Error) -> ProvisionError {
    ProvisionError::Engine(e.to_string())
}

impl Containers {
    /// Connects to the engine at the Unix socket `socket`.
    pub async fn connect(socket: &str, image: String, network: String) -> Result<Self> {
        let docker = Docker::connect_with_unix(socket.trim_start_matches("unix://"), 120, &API).map_err(engine)?;
        docker.version().await.map_err(|e| ProvisionError::Engine(format!("{socket}: {e}")))?;
        Ok(Self { docker, image, network })
    }
}

#[async_trait::async_trait]
impl Provisioner for Containers {
    fn describe(&self) -> String {
        format!("containers of {} (network {})", self.image, self.network)
    }

    async fn start(&self, launch: &Launch) -> Result<Box<dyn Instance>> {
        let mut cmd = vec!["viaduct-runner".to_string()];
        cmd.extend(launch.runner_args(&format!("{TOKEN_DIR}/token"), "/var/lib/viaduct-runner"));
        let body = ContainerCreateBody {
            image: Some(self.image.clone()),
            cmd: Some(cmd),
            labels: Some(HashMap::from([
                (JOB_LABEL.to_string(), launch.job.clone()),
                (OWNER_LABEL.to_string(), launch.owner.clone()),
            ])),
            host_config: Some(HostConfig {
                binds: Some(vec![format!("{}:{TOKEN_DIR}:ro", launch.dir.display())]),
                network_mode: Some(self.network.clone()),
                init: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::default().name(&launch.name).build();
        self.docker.create_container(Some(opts), body).await.map_err(engine)?;
        let instance = Container { docker: self.docker.clone(), name: launch.name.clone(), dir: launch.dir.clone() };
        if let Err(e) = self.docker.start_container(&launch.name, None).await {
            let mut instance = instance;
            let _ = instance.stop().await;
            return Err(engine(e));
        }
        Ok(Box::new(instance))
    }

    /// The containers labelled `OWNER_LABEL=<owner.id>`, running or not.
    async fn leftovers(&self, owner: &Owner) -> Result<Vec<Leftover>> {
        let label = format!("{OWNER_LABEL}={}", owner.id);
        let filters = HashMap::from([("label", vec![label.as_str()])]);
        let opts = ListContainersOptionsBuilder::default().all(true).filters(&filters).build();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let mut found = Vec::new();
        for c in self.docker.list_containers(Some(opts)).await.map_err(engine)? {
            let labels = c.labels.unwrap_or_default();
            // The engine filtered; never trust that with another's container.
            if labels.get(OWNER_LABEL) != Some(&owner.id) {
                continue;
            }
            let Some(name) = c.names.iter().flatten().next().map(|n| n.trim_start_matches('/').to_string()) else {
                continue;
            };
            let Some(dir) = instance_dir(&owner.state_dir, &name) else {
                tracing::warn!(container = name, "a container with this autoscaler's label but an unexpected name");
                continue;
            };
            let age = c.created.and_then(|t| now.checked_sub(Duration::from_secs(u64::try_from(t).ok()?)));
            found.push(Leftover {
                job: labels.get(JOB_LABEL).cloned().unwrap_or_default(),
                age,
                instance: Box::new(Container { docker: self.docker.clone(), name: name.clone(), dir }),
                name,
            });
        }
        Ok(found)
    }
}

/// A runner container.
struct Container {
    docker: Docker,
    name: String,
    dir: std::path::PathBuf,
}

#[async_trait::async_trait]
impl Instance for Container {
    async fn running(&mut self) -> Result<bool> {
        match self.docker.inspect_container(&self.name, None).await {
            Ok(c) => Ok(c.state.and_then(|s| s.running).unwrap_or(false)),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => Ok(false),
            Err(e) => Err(engine(e)),
        }
    }

    async fn stop(&mut self) -> Result<()> {
        let stop = StopContainerOptionsBuilder::default().t(10).build();
        let _ = self.docker.stop_container(&self.name, Some(stop)).await;
        let remove = RemoveContainerOptionsBuilder::default().force(true).v(true).build();
        match self.docker.remove_container(&self.name, Some(remove)).await {
            Ok(()) | Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {}
            Err(e) => return Err(engine(e)),
        }
        let _ = std::fs::remove_file(self.dir.join("token"));
        Ok(())
    }
}
