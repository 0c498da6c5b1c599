"""A stock gRPC client (Python's grpcio, on gRPC's C core) with stubs generated here from
SPIRE's agent debug API proto, calling the agent's admin socket unmodified.

Usage: debug_client.py PROTO_DIR unix:/path/to/admin.sock
Prints one JSON object with what GetInfo answered.
"""
import importlib
import importlib.resources
import json
import sys
import tempfile

import grpc
from grpc_tools import protoc

proto_dir, target = sys.argv[1], sys.argv[2]
out_dir = tempfile.mkdtemp()
well_known = str(importlib.resources.files("grpc_tools") / "_proto")
files = ["spire/api/agent/debug/v1/debug.proto", "spire/api/types/spiffeid.proto"]
status = protoc.main(
    ["protoc", f"-I{proto_dir}", f"-I{well_known}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}"] + files
)
if status != 0:
    raise SystemExit(f"protoc failed: {status}")
sys.path.insert(0, out_dir)
debug_pb = importlib.import_module("spire.api.agent.debug.v1.debug_pb2")
debug_grpc = importlib.import_module("spire.api.agent.debug.v1.debug_pb2_grpc")

info = debug_grpc.DebugStub(grpc.insecure_channel(target)).GetInfo(debug_pb.GetInfoRequest(), timeout=10)
print(json.dumps({"svid_chain": len(info.svid_chain), "uptime": info.uptime}))
