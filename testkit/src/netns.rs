//! Hosts of their own on one machine: a network namespace per host (`ip netns`), each
//! joined by a veth pair to a bridge in a switch namespace of its own, so links break for
//! real in the kernel — a host's link down, its packets to one peer dropped (a blackhole
//! route: one way), a link going down and up — and nothing leaves the machine or touches
//! the caller's own namespace. Needs root (CAP_NET_ADMIN). Dropping the network deletes
//! its namespaces, which takes their links with them.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

static NETWORKS: AtomicUsize = AtomicUsize::new(0);

/// A switch and `hosts` hosts on 10.77.0.0/24.
pub struct Network {
    switch: String,
    hosts: Vec<String>,
}

/// Runs `ip` with `args`; answers its error output if it fails.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Network {
    /// Creates the namespaces and links; `Err` says why not (not root, no `ip`).
    pub fn create(hosts: usize) -> Result<Self, String> {
        let tag = format!("tst{}n{}", std::process::id(), NETWORKS.fetch_add(1, Ordering::SeqCst));
        let network = Self { switch: format!("{tag}sw"), hosts: (0..hosts).map(|h| format!("{tag}h{h}")).collect() };
        ip(&["netns", "add", &network.switch])?;
        ip(&["-n", &network.switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &network.switch, "link", "set", "br0", "up"])?;
        for (index, host) in network.hosts.iter().enumerate() {
            let port = format!("h{index}");
            let address = format!("{}/24", network.address(index));
            ip(&["netns", "add", host])?;
            ip(&[
                "link",
                "add",
                &port,
                "netns",
                &network.switch,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                host,
            ])?;
            ip(&["-n", &network.switch, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &network.switch, "link", "set", &port, "up"])?;
            ip(&["-n", host, "addr", "add", &address, "dev", "eth0"])?;
            ip(&["-n", host, "link", "set", "eth0", "up"])?;
            ip(&["-n", host, "link", "set", "lo", "up"])?;
        }
        Ok(network)
    }

    /// Host `index`'s address.
    pub fn address(&self, index: usize) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 77, 0, index as u8 + 1))
    }

    /// The command prefix that runs a program on host `index`.
    pub fn launcher(&self, index: usize) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.hosts[index].clone()]
    }

    /// Takes host `index`'s link down (`false`) or up (`true`): cut off from every other
    /// host, both ways.
    pub fn set_link(&self, index: usize, up: bool) -> Result<(), String> {
        ip(&["-n", &self.switch, "link", "set", &format!("h{index}"), if up { "up" } else { "down" }])
    }

    /// Drops (`true`) or delivers again (`false`) every packet host `from` sends to host
    /// `to`; what `to` sends still arrives: loss one way.
    pub fn drop_packets(&self, from: usize, to: usize, dropped: bool) -> Result<(), String> {
        let target = format!("{}/32", self.address(to));
        ip(&["-n", &self.hosts[from], "route", if dropped { "add" } else { "del" }, "blackhole", &target])
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for namespace in self.hosts.iter().chain(std::iter::once(&self.switch)) {
            let _ = ip(&["netns", "del", namespace]);
        }
    }
}

/// Mount points the machine lacks (e.g. `/etc/testudo`), made empty for processes that
/// bind-mount their own directories over them in a private mount namespace (as `ip netns
/// exec` gives each command), and removed when dropped. Nothing is written into them.
pub struct MountPoints(Vec<std::path::PathBuf>);

impl MountPoints {
    /// Makes whichever of `paths` do not exist.
    pub fn make(paths: &[&str]) -> Self {
        let mut made = Vec::new();
        for path in paths {
            let path = std::path::PathBuf::from(path);
            if !path.exists() {
                std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mount point {}: {e}", path.display()));
                made.push(path);
            }
        }
        Self(made)
    }
}

impl Drop for MountPoints {
    fn drop(&mut self) {
        for path in self.0.iter().rev() {
            let _ = std::fs::remove_dir(path);
        }
    }
}
