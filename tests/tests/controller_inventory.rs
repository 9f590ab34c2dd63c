//! The real controller binary against the real control plane: Services go in
//! through the real kubectl, OperatorPorts come out, `kubectl get
//! operatorports` shows them. Each test scopes its controller (instance
//! label, Service selector, lease), so tests share one control plane.

use std::time::Duration;

use portplane_e2e::cluster::ControlPlane;
use portplane_e2e::controller::{Controller, Scope, condition, eventually, scoped_config};

fn hostname(o: &serde_json::Value) -> &str {
    o["spec"]["exposures"][0]["hostname"].as_str().unwrap_or("")
}

/// kubectl's table, cut at the header's column starts (empty cells stay empty).
fn parse_table(table: &str) -> Vec<Vec<String>> {
    let mut lines = table.lines();
    let header = lines.next().unwrap_or("");
    let mut starts: Vec<usize> = header
        .match_indices(|c: char| c != ' ')
        .filter(|(i, _)| *i == 0 || header.as_bytes()[i - 1] == b' ')
        .map(|(i, _)| i)
        .collect();
    starts.push(usize::MAX);
    std::iter::once(header)
        .chain(lines)
        .map(|l| {
            starts
                .windows(2)
                .map(|w| {
                    l.get(w[0]..w[1].min(l.len()))
                        .unwrap_or("")
                        .trim()
                        .to_string()
                })
                .collect()
        })
        .collect()
}

#[test]
fn annotate_reannotate_unannotate_delete_and_kubectl_get() {
    let plane = ControlPlane::shared();
    let s = Scope::new(plane, "life");
    let _c = Controller::start(
        plane,
        &scoped_config(
            "life",
            "operatorPorts:\n- {name: life-kube-apiserver, local: '127.0.0.1:16443', target: '10.5.0.2:6443'}\n",
        ),
    );
    // A Service with two ports, not exposed yet: no objects.
    s.apply(&s.service_yaml("web", "ClusterIP", &[(80, None), (443, None)], &[]));
    let op = s.wait_oport("life-kube-apiserver", "operator port published", |_| true);
    assert_eq!(op["spec"]["plane"], "Operator");
    assert_eq!(op["spec"]["target"]["host"], "10.5.0.2");
    assert_eq!(s.oport_names(), ["life-kube-apiserver"]);

    s.kubectl(&[
        "annotate",
        "service",
        "web",
        "-n",
        "life",
        "tailscale.com/expose=true",
    ]);
    for port in ["80", "443"] {
        let o = s.wait_oport(&format!("life.web.{port}"), "exposed and Ready", |o| {
            condition(o, "Ready").is_some_and(|c| c["status"] == "True")
        });
        assert_eq!(
            hostname(&o),
            "life-web",
            "default hostname is <namespace>-<name>"
        );
        assert_eq!(o["spec"]["exposures"][0]["kind"], "TailscaleService");
        assert_eq!(
            o["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "portplane-controller"
        );
    }

    s.kubectl(&[
        "annotate",
        "service",
        "web",
        "-n",
        "life",
        "tailscale.com/hostname=shop",
    ]);
    s.wait_oport("life.web.80", "new hostname", |o| hostname(o) == "shop");
    s.wait_oport("life.web.443", "new hostname", |o| hostname(o) == "shop");

    // The real kubectl output, header included.
    let table = s.kubectl(&["get", "operatorports", "-l", "portplane.dev/instance=life"]);
    let rows = parse_table(&table);
    assert_eq!(
        rows[0],
        [
            "NAME", "PLANE", "SERVICE", "PORT", "ENDPOINT", "OWNER", "READY", "AGE"
        ],
        "{table}"
    );
    let row = |name: &str| {
        rows.iter()
            .find(|r| r[0] == name)
            .unwrap_or_else(|| panic!("{name} not in:\n{table}"))
            .clone()
    };
    assert_eq!(
        row("life.web.80")[1..7],
        ["Runtime", "web", "80", "shop:80", "tailscale", "True"],
        "{table}"
    );
    assert_eq!(row("life.web.443")[3..5], ["443", "shop:443"], "{table}");
    assert_eq!(
        row("life-kube-apiserver")[1..7],
        [
            "Operator",
            "",
            "16443",
            "127.0.0.1:16443",
            "portplane-agent",
            // No agent has reported the tunnel: not known to work.
            "Unknown"
        ],
        "{table}"
    );
    let wide = s.kubectl(&["get", "oport", "life.web.80", "-o", "wide"]);
    assert!(wide.lines().next().unwrap().contains("PROTOCOL"), "{wide}");

    s.kubectl(&[
        "annotate",
        "service",
        "web",
        "-n",
        "life",
        "tailscale.com/expose-",
    ]);
    s.wait_gone("life.web.80");
    s.wait_gone("life.web.443");

    s.kubectl(&[
        "annotate",
        "service",
        "web",
        "-n",
        "life",
        "tailscale.com/expose=true",
    ]);
    s.wait_oport("life.web.80", "exposed again", |_| true);
    s.kubectl(&["delete", "service", "web", "-n", "life"]);
    s.wait_gone("life.web.80");
    s.wait_gone("life.web.443");
    assert_eq!(s.oport_names(), ["life-kube-apiserver"]);
}

#[test]
fn two_services_one_hostname_and_near_miss_get_conditions_and_events() {
    let plane = ControlPlane::shared();
    let s = Scope::new(plane, "dup");
    let _c = Controller::start(plane, &scoped_config("dup", "operatorPorts: []\n"));
    let expose = [
        ("tailscale.com/expose", "true"),
        ("tailscale.com/hostname", "dup-shop"),
    ];
    s.apply(&s.service_yaml("a", "ClusterIP", &[(80, None)], &expose));
    s.apply(&s.service_yaml("b", "ClusterIP", &[(8080, None)], &expose));
    s.apply(&s.service_yaml(
        "typo",
        "ClusterIP",
        &[(81, None), (82, None)],
        &[("tailscale.com/expose", "True")],
    ));

    for (name, other) in [("dup.a.80", "dup/b"), ("dup.b.8080", "dup/a")] {
        let o = s.wait_oport(name, "HostnameConflict", |o| {
            condition(o, "HostnameConflict").is_some_and(|c| c["status"] == "True")
        });
        let c = condition(&o, "HostnameConflict").unwrap();
        assert!(c["message"].as_str().unwrap().contains(other), "{c}");
        assert_eq!(condition(&o, "Ready").unwrap()["status"], "False");
        assert_eq!(
            condition(&o, "Ready").unwrap()["reason"],
            "HostnameConflict"
        );
        assert!(c["lastTransitionTime"].is_string() && o["status"]["observedGeneration"].is_i64());
    }
    let typo = s.wait_oport("dup.typo.81", "near miss", |o| {
        condition(o, "ExposeAnnotationIgnored").is_some()
    });
    assert_eq!(typo["spec"]["owner"], "none");
    assert!(
        condition(&typo, "ExposeAnnotationIgnored").unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("will not expose")
    );

    // One Warning Event per problem, on the Service.
    let events = eventually(Duration::from_secs(20), "events on the Services", || {
        let out = s.kubectl(&[
            "get",
            "events",
            "-n",
            "dup",
            "-o",
            "jsonpath={range .items[*]}{.involvedObject.name} {.reason} {.type}{\"\\n\"}{end}",
        ]);
        let want = [
            "a HostnameConflict Warning",
            "b HostnameConflict Warning",
            "typo ExposeAnnotationIgnored Warning",
        ];
        want.iter()
            .all(|w| out.lines().any(|l| l == *w))
            .then_some(out)
    });
    assert_eq!(
        events
            .lines()
            .filter(|l| l.contains("HostnameConflict"))
            .count(),
        2,
        "{events}"
    );
    // The near miss shows on both of typo's ports; the Service hears of it once.
    assert_eq!(
        events
            .lines()
            .filter(|l| l.contains("ExposeAnnotationIgnored"))
            .count(),
        1,
        "{events}"
    );

    // Fixing the conflict clears the condition and makes both Ready.
    s.kubectl(&[
        "annotate",
        "service",
        "b",
        "-n",
        "dup",
        "--overwrite",
        "tailscale.com/hostname=dup-api",
    ]);
    s.wait_oport("dup.a.80", "Ready again", |o| {
        condition(o, "Ready").is_some_and(|c| c["status"] == "True")
            && condition(o, "HostnameConflict").is_none()
    });
}

#[test]
fn proxy_secret_appearing_later_replaces_the_predicted_fqdn() {
    let plane = ControlPlane::shared();
    let s = Scope::new(plane, "fqdn");
    let _c = Controller::start(
        plane,
        &scoped_config(
            "fqdn",
            "operatorPorts: []\ntailnetDomain: tail1234.ts.net\n",
        ),
    );
    s.apply(&s.service_yaml(
        "redis",
        "ClusterIP",
        &[(6379, None)],
        &[("tailscale.com/expose", "true")],
    ));
    let o = s.wait_oport("fqdn.redis.6379", "predicted", |o| {
        o["spec"]["exposures"][0]["fqdnSource"] == "Predicted"
    });
    assert_eq!(
        o["spec"]["exposures"][0]["fqdn"],
        "fqdn-redis.tail1234.ts.net"
    );
    assert_eq!(o["spec"]["endpoint"], "fqdn-redis.tail1234.ts.net:6379");

    // The Tailscale operator's proxy state Secret, as it writes it.
    s.apply(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: ts-redis-x7k2p-0\n  namespace: ts-fqdn\n  labels:\n    tailscale.com/managed: \"true\"\n    tailscale.com/parent-resource: redis\n    tailscale.com/parent-resource-ns: fqdn\n    tailscale.com/parent-resource-type: svc\nstringData:\n  device_fqdn: fqdn-redis-1.tail1234.ts.net.\n  device_ips: '[\"100.64.0.7\",\"fd7a:115c:a1e0::7\"]'\n",
    );
    let o = s.wait_oport("fqdn.redis.6379", "from the proxy Secret", |o| {
        o["spec"]["exposures"][0]["fqdnSource"] == "ProxySecret"
    });
    let e = &o["spec"]["exposures"][0];
    assert_eq!(
        e["fqdn"], "fqdn-redis-1.tail1234.ts.net",
        "trailing dot dropped"
    );
    assert_eq!(
        e["tailnetIps"],
        serde_json::json!(["100.64.0.7", "fd7a:115c:a1e0::7"])
    );
    assert_eq!(o["spec"]["endpoint"], "fqdn-redis-1.tail1234.ts.net:6379");
}

#[test]
fn tailscale_load_balancer_service_uses_its_ingress_status() {
    let plane = ControlPlane::shared();
    let s = Scope::new(plane, "lb");
    let _c = Controller::start(plane, &scoped_config("lb", "operatorPorts: []\n"));
    let mut y = s.service_yaml("qdrant", "LoadBalancer", &[(6333, None), (6334, None)], &[]);
    y.push_str("  loadBalancerClass: tailscale\n");
    s.apply(&y);
    s.apply(&s.service_yaml("other", "LoadBalancer", &[(80, None)], &[]));
    let o = s.wait_oport("lb.qdrant.6333", "LoadBalancer exposure", |_| true);
    assert_eq!(o["spec"]["exposures"][0]["kind"], "TailscaleLoadBalancer");
    assert!(o["spec"]["exposures"][0].get("fqdn").is_none());

    // What the Tailscale operator writes once the proxy is up.
    s.kubectl(&[
        "patch", "service", "qdrant", "-n", "lb", "--subresource=status", "--type=merge", "-p",
        r#"{"status":{"loadBalancer":{"ingress":[{"hostname":"lb-qdrant.tail1234.ts.net"},{"ip":"100.64.0.9"}]}}}"#,
    ]);
    for name in ["lb.qdrant.6333", "lb.qdrant.6334"] {
        let o = s.wait_oport(name, "fqdn from status", |o| {
            o["spec"]["exposures"][0]["fqdnSource"] == "LoadBalancerStatus"
        });
        assert_eq!(
            o["spec"]["exposures"][0]["fqdn"],
            "lb-qdrant.tail1234.ts.net"
        );
        assert_eq!(
            o["spec"]["exposures"][0]["tailnetIps"],
            serde_json::json!(["100.64.0.9"])
        );
    }
    assert_eq!(
        s.oport_names(),
        ["lb.qdrant.6333", "lb.qdrant.6334"],
        "a LoadBalancer of another class is not inventoried"
    );
}

#[test]
fn killed_and_restarted_controller_converges_without_duplicates_or_orphans() {
    let plane = ControlPlane::shared();
    let s = Scope::new(plane, "crash");
    let mut c = Controller::start(plane, &scoped_config("crash", "operatorPorts: []\n"));
    let expose = [("tailscale.com/expose", "true")];
    for name in ["one", "two", "three"] {
        s.apply(&s.service_yaml(name, "ClusterIP", &[(80, None)], &expose));
    }
    eventually(Duration::from_secs(30), "three objects", || {
        (s.oport_names().len() == 3).then_some(())
    });

    c.kill();
    // While it is down: one Service goes, one comes, one changes hostname.
    s.kubectl(&["delete", "service", "two", "-n", "crash"]);
    s.apply(&s.service_yaml("four", "ClusterIP", &[(80, None)], &expose));
    s.kubectl(&[
        "annotate",
        "service",
        "three",
        "-n",
        "crash",
        "tailscale.com/hostname=tres",
    ]);
    c.restart();
    assert_eq!(c.get("/healthz").map(|(code, _)| code), Some(200));
    assert_eq!(
        c.get("/readyz").map(|(code, _)| code),
        Some(200),
        "ready once every watch synced"
    );

    let want = ["crash.four.80", "crash.one.80", "crash.three.80"];
    eventually(Duration::from_secs(30), "converged after restart", || {
        (s.oport_names() == want).then_some(())
    });
    s.wait_oport("crash.three.80", "hostname changed while down", |o| {
        hostname(o) == "tres"
    });

    // Settled: further resyncs (every 2 s here) write nothing.
    let settled = eventually(Duration::from_secs(20), "writes settle", || {
        let before = c.writes();
        std::thread::sleep(Duration::from_millis(500));
        (c.writes() == before).then_some(before)
    });
    let reconciles = c.metric("portplane_reconciles_total").unwrap();
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        c.metric("portplane_reconciles_total").unwrap() > reconciles,
        "resyncs ran"
    );
    assert_eq!(
        c.writes(),
        settled,
        "a resync with nothing changed wrote; log:\n{}",
        c.log_text()
    );
    assert_eq!(s.oport_names(), want);
}

#[test]
fn two_replicas_only_the_lease_holder_writes() {
    let plane = ControlPlane::shared();
    let s = Scope::new(plane, "ha");
    let config = scoped_config("ha", "operatorPorts: []\n");
    let a = Controller::start(plane, &config);
    let b = Controller::start(plane, &config);
    let leader_of = |c: &Controller| c.metric("portplane_leader") == Some(1.0);
    let a_leads = eventually(Duration::from_secs(20), "one leader", || {
        match (leader_of(&a), leader_of(&b)) {
            (true, false) => Some(true),
            (false, true) => Some(false),
            _ => None,
        }
    });
    let (mut leader, follower) = if a_leads { (a, b) } else { (b, a) };
    s.apply(&s.service_yaml(
        "web",
        "ClusterIP",
        &[(80, None)],
        &[("tailscale.com/expose", "true")],
    ));
    s.wait_oport("ha.web.80", "published", |_| true);
    assert!(leader.writes() > 0);
    assert_eq!(follower.writes(), 0, "the standby wrote");
    assert!(!leader_of(&follower));
    assert_eq!(
        follower.metric("portplane_inventory_size"),
        Some(1.0),
        "the standby keeps its indexes warm"
    );

    // The leader stops cleanly (SIGTERM releases the lease): the standby takes
    // over at once and handles the next change.
    let status = leader.terminate().expect("controller exits on SIGTERM");
    assert!(status.success(), "{status:?}; log:\n{}", leader.log_text());
    assert!(
        leader.log_text().contains("lease released"),
        "{}",
        leader.log_text()
    );
    eventually(Duration::from_secs(10), "standby takes over", || {
        leader_of(&follower).then_some(())
    });
    s.kubectl(&[
        "annotate",
        "service",
        "web",
        "-n",
        "ha",
        "tailscale.com/hostname=ha-new",
    ]);
    s.wait_oport("ha.web.80", "written by the new leader", |o| {
        hostname(o) == "ha-new"
    });
    assert!(follower.writes() > 0);
}

#[test]
fn pds_asymmetric_mapping_from_an_agent_report_over_grpc() {
    use portplane_proto::v1alpha1 as pb;
    let plane = ControlPlane::shared();
    let s = Scope::new(plane, "pds");
    let c = Controller::start(
        plane,
        &scoped_config(
            "pds",
            "operatorPorts:\n- {name: pds-talos-api, local: '127.0.0.1:15000', target: '10.5.0.2:50000'}\nagents: {namespace: pds}\n",
        ),
    );
    // The seed: Docker maps host 9627 -> container 3000, the NodePort is 3000.
    s.apply(&s.service_yaml("bluesky-pds", "NodePort", &[(3000, Some(3000))], &[]));
    let o = s.wait_oport("pds.bluesky-pds.3000", "NodePort published", |_| true);
    assert_eq!(o["spec"]["nodePort"], 3000);
    assert_eq!(o["spec"]["owner"], "colima");
    assert_eq!(
        o["spec"]["endpoint"], "node:3000",
        "without an agent the host port is unknown"
    );

    let token = portplane_e2e::agents::agent_token(plane, "pds", "panda");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let first = runtime.block_on(async {
        let mut client = portplane_e2e::agents::agent_client(c.grpc_port, Some(&token)).await;
        let mut stream = client
            .watch_inventory(pb::WatchInventoryRequest {
                agent: "panda".into(),
            })
            .await
            .unwrap()
            .into_inner();
        let first = stream.message().await.unwrap().unwrap();
        client
            .report(pb::AgentReport {
                agent: "panda".into(),
                version: "test".into(),
                tunnels: vec![pb::TunnelReport {
                    forward: "pds-talos-api".into(),
                    listen: "127.0.0.1:15000".into(),
                    target: "10.5.0.2:50000".into(),
                    state: pb::TunnelState::Up as i32,
                    active_connections: 2,
                    last_error: String::new(),
                }],
                host_ports: vec![pb::HostPort {
                    host_port: 9627,
                    container_port: 3000,
                    protocol: "TCP".into(),
                    host_ip: "127.0.0.1".into(),
                }],
                second_owners: Vec::new(),
            })
            .await
            .unwrap();
        // The next inventory message carries the change the report caused.
        let next = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(
            next.revision > first.revision,
            "{} > {}",
            next.revision,
            first.revision
        );
        first
    });
    let pds = first
        .runtime_ports
        .iter()
        .find(|p| p.name == "pds.bluesky-pds.3000")
        .expect("runtime port streamed");
    assert_eq!(
        (pds.port, pds.node_port, pds.namespace.as_str()),
        (3000, 3000, "pds")
    );
    let talos = first
        .operator_ports
        .iter()
        .find(|p| p.name == "pds-talos-api")
        .expect("operator port streamed");
    assert_eq!(
        (
            talos.local_port,
            talos.target_host.as_str(),
            talos.target_port
        ),
        (15000, "10.5.0.2", 50000)
    );

    let o = s.wait_oport("pds.bluesky-pds.3000", "host port from the agent", |o| {
        o["spec"]["endpoint"] == "127.0.0.1:9627"
    });
    assert_eq!(o["spec"]["exposures"][0]["hostPort"], 9627);
    assert_eq!(
        (o["spec"]["port"].as_i64(), o["spec"]["nodePort"].as_i64()),
        (Some(3000), Some(3000))
    );
    let t = s.wait_oport("pds-talos-api", "agent status", |o| {
        o["status"]["agents"][0]["tunnel"] == "Up"
    });
    assert_eq!(t["status"]["agents"][0]["name"], "panda");
    assert_eq!(t["status"]["agents"][0]["activeConnections"], 2);
}
