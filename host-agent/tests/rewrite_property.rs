//! Arbitrary extra keys, anywhere in a realistic kubeconfig or talosconfig,
//! survive a rewrite: the result, read by an independent YAML parser
//! (libyaml, via yaml_serde), is the input with only the intended values
//! changed.
#![allow(clippy::unwrap_used)]

use portplane_agent::rewrite::kubeconfig::{self, KubeTarget};
use portplane_agent::rewrite::talosconfig::{self, TalosTarget};
use proptest::prelude::*;
use yaml_serde::Value;

mod fixtures_support;
use fixtures_support::fixture;

/// A value as YAML text at `indent`: a string (plain or double-quoted), a
/// flow list, or a nested block mapping.
#[derive(Debug, Clone)]
enum Extra {
    Str(String),
    List(Vec<String>),
    Map(Vec<(String, String)>),
}

fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

fn extra() -> impl Strategy<Value = (String, Extra)> {
    let key = "x-[a-z0-9_.-]{1,10}";
    let text = "[ -~]{0,20}";
    let value = prop_oneof![
        text.prop_map(Extra::Str),
        prop::collection::vec(text, 0..3).prop_map(Extra::List),
        prop::collection::vec(("[a-z]{1,6}", text), 1..3).prop_map(Extra::Map),
    ];
    (key, value)
}

fn render(entries: &[(String, Extra)], indent: usize) -> String {
    let pad = " ".repeat(indent);
    let mut out = String::new();
    let mut seen = std::collections::BTreeSet::new();
    for (key, value) in entries {
        if !seen.insert(key) {
            continue;
        }
        match value {
            Extra::Str(s) => out.push_str(&format!("{pad}{key}: {}\n", quoted(s))),
            Extra::List(items) => {
                let items: Vec<String> = items.iter().map(|s| quoted(s)).collect();
                out.push_str(&format!("{pad}{key}: [{}]\n", items.join(", ")));
            }
            Extra::Map(entries) => {
                out.push_str(&format!("{pad}{key}:\n"));
                let mut inner = std::collections::BTreeSet::new();
                for (k, v) in entries {
                    if inner.insert(k) {
                        out.push_str(&format!("{pad}  {k}: {}\n", quoted(v)));
                    }
                }
            }
        }
    }
    out
}

/// Insert `extra` before the first line equal to `anchor`.
fn insert_before(text: &str, anchor: &str, extra: &str) -> String {
    let at = text.find(&format!("\n{anchor}\n")).unwrap() + 1;
    format!("{}{}{}", &text[..at], extra, &text[at..])
}

fn parse(text: &str) -> Value {
    yaml_serde::from_str(text).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        // The default persistence: the checked-in
        // rewrite_property.proptest-regressions is replayed first.
        ..ProptestConfig::default()
    })]

    #[test]
    fn kubeconfig_extra_keys_survive(
        top in prop::collection::vec(extra(), 0..4),
        in_cluster in prop::collection::vec(extra(), 0..4),
        in_other_cluster in prop::collection::vec(extra(), 0..3),
        in_user in prop::collection::vec(extra(), 0..3),
        in_context in prop::collection::vec(extra(), 0..3),
    ) {
        let mut text = fixture("kubeconfig.two-generations.yaml");
        text = insert_before(&text, "kind: Config", &render(&top, 0));
        text = insert_before(&text, "    server: https://127.0.0.1:64213", &render(&in_cluster, 4));
        text = insert_before(&text, "    server: https://127.0.0.1:58443", &render(&in_other_cluster, 4));
        text = insert_before(&text, "    client-key: /Users/joel/.minikube/profiles/minikube/client.key", &render(&in_user, 4));
        text = insert_before(&text, "    user: admin@joelclaw-1", &render(&in_context, 4));
        let target = KubeTarget {
            cluster: "joelclaw".into(),
            server: "https://127.0.0.1:16443".into(),
            tls_server_name: None,
            insecure_skip_tls_verify: false,
            prune_stale: false,
        };
        let out = kubeconfig::rewrite(&text, &target, &mut |_: &str, _: u16| false).unwrap();
        let mut expected = parse(&text);
        let clusters = expected["clusters"].as_sequence_mut().unwrap();
        let chosen = clusters.iter_mut().find(|c| c["name"] == "joelclaw-1").unwrap();
        chosen["cluster"]["server"] = Value::from("https://127.0.0.1:16443");
        prop_assert_eq!(parse(&out.text), expected);
        // Every byte outside the one changed line is kept.
        let changed: Vec<_> = text.lines().zip(out.text.lines()).filter(|(a, b)| a != b).collect();
        prop_assert_eq!(changed.len(), 1);
    }

    #[test]
    fn talosconfig_extra_keys_survive(
        top in prop::collection::vec(extra(), 0..4),
        in_context in prop::collection::vec(extra(), 0..4),
        in_other in prop::collection::vec(extra(), 0..3),
    ) {
        let mut text = fixture("talosconfig.two-generations.yaml");
        text = insert_before(&text, "contexts:", &render(&top, 0));
        let ca = text.lines().skip_while(|l| *l != "    joelclaw-1:").find(|l| l.starts_with("        ca: ")).unwrap().to_string();
        text = insert_before(&text, &ca, &render(&in_context, 8));
        // Into the older generation `joelclaw` (its first key list).
        text = insert_before(&text, "        nodes:", &render(&in_other, 8));
        let target = TalosTarget {
            context: "joelclaw".into(),
            endpoint: "127.0.0.1:15000".into(),
            node: "10.5.0.2".into(),
        };
        let out = talosconfig::rewrite(&text, &target).unwrap();
        let mut expected = parse(&text);
        let context = &mut expected["contexts"]["joelclaw-1"];
        context["endpoints"] = Value::Sequence(vec![Value::from("127.0.0.1:15000")]);
        context.as_mapping_mut().unwrap().insert(Value::from("nodes"), Value::Sequence(vec![Value::from("10.5.0.2")]));
        prop_assert_eq!(parse(&out.text), expected);
    }
}
