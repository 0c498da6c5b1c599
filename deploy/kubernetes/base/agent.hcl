# The agent config every node's agent runs. It finds every ready server replica through the
# headless Service and attests with the node's x509pop certificate.
agent {
  data_dir          = "/var/lib/testudo/agent"
  trust_domain      = "example.org"
  server_address    = "testudo-server.testudo.svc.cluster.local"
  server_port       = 8081
  trust_bundle_path = "/etc/testudo-bundle/bundle.pem"
  socket_path       = "/run/testudo-agent/public/api.sock"
  log_format        = "json"
}

plugins {
  NodeAttestor "x509pop" {
    plugin_data {
      private_key_path = "/etc/testudo-node/node.key"
      certificate_path = "/etc/testudo-node/node.crt"
    }
  }
  KeyManager "disk" {}
  WorkloadAttestor "unix" {}
}
