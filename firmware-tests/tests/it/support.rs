//! Finding the binaries, building a fleet, the models, skip-or-fail.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use outpost_fleet::harness::{AgentExe, Fleet, FleetOptions};

/// Scenarios take turns: each one loads this machine's cores with a fleet.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A fleet and the folder it lives in (removed after the fleet stopped).
pub struct TestFleet {
    pub fleet: Fleet,
    // Dropped after `fleet` (field order): the processes stop first.
    _dir: tempfile::TempDir,
    _turn: MutexGuard<'static, ()>,
}

impl std::ops::Deref for TestFleet {
    type Target = Fleet;
    fn deref(&self) -> &Fleet {
        &self.fleet
    }
}

impl std::ops::DerefMut for TestFleet {
    fn deref_mut(&mut self) -> &mut Fleet {
        &mut self.fleet
    }
}

/// Prints why and returns, or panics under `OUTPOST_REQUIRE_ALL=1`.
pub fn skip_or_fail(reason: &str) {
    if std::env::var("OUTPOST_REQUIRE_ALL").as_deref() == Ok("1") {
        panic!("{reason}, and OUTPOST_REQUIRE_ALL=1");
    }
    println!("SKIPPED: {reason}");
}

/// `outpost` and `outpost-agent` beside this test binary's folder.
pub fn binaries() -> Option<(PathBuf, PathBuf)> {
    let exe = std::env::current_exe().ok()?;
    // target/<profile>/deps/it-<hash> → target/<profile>/
    let dir = exe.parent()?.parent()?;
    let outpost = dir.join(format!("outpost{}", std::env::consts::EXE_SUFFIX));
    let agent = dir.join(format!("outpost-agent{}", std::env::consts::EXE_SUFFIX));
    (outpost.is_file() && agent.is_file()).then_some((outpost, agent))
}

/// Devices per fleet: `OUTPOST_FLEET_DEVICES` (default 20).
pub fn fleet_size() -> usize {
    std::env::var("OUTPOST_FLEET_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n >= 3)
        .unwrap_or(20)
}

/// Starts a fleet of `devices` agents, or None (after skip_or_fail) when
/// the binaries are missing.
pub fn fleet(devices: usize) -> Option<TestFleet> {
    fleet_on(devices, None)
}

/// [`fleet`] on an external broker (`mqtt://host:port`).
pub fn fleet_on(devices: usize, broker: Option<String>) -> Option<TestFleet> {
    fleet_with(devices, broker, vec![])
}

/// [`fleet_on`], with some devices' data directories elsewhere.
pub fn fleet_with(
    devices: usize,
    broker: Option<String>,
    data_dirs: Vec<(String, PathBuf)>,
) -> Option<TestFleet> {
    let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some((outpost, agent)) = binaries() else {
        skip_or_fail(
            "the outpost and outpost-agent binaries are not built beside this test \
             (cargo test --workspace builds them; or cargo build -p outpost-fleet -p outpost-agent)",
        );
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let fleet = Fleet::start(FleetOptions {
        dir: dir.path().to_owned(),
        outpost,
        agent: AgentExe::Agent(agent),
        devices,
        classes: vec!["kiosk".into(), "gateway".into()],
        window_secs: 2,
        evaluate_every: 2,
        step_timeout: Duration::from_secs(240),
        broker,
        data_dirs,
    })
    .unwrap_or_else(|e| panic!("the fleet did not start: {e:#}\n{}", logs(dir.path())));
    Some(TestFleet {
        fleet,
        _dir: dir,
        _turn: turn,
    })
}

/// The end of the server's and two agents' logs, for a failure message.
pub fn logs(dir: &Path) -> String {
    outpost_fleet::harness::log_tails(
        dir,
        |n| matches!(n, "server.log" | "dev-001.log" | "dev-002.log"),
        25,
    )
}

/// A model file of the repository.
pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

pub fn digits(name: &str) -> PathBuf {
    repo(&format!("runtime/tests/fixtures/digits/{name}"))
}

/// A private Mosquitto on a free port, with persistence (it keeps the
/// server's persistent session and its queued messages across a restart);
/// killed on drop.
pub struct Mosquitto {
    child: Option<std::process::Child>,
    pub port: u16,
    bin: &'static str,
    conf: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    pub fn start() -> Option<Mosquitto> {
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        let Some(bin) = bin else {
            skip_or_fail("mosquitto is not installed (apt install mosquitto)");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        // A port free now may be taken before Mosquitto binds: retry.
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let conf = dir.path().join("mosquitto.conf");
            std::fs::write(
                &conf,
                format!(
                    // `user root`: run as root, Mosquitto would switch to its
                    // own user, who cannot read this private folder.
                    "user root\nlistener {port} 127.0.0.1\nallow_anonymous true\n\
                     max_queued_messages 100000\npersistence true\npersistence_location {}/\n",
                    dir.path().display()
                ),
            )
            .unwrap();
            if let Some(child) = listen(bin, &conf, port) {
                return Some(Mosquitto {
                    child: Some(child),
                    port,
                    bin,
                    conf,
                    _dir: dir,
                });
            }
        }
        panic!("mosquitto did not start on any of 5 free ports");
    }

    /// Starts it again on the same port and files; false if it did not
    /// listen within 10 s.
    pub fn restart(&mut self) -> bool {
        self.child = listen(self.bin, &self.conf, self.port);
        self.child.is_some()
    }

    /// SIGTERM (it saves its persistence file) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

/// Starts `bin -c conf` and waits (10 s at most) until it listens on `port`.
fn listen(bin: &str, conf: &Path, port: u16) -> Option<std::process::Child> {
    let mut child = std::process::Command::new(bin)
        .arg("-c")
        .arg(conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Some(child);
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
