//! A workload as a drill sees it: it streams its X.509-SVIDs from an agent's Workload API
//! and asks for JWT-SVIDs, recording every error, every SVID, and the longest time it held
//! no SVID that had not expired.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto::workload as pb;

use proto::unix_socket::connect;

/// Which JWT-SVIDs the workload asks for, every 200 ms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JwtAsk {
    /// A new audience each time: a cache miss, so the agent must reach a replica.
    NewAudience,
    /// The same audience each time: the agent answers from its cache.
    SameAudience,
}

/// What the workload saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub errors: Vec<String>,
    /// JWT-SVID requests made, and how many were answered with one.
    pub jwt_calls: usize,
    pub jwt_answered: usize,
    /// Distinct X.509-SVIDs (by serial) received for the watched ID.
    pub svids: usize,
    /// Every SPIFFE ID that arrived in an X.509-SVID message.
    pub ids: BTreeSet<String>,
    /// The longest time the workload held no unexpired X.509-SVID for the watched ID, after
    /// its first one arrived.
    pub longest_gap: Duration,
    /// SVIDs the workload's clock said were not valid yet when they arrived (an X.509-SVID
    /// whose NotBefore was ahead, a JWT-SVID issued more than the usual 30 s leeway ahead)
    /// or already expired: what a signer with a clock off would hand out.
    pub untimely: Vec<String>,
}

impl Seen {
    /// The checks every drill with a workload makes: no Workload API error, never an
    /// expired SVID, and at least `svids` distinct X.509-SVIDs (rotation). `agent_log` goes
    /// into a failure.
    pub fn judge(&self, svids: usize, agent_log: &str, report: &mut super::Report) {
        report.operations = self.jwt_calls;
        report.acknowledged = self.jwt_answered;
        report.longest_workload_gap = Some(self.longest_gap);
        report.check(self.errors.is_empty(), || {
            format!("the workload saw errors: {:?}\nagent log:\n{agent_log}", self.errors)
        });
        report.check(self.longest_gap.is_zero(), || {
            format!("the workload held an expired SVID for {} ms", self.longest_gap.as_millis())
        });
        report.check(self.untimely.is_empty(), || {
            format!("the workload got SVIDs its clock says are not valid now: {:?}", self.untimely)
        });
        report.check(self.svids >= svids, || {
            format!("the SVID did not rotate: {} seen\nagent log:\n{agent_log}", self.svids)
        });
    }
}

#[derive(Default)]
struct Shared {
    seen: Mutex<Seen>,
    serials: Mutex<BTreeSet<Vec<u8>>>,
}

/// A running workload.
pub struct Watch {
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn with_header<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("workload.spiffe.io", tonic::metadata::MetadataValue::from_static("true"));
    request
}

/// The leaf of a concatenated DER chain: its serial number, `not_before` and `not_after`
/// (epoch ms).
fn leaf(chain: &[u8]) -> Option<(Vec<u8>, u128, u128)> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(chain).ok()?;
    let ms = |t: x509_parser::time::ASN1Time| u128::try_from(t.timestamp()).ok().map(|s| s * 1000);
    Some((cert.raw_serial().to_vec(), ms(cert.validity().not_before)?, ms(cert.validity().not_after)?))
}

/// Why a JWT-SVID is not valid by this process's clock, if it is not: `iat` more than
/// the leeway validators allow ahead, or `exp` past. The signature is not checked here.
fn untimely_jwt(token: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let claims: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    let now = (now_ms() / 1000) as i64;
    let (iat, exp) = (claims["iat"].as_i64()?, claims["exp"].as_i64()?);
    let leeway = identity::jwt::LEEWAY;
    (iat > now + leeway || exp <= now).then(|| format!("JWT-SVID iat {iat} exp {exp} at {now}"))
}

/// A channel to the agent's socket, retried for a few seconds: a workload started beside a
/// busy agent may find it slow to accept.
async fn connect_agent(socket: &std::path::Path) -> Option<tonic::transport::Channel> {
    for _ in 0..50 {
        if let Ok(channel) = connect(socket).await {
            return Some(channel);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

fn now_ms() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or_default()
}

impl Watch {
    /// Starts a workload on `socket` (an agent's Workload API) that watches `spiffe_id`.
    pub fn start(runtime: &tokio::runtime::Runtime, socket: PathBuf, spiffe_id: &str, jwt: JwtAsk) -> Self {
        let (shared, stop) = (Arc::new(Shared::default()), Arc::new(AtomicBool::new(false)));
        let stream = runtime.spawn(stream(socket.clone(), spiffe_id.to_owned(), shared.clone(), stop.clone()));
        let jwts = runtime.spawn(jwts(socket, jwt, shared.clone(), stop.clone()));
        Self { shared, stop, tasks: vec![stream, jwts] }
    }

    /// Stops the workload; returns what it saw.
    pub fn finish(self, runtime: &tokio::runtime::Runtime) -> Seen {
        self.stop.store(true, Ordering::SeqCst);
        runtime.block_on(async {
            for task in self.tasks {
                let _ = task.await;
            }
        });
        let mut seen = std::mem::take(&mut *self.shared.seen.lock().unwrap_or_else(|p| p.into_inner()));
        seen.svids = self.shared.serials.lock().unwrap_or_else(|p| p.into_inner()).len();
        seen
    }
}

async fn stream(socket: PathBuf, watched: String, shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    let error = |e: String| shared.seen.lock().unwrap_or_else(|p| p.into_inner()).errors.push(e);
    let Some(channel) = connect_agent(&socket).await else {
        return error("the agent's socket does not answer for 5 s".into());
    };
    let mut client = pb::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(channel);
    let mut stream = match client.fetch_x509svid(with_header(pb::X509svidRequest {})).await {
        Ok(s) => s.into_inner(),
        Err(e) => return error(format!("open stream: {e:?}")),
    };
    let (mut held_until, mut gap_since) = (0u128, None::<u128>);
    while !stop.load(Ordering::SeqCst) {
        match tokio::time::timeout(Duration::from_millis(200), stream.message()).await {
            Err(_) => {}
            Ok(Ok(Some(message))) => {
                for svid in &message.svids {
                    shared.seen.lock().unwrap_or_else(|p| p.into_inner()).ids.insert(svid.spiffe_id.clone());
                    if svid.spiffe_id != watched {
                        continue;
                    }
                    match leaf(&svid.x509_svid) {
                        Some((serial, from, until)) => {
                            let now = now_ms();
                            if from > now || until <= now {
                                let mut seen = shared.seen.lock().unwrap_or_else(|p| p.into_inner());
                                seen.untimely.push(format!("X.509-SVID valid {from}..{until} ms at {now}"));
                            }
                            held_until = held_until.max(until);
                            shared.serials.lock().unwrap_or_else(|p| p.into_inner()).insert(serial);
                        }
                        None => error("an X.509-SVID that does not parse".into()),
                    }
                }
            }
            Ok(Ok(None)) => return error("the stream ended".into()),
            Ok(Err(e)) => return error(format!("stream: {e:?}")),
        }
        let now = now_ms();
        if held_until != 0 && now >= held_until {
            gap_since.get_or_insert(held_until);
        } else if let Some(since) = gap_since.take() {
            let mut seen = shared.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.longest_gap = seen.longest_gap.max(Duration::from_millis((now - since) as u64));
        }
    }
    if let Some(since) = gap_since {
        let mut seen = shared.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.longest_gap = seen.longest_gap.max(Duration::from_millis((now_ms() - since) as u64));
    }
}

async fn jwts(socket: PathBuf, ask: JwtAsk, shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    let error = |e: String| shared.seen.lock().unwrap_or_else(|p| p.into_inner()).errors.push(e);
    let Some(channel) = connect_agent(&socket).await else {
        return error("the agent's socket does not answer for 5 s".into());
    };
    let mut client = pb::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(channel);
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let audience = match ask {
            JwtAsk::NewAudience => format!("aud-{n}"),
            JwtAsk::SameAudience => "drill".to_owned(),
        };
        let answer = client
            .fetch_jwtsvid(with_header(pb::JwtsvidRequest { audience: vec![audience], spiffe_id: String::new() }))
            .await;
        {
            let mut seen = shared.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.jwt_calls += 1;
            match answer {
                Ok(response) if !response.get_ref().svids.is_empty() => {
                    seen.jwt_answered += 1;
                    if let Some(why) = response.get_ref().svids.first().and_then(|s| untimely_jwt(&s.svid)) {
                        seen.untimely.push(why);
                    }
                }
                Ok(_) => seen.errors.push(format!("JWT-SVID {n}: an answer without an SVID")),
                Err(e) => seen.errors.push(format!("JWT-SVID {n}: {e:?}")),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An agent attested to `servers` with a join token (all replicas in its server list,
/// syncing every second), and an entry `spiffe://example.org/web` for this process's uid
/// under it. Returns the agent and its SPIFFE ID.
pub fn attach_agent(root: &std::path::Path, servers: &[testkit::ServerProcess]) -> (testkit::AgentProcess, String) {
    attach_agent_with_env(root, servers, &[], &[])
}

/// [`attach_agent`] with extra arguments to `entry create` (`--x509-svid-ttl 20`, say) and
/// extra environment variables for the agent process.
pub fn attach_agent_with_env(
    root: &std::path::Path,
    servers: &[testkit::ServerProcess],
    entry_args: &[&str],
    env: &[(String, String)],
) -> (testkit::AgentProcess, String) {
    let token =
        servers[0].json(&["token", "generate", "--ttl", "600"])["value"].as_str().expect("a join token").to_owned();
    let agent_id = format!("spiffe://example.org/spire/agent/join_token/{token}");
    let selector = uid_selector();
    let mut create = vec!["entry", "create", "--spiffe-id", WEB, "--parent-id", &agent_id, "--selector", &selector];
    create.extend_from_slice(entry_args);
    servers[0].json(&create);
    let addresses: Vec<String> = servers.iter().map(testkit::ServerProcess::api_address).collect();
    let dir = root.join("agent");
    std::fs::create_dir_all(&dir).expect("agent dir");
    std::fs::write(dir.join("bundle.pem"), servers[0].bundle_pem()).expect("bundle file");
    let config = testkit::AgentProcess::config_text(
        root,
        &addresses,
        &format!("join_token = \"{token}\""),
        r#"NodeAttestor "join_token" {}"#,
        "1s",
        "",
    );
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let agent = testkit::AgentProcess::start_configured(root, &config, &env);
    (agent, agent_id)
}

/// The workload's SPIFFE ID in [`attach_agent`]'s entry.
pub const WEB: &str = "spiffe://example.org/web";

/// `unix:uid:<this process's uid>`.
pub fn uid_selector() -> String {
    let uid = std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    format!("unix:uid:{uid}")
}
