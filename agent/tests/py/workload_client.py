"""A workload written with py-spiffe (PyPI `spiffe`), an independent Workload API client.

Usage: workload_client.py unix:/path/to/api.sock
Prints one JSON object: what it fetched, validated and saw streamed.
"""
import json
import sys
import threading

from spiffe import WorkloadApiClient

endpoint = sys.argv[1]
client = WorkloadApiClient(socket_path=endpoint)
out = {}

svid = client.fetch_x509_svid(timeout=20)
out["x509_spiffe_id"] = str(svid.spiffe_id)
out["x509_chain_length"] = len(svid.cert_chain)
context = client.fetch_x509_context(timeout=20)
out["x509_bundle_trust_domains"] = sorted(str(b.trust_domain) for b in context.x509_bundle_set.bundles)

jwt = client.fetch_jwt_svid(audience={"py-audience"}, timeout=20)
out["jwt_spiffe_id"] = str(jwt.spiffe_id)
validated = client.validate_jwt_svid(jwt.token, "py-audience", timeout=20)
out["validated_spiffe_id"] = str(validated.spiffe_id)
try:
    client.validate_jwt_svid(jwt.token, "not-the-audience", timeout=20)
    out["wrong_audience"] = "accepted"
except Exception as e:  # the agent refuses it
    out["wrong_audience"] = type(e).__name__
bundles = client.fetch_jwt_bundles(timeout=20)
out["jwt_bundle_count"] = len(list(bundles.bundles))

# Stream until the SVID rotates (two different serial numbers), or give up after 40 s.
serials = []
rotated = threading.Event()
errors = []


def on_success(ctx):
    serial = ctx.default_svid.leaf.serial_number
    if serial not in serials:
        serials.append(serial)
    if len(serials) >= 2:
        rotated.set()


def on_error(e):
    errors.append(repr(e))


handle = client.stream_x509_contexts(on_success, on_error, retry_connect=False)
rotated.wait(timeout=40)
handle.cancel()
out["streamed_serials"] = len(serials)
out["stream_errors"] = errors
client.close()
print(json.dumps(out))
