# /etc/testudo/agent.hcl on every node that runs workloads. The node attests with its
# x509pop certificate; its workloads reach the Workload API at socket_path.
agent {
  data_dir          = "/var/lib/testudo/agent"
  trust_domain      = "example.org"
  server_address    = ["r1.testudo.internal", "r2.testudo.internal", "r3.testudo.internal"]
  server_port       = 8081
  trust_bundle_path = "/etc/testudo/bundle.pem"
  socket_path       = "/run/testudo-agent/public/api.sock"
  log_format        = "json"
}

plugins {
  NodeAttestor "x509pop" {
    plugin_data {
      private_key_path = "/etc/testudo/node.key"
      certificate_path = "/etc/testudo/node.crt"
    }
  }
  KeyManager "disk" {}
  WorkloadAttestor "unix" {}
}
