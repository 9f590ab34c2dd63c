//! Leader election under a sick API server: the leader's connection to the
//! real kube-apiserver is blackholed (every byte held, connections open), so
//! its renew hangs. It must stop writing before its lease can expire for the
//! standby, and the standby must take over only after that.

use std::time::{Duration, Instant};

use portplane_e2e::blackhole::Blackhole;
use portplane_e2e::cluster::ControlPlane;
use portplane_e2e::controller::{Controller, Scope, eventually, scoped_config};

fn leading(c: &Controller) -> Option<bool> {
    c.metric("portplane_leader").map(|v| v == 1.0)
}

#[test]
fn a_leader_whose_api_calls_hang_stops_writing_before_its_lease_expires() {
    let plane = ControlPlane::shared();
    let scope = Scope::new(plane, "lease-freeze");
    // durationSeconds 4, renewSeconds 1: the renew deadline is 2 s.
    let config = scoped_config(&scope.name, "");
    let lease_duration = Duration::from_secs(4);

    // The first controller reaches the API server through the relay only.
    let relay = Blackhole::start(([127, 0, 0, 1], plane.apiserver_port().unwrap()).into()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    let text = std::fs::read_to_string(plane.kubeconfig()).unwrap();
    let server = plane.server().unwrap();
    std::fs::write(
        &kubeconfig,
        text.replace(&server, &format!("https://{}", relay.addr())),
    )
    .unwrap();
    let a = Controller::start_with_kubeconfig(&config, &kubeconfig);
    eventually(Duration::from_secs(20), "controller A leads", || {
        leading(&a).filter(|l| *l)
    });
    let b = Controller::start(plane, &config);
    assert_eq!(leading(&b), Some(false), "B must wait while A renews");
    assert_eq!(b.writes(), 0);

    scope.apply(&scope.service_yaml(
        "before",
        "ClusterIP",
        &[(80, None)],
        &[("tailscale.com/expose", "true")],
    ));
    scope.wait_oport("lease-freeze.before.80", "written by A", |_| true);
    let a_writes = a.writes();
    assert!(a_writes > 0);

    let a_inventory = a.metric("portplane_inventory_size").unwrap();
    relay.set_frozen(true);
    let frozen_at = Instant::now();
    eventually(Duration::from_secs(10), "A steps down", || {
        leading(&a).filter(|l| !*l)
    });
    let a_stepped_down = frozen_at.elapsed();
    eventually(Duration::from_secs(20), "B takes over", || {
        leading(&b).filter(|l| *l)
    });
    let b_took_over = frozen_at.elapsed();
    assert!(
        a_stepped_down < lease_duration,
        "A kept its leadership {a_stepped_down:?} into a hung renew (lease duration {lease_duration:?}); log:\n{}",
        a.log_text()
    );
    assert!(
        a_stepped_down < b_took_over,
        "A stepped down after {a_stepped_down:?}, B led from {b_took_over:?}: two leaders at once"
    );

    // The new leader converges a change; A, cut off, writes nothing.
    scope.apply(&scope.service_yaml(
        "after",
        "ClusterIP",
        &[(80, None)],
        &[("tailscale.com/expose", "true")],
    ));
    scope.wait_oport("lease-freeze.after.80", "written by B", |_| true);
    assert!(b.writes() > 0);

    // A's connection comes back: its watch catches up (it sees "after"),
    // and it writes nothing, staying a standby behind B's lease.
    relay.set_frozen(false);
    eventually(
        Duration::from_secs(30),
        "A's watch sees the new Service",
        || {
            a.metric("portplane_inventory_size")
                .filter(|n| *n > a_inventory)
        },
    );
    assert_eq!(leading(&a), Some(false));
    assert_eq!(
        a.writes(),
        a_writes,
        "A wrote after it lost the lease; log:\n{}",
        a.log_text()
    );
}
