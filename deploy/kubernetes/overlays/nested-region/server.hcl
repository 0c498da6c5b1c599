# A regional cluster nested under an upstream (root) cluster of the same trust domain
# (docs/nested.md): its CA is an intermediate the root signs. Each node running a replica
# also runs an agent of the root, whose Workload API socket is mounted at
# /run/testudo-root-agent. $POD_NAME is expanded at start (`run --expand-env`).
server {
  trust_domain = "example.org"
  data_dir     = "/var/lib/testudo/server"
  bind_address = "0.0.0.0"
  bind_port    = 8081
  # The intermediate's lifetime; the root's entry for this region sets the same TTL.
  ca_ttl       = "48h"
  socket_path  = "/run/testudo/api.sock"
  log_format   = "json"
}

plugins {
  # Credentials from the service account's IAM role; keys are tagged with the cluster and
  # slot, and swept if a crash leaves one unrecorded (docs/ca.md).
  KeyManager "aws_kms" {
    plugin_data {
      region = "eu-west-1"
    }
  }
  UpstreamAuthority "spire" {
    plugin_data {
      server_address      = ["root.testudo.example.net"]
      server_port         = "8081"
      workload_api_socket = "/run/testudo-root-agent/api.sock"
    }
  }
  NodeAttestor "x509pop" {
    plugin_data {
      ca_bundle_path = "/etc/testudo-node-ca/ca.pem"
    }
  }
}

cluster {
  raft_bind_address      = "0.0.0.0:8082"
  raft_advertise_address = "${POD_NAME}.testudo-server-raft:8082"
  peers = [
    "testudo-server-0.testudo-server-raft:8082",
    "testudo-server-1.testudo-server-raft:8082",
    "testudo-server-2.testudo-server-raft:8082",
    "testudo-server-3.testudo-server-raft:8082",
    "testudo-server-4.testudo-server-raft:8082",
  ]
  bootstrap_expect = 3
  ca_cert_file     = "/etc/testudo-cluster-ca/ca.crt"
  ca_key_file      = "/etc/testudo-cluster-ca/ca.key"
}

health_checks {
  listener_enabled = true
  bind_address     = "0.0.0.0"
  bind_port        = 8080
}

telemetry {
  Prometheus {
    host = "0.0.0.0"
    port = 9988
  }
}
