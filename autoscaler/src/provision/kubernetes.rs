//! `viaduct-runner` in a Kubernetes Job, one per job, through the cluster's
//! API server (kube-rs): a Job of one pod of an image that has the runner,
//! never retried (`backoffLimit: 0`, `restartPolicy: Never`), deleted with
//! its pod when the instance stops (and by Kubernetes itself some minutes
//! after it finished, should the autoscaler be gone by then).
//!
//! The token goes into a Secret of the same name, owned by the Job (so
//! deleting the Job collects it), mounted read-only as a 0400 file at
//! `/run/viaduct/token` — never an argument or an environment variable.
//! The pod gets no service account token: a job's process gets no
//! credentials for the cluster.
//!
//! Jobs, pods and Secrets are labelled with their job ([`JOB_LABEL`]) and
//! their autoscaler ([`OWNER_LABEL`]): the same autoscaler, restarted, finds
//! the Jobs it left by that label, and touches no other.

use std::{collections::BTreeMap, path::Path, time::Duration};

use k8s_openapi::{
    ByteString,
    api::{
        batch::v1::{Job, JobSpec},
        core::v1::{
            Container, PodSpec, PodTemplateSpec, ResourceRequirements, Secret, SecretVolumeSource, Volume, VolumeMount,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{ObjectMeta, OwnerReference},
    },
};
use kube::{
    Api, Client, Config,
    api::{DeleteParams, ListParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};

use super::{Instance, Launch, Leftover, OWNER_LABEL, Owner, ProvisionError, Provisioner, Result, instance_dir};

/// Label on every Job, pod and Secret it makes (value: the job); they also
/// have [`OWNER_LABEL`] (value: the autoscaler's id).
pub const JOB_LABEL: &str = "dev.viaduct.autoscaler.job";
/// The standard "who manages this" label, and its value on what it makes.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "viaduct-autoscaler");
/// Where the Secret holding the token is mounted in the pod.
const TOKEN_DIR: &str = "/run/viaduct";
/// How long Kubernetes keeps a finished Job (and its pod and Secret) when
/// the autoscaler did not delete it (it was stopped, or killed).
const TTL_AFTER_FINISHED: i32 = 300;

/// What the Jobs it makes look like.
#[derive(Debug, Clone)]
pub struct JobSettings {
    /// The namespace its Jobs and Secrets are made in.
    pub namespace: String,
    /// The image (it must have `viaduct-runner` on its PATH).
    pub image: String,
    /// The service account the runner pods run as (default: the
    /// namespace's `default`); its token is never mounted either way.
    pub service_account: Option<String>,
    /// CPU for each runner (`2`, `500m`): its request and its limit.
    pub cpu: Option<String>,
    /// Memory for each runner (`4Gi`): its request and its limit.
    pub memory: Option<String>,
    /// Past this, Kubernetes ends the Job itself (`activeDeadlineSeconds`),
    /// even if the autoscaler that should have stopped it is gone.
    pub max_lifetime: Option<Duration>,
}

/// Labels of what it makes for `launch`.
fn labels(launch: &Launch) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        (JOB_LABEL.to_string(), label_value(&launch.job)),
        (OWNER_LABEL.to_string(), label_value(&launch.owner)),
    ])
}

/// `s` as a label value: at most 63 of `[A-Za-z0-9._-]`, starting and
/// ending with a letter or digit (others become `-`).
fn label_value(s: &str) -> String {
    let v: String = s
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '-' })
        .take(63)
        .collect();
    v.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string()
}

impl JobSettings {
    /// The Job that runs the runner for `launch` (pure: no API call). It
    /// mounts the Secret [`JobSettings::secret`] makes; the token is not in it.
    pub fn job(&self, launch: &Launch) -> Job {
        let args = launch.runner_args(&format!("{TOKEN_DIR}/token"), "/var/lib/viaduct-runner");
        let quantities = || {
            let q = [("cpu", &self.cpu), ("memory", &self.memory)]
                .into_iter()
                .filter_map(|(k, v)| Some((k.to_string(), Quantity(v.clone()?))))
                .collect::<BTreeMap<_, _>>();
            (!q.is_empty()).then_some(q)
        };
        let resources = quantities().map(|q| ResourceRequirements {
            requests: Some(q.clone()),
            limits: Some(q),
            ..Default::default()
        });
        let container = Container {
            name: "runner".into(),
            image: Some(self.image.clone()),
            command: Some(vec!["viaduct-runner".into()]),
            args: Some(args),
            volume_mounts: Some(vec![VolumeMount {
                name: "token".into(),
                mount_path: TOKEN_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            }]),
            resources,
            ..Default::default()
        };
        let pod = PodSpec {
            containers: vec![container],
            restart_policy: Some("Never".into()),
            // No credentials for the cluster in a job's reach, and none of
            // the namespace's services' addresses in its environment.
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            service_account_name: self.service_account.clone(),
            volumes: Some(vec![Volume {
                name: "token".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(launch.name.clone()),
                    default_mode: Some(0o400),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        };
        Job {
            metadata: ObjectMeta {
                name: Some(launch.name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(labels(launch)),
                ..Default::default()
            },
            spec: Some(JobSpec {
                backoff_limit: Some(0),
                ttl_seconds_after_finished: Some(TTL_AFTER_FINISHED),
                active_deadline_seconds: self.max_lifetime.map(|d| d.as_secs().clamp(1, i64::MAX as u64) as i64),
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta { labels: Some(labels(launch)), ..Default::default() }),
                    spec: Some(pod),
                },
                ..Default::default()
            }),
            status: None,
        }
    }

    /// The Secret holding `launch`'s token (key `token`), owned by `owner`
    /// (its Job) when given, so that deleting the Job deletes it (pure).
    pub fn secret(&self, launch: &Launch, token: Vec<u8>, owner: Option<OwnerReference>) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(launch.name.clone()),
                namespace: Some(self.namespace.clone()),
                labels: Some(labels(launch)),
                owner_references: owner.map(|o| vec![o]),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: Some(BTreeMap::from([("token".to_string(), ByteString(token))])),
            immutable: Some(true),
            ..Default::default()
        }
    }
}

/// The Job `name` (of uid `uid`) as the owner of what it should take along
/// when deleted. It does not manage the Secret (no `controller`), and its
/// deletion is not held up for it (no `blockOwnerDeletion`, which would
/// need rights on `jobs/finalizers` too).
fn owned_by(name: &str, uid: String) -> OwnerReference {
    OwnerReference {
        api_version: "batch/v1".into(),
        kind: "Job".into(),
        name: name.into(),
        uid,
        controller: Some(false),
        block_owner_deletion: Some(false),
    }
}

/// Whether `job` is over (or going): it succeeded or failed (a count or a
/// condition), or it is being deleted.
fn finished(job: &Job) -> bool {
    if job.metadata.deletion_timestamp.is_some() {
        return true;
    }
    let Some(status) = &job.status else { return false };
    status.succeeded.unwrap_or(0) > 0
        || status.failed.unwrap_or(0) > 0
        || status
            .conditions
            .iter()
            .flatten()
            .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
}

/// `e`, for the operator: what was being done, then the API server's
/// code, reason and message (or the client's error).
fn api_error(what: &str, e: kube::Error) -> ProvisionError {
    match e {
        kube::Error::Api(s) => ProvisionError::Kubernetes(format!("{what}: {} {}: {}", s.code, s.reason, s.message)),
        e => {
            // The client's errors say little at the top ("client error
            // (Connect)"): what went wrong is in their sources.
            let mut text = format!("{what}: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            ProvisionError::Kubernetes(text)
        }
    }
}

fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_not_found())
}

/// kube's TLS is rustls: with ring, as tonic's clients use (aws-lc-rs,
/// rustls's default with post-quantum key exchange, needs a C toolchain and
/// CMake to build), whatever else may enable another provider.
#[allow(deprecated)]
fn install_ring() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Starts runners as Kubernetes Jobs.
pub struct Jobs {
    client: Client,
    /// What the Jobs look like, and where they are made.
    pub settings: JobSettings,
}

impl Jobs {
    /// Connects to the cluster of the kubeconfig file `kubeconfig` (its
    /// current context), or else the usual way (`KUBECONFIG`,
    /// `~/.kube/config`, or the pod's service account in a cluster), and
    /// checks that the API server answers and would accept its Jobs and
    /// Secrets (a dry run of each).
    pub async fn connect(kubeconfig: Option<&Path>, settings: JobSettings) -> Result<Self> {
        install_ring();
        let config = match kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path)
                    .map_err(|e| ProvisionError::Kubernetes(format!("cannot read {}: {e}", path.display())))?;
                Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| ProvisionError::Kubernetes(format!("{}: {e}", path.display())))?
            }
            None => Config::infer().await.map_err(|e| {
                ProvisionError::Kubernetes(format!(
                    "no cluster configuration (KUBECONFIG, ~/.kube/config, in-cluster service account): {e}"
                ))
            })?,
        };
        let url = config.cluster_url.clone();
        let client = Client::try_from(config).map_err(|e| api_error(&format!("cannot make a client for {url}"), e))?;
        let version = client
            .apiserver_version()
            .await
            .map_err(|e| api_error(&format!("cannot reach the API server at {url}"), e))?;
        tracing::debug!(version = %version.git_version, "Kubernetes API server");
        let this = Self { client, settings };
        this.check().await?;
        Ok(this)
    }

    /// A dry run of a Job and a Secret like those it makes: no rights,
    /// no such namespace, or a setting the cluster refuses (a quantity)
    /// show now rather than at every job. Anything else (an admission
    /// webhook without dry-run support) is only a warning.
    async fn check(&self) -> Result<()> {
        let launch = Launch {
            job: "0.0".into(),
            name: "viaduct-autoscaler-check".into(),
            server: "http://viaduct.invalid".into(),
            args: vec![],
            dir: "/nonexistent".into(),
            seat: 0,
            owner: "check".into(),
        };
        let dry = PostParams { dry_run: true, ..Default::default() };
        let ns = &self.settings.namespace;
        let job = Api::<Job>::namespaced(self.client.clone(), ns).create(&dry, &self.settings.job(&launch)).await;
        let secret = Api::<Secret>::namespaced(self.client.clone(), ns)
            .create(&dry, &self.settings.secret(&launch, b"check".to_vec(), None))
            .await;
        for (what, r) in [("Jobs", job.map(drop)), ("Secrets", secret.map(drop))] {
            match r {
                Ok(()) => {}
                Err(kube::Error::Api(s)) if matches!(s.code, 401 | 403 | 404 | 422) => {
                    return Err(api_error(&format!("cannot create {what} in namespace {ns}"), kube::Error::Api(s)));
                }
                Err(e) => {
                    tracing::warn!(error = %api_error("dry run", e), "cannot check that {what} can be created in {ns}")
                }
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Provisioner for Jobs {
    fn describe(&self) -> String {
        format!("Kubernetes Jobs of {} (namespace {})", self.settings.image, self.settings.namespace)
    }

    async fn start(&self, launch: &Launch) -> Result<Box<dyn Instance>> {
        let token = std::fs::read(launch.token_file())
            .map_err(|e| ProvisionError::Io(format!("cannot read the token {}: {e}", launch.token_file().display())))?;
        let ns = &self.settings.namespace;
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), ns);
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), ns);
        // The Job first: the Secret names it as its owner (its pod waits
        // for the Secret to mount it).
        let job = jobs
            .create(&PostParams::default(), &self.settings.job(launch))
            .await
            .map_err(|e| api_error(&format!("cannot create Job {ns}/{}", launch.name), e))?;
        let mut instance = KubeJob { jobs, secrets, name: launch.name.clone(), dir: launch.dir.clone() };
        let made = match job.metadata.uid {
            Some(uid) => instance
                .secrets
                .create(&PostParams::default(), &self.settings.secret(launch, token, Some(owned_by(&launch.name, uid))))
                .await
                .map_err(|e| api_error(&format!("cannot create Secret {ns}/{}", launch.name), e)),
            None => Err(ProvisionError::Kubernetes(format!("Job {ns}/{} was created without a uid", launch.name))),
        };
        if let Err(e) = made {
            let _ = instance.stop().await;
            return Err(e);
        }
        Ok(Box::new(instance))
    }

    /// The Jobs of its namespace labelled `OWNER_LABEL=<owner.id>`, running
    /// or finished (their Secrets go with them).
    async fn leftovers(&self, owner: &Owner) -> Result<Vec<Leftover>> {
        let ns = &self.settings.namespace;
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), ns);
        let id = label_value(&owner.id);
        let list = jobs
            .list(&ListParams::default().labels(&format!("{OWNER_LABEL}={id}")))
            .await
            .map_err(|e| api_error(&format!("cannot list Jobs in {ns}"), e))?;
        let now = k8s_openapi::jiff::Timestamp::now();
        let mut found = Vec::new();
        for job in list.items {
            let labels = job.metadata.labels.clone().unwrap_or_default();
            // The API server selected; never trust that with another's Job.
            if labels.get(OWNER_LABEL) != Some(&id) {
                continue;
            }
            let Some(name) = job.metadata.name.clone() else { continue };
            let Some(dir) = instance_dir(&owner.state_dir, &name) else { continue };
            let age =
                job.metadata.creation_timestamp.as_ref().and_then(|t| Duration::try_from(now.duration_since(t.0)).ok());
            let instance = KubeJob {
                jobs: jobs.clone(),
                secrets: Api::namespaced(self.client.clone(), ns),
                name: name.clone(),
                dir,
            };
            found.push(Leftover {
                job: labels.get(JOB_LABEL).cloned().unwrap_or_default(),
                age,
                instance: Box::new(instance),
                name,
            });
        }
        Ok(found)
    }
}

/// A runner's Job (and its Secret).
struct KubeJob {
    jobs: Api<Job>,
    secrets: Api<Secret>,
    name: String,
    dir: std::path::PathBuf,
}

#[async_trait::async_trait]
impl Instance for KubeJob {
    async fn running(&mut self) -> Result<bool> {
        match self.jobs.get_opt(&self.name).await {
            Ok(Some(job)) => Ok(!finished(&job)),
            Ok(None) => Ok(false),
            Err(e) => Err(api_error(&format!("cannot get Job {}", self.name), e)),
        }
    }

    async fn stop(&mut self) -> Result<()> {
        // Background: the Job goes now, its pod (the runner gets SIGTERM,
        // then its grace period) and the Secret after it.
        let job = match self.jobs.delete(&self.name, &DeleteParams::background()).await {
            Ok(_) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(api_error(&format!("cannot delete Job {}", self.name), e)),
        };
        // Also collected with the Job; deleted now so that the token does
        // not outlive the instance whatever the garbage collector does.
        let secret = match self.secrets.delete(&self.name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(e) if not_found(&e) => Ok(()),
            Err(e) => Err(api_error(&format!("cannot delete Secret {}", self.name), e)),
        };
        let _ = std::fs::remove_file(self.dir.join("token"));
        job.and(secret)
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::{
        api::batch::v1::{JobCondition, JobStatus},
        apimachinery::pkg::apis::meta::v1::Time,
    };

    use super::*;

    const TOKEN: &str = "vdr_job-bound-registration-token";

    fn settings() -> JobSettings {
        JobSettings {
            namespace: "viaduct-runners".into(),
            image: "registry.example/viaduct-runner:1".into(),
            service_account: Some("viaduct-runner".into()),
            cpu: Some("2".into()),
            memory: None,
            max_lifetime: Some(Duration::from_secs(6 * 3600)),
        }
    }

    fn launch() -> Launch {
        Launch {
            job: "42.1".into(),
            name: "auto-42-1-0a1b2c".into(),
            server: "https://ci.example".into(),
            args: vec!["--labels".into(), "linux".into()],
            dir: "/var/lib/viaduct-autoscaler/auto-42-1-0a1b2c".into(),
            seat: 3,
            owner: "0123456789abcdef".into(),
        }
    }

    #[test]
    fn the_job_runs_the_runner_once_without_cluster_credentials_and_the_token_only_as_a_file() {
        let job = settings().job(&launch());
        let json = serde_json::to_string(&job).unwrap();
        assert!(!json.contains(TOKEN), "{json}");
        assert_eq!(job.metadata.name.as_deref(), Some("auto-42-1-0a1b2c"));
        assert_eq!(job.metadata.namespace.as_deref(), Some("viaduct-runners"));
        let want = BTreeMap::from([
            ("app.kubernetes.io/managed-by".to_string(), "viaduct-autoscaler".to_string()),
            ("dev.viaduct.autoscaler.job".to_string(), "42.1".to_string()),
            ("dev.viaduct.autoscaler.owner".to_string(), "0123456789abcdef".to_string()),
        ]);
        assert_eq!(job.metadata.labels.as_ref(), Some(&want));
        let spec = job.spec.unwrap();
        assert_eq!(spec.backoff_limit, Some(0));
        assert_eq!(spec.ttl_seconds_after_finished, Some(300));
        assert_eq!(spec.active_deadline_seconds, Some(6 * 3600));
        assert_eq!(spec.template.metadata.unwrap().labels, Some(want));
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert_eq!(pod.service_account_name.as_deref(), Some("viaduct-runner"));
        let [c] = &pod.containers[..] else { panic!("one container: {:?}", pod.containers) };
        assert_eq!(c.image.as_deref(), Some("registry.example/viaduct-runner:1"));
        assert_eq!(c.command, Some(vec!["viaduct-runner".to_string()]));
        let args = c.args.clone().unwrap();
        assert_eq!(
            args,
            [
                "--server",
                "https://ci.example",
                "--token-file",
                "/run/viaduct/token",
                "--ephemeral",
                "--name",
                "auto-42-1-0a1b2c",
                "--work-dir",
                "/var/lib/viaduct-runner",
                "--labels",
                "linux"
            ]
        );
        assert!(c.env.is_none() && c.env_from.is_none(), "{c:?}");
        let resources = c.resources.clone().unwrap();
        let cpu = BTreeMap::from([("cpu".to_string(), Quantity("2".into()))]);
        assert_eq!((resources.requests, resources.limits), (Some(cpu.clone()), Some(cpu)));
        // The Secret of the same name, read-only at /run/viaduct, 0400.
        let [m] = &c.volume_mounts.clone().unwrap()[..] else { panic!("one mount") };
        assert_eq!((m.name.as_str(), m.mount_path.as_str(), m.read_only), ("token", "/run/viaduct", Some(true)));
        let [v] = &pod.volumes.unwrap()[..] else { panic!("one volume") };
        let s = v.secret.as_ref().unwrap();
        assert_eq!(
            (v.name.as_str(), s.secret_name.as_deref(), s.default_mode),
            ("token", Some("auto-42-1-0a1b2c"), Some(0o400))
        );
        assert!(s.items.is_none() && s.optional.is_none());
    }

    #[test]
    fn the_secret_holds_the_token_and_belongs_to_the_job() {
        let owner = owned_by("auto-42-1-0a1b2c", "0b5e7c1e-uid".into());
        let secret = settings().secret(&launch(), TOKEN.as_bytes().to_vec(), Some(owner));
        assert_eq!(secret.metadata.name.as_deref(), Some("auto-42-1-0a1b2c"));
        assert_eq!(secret.type_.as_deref(), Some("Opaque"));
        let data = secret.data.unwrap();
        assert_eq!(data.keys().collect::<Vec<_>>(), ["token"]);
        assert_eq!(data["token"].0, TOKEN.as_bytes());
        assert!(secret.string_data.is_none());
        let [o] = &secret.metadata.owner_references.unwrap()[..] else { panic!("one owner") };
        assert_eq!((o.api_version.as_str(), o.kind.as_str(), o.name.as_str()), ("batch/v1", "Job", "auto-42-1-0a1b2c"));
        assert_eq!((o.uid.as_str(), o.block_owner_deletion), ("0b5e7c1e-uid", Some(false)));
        let labels = secret.metadata.labels.unwrap();
        assert_eq!((labels[JOB_LABEL].as_str(), labels[OWNER_LABEL].as_str()), ("42.1", "0123456789abcdef"));
    }

    #[test]
    fn without_limits_or_a_lifetime_the_job_has_none() {
        let s = JobSettings { cpu: None, memory: None, max_lifetime: None, service_account: None, ..settings() };
        let spec = s.job(&launch()).spec.unwrap();
        assert_eq!(spec.active_deadline_seconds, None);
        let pod = spec.template.spec.unwrap();
        assert!(pod.containers[0].resources.is_none());
        assert_eq!((pod.service_account_name, pod.automount_service_account_token), (None, Some(false)));
    }

    #[test]
    fn label_values_keep_to_what_kubernetes_allows() {
        assert_eq!(label_value("42.1"), "42.1");
        assert_eq!(label_value("run/7 job"), "run-7-job");
        assert_eq!(label_value(".x_"), "x");
        assert_eq!(label_value(&"a".repeat(80)).len(), 63);
    }

    #[test]
    fn a_job_is_finished_once_it_succeeded_failed_or_is_being_deleted() {
        let with = |status: Option<JobStatus>| Job { status, ..Default::default() };
        let condition = |t: &str, s: &str| JobCondition { type_: t.into(), status: s.into(), ..Default::default() };
        assert!(!finished(&with(None)));
        assert!(!finished(&with(Some(JobStatus { active: Some(1), ..Default::default() }))));
        assert!(finished(&with(Some(JobStatus { succeeded: Some(1), ..Default::default() }))));
        assert!(finished(&with(Some(JobStatus { failed: Some(1), ..Default::default() }))));
        let cond = |t, s| with(Some(JobStatus { conditions: Some(vec![condition(t, s)]), ..Default::default() }));
        assert!(finished(&cond("Complete", "True")));
        assert!(finished(&cond("Failed", "True")));
        assert!(!finished(&cond("Failed", "False")));
        assert!(!finished(&cond("Suspended", "True")));
        let mut deleting = with(None);
        deleting.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        assert!(finished(&deleting));
    }
}
