//! Which cluster CAs this replica trusts and which one it issues from. One value shared by
//! the cluster RPC's certificate checks (read at every handshake), admission of joiners,
//! renewal of this replica's certificate, invites and rotations of the cluster CA.

use std::sync::{Arc, RwLock};

use identity::bundle::Bundle;
use identity::TrustDomain;

use super::authority::ClusterAuthority;
use super::files::ClusterMaterial;
use super::ClusterSetupError;

/// The CAs in use: the one this replica issues from and, during a rotation, the other one
/// it still trusts.
#[derive(Clone)]
pub struct CaSet {
    pub generation: u64,
    pub issuing: Arc<ClusterAuthority>,
    pub also_trusted: Option<(u64, Vec<u8>)>,
}

pub struct ClusterTrust {
    trust_domain: TrustDomain,
    cas: RwLock<CaSet>,
    /// What the cluster RPC verifies peers against: the CAs of `cas`.
    bundle: Arc<RwLock<Bundle>>,
}

impl ClusterTrust {
    /// The CAs a replica's files name.
    pub fn from_material(trust_domain: &TrustDomain, material: &ClusterMaterial) -> Result<Self, ClusterSetupError> {
        let cas = CaSet {
            generation: material.ca_generation,
            issuing: Arc::new(ClusterAuthority::from_parts(material.ca_cert_der.clone(), &material.ca_key_pkcs8)?),
            also_trusted: material.also_trusted.clone(),
        };
        let bundle = bundle_of(trust_domain, &cas)?;
        Ok(Self { trust_domain: trust_domain.clone(), cas: RwLock::new(cas), bundle: Arc::new(RwLock::new(bundle)) })
    }

    pub fn cas(&self) -> CaSet {
        self.cas.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The CA this replica issues replica certificates from and presents in its chain.
    pub fn issuing(&self) -> Arc<ClusterAuthority> {
        self.cas().issuing
    }

    /// The bundle the cluster RPC checks peers against; it follows [`Self::set`].
    pub fn bundle(&self) -> Arc<RwLock<Bundle>> {
        self.bundle.clone()
    }

    /// Switches to `cas`: from the next handshake on, peers are checked against them.
    pub fn set(&self, cas: CaSet) -> Result<(), ClusterSetupError> {
        let bundle = bundle_of(&self.trust_domain, &cas)?;
        *self.cas.write().unwrap_or_else(|p| p.into_inner()) = cas;
        *self.bundle.write().unwrap_or_else(|p| p.into_inner()) = bundle;
        Ok(())
    }
}

fn bundle_of(trust_domain: &TrustDomain, cas: &CaSet) -> Result<Bundle, ClusterSetupError> {
    let mut bundle = Bundle::new(trust_domain.clone());
    let add = |bundle: &mut Bundle, der: &[u8]| {
        bundle.add_x509_authority(der).map_err(|e| ClusterSetupError::Certificate(format!("cluster CA: {e}")))
    };
    add(&mut bundle, &cas.issuing.cert_der)?;
    if let Some((_, der)) = &cas.also_trusted {
        add(&mut bundle, der)?;
    }
    Ok(bundle)
}
