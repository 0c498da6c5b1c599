# /etc/testudo/server.hcl on each of three VMs (r1, r2, r3), CA keys in AWS KMS.
# The same file on every VM except raft_advertise_address. The cluster CA files are made
# once (`testudo-server cluster new-ca`) and copied to every VM (docs/deploy.md).
server {
  trust_domain = "example.org"
  data_dir     = "/var/lib/testudo/server"
  bind_address = "0.0.0.0"
  bind_port    = 8081
  socket_path  = "/run/testudo-server/api.sock"
  log_format   = "json"
  ca_ttl       = "24h"
  default_x509_svid_ttl = "1h"
}

plugins {
  # Credentials come the AWS way (instance role, environment), never from this file.
  KeyManager "aws_kms" {
    plugin_data {
      region = "eu-west-1"
    }
  }
  NodeAttestor "x509pop" {
    plugin_data {
      ca_bundle_path = "/etc/testudo/node-ca.pem"
    }
  }
}

cluster {
  raft_bind_address      = "0.0.0.0:8082"
  raft_advertise_address = "r1.testudo.internal:8082"
  peers            = ["r1.testudo.internal:8082", "r2.testudo.internal:8082", "r3.testudo.internal:8082"]
  bootstrap_expect = 3
  ca_cert_file     = "/etc/testudo/cluster-ca.crt"
  ca_key_file      = "/etc/testudo/cluster-ca.key"
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
