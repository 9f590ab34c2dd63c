//! The controller rides out a kube-apiserver restart: its watches break,
//! come back on their own, and it converges on what changed afterwards,
//! without being restarted itself. Its own control plane, because restarting
//! the API server would break every other test's watches too.

use std::time::Duration;

use portplane_e2e::cluster::ControlPlane;
use portplane_e2e::controller::{Controller, Scope, eventually, install_crd, scoped_config};

#[test]
fn apiserver_restart_breaks_the_watches_and_they_recover() {
    let plane = ControlPlane::start().unwrap();
    install_crd(&plane);
    let s = Scope::new(&plane, "restart");
    let mut c = Controller::start(&plane, &scoped_config("restart", "operatorPorts: []\n"));
    let expose = [("tailscale.com/expose", "true")];
    for name in ["one", "two"] {
        s.apply(&s.service_yaml(name, "ClusterIP", &[(80, None)], &expose));
    }
    eventually(Duration::from_secs(30), "two objects", || {
        (s.oport_names() == ["restart.one.80", "restart.two.80"]).then_some(())
    });
    let watch_errors = c.metric("portplane_watch_errors_total").unwrap_or(0.0);

    plane.restart_apiserver().unwrap();

    // Changes made after the restart can only be seen through watches that
    // were re-established (nothing restarted the controller).
    s.kubectl(&["delete", "service", "two", "-n", "restart"]);
    s.apply(&s.service_yaml("three", "ClusterIP", &[(80, None)], &expose));
    eventually(
        Duration::from_secs(60),
        "converged after the restart",
        || (s.oport_names() == ["restart.one.80", "restart.three.80"]).then_some(()),
    );
    assert!(
        c.metric("portplane_watch_errors_total").unwrap_or(0.0) > watch_errors,
        "the restart was noticed as a broken watch; log:\n{}",
        c.log_text()
    );
    assert_eq!(
        c.get("/readyz").map(|(code, _)| code),
        Some(200),
        "still ready; log:\n{}",
        c.log_text()
    );
    assert!(c.terminate().is_some_and(|s| s.success()), "clean exit");
}
