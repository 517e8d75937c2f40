//! The live page in a real browser: headless Chromium (Debian's package, installed when
//! missing) loads `/` from the running daemon over TLS with basic auth, runs its script,
//! and the rendered DOM is checked: the groups' rows, their verdicts linked to the
//! runbook, and a group expanded into its sockets (fetched by the page from
//! `/api/v1/sockets`), equal to what `ss` shows. A screenshot is kept in
//! target/tmp/live-page.png; the page's weight and the browser's render time are printed.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{Actor, Daemon, Netns, TempDir, count_state, inbound_close_wait, wait_until};

const USER: &str = "oncall";
const PASSWORD: &str = "s3cret page";
const URL: &str = "https://127.0.0.1:9815/";
const EXPORTER_PORT: u16 = 9815;

#[test]
fn the_live_page_shows_verdicts_and_expands_a_group_in_chromium() {
    let chromium = ensure_chromium();
    let ns = Netns::new("page");
    let mut server = Actor::spawn(&ns, "api-leak");
    let mut client = Actor::spawn(&ns, "client");
    inbound_close_wait(&ns, &mut server, &mut client, 8080, 4, 5);
    let mut upstream = Actor::spawn(&ns, "upstream");
    let mut worker = Actor::spawn(&ns, "worker");
    upstream.listen("u", "127.0.0.2:6379", 16);
    worker.cmd("connect w 127.0.0.2:6379 2");
    upstream.cmd("accept x u 2");
    upstream.cmd("close x");
    assert!(wait_until(Duration::from_secs(30), || count_state(
        &ns,
        "CLOSE-WAIT"
    ) == 6));

    let files = Files::new();
    let config = files.write("exporter.toml", "[close_wait]\nstuck_after = \"1s\"\n");
    let web = files.web_config();
    let daemon = Daemon::exporter(
        &ns,
        &[
            "--sample.interval",
            "2s",
            "--config.file",
            &config,
            "--web.config.file",
            &web,
        ],
    );
    let curl = |args: &[&str]| ns.exec("curl", &[&["-sk"], args].concat());
    let unauthenticated = curl(&["-o", "/dev/null", "-w", "%{http_code}", URL]);
    assert_eq!(unauthenticated, "401", "the page is behind basic auth");
    let credentials = format!("{USER}:{PASSWORD}");
    // Once a second round compared closes, both groups are past stuck_after.
    let mut page = String::new();
    assert!(
        wait_until(Duration::from_secs(60), || {
            page = curl(&["-u", &credentials, URL]);
            page.contains("closes watched")
                && page
                    .matches("<tbody class=\"group cause-never-closed\"")
                    .count()
                    == 2
        }),
        "{page}"
    );
    println!("page weight: {} bytes", page.len());
    assert!(page.len() < 32 * 1024, "{} bytes", page.len());

    let url = format!(
        "https://{USER}:{}@127.0.0.1:9815/#expand-all",
        PASSWORD.replace(' ', "%20")
    );
    let dom = chromium.run(&ns, &url, &["--dump-dom"]);
    check_dom(&dom, &ns);
    let screenshot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("live-page.png");
    let shot = format!("--screenshot={}", screenshot.display());
    chromium.run(&ns, &url, &[&shot, "--window-size=1500,700"]);
    let size = std::fs::metadata(&screenshot).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 10_000,
        "screenshot {} ({size} bytes)",
        screenshot.display()
    );
    println!("screenshot: {}", screenshot.display());
    drop(daemon);
}

/// The rendered DOM: both groups with their verdicts linked to the runbook, the
/// outbound one with its peer, and every CLOSE_WAIT socket `ss` shows in the expanded
/// groups, with its pid and fd. The exporter's own connections are left out on both
/// sides: curl and Chromium close first, so the daemon's end of one may be in CLOSE_WAIT
/// for a moment, in a sample or in `ss`.
fn check_dom(dom: &str, ns: &Netns) {
    let exporter_port = format!("<td data-v=\"{EXPORTER_PORT}\">{EXPORTER_PORT}</td>");
    let rows: Vec<&str> = dom
        .split("<tbody class=\"group")
        .skip(1)
        .filter(|r| !r.contains(&exporter_port))
        .collect();
    assert_eq!(rows.len(), 2, "{dom}");
    let inbound = rows
        .iter()
        .find(|r| r.contains("<td>api-leak</td>"))
        .unwrap_or_else(|| panic!("no api-leak row: {dom}"));
    assert!(inbound.contains("runbook.md#never-closed\">never closed</a>: 4 of 4 older than"));
    let outbound = rows
        .iter()
        .find(|r| r.contains("<td>worker</td>"))
        .unwrap_or_else(|| panic!("no worker row: {dom}"));
    assert!(outbound.contains("127.0.0.2:6379 x2"), "{outbound}");
    let exporter_end = format!(":{EXPORTER_PORT}</td>");
    let sockets: Vec<&str> = dom
        .split("<tr class=\"socket\">")
        .skip(1)
        .map(|r| r.split("</tr>").next().unwrap_or(""))
        .filter(|r| !r.contains(&exporter_end))
        .collect();
    let truth: Vec<_> = ns
        .sockets()
        .into_iter()
        .filter(|s| s.state == "CLOSE-WAIT")
        .filter(|s| s.local_port != EXPORTER_PORT && s.peer_port != Some(EXPORTER_PORT))
        .collect();
    assert_eq!(
        sockets.len(),
        truth.len(),
        "expanded sockets: {sockets:#?} in {dom}"
    );
    for s in &truth {
        let user = s.users.first().expect("an owner");
        let cells = format!(
            "<td>close_wait</td><td>{}:{}</td><td>{}:{}</td><td>{}</td><td>{}</td><td>{}</td>",
            s.local_ip,
            s.local_port,
            s.peer_ip,
            s.peer_port.unwrap_or(0),
            user.pid,
            user.fd,
            s.inode
        );
        assert!(
            sockets.iter().any(|row| row.starts_with(&cells)),
            "{cells} not among {sockets:#?}"
        );
    }
    let rendered = dom
        .split("data-rendered-ms=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("the script did not finish: {dom}"));
    println!("rendered (navigation start to groups expanded, in Chromium): {rendered} ms");
}

/// Debian's Chromium, installed (apt) when missing, run headless with a fresh profile.
struct Chromium {
    binary: PathBuf,
}

fn ensure_chromium() -> Chromium {
    let binary = PathBuf::from("/usr/bin/chromium");
    if !binary.exists() || !Path::new("/usr/bin/curl").exists() {
        let ok = |c: &mut Command| c.status().is_ok_and(|s| s.success());
        assert!(ok(Command::new("apt-get").args(["update", "-qq"])));
        assert!(
            ok(Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["-o", "DPkg::Lock::Timeout=600", "install", "-y", "-qq"])
                .args(["--no-install-recommends", "chromium", "curl"])),
            "apt-get install chromium curl failed"
        );
    }
    Chromium { binary }
}

impl Chromium {
    /// Loads `url` from inside `ns` and returns what Chromium printed (the DOM with
    /// --dump-dom). The virtual time budget lets the page's fetches finish first.
    fn run(&self, ns: &Netns, url: &str, extra: &[&str]) -> String {
        let profile = TempDir::new("chromium-profile");
        let out = ns
            .command(&self.binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                "--disable-sync",
                "--ignore-certificate-errors",
                "--virtual-time-budget=10000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(url)
            .output()
            .expect("chromium runs");
        assert!(
            out.status.success(),
            "chromium: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// The daemon's config, TLS certificate and web config, in a temp directory of their
/// own (removed on drop).
struct Files(TempDir);

impl Files {
    fn new() -> Files {
        Files(TempDir::new("page"))
    }

    fn write(&self, name: &str, text: &str) -> String {
        self.0.file(name, text)
    }

    /// A self-signed certificate for 127.0.0.1 and one basic-auth user.
    fn web_config(&self) -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("params");
        let cert = params.self_signed(&key).expect("certificate");
        self.write("server.pem", &cert.pem());
        self.write("server.key", &key.serialize_pem());
        let hash = bcrypt::hash(PASSWORD, 5).expect("bcrypt");
        self.write(
            "web.yml",
            &format!(
                "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n\
                 basic_auth_users:\n  {USER}: '{hash}'\n"
            ),
        )
    }
}
