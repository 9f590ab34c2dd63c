//! The kube API through the kube-apiserver forward, with the kubeconfig's
//! own credentials and TLS verified: a `SelfSubjectReview` (POST
//! /apis/authentication.k8s.io/v1/selfsubjectreviews), which every
//! authenticated user may create and which says who the server thinks we are.

use std::path::Path;

use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

#[derive(Debug, thiserror::Error)]
pub enum KubeApiError {
    #[error("{path}: {source}")]
    Kubeconfig {
        path: String,
        source: kube::config::KubeconfigError,
    },
    #[error("{path}: no context uses cluster \"{cluster}\"")]
    NoContext { path: String, cluster: String },
    #[error("{0}")]
    Client(String),
    #[error("the API server answered as anonymous: the kubeconfig's credentials were not accepted")]
    Anonymous,
}

/// Who the API server says we are, asked through `server` (the forward's
/// `https://listen`) with the credentials and CA of the context that uses
/// `cluster` in the kubeconfig at `path`.
pub async fn whoami(path: &Path, cluster: &str, server: &str) -> Result<String, KubeApiError> {
    let shown = path.display().to_string();
    let kubeconfig = Kubeconfig::read_from(path).map_err(|source| KubeApiError::Kubeconfig {
        path: shown.clone(),
        source,
    })?;
    let context = kubeconfig
        .contexts
        .iter()
        .find(|c| c.context.as_ref().is_some_and(|c| c.cluster == cluster))
        .map(|c| c.name.clone())
        .ok_or_else(|| KubeApiError::NoContext {
            path: shown.clone(),
            cluster: cluster.into(),
        })?;
    let options = KubeConfigOptions {
        context: Some(context),
        ..KubeConfigOptions::default()
    };
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|source| KubeApiError::Kubeconfig {
            path: shown,
            source,
        })?;
    // Through the forward, whatever the file says (another check reads it).
    config.cluster_url = server
        .parse()
        .map_err(|e| KubeApiError::Client(format!("{server}: {e}")))?;
    let client = kube::Client::try_from(config).map_err(|e| KubeApiError::Client(e.to_string()))?;
    let review = Api::<SelfSubjectReview>::all(client)
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .map_err(|e| KubeApiError::Client(e.to_string()))?;
    let user = review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .unwrap_or_default();
    if user.is_empty() || user == "system:anonymous" {
        return Err(KubeApiError::Anonymous);
    }
    Ok(user)
}

/// What to do about `e`.
pub fn hint(e: &KubeApiError) -> String {
    match e {
        KubeApiError::Kubeconfig { .. } | KubeApiError::NoContext { .. } => {
            "get a fresh one: talosctl kubeconfig".into()
        }
        KubeApiError::Anonymous => {
            "the kubeconfig's user has no valid credentials: talosctl kubeconfig".into()
        }
        KubeApiError::Client(m) if m.contains("certificate") || m.contains("Certificate") => {
            "TLS failed: the certificate-authority-data is from another cluster generation; get a fresh kubeconfig: talosctl kubeconfig".into()
        }
        KubeApiError::Client(_) => {
            "check the vm (ssh) checks above; `kubectl get nodes` sends the same request".into()
        }
    }
}
