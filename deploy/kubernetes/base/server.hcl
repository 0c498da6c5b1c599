# The server config every replica of the StatefulSet runs, with $POD_NAME expanded
# (`run --expand-env`): testudo-server-<ordinal>. Replica testudo-server-<i> is node i + 1
# when it founds the cluster.
server {
  trust_domain = "example.org"
  data_dir     = "/var/lib/testudo/server"
  bind_address = "0.0.0.0"
  bind_port    = 8081
  socket_path  = "/run/testudo/api.sock"
  log_format   = "json"
}

plugins {
  # The SPIFFE CA keys in the replicated state: to try it out. The overlays keep them in
  # AWS KMS (docs/ca.md).
  KeyManager "memory" {}
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
  # Ordinals scaled away (their volumes deleted with them) leave the quorum by themselves.
  remove_unreachable_after = "10m"
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
