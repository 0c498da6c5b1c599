//! Where a drill's cluster keeps its CA keys when they are not in memory: a KMS (moto's
//! local server, reached through a fault proxy so the drill can slow or cut it) or an HSM
//! token (SoftHSM2). Drills that kill leaders or restart replicas run against these too,
//! since a new leader must take over keys it cannot read, only use.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use testkit::moto::MotoServer;
use testkit::proxy::{FaultProxy, Link};
use testkit::softhsm::{self, MODULE};
use testkit::ServerProcess;

pub(crate) const TOKEN: &str = "testudo-drill";
pub(crate) const PIN: &str = "1357";

/// The key manager a drill's replicas use.
pub(crate) enum KeyBackend {
    Kms { moto: MotoServer, link: FaultProxy },
    Hsm { conf: PathBuf, pin: PathBuf },
}

/// What a replica signs with its CA: both kinds, so both keys are used.
const MINTS: [&[&str]; 2] = [
    &["x509", "mint", "--spiffe-id", "spiffe://example.org/probe"],
    &["jwt", "mint", "--spiffe-id", "spiffe://example.org/probe", "--audience", "a"],
];

impl KeyBackend {
    /// moto's KMS behind a fault proxy.
    pub(crate) fn kms() -> Self {
        let moto = MotoServer::start();
        let link = FaultProxy::start(format!("127.0.0.1:{}", moto.port).parse().expect("an address"));
        Self::Kms { moto, link }
    }

    /// A new SoftHSM2 token under `root`.
    pub(crate) fn hsm(root: &Path) -> Self {
        let conf = softhsm::init_token(root, TOKEN, PIN);
        let pin = root.join("pin");
        std::fs::write(&pin, format!("{PIN}\n")).expect("pin file");
        Self::Hsm { conf, pin }
    }

    /// The plugin's name, as the config spells it.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::Kms { .. } => "aws_kms",
            Self::Hsm { .. } => "pkcs11",
        }
    }

    /// The `KeyManager` block.
    pub(crate) fn plugins(&self) -> String {
        match self {
            Self::Kms { link, .. } => format!(
                "KeyManager \"aws_kms\" {{\n    plugin_data {{\n      endpoint = \"http://{}\"\n    }}\n  }}",
                link.address()
            ),
            Self::Hsm { pin, .. } => format!(
                "KeyManager \"pkcs11\" {{\n    plugin_data {{\n      module_path = \"{MODULE}\"\n      token_label = \
                 \"{TOKEN}\"\n      user_pin_path = \"{}\"\n    }}\n  }}",
                pin.display()
            ),
        }
    }

    /// The environment the replicas need (credentials for moto, SoftHSM2's config).
    pub(crate) fn env(&self) -> Vec<(String, String)> {
        match self {
            Self::Kms { moto, .. } => moto.env().into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            Self::Hsm { conf, .. } => vec![("SOFTHSM2_CONF".into(), conf.display().to_string())],
        }
    }

    /// `n` replicas under `dir` using this backend, formed into a cluster that signs.
    pub(crate) fn cluster(&self, dir: &Path, n: u64, server_extra: &str) -> Vec<ServerProcess> {
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let servers = ServerProcess::cluster_with(dir, n, server_extra, &self.plugins(), &env);
        testkit::wait_until(Duration::from_secs(90), || signs(&servers[0]).is_ok(), "the cluster to sign");
        servers
    }

    /// Sets the link to the KMS (the HSM is local: nothing to do).
    pub(crate) fn set_link(&self, link: Link) {
        if let Self::Kms { link: proxy, .. } = self {
            proxy.set(link);
        }
    }
}

/// Whether `server` mints an X.509- and a JWT-SVID; the first refusal otherwise.
pub(crate) fn signs(server: &ServerProcess) -> Result<(), String> {
    for args in MINTS {
        let out = server.command(args);
        if !out.status.success() {
            return Err(format!("replica {} cannot {args:?}: {}", server.id, String::from_utf8_lossy(&out.stderr)));
        }
    }
    Ok(())
}

/// Runs `phase` against a KMS, then an HSM, each in a directory of its own under `root`,
/// and gathers both into one report for `drill`; `phase` fills its part and answers its
/// summary line.
pub(crate) fn on_each_backend(
    drill: &'static str,
    root: &Path,
    phase: impl Fn(&KeyBackend, &Path, &mut super::Report) -> String,
) -> super::Report {
    let mut report = super::Report::new(drill);
    let mut lines = Vec::new();
    for kms in [true, false] {
        let dir = root.join(if kms { "kms" } else { "hsm" });
        std::fs::create_dir_all(&dir).expect("a directory");
        let backend = if kms { KeyBackend::kms() } else { KeyBackend::hsm(&dir) };
        let mut part = super::Report::new(drill);
        lines.push(format!("{}: {}", backend.name(), phase(&backend, &dir, &mut part)));
        report.absorb(part, backend.name());
    }
    report.summary = lines.join("; ");
    report
}

/// With the KMS cut off: checks that `server` cannot sign an X.509-SVID, and that its
/// refusal says the key manager was unreachable (the fault reached it). `Err` says what
/// happened instead.
pub(crate) fn refused_while_cut(server: &ServerProcess) -> Result<(), String> {
    let out = server.command(MINTS[0]);
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    if out.status.success() {
        return Err(format!("replica {} signed with the KMS cut off", server.id));
    }
    if !said.contains("unavailable") {
        return Err(format!("replica {} refused, but not for an unreachable KMS: {said}", server.id));
    }
    eprintln!("with the KMS cut off, replica {} refused to sign: {}", server.id, said.trim());
    Ok(())
}

/// Waits up to `within` for every server to sign; answers the refusals left then.
pub(crate) fn all_sign_within(servers: &[ServerProcess], within: Duration) -> Result<Duration, String> {
    let began = Instant::now();
    loop {
        let refusals: Vec<String> = servers.iter().filter_map(|s| signs(s).err()).collect();
        if refusals.is_empty() {
            return Ok(began.elapsed());
        }
        if began.elapsed() > within {
            return Err(refusals.join("; "));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
