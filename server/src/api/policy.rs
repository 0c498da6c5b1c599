//! Who may call what: one row per served method, in the shape of SPIRE's
//! `pkg/server/authpolicy/policy_data.json`. [`super::authorize`] enforces it in front of
//! every service on both listeners; a method missing here is refused, so a new method is
//! unreachable until someone decides who may call it. The table also names the methods
//! the API metrics label (anything else is `unknown`).
//!
//! Where it differs from SPIRE's (docs/api.md says why): `grpc.health.v1.Health` is open
//! to anyone, as load balancers probe it over TCP; Debug `GetInfo` is open to admin SVIDs
//! as well as the admin socket; the ClusterAdmin service, the entry notification stream and
//! the federation refresh and upstream statuses are Testudo's own.

/// The kinds of caller a method admits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Allowed {
    /// Anyone, with or without an SVID.
    pub any: bool,
    /// The admin Unix socket (its file mode decides who reaches it).
    pub local: bool,
    /// An SVID listed in `server.admin_ids` or whose ID has an entry marked `admin`.
    pub admin: bool,
    /// An attested, unbanned agent presenting its current SVID.
    pub agent: bool,
    /// An SVID whose ID has an entry marked `downstream` (a nested cluster).
    pub downstream: bool,
}

impl Allowed {
    /// The kinds of caller admitted, for refusals: "the admin socket or an admin SVID".
    pub fn describe(&self) -> String {
        let kinds = [
            (self.local, "the admin socket"),
            (self.admin, "an admin SVID"),
            (self.agent, "an agent SVID"),
            (self.downstream, "the SVID of a downstream workload"),
        ];
        let named: Vec<&str> = kinds.iter().filter(|(on, _)| *on).map(|(_, name)| *name).collect();
        named.join(" or ")
    }
}

const ANYONE: Allowed = Allowed { any: true, local: true, admin: true, agent: true, downstream: true };
const LOCAL: Allowed = Allowed { any: false, local: true, admin: false, agent: false, downstream: false };
const ADMIN: Allowed = Allowed { local: true, admin: true, ..LOCAL };
const AGENT: Allowed = Allowed { local: false, agent: true, ..LOCAL };
const ADMIN_OR_AGENT: Allowed = Allowed { agent: true, ..ADMIN };
const DOWNSTREAM: Allowed = Allowed { local: false, downstream: true, ..LOCAL };

/// Every method served, and who may call it.
pub const POLICY: &[(&str, Allowed)] = &[
    ("/spire.api.server.agent.v1.Agent/CountAgents", ADMIN),
    ("/spire.api.server.agent.v1.Agent/ListAgents", ADMIN),
    ("/spire.api.server.agent.v1.Agent/GetAgent", ADMIN),
    ("/spire.api.server.agent.v1.Agent/DeleteAgent", ADMIN),
    ("/spire.api.server.agent.v1.Agent/BanAgent", ADMIN),
    ("/spire.api.server.agent.v1.Agent/AttestAgent", ANYONE),
    ("/spire.api.server.agent.v1.Agent/RenewAgent", AGENT),
    ("/spire.api.server.agent.v1.Agent/CreateJoinToken", ADMIN),
    ("/spire.api.server.agent.v1.Agent/PostStatus", AGENT),
    ("/spire.api.server.bundle.v1.Bundle/CountBundles", ADMIN),
    ("/spire.api.server.bundle.v1.Bundle/GetBundle", ANYONE),
    ("/spire.api.server.bundle.v1.Bundle/AppendBundle", ADMIN),
    ("/spire.api.server.bundle.v1.Bundle/PublishJWTAuthority", DOWNSTREAM),
    ("/spire.api.server.bundle.v1.Bundle/ListFederatedBundles", ADMIN),
    ("/spire.api.server.bundle.v1.Bundle/GetFederatedBundle", ADMIN_OR_AGENT),
    ("/spire.api.server.bundle.v1.Bundle/BatchCreateFederatedBundle", ADMIN),
    ("/spire.api.server.bundle.v1.Bundle/BatchUpdateFederatedBundle", ADMIN),
    ("/spire.api.server.bundle.v1.Bundle/BatchSetFederatedBundle", ADMIN),
    ("/spire.api.server.bundle.v1.Bundle/BatchDeleteFederatedBundle", ADMIN),
    ("/spire.api.server.debug.v1.Debug/GetInfo", ADMIN),
    ("/spire.api.server.entry.v1.Entry/CountEntries", ADMIN),
    ("/spire.api.server.entry.v1.Entry/ListEntries", ADMIN),
    ("/spire.api.server.entry.v1.Entry/GetEntry", ADMIN),
    ("/spire.api.server.entry.v1.Entry/BatchCreateEntry", ADMIN),
    ("/spire.api.server.entry.v1.Entry/BatchUpdateEntry", ADMIN),
    ("/spire.api.server.entry.v1.Entry/BatchDeleteEntry", ADMIN),
    ("/spire.api.server.entry.v1.Entry/GetAuthorizedEntries", AGENT),
    ("/spire.api.server.entry.v1.Entry/SyncAuthorizedEntries", AGENT),
    ("/spire.api.server.trustdomain.v1.TrustDomain/ListFederationRelationships", ADMIN),
    ("/spire.api.server.trustdomain.v1.TrustDomain/GetFederationRelationship", ADMIN),
    ("/spire.api.server.trustdomain.v1.TrustDomain/BatchCreateFederationRelationship", ADMIN),
    ("/spire.api.server.trustdomain.v1.TrustDomain/BatchUpdateFederationRelationship", ADMIN),
    ("/spire.api.server.trustdomain.v1.TrustDomain/BatchDeleteFederationRelationship", ADMIN),
    ("/spire.api.server.trustdomain.v1.TrustDomain/RefreshBundle", ADMIN),
    ("/testudo.admin.v1.FederationStatus/ListRefreshes", ADMIN),
    ("/testudo.admin.v1.UpstreamStatus/GetUpstreamStatus", ADMIN),
    ("/spire.api.server.localauthority.v1.LocalAuthority/GetJWTAuthorityState", ADMIN),
    ("/spire.api.server.localauthority.v1.LocalAuthority/PrepareJWTAuthority", ADMIN),
    ("/spire.api.server.localauthority.v1.LocalAuthority/ActivateJWTAuthority", ADMIN),
    ("/spire.api.server.localauthority.v1.LocalAuthority/TaintJWTAuthority", ADMIN),
    ("/spire.api.server.localauthority.v1.LocalAuthority/RevokeJWTAuthority", ADMIN),
    ("/spire.api.server.localauthority.v1.LocalAuthority/GetX509AuthorityState", ADMIN),
    ("/spire.api.server.localauthority.v1.LocalAuthority/PrepareX509Authority", ADMIN),
    ("/spire.api.server.localauthority.v1.LocalAuthority/ActivateX509Authority", ADMIN),
    ("/spire.api.server.localauthority.v1.LocalAuthority/TaintX509Authority", ADMIN),
    ("/spire.api.server.localauthority.v1.LocalAuthority/TaintX509UpstreamAuthority", ADMIN),
    ("/spire.api.server.localauthority.v1.LocalAuthority/RevokeX509Authority", ADMIN),
    ("/spire.api.server.localauthority.v1.LocalAuthority/RevokeX509UpstreamAuthority", ADMIN),
    ("/spire.api.server.svid.v1.SVID/MintX509SVID", ADMIN),
    ("/spire.api.server.svid.v1.SVID/MintJWTSVID", ADMIN),
    ("/spire.api.server.svid.v1.SVID/BatchNewX509SVID", AGENT),
    ("/spire.api.server.svid.v1.SVID/NewJWTSVID", AGENT),
    ("/spire.api.server.svid.v1.SVID/NewDownstreamX509CA", DOWNSTREAM),
    ("/testudo.agent.v1.EntryNotifications/WatchAuthorizedEntries", AGENT),
    ("/grpc.health.v1.Health/Check", ANYONE),
    ("/grpc.health.v1.Health/Watch", ANYONE),
    ("/testudo.admin.v1.ClusterAdmin/Init", LOCAL),
    ("/testudo.admin.v1.ClusterAdmin/CreateInvite", LOCAL),
    ("/testudo.admin.v1.ClusterAdmin/Join", LOCAL),
    ("/testudo.admin.v1.ClusterAdmin/Status", LOCAL),
    ("/testudo.admin.v1.ClusterAdmin/RemoveMember", LOCAL),
    ("/testudo.admin.v1.ClusterAdmin/TransferLeadership", LOCAL),
    ("/testudo.admin.v1.ClusterAdmin/SaveBackup", LOCAL),
    ("/testudo.admin.v1.ClusterAdmin/RotateCa", LOCAL),
];

/// Who may call `method` (a request path); `None` for a method not served.
pub fn allowed(method: &str) -> Option<Allowed> {
    POLICY.iter().find(|(m, _)| *m == method).map(|(_, allowed)| *allowed)
}

/// `method` if it is one this server serves, else `"unknown"`: a bounded label set.
pub fn method_label(method: &str) -> &'static str {
    POLICY.iter().find(|(m, _)| *m == method).map_or("unknown", |(m, _)| m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_is_listed_once_and_unknown_paths_share_one_label() {
        let mut methods: Vec<&str> = POLICY.iter().map(|(m, _)| *m).collect();
        methods.sort_unstable();
        let before = methods.len();
        methods.dedup();
        assert_eq!(methods.len(), before, "a method is listed twice");
        assert_eq!(
            method_label("/spire.api.server.entry.v1.Entry/GetEntry"),
            "/spire.api.server.entry.v1.Entry/GetEntry"
        );
        assert_eq!(method_label("/evil/../path"), "unknown");
        assert_eq!(allowed("/spire.api.server.entry.v1.Entry/Nope"), None);
    }

    /// The table against SPIRE's `policy_data.json`, method by method: the same callers,
    /// except where this project differs on purpose (each difference is in docs/api.md).
    #[test]
    fn the_table_is_spires_except_where_documented() {
        let spire_any = ["Bundle/GetBundle", "Agent/AttestAgent"];
        let spire_agent = [
            "Agent/RenewAgent",
            "Agent/PostStatus",
            "SVID/BatchNewX509SVID",
            "SVID/NewJWTSVID",
            "Entry/GetAuthorizedEntries",
            "Entry/SyncAuthorizedEntries",
        ];
        let spire_downstream = ["SVID/NewDownstreamX509CA", "Bundle/PublishJWTAuthority"];
        let spire_admin_or_agent = ["Bundle/GetFederatedBundle"];
        // SPIRE: the admin socket only. Here: Health is open (load balancers probe it over
        // TCP) and GetInfo admits admin SVIDs; the cluster admin service is ours.
        let ours_differently = [
            ("/grpc.health.v1.Health/Check", ANYONE),
            ("/grpc.health.v1.Health/Watch", ANYONE),
            ("/spire.api.server.debug.v1.Debug/GetInfo", ADMIN),
            ("/testudo.agent.v1.EntryNotifications/WatchAuthorizedEntries", AGENT),
            ("/testudo.admin.v1.FederationStatus/ListRefreshes", ADMIN),
            ("/testudo.admin.v1.UpstreamStatus/GetUpstreamStatus", ADMIN),
        ];
        for (method, allowed) in POLICY {
            let short = method.rsplit('.').next().unwrap_or(method);
            let expected = if let Some((_, ours)) = ours_differently.iter().find(|(m, _)| m == method) {
                *ours
            } else if method.starts_with("/testudo.admin.v1.ClusterAdmin/") {
                LOCAL
            } else if spire_any.contains(&short) {
                ANYONE
            } else if spire_agent.contains(&short) {
                AGENT
            } else if spire_downstream.contains(&short) {
                DOWNSTREAM
            } else if spire_admin_or_agent.contains(&short) {
                ADMIN_OR_AGENT
            } else {
                ADMIN
            };
            assert_eq!(*allowed, expected, "{method}");
        }
    }
}
