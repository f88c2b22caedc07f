//! `viaduct-runner` in a container, one per job, through the Docker Engine
//! API (Docker, or Podman's API service): a fresh container of an image
//! that has the runner (`cargo xtask dist`'s, or the operator's own), the
//! token mounted read-only from the instance's directory, removed once it
//! exits.

use std::collections::HashMap;

use bollard::{
    ClientVersion, Docker,
    models::{ContainerCreateBody, HostConfig},
    query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder},
};

use super::{Instance, Launch, ProvisionError, Provisioner, Result};

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
            labels: Some(HashMap::from([(JOB_LABEL.to_string(), launch.job.clone())])),
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
