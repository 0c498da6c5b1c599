"""A stock gRPC client (Python's grpcio, on gRPC's C core) with stubs generated here from
SPIRE's own API protos, calling a server's admin socket unmodified: what SPIRE users'
scripts and tools built on the C core (C++, Python, Ruby, PHP) send.

Usage: spire_api_client.py PROTO_DIR unix:/path/to/admin.sock
Prints one JSON object with what each call answered.
"""
import importlib
import importlib.resources
import json
import os
import sys
import tempfile

import grpc
from grpc_tools import protoc

proto_dir, target = sys.argv[1], sys.argv[2]
out_dir = tempfile.mkdtemp()
types = os.path.join(proto_dir, "spire", "api", "types")
files = [
    "spire/api/server/entry/v1/entry.proto",
    "spire/api/server/agent/v1/agent.proto",
    "spire/api/server/bundle/v1/bundle.proto",
] + [f"spire/api/types/{name}" for name in sorted(os.listdir(types)) if name.endswith(".proto")]
well_known = str(importlib.resources.files("grpc_tools") / "_proto")
status = protoc.main(
    ["protoc", f"-I{proto_dir}", f"-I{well_known}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}"] + files
)
if status != 0:
    raise SystemExit(f"protoc failed: {status}")
sys.path.insert(0, out_dir)

entry_pb = importlib.import_module("spire.api.server.entry.v1.entry_pb2")
entry_grpc = importlib.import_module("spire.api.server.entry.v1.entry_pb2_grpc")
agent_pb = importlib.import_module("spire.api.server.agent.v1.agent_pb2")
agent_grpc = importlib.import_module("spire.api.server.agent.v1.agent_pb2_grpc")
bundle_pb = importlib.import_module("spire.api.server.bundle.v1.bundle_pb2")
bundle_grpc = importlib.import_module("spire.api.server.bundle.v1.bundle_pb2_grpc")
types_entry = importlib.import_module("spire.api.types.entry_pb2")
types_spiffeid = importlib.import_module("spire.api.types.spiffeid_pb2")
types_selector = importlib.import_module("spire.api.types.selector_pb2")

channel = grpc.insecure_channel(target)
entries = entry_grpc.EntryStub(channel)
agents = agent_grpc.AgentStub(channel)
bundles = bundle_grpc.BundleStub(channel)
out = {}

created = entries.BatchCreateEntry(
    entry_pb.BatchCreateEntryRequest(
        entries=[
            types_entry.Entry(
                spiffe_id=types_spiffeid.SPIFFEID(trust_domain="example.org", path="/from-python"),
                parent_id=types_spiffeid.SPIFFEID(trust_domain="example.org", path="/spire/agent/x"),
                selectors=[types_selector.Selector(type="unix", value="uid:4242")],
            )
        ]
    ),
    timeout=10,
)
out["created"] = [{"code": r.status.code, "id": r.entry.id} for r in created.results]
out["count"] = entries.CountEntries(entry_pb.CountEntriesRequest(), timeout=10).count
listed = entries.ListEntries(entry_pb.ListEntriesRequest(), timeout=10)
out["listed"] = [f"spiffe://{e.spiffe_id.trust_domain}{e.spiffe_id.path}" for e in listed.entries]
token = agents.CreateJoinToken(agent_pb.CreateJoinTokenRequest(ttl=60), timeout=10)
out["token_ttl_ok"] = token.expires_at > 0 and len(token.value) > 0
out["agents"] = agents.CountAgents(agent_pb.CountAgentsRequest(), timeout=10).count
bundle = bundles.GetBundle(bundle_pb.GetBundleRequest(), timeout=10)
out["bundle_trust_domain"] = bundle.trust_domain
out["bundle_x509_authorities"] = len(bundle.x509_authorities)
try:
    entries.GetEntry(entry_pb.GetEntryRequest(id="no-such-entry"), timeout=10)
    out["missing"] = "found"
except grpc.RpcError as e:
    out["missing"] = e.code().name
print(json.dumps(out))
