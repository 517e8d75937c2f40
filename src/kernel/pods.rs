//! Kubernetes identity of a network namespace, from what the node itself has: no call to
//! the API server.
//!
//! 1. The pod UID (and container id) come from the cgroup path of a process living in the
//!    namespace. kubelet names pod cgroups after the UID with either cgroup driver:
//!    systemd `kubepods-burstable-pod<uid with _>.slice/cri-containerd-<id>.scope`
//!    (CRI-O: `crio-<id>.scope`), cgroupfs `/kubepods/burstable/pod<uid>/<id>`;
//!    Guaranteed pods have no QoS level in the path.
//! 2. The pod's namespace and name come from kubelet's log directory
//!    `/var/log/pods/<namespace>_<name>_<uid>`, which kubelet creates for every pod whatever
//!    the container runtime (containerd or CRI-O): dependable, and readable with a
//!    hostPath mount. Namespace names cannot contain `_` (DNS labels), pod names neither,
//!    so the split is unambiguous.
//! 3. A process's container name comes from its container id (cgroup path) and kubelet's
//!    `/var/log/containers/<pod>_<namespace>_<container>-<id>.log` links, which kubelet
//!    keeps for every running container under either runtime.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What is known of the pod a namespace belongs to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodIdentity {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// Container id of the process the namespace was resolved from (often the pause
    /// container, which holds the pod's network namespace).
    pub container_id: String,
}

/// A pod UID and, when the path names one, a container id.
pub type CgroupIds = (String, Option<String>);

/// Pod UID and container id from the text of `/proc/PID/cgroup`.
pub fn parse_cgroup(text: &str) -> Option<CgroupIds> {
    for line in text.lines() {
        let path = line.splitn(3, ':').nth(2)?;
        let mut uid = None;
        let mut container = None;
        for part in path.split('/') {
            if let Some(found) = pod_uid(part) {
                uid = Some(found);
            } else if uid.is_some() {
                container = container_id(part).or(container);
            }
        }
        if let Some(uid) = uid {
            return Some((uid, container));
        }
    }
    None
}

/// `pod<uid>` (cgroupfs) or `kubepods-<qos>-pod<uid_with_underscores>.slice` (systemd).
fn pod_uid(part: &str) -> Option<String> {
    let part = part.strip_suffix(".slice").unwrap_or(part);
    let (prefix, uid) = part.rsplit_once("pod")?;
    if !(prefix.is_empty() || prefix.ends_with('-')) {
        return None;
    }
    let uid = uid.replace('_', "-");
    let valid = uid.len() == 36 && uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
    valid.then_some(uid)
}

/// `cri-containerd-<id>.scope`, `crio-<id>.scope`, `docker-<id>.scope` or a bare `<id>`.
fn container_id(part: &str) -> Option<String> {
    let part = part.strip_suffix(".scope").unwrap_or(part);
    let id = part.rsplit('-').next()?;
    (id.len() == 64 && id.chars().all(|c| c.is_ascii_hexdigit())).then(|| id.to_string())
}

/// What a process's cgroup says (`parse_cgroup`), read once and remembered while used:
/// a process does not move to another pod or container, and rereading every owner's and
/// every namespace's cgroup each round cost ~250 reads a round at 100 pods. Entries not
/// asked for since the previous round are dropped at the next.
struct CgroupMemo<K> {
    entries: HashMap<K, (Option<CgroupIds>, bool)>,
}

impl<K: std::hash::Hash + Eq> CgroupMemo<K> {
    fn new() -> Self {
        CgroupMemo {
            entries: HashMap::new(),
        }
    }

    /// The cgroup of `pid` as remembered under `key`, read now the first time.
    fn get(&mut self, key: K, proc_root: &Path, pid: u32) -> Option<CgroupIds> {
        let (parsed, used) = self
            .entries
            .entry(key)
            .or_insert_with(|| (read_cgroup(proc_root, pid), false));
        *used = true;
        parsed.clone()
    }

    /// Forgets what was not asked for since the last call.
    fn new_round(&mut self) {
        self.entries.retain(|_, (_, used)| std::mem::take(used));
    }
}

fn read_cgroup(proc_root: &Path, pid: u32) -> Option<CgroupIds> {
    let text = std::fs::read_to_string(proc_root.join(pid.to_string()).join("cgroup")).ok()?;
    parse_cgroup(&text)
}

/// Maps pod UIDs to (namespace, name) by listing kubelet's pod log directory.
pub struct PodDirectory {
    root: PathBuf,
    by_uid: HashMap<String, (String, String)>,
    /// By (network namespace inode, pid): a namespace belongs to one pod, so even a pid
    /// reused inside it names the same pod.
    cgroups: CgroupMemo<(u64, u32)>,
}

/// Maps container ids to container names by listing kubelet's container log links.
pub struct ContainerDirectory {
    root: PathBuf,
    by_id: HashMap<String, String>,
    /// By (pid, start time): the process itself, across pid reuse.
    cgroups: CgroupMemo<(u32, u64)>,
}

impl ContainerDirectory {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ContainerDirectory {
            root: root.into(),
            by_id: HashMap::new(),
            cgroups: CgroupMemo::new(),
        }
    }

    /// Re-lists the directory (once a round); a node without it has no containers to
    /// name.
    pub fn refresh(&mut self) {
        self.cgroups.new_round();
        self.by_id.clear();
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some((id, container)) = parse_container_log_name(&name) {
                self.by_id.insert(id, container);
            }
        }
    }

    /// The container name of the process `pid` started at `start_time`, from its
    /// cgroup file under `proc_root` (read the first time only) and the directory's
    /// last listing.
    pub fn container_of(&mut self, proc_root: &Path, pid: u32, start_time: u64) -> Option<String> {
        let (_, id) = self.cgroups.get((pid, start_time), proc_root, pid)?;
        self.by_id.get(&id?).cloned()
    }
}

/// `<pod>_<namespace>_<container>-<64 hex id>.log` -> (id, container).
fn parse_container_log_name(name: &str) -> Option<(String, String)> {
    let stem = name.strip_suffix(".log")?;
    let (rest, id) = stem.rsplit_once('-')?;
    let id = container_id(id)?;
    let container = rest.splitn(3, '_').nth(2)?;
    (!container.is_empty()).then(|| (id, container.to_string()))
}

impl PodDirectory {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        PodDirectory {
            root: root.into(),
            by_uid: HashMap::new(),
            cgroups: CgroupMemo::new(),
        }
    }

    /// Re-lists the directory (once a round); a node without it (not a Kubernetes node)
    /// has no pods.
    pub fn refresh(&mut self) {
        self.cgroups.new_round();
        self.by_uid.clear();
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let mut parts = name.splitn(3, '_');
            if let (Some(namespace), Some(pod), Some(uid)) =
                (parts.next(), parts.next(), parts.next())
            {
                self.by_uid
                    .insert(uid.to_string(), (namespace.to_string(), pod.to_string()));
            }
        }
    }

    /// The pod of network namespace `netns`, from the cgroup file under `proc_root` of
    /// its process `pid` (read the first time only) and the directory's last listing.
    pub fn identify(&mut self, proc_root: &Path, netns: u64, pid: u32) -> Option<PodIdentity> {
        let (uid, container) = self.cgroups.get((netns, pid), proc_root, pid)?;
        let (namespace, name) = self.by_uid.get(&uid).cloned().unwrap_or_default();
        Some(PodIdentity {
            uid,
            namespace,
            name,
            container_id: container.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "1a2b3c4d-5e6f-4a1b-9c8d-7e6f5a4b3c2d";
    const CID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn containerd_with_the_systemd_driver() {
        let line = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{CID}.scope\n",
            UID.replace('-', "_")
        );
        assert_eq!(
            parse_cgroup(&line),
            Some((UID.to_string(), Some(CID.to_string())))
        );
    }

    #[test]
    fn crio_with_the_systemd_driver_and_a_guaranteed_pod() {
        let line = format!(
            "0::/kubepods.slice/kubepods-pod{}.slice/crio-{CID}.scope\n",
            UID.replace('-', "_")
        );
        assert_eq!(
            parse_cgroup(&line),
            Some((UID.to_string(), Some(CID.to_string())))
        );
    }

    #[test]
    fn cgroupfs_driver_on_cgroup_v1() {
        let text = format!(
            "12:pids:/kubepods/besteffort/pod{UID}/{CID}\n11:memory:/kubepods/besteffort/pod{UID}/{CID}\n"
        );
        assert_eq!(
            parse_cgroup(&text),
            Some((UID.to_string(), Some(CID.to_string())))
        );
    }

    #[test]
    fn not_a_pod() {
        assert_eq!(parse_cgroup("0::/system.slice/sshd.service\n"), None);
        assert_eq!(
            parse_cgroup("0::/user.slice/user-0.slice/session-3.scope\n"),
            None
        );
        assert_eq!(
            parse_cgroup("0::/kubepods.slice/kubepods-burstable.slice\n"),
            None
        );
        assert_eq!(parse_cgroup(""), None);
    }

    #[test]
    fn resolves_name_and_namespace_from_the_pod_log_directory() {
        let root = std::env::temp_dir().join(format!("pods-test-{}", std::process::id()));
        let logs = root.join("var/log/pods");
        let proc_root = root.join("proc");
        std::fs::create_dir_all(logs.join(format!("shop_checkout-7d9f_{UID}/app"))).expect("dirs");
        std::fs::create_dir_all(logs.join("kube-system_coredns-1_other-uid")).expect("dirs");
        std::fs::create_dir_all(proc_root.join("42")).expect("dirs");
        std::fs::write(
            proc_root.join("42/cgroup"),
            format!("0::/kubepods/burstable/pod{UID}/{CID}\n"),
        )
        .expect("cgroup");
        let mut pods = PodDirectory::new(&logs);
        pods.refresh();
        let identity = pods.identify(&proc_root, 7, 42).expect("a pod");
        assert_eq!(identity.namespace, "shop");
        assert_eq!(identity.name, "checkout-7d9f");
        assert_eq!(identity.uid, UID);
        assert_eq!(identity.container_id, CID);
        assert_eq!(pods.identify(&proc_root, 7, 43), None, "no such process");
        std::fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn container_names_come_from_kubelets_container_log_links() {
        assert_eq!(
            parse_container_log_name(&format!("checkout-7d9f_shop_app-server-{CID}.log")),
            Some((CID.to_string(), "app-server".to_string()))
        );
        assert_eq!(
            parse_container_log_name("checkout_shop_app-nothex.log"),
            None
        );
        assert_eq!(parse_container_log_name(&format!("{CID}.log")), None);

        let root = std::env::temp_dir().join(format!("containers-test-{}", std::process::id()));
        let logs = root.join("var/log/containers");
        let proc_root = root.join("proc");
        std::fs::create_dir_all(&logs).expect("dirs");
        std::fs::create_dir_all(proc_root.join("42")).expect("dirs");
        std::fs::write(logs.join(format!("checkout-7d9f_shop_app-{CID}.log")), "").expect("log");
        std::fs::write(
            proc_root.join("42/cgroup"),
            format!(
                "0::/kubepods.slice/kubepods-pod{}.slice/cri-containerd-{CID}.scope\n",
                UID.replace('-', "_")
            ),
        )
        .expect("cgroup");
        let mut containers = ContainerDirectory::new(&logs);
        containers.refresh();
        assert_eq!(
            containers.container_of(&proc_root, 42, 100).as_deref(),
            Some("app")
        );
        assert_eq!(containers.container_of(&proc_root, 43, 100), None);
        std::fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn a_real_process_on_this_machine_resolves_or_is_not_a_pod() {
        // This machine runs no kubelet: our own cgroup parses, and is not a pod.
        let text = std::fs::read_to_string("/proc/self/cgroup").expect("cgroup");
        assert!(!text.is_empty());
        let mut pods = PodDirectory::new("/var/log/pods");
        assert_eq!(
            pods.identify(Path::new("/proc"), 1, std::process::id()),
            None
        );
    }

    /// A process's cgroup is read once while it keeps being asked for: a later change
    /// of the file is not seen until the entry goes unasked for a whole round, and a
    /// reused pid (another start time) is read anew.
    #[test]
    fn cgroups_are_read_once_while_asked_for_and_per_process() {
        let root = std::env::temp_dir().join(format!("cgroup-memo-test-{}", std::process::id()));
        let proc_root = root.join("proc");
        std::fs::create_dir_all(proc_root.join("42")).expect("dirs");
        let other = "9f8e7d6c-5b4a-4c3d-8e2f-1a0b9c8d7e6f";
        let write = |uid: &str| {
            std::fs::write(
                proc_root.join("42/cgroup"),
                format!("0::/kubepods/burstable/pod{uid}/{CID}\n"),
            )
            .expect("cgroup")
        };
        write(UID);
        let mut pods = PodDirectory::new(root.join("no-logs"));
        let uid = |pods: &mut PodDirectory, netns| {
            pods.identify(&proc_root, netns, 42)
                .map(|identity| identity.uid)
        };
        assert_eq!(uid(&mut pods, 7).as_deref(), Some(UID));
        write(other);
        pods.refresh();
        assert_eq!(
            uid(&mut pods, 7).as_deref(),
            Some(UID),
            "asked for last round"
        );
        assert_eq!(
            uid(&mut pods, 8).as_deref(),
            Some(other),
            "another namespace"
        );
        pods.refresh();
        pods.refresh();
        assert_eq!(
            uid(&mut pods, 7).as_deref(),
            Some(other),
            "forgotten, read again"
        );

        let logs = root.join("containers");
        std::fs::create_dir_all(&logs).expect("dirs");
        let other_cid = CID.replace('0', "f");
        std::fs::write(logs.join(format!("p_ns_app-{CID}.log")), "").expect("log");
        std::fs::write(logs.join(format!("p_ns_sidecar-{other_cid}.log")), "").expect("log");
        let mut containers = ContainerDirectory::new(&logs);
        containers.refresh();
        assert_eq!(
            containers.container_of(&proc_root, 42, 100).as_deref(),
            Some("app")
        );
        std::fs::write(
            proc_root.join("42/cgroup"),
            format!("0::/kubepods/burstable/pod{other}/{other_cid}\n"),
        )
        .expect("cgroup");
        assert_eq!(
            containers.container_of(&proc_root, 42, 100).as_deref(),
            Some("app")
        );
        assert_eq!(
            containers.container_of(&proc_root, 42, 200).as_deref(),
            Some("sidecar"),
            "the pid reused by another process"
        );
        std::fs::remove_dir_all(&root).expect("cleanup");
    }
}
