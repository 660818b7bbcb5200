//! MQTT over TLS with client certificates against a real Mosquitto: the
//! device's identity is its certificate, and the broker's ACL confines it
//! to its own topics.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use outpost_agent::config::TlsConfig;
use outpost_protocol::codec;
use outpost_protocol::messages::Birth;

use crate::common::*;

const T: Duration = Duration::from_secs(30);

fn openssl(dir: &Path, args: &[&str]) -> bool {
    Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A CA, a server certificate for 127.0.0.1, and client certificates whose
/// CN is the identity; `other-ca` signs a client the broker must refuse.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(dir: &Path) -> Option<Pki> {
        let ok = |args: &[&str]| openssl(dir, args);
        let key = |name: &str| {
            ok(&[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                name,
            ])
        };
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .ok()?;
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").ok()?;
        let made = key("ca.key")
            && ok(&[
                "req",
                "-x509",
                "-new",
                "-key",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=outpost-test-ca",
            ])
            && key("other-ca.key")
            && ok(&[
                "req",
                "-x509",
                "-new",
                "-key",
                "other-ca.key",
                "-out",
                "other-ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=someone-else",
            ])
            && key("server.key")
            && ok(&[
                "req",
                "-new",
                "-key",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ])
            && ok(&[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "server.ext",
            ]);
        if !made {
            skip_or_fail("openssl could not make the test PKI");
            return None;
        }
        Some(Pki {
            dir: dir.to_owned(),
        })
    }

    /// `(cert, key)` for `cn`, signed by `ca` ("ca" or "other-ca").
    fn client(&self, cn: &str, ca: &str) -> (PathBuf, PathBuf) {
        let d = &self.dir;
        let ok = |args: &[&str]| assert!(openssl(d, args), "openssl {args:?}");
        let (key, csr, pem) = (
            format!("{cn}.key"),
            format!("{cn}.csr"),
            format!("{cn}.pem"),
        );
        ok(&[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &key,
        ]);
        ok(&[
            "req",
            "-new",
            "-key",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={cn}"),
        ]);
        ok(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &pem,
            "-days",
            "2",
            "-extfile",
            "client.ext",
        ]);
        (d.join(pem), d.join(key))
    }
}

fn broker_conf(pki: &Pki) -> String {
    let acl = pki.dir.join("acl");
    std::fs::write(
        &acl,
        "user observer\ntopic read outpost/v1/devices/#\n\
         pattern readwrite outpost/v1/devices/%u/#\n",
    )
    .unwrap();
    format!(
        "cafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n\
         require_certificate true\nuse_identity_as_username true\nacl_file {acl}\n",
        d = pki.dir.display(),
        acl = acl.display()
    )
}

fn tls_config_text(
    w: &World,
    device: &str,
    port: u16,
    pki: &Pki,
    cert: &Path,
    key: &Path,
) -> String {
    w.config_text(device, port, "").replace(
        &format!("url = \"mqtt://127.0.0.1:{port}\""),
        &format!(
            "url = \"mqtts://127.0.0.1:{port}\"\nca = \"{}\"\nclient_cert = \"{}\"\nclient_key = \"{}\"",
            pki.dir.join("ca.pem").display(),
            cert.display(),
            key.display()
        ),
    )
}

/// An agent for `device` holding a certificate for `cn` signed by `ca`.
fn tls_agent(w: &World, pki: &Pki, port: u16, device: &str, cn: &str, ca: &str) -> Running {
    let (cert, key) = pki.client(cn, ca);
    Running::start(w.parse(&tls_config_text(w, device, port, pki, &cert, &key)))
}

#[test]
fn mutual_tls_identity_and_acl_are_enforced_by_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let Some(pki) = Pki::new(dir.path()) else {
        return;
    };
    let Some(broker) = Mosquitto::start_with(&broker_conf(&pki)) else {
        return;
    };
    let (obs_cert, obs_key) = pki.client("observer", "ca");
    let tls = TlsConfig {
        ca: pki.dir.join("ca.pem"),
        client: Some((obs_cert, obs_key)),
    };
    let client_tls: Arc<rustls::ClientConfig> = outpost_agent::mqtt::tls_config(&tls).unwrap();
    let (obs, _client) = Observer::start_tls(broker.port, "outpost/v1/devices/#", Some(client_tls));
    let w = World::new();

    // The device's certificate CN is its id: birth goes through.
    let a = tls_agent(&w, &pki, broker.port, "tls-dev", "tls-dev", "ca");
    let (topic, p) = obs.next_where(T, |t, _| t.ends_with("/birth"));
    assert_eq!(topic, "outpost/v1/devices/tls-dev/birth");
    let birth: Birth = codec::decode(&p, 1 << 16).unwrap();
    assert_eq!(birth.session, a.state.session());
    drop(a);

    // A device whose certificate says another id: the ACL drops its
    // publishes under tls-dev-2 (Mosquitto drops unauthorised publishes
    // silently), while its own connection succeeds.
    let a = tls_agent(&w, &pki, broker.port, "tls-dev-2", "impostor", "ca");
    wait_for("the impostor to connect", T, || {
        a.state
            .mqtt_connected
            .load(std::sync::atomic::Ordering::SeqCst)
            .then_some(())
    });
    drop(a);
    // Then a device the observer can see again proves the channel is live
    // and that nothing of tls-dev-2 came through before it.
    let _a3 = tls_agent(&w, &pki, broker.port, "tls-dev-3", "tls-dev-3", "ca");
    let (topic, _) = obs.next_where(T, |t, _| t.ends_with("/birth") || t.contains("tls-dev-2"));
    assert_eq!(topic, "outpost/v1/devices/tls-dev-3/birth");
}

#[test]
fn a_client_certificate_from_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let Some(pki) = Pki::new(dir.path()) else {
        return;
    };
    let Some(broker) = Mosquitto::start_with(&broker_conf(&pki)) else {
        return;
    };
    let w = World::new();
    let a = tls_agent(&w, &pki, broker.port, "tls-rogue", "tls-rogue", "other-ca");
    wait_for("two refused connection attempts", T, || {
        let (_, m) = get(&a.url("/metrics"));
        let n: u64 = m
            .lines()
            .find(|l| l.starts_with("outpost_agent_mqtt_connection_errors_total "))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        (n >= 2).then_some(())
    });
    assert!(
        !a.state
            .mqtt_connected
            .load(std::sync::atomic::Ordering::SeqCst)
    );
    // It still serves locally.
    assert_eq!(get(&a.url("/readyz")).0, 200);
}
