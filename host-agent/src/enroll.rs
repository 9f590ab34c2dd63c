//! `portplane-agent enroll`: get this host its controller credential with
//! the user's own cluster access, so nobody copies tokens by hand.
//!
//! With the kubeconfig the agent rewrites (`KUBECONFIG` wins; the newest
//! generation of `[kubeconfig] cluster`), it creates or reuses ServiceAccount
//! `portplane-agent-<name>` in `[controller] namespace` (the controller maps
//! exactly that ServiceAccount to agent `<name>`), asks for a token bound to
//! the audience `portplane.dev/agent` (TokenRequest) and writes it to
//! `[controller] token_file`, mode 0600.
//!
//! Rights needed (the user's, not the controller's): `get`/`create`
//! serviceaccounts and `create` serviceaccounts/token in that namespace.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::config::AgentConfig;
use crate::rewrite::Env;
use crate::rewrite::apply::kubeconfig_path;
use crate::rewrite::names::generation;
use crate::token;

/// ServiceAccount `portplane-agent-<name>` is agent `<name>` (the
/// controller's `auth::SERVICE_ACCOUNT_PREFIX`).
pub const SERVICE_ACCOUNT_PREFIX: &str = "portplane-agent-";

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("{path}: no [controller] section; enroll needs one (endpoint = \"https://...:50051\")")]
    NoController { path: PathBuf },
    #[error(
        "{path}: `name`: {name:?} cannot name a ServiceAccount ({SERVICE_ACCOUNT_PREFIX}{name}); \
         expected lowercase letters, digits and '-', at most {max} characters"
    )]
    BadName {
        path: PathBuf,
        name: String,
        max: usize,
    },
    #[error("{0}")]
    Kubeconfig(String),
    #[error("{0}")]
    Api(String),
    #[error(transparent)]
    Token(#[from] token::TokenError),
}

/// What enroll did, in words for the terminal.
#[derive(Debug)]
pub struct Enrolled {
    pub service_account: String,
    pub namespace: String,
    pub created: bool,
    pub token_file: PathBuf,
    pub expires: Option<SystemTime>,
    /// Where the controller's CA was written, or why it was not.
    pub ca: Result<PathBuf, String>,
}

impl std::fmt::Display for Enrolled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ServiceAccount {}/{} ({}); token for audience {} written to {} (mode 0600)",
            self.namespace,
            self.service_account,
            if self.created { "created" } else { "reused" },
            token::AUDIENCE,
            self.token_file.display()
        )?;
        if let Some(exp) = self
            .expires
            .and_then(|e| e.duration_since(SystemTime::now()).ok())
        {
            write!(f, ", valid for {} days", exp.as_secs() / 86_400)?;
        }
        match &self.ca {
            Ok(path) => write!(f, "; controller CA written to {}", path.display()),
            Err(why) => write!(f, "; controller CA not written: {why}"),
        }
    }
}

/// Enroll the host `config` (read from `config_path`) describes; the token
/// is requested for `lifetime` (the API server may shorten it).
pub async fn enroll(
    config: &AgentConfig,
    config_path: &std::path::Path,
    env: &Env,
    lifetime: Duration,
) -> Result<Enrolled, EnrollError> {
    let controller = config
        .controller
        .as_ref()
        .ok_or_else(|| EnrollError::NoController {
            path: config_path.into(),
        })?;
    let service_account = format!("{SERVICE_ACCOUNT_PREFIX}{}", config.name);
    if !portplane_core::names::is_lowercase_dns_label(&service_account) {
        return Err(EnrollError::BadName {
            path: config_path.into(),
            name: config.name.clone(),
            max: 63 - SERVICE_ACCOUNT_PREFIX.len(),
        });
    }
    let token_file = controller.token_file.clone().ok_or_else(|| {
        EnrollError::Kubeconfig(format!(
            "{}: `controller.token_file`: expected a path",
            config_path.display()
        ))
    })?;
    let client = client(config, env).await?;
    let namespace = controller.namespace.clone();
    let api: Api<ServiceAccount> = Api::namespaced(client, &namespace);
    let api_err = |what: &str, e: kube::Error| {
        let hint = match &e {
            kube::Error::Api(s) if s.code == 403 => format!(
                " (your kubeconfig's user needs get/create serviceaccounts and create \
                 serviceaccounts/token in namespace {namespace})"
            ),
            kube::Error::Api(s) if s.code == 404 => format!(
                " (does namespace {namespace} exist? install the controller there first, \
                 or set [controller] namespace)"
            ),
            _ => String::new(),
        };
        EnrollError::Api(format!(
            "{what} ServiceAccount {namespace}/{service_account}: {e}{hint}"
        ))
    };
    let created = match api
        .get_opt(&service_account)
        .await
        .map_err(|e| api_err("cannot read", e))?
    {
        Some(_) => false,
        None => {
            let sa = ServiceAccount {
                metadata: ObjectMeta {
                    name: Some(service_account.clone()),
                    labels: Some(
                        [
                            ("app.kubernetes.io/managed-by", "portplane-agent"),
                            ("portplane.dev/agent", config.name.as_str()),
                        ]
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ),
                    ..Default::default()
                },
                ..Default::default()
            };
            match api.create(&PostParams::default(), &sa).await {
                Ok(_) => true,
                // Created by a concurrent enroll: reuse it.
                Err(kube::Error::Api(s)) if s.code == 409 => false,
                Err(e) => return Err(api_err("cannot create", e)),
            }
        }
    };
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec![token::AUDIENCE.into()]),
            expiration_seconds: Some(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX)),
            ..Default::default()
        }),
        ..Default::default()
    };
    let issued = api
        .create_token_request(&service_account, &PostParams::default(), &request)
        .await
        .map_err(|e| api_err("cannot get a token for", e))?;
    let value = issued
        .status
        .and_then(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            EnrollError::Api(format!(
                "the API server issued no token for ServiceAccount {namespace}/{service_account}"
            ))
        })?;
    token::write(&token_file, &value)?;
    let ca = match &controller.ca_file {
        Some(path) => {
            let configmaps: Api<ConfigMap> = Api::namespaced(api.into_client(), &namespace);
            write_ca(&configmaps, &controller.ca_configmap, path).await
        }
        None => Err("no [controller] ca_file".into()),
    };
    Ok(Enrolled {
        service_account,
        namespace,
        created,
        token_file,
        expires: token::expiry(&value),
        ca,
    })
}

/// Copy `ca.crt` of the chart's ConfigMap `name` to `path`. Not fatal when
/// absent: a controller certificate from a public CA needs none.
async fn write_ca(
    configmaps: &Api<ConfigMap>,
    name: &str,
    path: &std::path::Path,
) -> Result<PathBuf, String> {
    let found = configmaps
        .get_opt(name)
        .await
        .map_err(|e| format!("cannot read ConfigMap {name}: {e}"))?
        .ok_or_else(|| {
            format!(
                "no ConfigMap {name} (the chart publishes it when it serves TLS); \
                 the controller's certificate must then chain to a system root"
            )
        })?;
    let pem = found
        .data
        .and_then(|d| d.get("ca.crt").cloned())
        .filter(|pem| pem.contains("-----BEGIN CERTIFICATE-----"))
        .ok_or_else(|| format!("ConfigMap {name} has no PEM ca.crt"))?;
    token::write_file(path, &pem).map_err(|e| e.to_string())?;
    Ok(path.to_path_buf())
}

/// A client with the credentials of the kubeconfig the agent rewrites, on
/// the newest generation of `[kubeconfig] cluster`.
async fn client(config: &AgentConfig, env: &Env) -> Result<kube::Client, EnrollError> {
    let path = kubeconfig_path(&config.rewrite_plan(), env)
        .map_err(|e| EnrollError::Kubeconfig(e.to_string()))?;
    let kubeconfig = Kubeconfig::read_from(&path)
        .map_err(|e| EnrollError::Kubeconfig(format!("{}: {e}", path.display())))?;
    let base = &config.kubeconfig.cluster;
    let context = kubeconfig
        .contexts
        .iter()
        .filter_map(|c| {
            let cluster = &c.context.as_ref()?.cluster;
            Some((generation(cluster, base)?, c.name.clone()))
        })
        // Newest generation; among equals, the current context.
        .max_by_key(|(g, name)| (*g, kubeconfig.current_context.as_ref() == Some(name)))
        .map(|(_, name)| name)
        .ok_or_else(|| {
            EnrollError::Kubeconfig(format!(
                "{}: no context uses cluster {base:?} (or a newer generation of it); \
                 expected the cluster named by [kubeconfig] cluster",
                path.display()
            ))
        })?;
    let options = KubeConfigOptions {
        context: Some(context.clone()),
        ..Default::default()
    };
    let kube_config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|e| {
            EnrollError::Kubeconfig(format!("{} context {context:?}: {e}", path.display()))
        })?;
    kube::Client::try_from(kube_config)
        .map_err(|e| EnrollError::Kubeconfig(format!("{}: {e}", path.display())))
}
