//! Workloads that prove identities work end to end: each follows its agent's X.509 stream,
//! and pairs of them open mutual TLS to each other over loopback, each side checking the
//! other's SVID against the bundle its own agent delivered (its trust domain's bundle for
//! a peer of the same domain, the federated one otherwise). Shared by the drills that
//! check trust across clusters (`federation`, `nested_regions`).

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use identity::bundle::Bundle;
use identity::x509::split_der_certificates;
use identity::{SpiffeId, TrustDomain};
use proto::workload as pb;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use spiffe_tls::SvidVerifier;

/// How often the workloads shake hands.
pub const HANDSHAKE_EVERY: Duration = Duration::from_millis(200);

/// A workload: its trust domain, SPIFFE ID, latest X.509 message from its agent, and the
/// serial numbers of every SVID it was given.
pub struct Workload {
    pub domain: &'static str,
    pub id: &'static str,
    latest: Mutex<Option<pb::X509svidResponse>>,
    serials: Mutex<BTreeSet<Vec<u8>>>,
}

impl Workload {
    pub fn new(domain: &'static str, id: &'static str) -> Arc<Self> {
        Arc::new(Self { domain, id, latest: Mutex::default(), serials: Mutex::default() })
    }

    /// The partner CAs the workload holds (DER), from its latest message.
    pub fn held_bundle_of(&self, partner: &str) -> Vec<Vec<u8>> {
        let latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        latest
            .as_ref()
            .and_then(|m| m.federated_bundles.get(&format!("spiffe://{partner}")))
            .and_then(|der| split_der_certificates(der).ok())
            .unwrap_or_default()
    }

    /// The CA that issued the workload's current SVID.
    pub fn issuer(&self) -> Option<Vec<u8>> {
        let latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        let svid = latest.as_ref()?.svids.iter().find(|s| s.spiffe_id == self.id)?;
        split_der_certificates(&svid.x509_svid).ok()?.get(1).cloned()
    }

    /// The workload's current SVID chain, leaf first.
    pub fn chain(&self) -> Option<Vec<Vec<u8>>> {
        let latest = self.latest.lock().unwrap_or_else(|p| p.into_inner());
        let svid = latest.as_ref()?.svids.iter().find(|s| s.spiffe_id == self.id)?;
        split_der_certificates(&svid.x509_svid).ok()
    }

    /// How many distinct SVIDs the workload was given.
    pub fn svids_seen(&self) -> usize {
        self.serials.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn receive(&self, message: pb::X509svidResponse) {
        if let Some(svid) = message.svids.iter().find(|s| s.spiffe_id == self.id) {
            if let Some(leaf) = split_der_certificates(&svid.x509_svid).ok().and_then(|c| c.into_iter().next()) {
                if let Ok(facts) = identity::x509::certificate_facts(&leaf) {
                    self.serials.lock().unwrap_or_else(|p| p.into_inner()).insert(facts.serial);
                }
            }
        }
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = Some(message);
    }
}

/// Streams the workload's X.509 messages into its `latest` until `stop`; errors go to
/// `errors`.
pub async fn follow(
    socket: std::path::PathBuf,
    workload: Arc<Workload>,
    errors: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
) {
    let error = |e: String| errors.lock().unwrap_or_else(|p| p.into_inner()).push(e);
    let Ok(channel) = proto::unix_socket::connect(&socket).await else {
        return error(format!("{} does not answer", socket.display()));
    };
    let mut client = pb::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(channel);
    let mut request = tonic::Request::new(pb::X509svidRequest {});
    request.metadata_mut().insert("workload.spiffe.io", tonic::metadata::MetadataValue::from_static("true"));
    let mut stream = match client.fetch_x509svid(request).await {
        Ok(s) => s.into_inner(),
        Err(e) => return error(format!("open stream: {e:?}")),
    };
    while !stop.load(Ordering::SeqCst) {
        match tokio::time::timeout(Duration::from_millis(200), stream.message()).await {
            Err(_) => {}
            Ok(Ok(Some(message))) => workload.receive(message),
            Ok(Ok(None)) => return error("the X.509 stream ended".into()),
            Ok(Err(e)) => return error(format!("X.509 stream: {e:?}")),
        }
    }
}

/// One side of a handshake: its SVID chain and key, and a verifier for the peer made from
/// the federated bundle its agent delivered.
struct Side {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    verifier: Arc<SvidVerifier>,
}

fn side(workload: &Workload, peer: &Workload) -> Result<Side, String> {
    let latest = workload.latest.lock().unwrap_or_else(|p| p.into_inner()).clone().ok_or("no X.509 message yet")?;
    let svid = latest.svids.iter().find(|s| s.spiffe_id == workload.id).ok_or("no SVID for the workload")?;
    let chain = split_der_certificates(&svid.x509_svid)?.into_iter().map(CertificateDer::from).collect();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(svid.x509_svid_key.clone()));
    let td = TrustDomain::parse(peer.domain).map_err(|e| e.to_string())?;
    let mut bundle = Bundle::new(td);
    let der = if peer.domain == workload.domain {
        &svid.bundle
    } else {
        latest.federated_bundles.get(&format!("spiffe://{}", peer.domain)).ok_or("no bundle of the peer")?
    };
    for ca in split_der_certificates(der)? {
        bundle.add_x509_authority(&ca).map_err(|e| e.to_string())?;
    }
    let peer_id = SpiffeId::parse(peer.id).map_err(|e| e.to_string())?;
    let verifier = Arc::new(SvidVerifier::for_id(Arc::new(RwLock::new(bundle)), peer_id));
    Ok(Side { chain, key, verifier })
}

/// One mTLS connection over loopback from `client`'s workload to `server`'s, each checking
/// the other's SVID; a byte each way proves the session.
pub fn handshake(client: &Workload, server: &Workload) -> Result<(), String> {
    let (c, s) = (side(client, server)?, side(server, client)?);
    let tls = |e: rustls::Error| e.to_string();
    let server_config = rustls::ServerConfig::builder_with_provider(spiffe_tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .with_client_cert_verifier(s.verifier)
        .with_single_cert(s.chain, s.key)
        .map_err(tls)?;
    let client_config = rustls::ClientConfig::builder_with_provider(spiffe_tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls)?
        .dangerous()
        .with_custom_certificate_verifier(c.verifier)
        .with_client_auth_cert(c.chain, c.key)
        .map_err(tls)?;
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let address: SocketAddr = listener.local_addr().map_err(|e| e.to_string())?;
    let io = |e: std::io::Error| e.to_string();
    std::thread::scope(|scope| {
        let served = scope.spawn(move || -> Result<(), String> {
            use std::io::{Read, Write};
            let (socket, _) = listener.accept().map_err(io)?;
            socket.set_read_timeout(Some(Duration::from_secs(5))).map_err(io)?;
            let connection = rustls::ServerConnection::new(Arc::new(server_config)).map_err(tls)?;
            let mut stream = rustls::StreamOwned::new(connection, socket);
            let mut byte = [0u8];
            stream.read_exact(&mut byte).map_err(|e| format!("server side: {e}"))?;
            stream.write_all(&byte).map_err(|e| format!("server side: {e}"))?;
            stream.flush().map_err(io)
        });
        let client_side = (|| -> Result<(), String> {
            use std::io::{Read, Write};
            let socket = TcpStream::connect(address).map_err(io)?;
            socket.set_read_timeout(Some(Duration::from_secs(5))).map_err(io)?;
            let name = ServerName::try_from(server.domain.to_owned()).map_err(|e| e.to_string())?;
            let connection = rustls::ClientConnection::new(Arc::new(client_config), name).map_err(tls)?;
            let mut stream = rustls::StreamOwned::new(connection, socket);
            stream.write_all(b"x").map_err(|e| format!("client side: {e}"))?;
            let mut byte = [0u8];
            stream.read_exact(&mut byte).map_err(|e| format!("client side: {e}"))
        })();
        let served = served.join().unwrap_or_else(|_| Err("the server side panicked".into()));
        client_side.and(served)
    })
}

/// What the handshakes saw.
#[derive(Default)]
pub struct Handshakes {
    pub made: usize,
    pub failed: Vec<String>,
    /// The longest time between two successful handshakes in the same direction (the
    /// cadence, [`HANDSHAKE_EVERY`], plus what a fault added).
    pub longest_gap: Duration,
    last_success: [Option<Instant>; 2],
}

/// Shakes hands both ways every [`HANDSHAKE_EVERY`] until `stop`.
pub fn shake_hands(workloads: [Arc<Workload>; 2], stop: Arc<AtomicBool>, seen: Arc<Mutex<Handshakes>>) {
    let began = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        for (direction, (client, server)) in
            [(&workloads[0], &workloads[1]), (&workloads[1], &workloads[0])].into_iter().enumerate()
        {
            let result = handshake(client, server);
            let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.made += 1;
            if result.is_ok() {
                let now = Instant::now();
                if let Some(last) = seen.last_success[direction].replace(now) {
                    seen.longest_gap = seen.longest_gap.max(now - last);
                }
            }
            if let Err(e) = result {
                seen.failed.push(format!(
                    "{:.1} s: {} -> {}: {e}",
                    began.elapsed().as_secs_f64(),
                    client.id,
                    server.id
                ));
            }
        }
        std::thread::sleep(HANDSHAKE_EVERY);
    }
}

/// Two workloads following their agents' X.509 streams and, once started, shaking hands
/// both ways, until [`Pairing::finish`].
pub struct Pairing {
    workloads: [Arc<Workload>; 2],
    stop: Arc<AtomicBool>,
    errors: Arc<Mutex<Vec<String>>>,
    seen: Arc<Mutex<Handshakes>>,
    streams: Vec<tokio::task::JoinHandle<()>>,
    handshakes: Option<std::thread::JoinHandle<()>>,
}

impl Pairing {
    /// Follows each workload's agent (its Workload API socket).
    pub fn follow(runtime: &tokio::runtime::Runtime, pair: [(Arc<Workload>, std::path::PathBuf); 2]) -> Self {
        let (stop, errors) = (Arc::new(AtomicBool::new(false)), Arc::new(Mutex::new(Vec::new())));
        let streams = pair
            .iter()
            .map(|(workload, socket)| {
                runtime.spawn(follow(socket.clone(), workload.clone(), errors.clone(), stop.clone()))
            })
            .collect();
        let [(a, _), (b, _)] = pair;
        Self { workloads: [a, b], stop, errors, seen: Arc::default(), streams, handshakes: None }
    }

    /// Starts shaking hands both ways every [`HANDSHAKE_EVERY`].
    pub fn shake(&mut self) {
        let (workloads, stop, seen) = (self.workloads.clone(), self.stop.clone(), self.seen.clone());
        self.handshakes = Some(std::thread::spawn(move || shake_hands(workloads, stop, seen)));
    }

    /// Stops; records the handshakes in `report` (operations, acknowledged) and checks that
    /// none failed and that the workloads saw no error. `across` names what the handshakes
    /// cross, for the failure text.
    pub fn finish(mut self, runtime: &tokio::runtime::Runtime, report: &mut super::Report, across: &str) -> Handshakes {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handshakes) = self.handshakes.take() {
            let _ = handshakes.join();
        }
        runtime.block_on(async {
            for stream in self.streams.drain(..) {
                let _ = stream.await;
            }
        });
        let seen = std::mem::take(&mut *self.seen.lock().unwrap_or_else(|p| p.into_inner()));
        let errors = std::mem::take(&mut *self.errors.lock().unwrap_or_else(|p| p.into_inner()));
        report.operations = seen.made;
        report.acknowledged = seen.made - seen.failed.len();
        report.check(seen.failed.is_empty(), || {
            format!("{} of {} {across} handshakes failed: {:?}", seen.failed.len(), seen.made, seen.failed)
        });
        report.check(errors.is_empty(), || format!("the workloads saw errors: {errors:?}"));
        seen
    }
}
