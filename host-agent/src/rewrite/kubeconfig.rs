//! The kubeconfig edit: pure text in, text and report out.

use super::edit::{Editor, NewValue, Place, Step, at, key};
use super::names::generation;
use super::yaml::{self, Node, YamlError};

/// What the kubeconfig should say after the rewrite.
#[derive(Debug, Clone)]
pub struct KubeTarget {
    /// Cluster name as configured; `-N` re-creations are followed.
    pub cluster: String,
    /// `https://<forward listen>`.
    pub server: String,
    /// Set when the listen address is not one the certificate names.
    pub tls_server_name: Option<String>,
    pub insecure_skip_tls_verify: bool,
    pub prune_stale: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeReport {
    /// The cluster entry that was pointed at the forward.
    pub cluster: String,
    pub previous_server: Option<String>,
    /// Contexts of older generations whose loopback port is dead.
    pub stale: Vec<String>,
    pub pruned: Vec<String>,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Edited<R> {
    pub text: String,
    pub changed: bool,
    pub report: R,
}

struct Entry<'n> {
    index: usize,
    name: &'n str,
    body: &'n Node,
}

struct Kubeconfig<'n> {
    root: &'n Node,
    clusters: Vec<Entry<'n>>,
    contexts: Vec<Entry<'n>>,
    users: Vec<Entry<'n>>,
}

/// Whether `text` holds a cluster (or context) of `base`'s family.
pub fn holds_cluster(text: &str, base: &str) -> Result<bool, YamlError> {
    let Some(root) = yaml::parse(text)? else {
        return Ok(false);
    };
    let config = Kubeconfig::read(&root)?;
    Ok(config.choose(base).is_some())
}

/// Point the newest cluster of `target.cluster`'s family at the forward.
/// `is_dead(host, port)` says whether a loopback server no longer answers.
pub fn rewrite(
    text: &str,
    target: &KubeTarget,
    is_dead: &mut dyn FnMut(&str, u16) -> bool,
) -> Result<Edited<KubeReport>, YamlError> {
    let root = yaml::parse(text)?.ok_or_else(|| YamlError {
        line: 1,
        problem: "the file is empty; expected a kubeconfig".into(),
    })?;
    let config = Kubeconfig::read(&root)?;
    let chosen = config.choose(&target.cluster).ok_or_else(|| YamlError {
        line: root.get("clusters").map_or(1, |c| c.line),
        problem: format!(
            "no cluster named \"{0}\" or \"{0}-N\" (nor a context of that name); \
             create it with `talosctl cluster create --name {0}` or set [kubeconfig] cluster",
            target.cluster
        ),
    })?;
    let mut report = KubeReport {
        cluster: chosen.name.to_string(),
        previous_server: chosen
            .body
            .get("server")
            .and_then(Node::as_str)
            .map(str::to_string),
        ..KubeReport::default()
    };
    let mut editor = Editor::new(text, root.clone());
    let cluster_path = [key("clusters"), Step::Index(chosen.index), key("cluster")];

    set_or_insert(
        &mut editor,
        chosen.body,
        &cluster_path,
        "server",
        NewValue::String(target.server.clone()),
    )?;
    if target.insecure_skip_tls_verify {
        set_or_insert(
            &mut editor,
            chosen.body,
            &cluster_path,
            "insecure-skip-tls-verify",
            NewValue::Literal("true".into()),
        )?;
        // client-go refuses a CA together with insecure-skip-tls-verify.
        editor.remove_entry(&cluster_path, "certificate-authority")?;
        editor.remove_entry(&cluster_path, "certificate-authority-data")?;
    } else if let Some(name) = &target.tls_server_name {
        set_or_insert(
            &mut editor,
            chosen.body,
            &cluster_path,
            "tls-server-name",
            NewValue::String(name.clone()),
        )?;
    }
    let has_ca = ["certificate-authority", "certificate-authority-data"]
        .iter()
        .any(|k| chosen.body.get(k).is_some());
    let insecure_now = chosen
        .body
        .get("insecure-skip-tls-verify")
        .and_then(Node::as_str)
        == Some("true");
    if !target.insecure_skip_tls_verify && insecure_now && has_ca {
        // kubectl refuses the pair ("specifying a root certificates file
        // with the insecure flag is not allowed"): the CA is there, so the
        // stray flag goes and TLS is verified.
        editor.remove_entry(&cluster_path, "insecure-skip-tls-verify")?;
        report.warnings.push(format!(
            "cluster \"{}\" had both a certificate-authority and insecure-skip-tls-verify: true, \
             which kubectl refuses; removed insecure-skip-tls-verify and kept the CA, so TLS is \
             verified (set insecure_skip_tls_verify in [kubeconfig] to skip verification instead)",
            chosen.name
        ));
    } else if !target.insecure_skip_tls_verify && insecure_now {
        report.warnings.push(format!(
            "cluster \"{}\" has insecure-skip-tls-verify: true and no certificate-authority, \
             although [kubeconfig] does not ask for it; TLS is not verified (restore its \
             certificate-authority-data from `talosctl kubeconfig`)",
            chosen.name
        ));
    } else if !target.insecure_skip_tls_verify && !has_ca {
        report.warnings.push(format!(
            "cluster \"{}\" has no certificate-authority; kubectl will check the apiserver against the system roots",
            chosen.name
        ));
    }

    // Stale contexts: older generations pointing at a loopback port that no
    // longer answers (the seed's `admin@joelclaw` on dead port 63324).
    let mut stale = Vec::new();
    for context in &config.contexts {
        let cluster_name = context
            .body
            .get("cluster")
            .and_then(Node::as_str)
            .unwrap_or_default();
        let family = generation(context.name, &target.cluster).is_some()
            || generation(cluster_name, &target.cluster).is_some();
        if !family || cluster_name == chosen.name {
            continue;
        }
        let server = config
            .cluster(cluster_name)
            .and_then(|c| c.body.get("server"))
            .and_then(Node::as_str);
        if let Some((host, port)) = server.and_then(loopback_port)
            && is_dead(&host, port)
        {
            stale.push(context);
        }
    }
    report.stale = stale.iter().map(|c| c.name.to_string()).collect();

    if target.prune_stale && !stale.is_empty() {
        prune(
            &mut editor,
            &config,
            &stale,
            chosen,
            &target.cluster,
            &mut report,
        )?;
    }

    if let Some(current) = current_elsewhere(&config, chosen, &target.cluster)
        && !report.pruned.iter().any(|p| p == current)
    {
        report.warnings.push(format!(
            "current-context \"{current}\" uses an older generation, not cluster \"{}\"; \
             `kubectl config use-context` a context of \"{}\"",
            chosen.name, chosen.name
        ));
    }
    let changed = editor.changed();
    let text = editor.finish()?;
    Ok(Edited {
        text,
        changed,
        report,
    })
}

/// The current context, when it belongs to `base`'s family but uses
/// another cluster than the rewritten one (after a re-create).
fn current_elsewhere<'n>(
    config: &Kubeconfig<'n>,
    chosen: &Entry<'n>,
    base: &str,
) -> Option<&'n str> {
    let current = config.root.get("current-context")?.as_str()?;
    let context = config.contexts.iter().find(|c| c.name == current)?;
    let cluster = context.body.get("cluster")?.as_str()?;
    let family = generation(current, base).is_some() || generation(cluster, base).is_some();
    (family && cluster != chosen.name).then_some(current)
}

/// Remove the stale contexts, and the clusters and users only they used.
fn prune(
    editor: &mut Editor<'_>,
    config: &Kubeconfig<'_>,
    stale: &[&Entry<'_>],
    chosen: &Entry<'_>,
    base: &str,
    report: &mut KubeReport,
) -> Result<(), YamlError> {
    let is_stale = |c: &Entry<'_>| stale.iter().any(|s| s.index == c.index);
    let remaining: Vec<&Entry<'_>> = config.contexts.iter().filter(|c| !is_stale(c)).collect();
    let used_by_remaining = |field: &str, name: &str| {
        remaining
            .iter()
            .any(|c| c.body.get(field).and_then(Node::as_str) == Some(name))
    };
    let current = config.root.get("current-context").and_then(Node::as_str);
    if let Some(current) = current.filter(|cur| stale.iter().any(|s| s.name == *cur)) {
        let replacement = remaining
            .iter()
            .filter(|c| c.body.get("cluster").and_then(Node::as_str) == Some(chosen.name))
            .max_by_key(|c| generation(c.name, base));
        match replacement {
            Some(r) => editor.set_scalar(&[key("current-context")], r.name, false)?,
            None => {
                report.warnings.push(format!(
                    "current-context \"{current}\" is stale but no context uses cluster \"{}\"; not pruned",
                    chosen.name
                ));
                return Ok(());
            }
        }
    }
    let mut drop_clusters: Vec<usize> = Vec::new();
    let mut drop_users: Vec<usize> = Vec::new();
    for context in stale {
        for (field, list, drop) in [
            ("cluster", &config.clusters, &mut drop_clusters),
            ("user", &config.users, &mut drop_users),
        ] {
            let Some(name) = context.body.get(field).and_then(Node::as_str) else {
                continue;
            };
            if name == chosen.name || used_by_remaining(field, name) {
                continue;
            }
            drop.extend(list.iter().filter(|e| e.name == name).map(|e| e.index));
        }
    }
    let mut drop_contexts: Vec<usize> = stale.iter().map(|c| c.index).collect();
    for (list, drop) in [
        ("contexts", &mut drop_contexts),
        ("clusters", &mut drop_clusters),
        ("users", &mut drop_users),
    ] {
        drop.sort_unstable();
        drop.dedup();
        for &i in drop.iter().rev() {
            editor.remove_item(&[key(list)], i)?;
        }
    }
    report.pruned = stale.iter().map(|c| c.name.to_string()).collect();
    Ok(())
}

fn set_or_insert(
    editor: &mut Editor<'_>,
    map: &Node,
    path: &[Step],
    field: &str,
    value: NewValue,
) -> Result<(), YamlError> {
    let mut full = path.to_vec();
    full.push(key(field));
    match (map.get(field), value) {
        (Some(_), NewValue::String(v)) => editor.set_scalar(&full, &v, false),
        (Some(_), NewValue::Literal(v)) => editor.set_scalar(&full, &v, true),
        (Some(_), NewValue::List(v)) => editor.set_list(&full, &v),
        (None, value) => {
            // kubectl writes keys sorted; keep that order.
            let before = map
                .entries()
                .unwrap_or_default()
                .iter()
                .filter_map(|(k, _)| k.as_str())
                .filter(|k| *k < field)
                .max();
            let place = before.map_or(Place::First, Place::After);
            editor.insert_entry(path, field, value, place)
        }
    }
}

/// `https://127.0.0.1:63324` -> ("127.0.0.1", 63324), loopback hosts only.
fn loopback_port(server: &str) -> Option<(String, u16)> {
    let rest = server
        .strip_prefix("https://")
        .or_else(|| server.strip_prefix("http://"))?;
    let authority = rest.split('/').next()?;
    let (host, port) = authority.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.parse().ok()?;
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    loopback.then(|| (host.to_string(), port))
}

impl<'n> Kubeconfig<'n> {
    fn read(root: &'n Node) -> Result<Self, YamlError> {
        if root.entries().is_none() {
            return Err(at(
                root,
                "expected a kubeconfig (a mapping with apiVersion, clusters, contexts, users)",
            ));
        }
        Ok(Kubeconfig {
            root,
            clusters: named_list(root, "clusters", "cluster")?,
            contexts: named_list(root, "contexts", "context")?,
            users: named_list(root, "users", "user")?,
        })
    }

    fn cluster(&self, name: &str) -> Option<&Entry<'n>> {
        self.clusters.iter().find(|c| c.name == name)
    }

    /// The newest generation of `base`, by cluster name or by context name.
    fn choose(&self, base: &str) -> Option<&Entry<'n>> {
        let by_cluster = self
            .clusters
            .iter()
            .filter_map(|c| Some(((generation(c.name, base)?, true), c)));
        let by_context = self.contexts.iter().filter_map(|ctx| {
            let generation = generation(ctx.name, base)?;
            let cluster = self.cluster(ctx.body.get("cluster")?.as_str()?)?;
            Some(((generation, false), cluster))
        });
        by_cluster
            .chain(by_context)
            .max_by_key(|(rank, _)| *rank)
            .map(|(_, c)| c)
    }
}

/// `clusters:` as a list of `{name, cluster: {...}}`; missing or null is
/// empty, anything else names the line and what was expected.
fn named_list<'n>(root: &'n Node, list: &str, body: &str) -> Result<Vec<Entry<'n>>, YamlError> {
    let Some(node) = root.get(list) else {
        return Ok(Vec::new());
    };
    if node.is_null() {
        return Ok(Vec::new());
    }
    let items = node.items().ok_or_else(|| {
        at(
            node,
            &format!("`{list}`: expected a list of {{name, {body}}}"),
        )
    })?;
    items
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let name = item.get("name").and_then(Node::as_str);
            let inner = item.get(body).filter(|b| b.entries().is_some());
            match (name, inner) {
                (Some(name), Some(inner)) => Ok(Entry {
                    index,
                    name,
                    body: inner,
                }),
                _ => Err(at(
                    item,
                    &format!(
                        "`{list}[{index}]`: expected `name: <string>` and a `{body}:` mapping"
                    ),
                )),
            }
        })
        .collect()
}
