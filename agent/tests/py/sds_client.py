"""An Envoy stand-in speaking SDS v3 with Envoy's own protos (PyPI `xds-protos`, generated
from Envoy's API by the gRPC project) over grpcio: what a real Envoy sends, what it checks.

Usage: sds_client.py unix:/path/to/api.sock
Prints one JSON object with what it was sent; the Rust test checks the certificates.
"""
import json
import queue
import sys
import threading

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_spiffe_validator_config_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from google.protobuf import struct_pb2

SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

channel = grpc.insecure_channel(sys.argv[1])
stub = sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
out = {}


def node(major=1, minor=30, disable=None):
    n = base_pb2.Node(id="sidecar-1", cluster="payments", user_agent_name="envoy")
    n.user_agent_build_version.version.major_number = major
    n.user_agent_build_version.version.minor_number = minor
    if disable is not None:
        n.metadata.CopyFrom(struct_pb2.Struct(fields={"disable_spiffe_cert_validation": struct_pb2.Value(bool_value=disable)}))
    return n


def secrets(response):
    found = {}
    for any_ in response.resources:
        assert any_.type_url == SECRET, any_.type_url
        s = secret_pb2.Secret()
        any_.Unpack(s)
        found[s.name] = s
    return found


def describe(s):
    """What a secret says, in JSON terms."""
    kind = s.WhichOneof("type")
    if kind == "tls_certificate":
        chain = s.tls_certificate.certificate_chain.inline_bytes
        key = serialization.load_pem_private_key(s.tls_certificate.private_key.inline_bytes, None)
        leaf = x509.load_pem_x509_certificates(chain)[0]
        spki = lambda k: k.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier)
        return {"kind": kind, "uris": uris, "serial": str(leaf.serial_number), "chain_pem": chain.decode(),
                "key_matches": spki(key.public_key()) == spki(leaf.public_key())}
    ctx = s.validation_context
    if ctx.HasField("custom_validator_config"):
        cfg = tls_spiffe_validator_config_pb2.SPIFFECertValidatorConfig()
        assert ctx.custom_validator_config.typed_config.Unpack(cfg)
        return {"kind": "spiffe_validator", "validator": ctx.custom_validator_config.name,
                "trust_domains": {td.name: td.trust_bundle.inline_bytes.decode() for td in cfg.trust_domains}}
    return {"kind": "trusted_ca", "trusted_ca": ctx.trusted_ca.inline_bytes.decode()}


def fetch(names, n=None):
    try:
        r = stub.FetchSecrets(discovery_pb2.DiscoveryRequest(node=n or node(), resource_names=names, type_url=SECRET),
                              timeout=20)
        return {name: describe(s) for name, s in secrets(r).items()}
    except grpc.RpcError as e:
        return {"error": e.code().name, "message": e.details()}


class Stream:
    """One StreamSecrets call: requests in through a queue, responses out through another."""

    def __init__(self):
        self.requests = queue.Queue()
        self.responses = queue.Queue()
        self.call = stub.StreamSecrets(iter(self.requests.get, None))
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        try:
            for r in self.call:
                self.responses.put(r)
        except grpc.RpcError as e:
            self.responses.put(e)

    def send(self, **fields):
        self.requests.put(discovery_pb2.DiscoveryRequest(type_url=SECRET, **fields))

    def next(self, timeout):
        try:
            r = self.responses.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(r, grpc.RpcError):
            raise r
        return r

    def close(self):
        self.requests.put(None)
        self.call.cancel()


# A stream as Envoy opens it: the node on the first request, then an ACK per response that
# names what it wants now. The agent rotates these short-lived SVIDs every few seconds, so a
# push may arrive at any point: every response is ACKed, and checks look at content.
s = Stream()
s.send(node=node(), resource_names=["default"])
first = s.next(20)
out["stream_first"] = {"version": first.version_info, "nonce_set": bool(first.nonce),
                       "secrets": {k: describe(v) for k, v in secrets(first).items()}}
last = first


def ack(r, names):
    s.send(version_info=r.version_info, response_nonce=r.nonce, resource_names=names)


def drain(seconds, names):
    """Responses within `seconds`, each ACKed with `names`."""
    global last
    got = []
    while (r := s.next(seconds)) is not None:
        ack(r, names)
        got.append(r)
        last = r
    return got


def serial(r):
    return describe(secrets(r)["default"])["serial"]


ack(first, ["default"])
# After an ACK only a rotation may come, never the same secrets again.
out["resent_after_ack"] = [serial(r) for r in drain(2, ["default"]) if serial(r) == serial(first)]
# A request with a stale nonce is ignored, even with new names.
s.send(version_info=last.version_info, response_nonce="stale", resource_names=["default", "ROOTCA"])
out["after_stale_nonce"] = sorted({name for r in drain(2, ["default"]) for name in secrets(r)})
# New names with the current nonce are answered.
want = ["default", "ROOTCA"]
ack(last, want)
while True:
    r = s.next(20)
    ack(r, want)
    if "ROOTCA" in secrets(r):
        second = r
        break
out["after_new_names"] = sorted(secrets(second))
# Rotation: the agent replaces the SVID; Envoy is sent the new one unasked.
last, serials = second, [serial(second)]
while len(set(serials)) < 2:
    r = s.next(40)
    if r is None:
        break
    serials.append(serial(r))
    ack(r, want)
    last = r
out["rotated_serials"] = len(set(serials))
out["versions_increase"] = int(last.version_info) > int(second.version_info)
s.close()

out["fetch_all"] = fetch([])
out["fetch_by_id"] = fetch(["spiffe://example.org/workload", "spiffe://example.org"])
out["fetch_old_envoy"] = fetch(["ROOTCA"], node(1, 17))
out["fetch_disabled_by_metadata"] = fetch(["ROOTCA"], node(disable=True))
out["fetch_all_bundles"] = fetch(["ALL"])
out["fetch_all_bundles_old_envoy"] = fetch(["ALL"], node(1, 17))
out["fetch_unauthorized"] = fetch(["spiffe://example.org/someone-else"])
try:
    stub.FetchSecrets(discovery_pb2.DiscoveryRequest(node=node(), resource_names=["default"],
                                                     type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster"), timeout=20)
    out["fetch_wrong_type"] = "accepted"
except grpc.RpcError as e:
    out["fetch_wrong_type"] = e.code().name
try:
    list(stub.DeltaSecrets(iter([discovery_pb2.DeltaDiscoveryRequest(type_url=SECRET)]), timeout=20))
    out["delta"] = "accepted"
except grpc.RpcError as e:
    out["delta"] = e.code().name
channel.close()
print(json.dumps(out))
