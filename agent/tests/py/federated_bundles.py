"""py-spiffe (PyPI `spiffe`) as a workload of a federated trust domain.

Usage: federated_bundles.py unix:/path/to/api.sock <JWT-SVID> <audience>
Prints one JSON object: the X.509 and JWT bundles the workload holds, by trust domain, and
the SPIFFE ID of the JWT-SVID as the agent validated it.
"""
import json
import sys

from spiffe import WorkloadApiClient

endpoint, token, audience = sys.argv[1], sys.argv[2], sys.argv[3]
client = WorkloadApiClient(socket_path=endpoint)
context = client.fetch_x509_context(timeout=20)
out = {
    "x509_authorities": {
        str(b.trust_domain): len(b.x509_authorities) for b in context.x509_bundle_set.bundles
    },
    "jwt_trust_domains": sorted(str(b.trust_domain) for b in client.fetch_jwt_bundles(timeout=20).bundles),
    "validated_spiffe_id": str(client.validate_jwt_svid(token, audience, timeout=20).spiffe_id),
}
client.close()
print(json.dumps(out))
