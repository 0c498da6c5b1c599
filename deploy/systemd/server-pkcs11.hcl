# /etc/testudo/server.hcl on each of three VMs (r1, r2, r3), CA keys on a PKCS#11 token
# every replica reaches (a network HSM; SoftHSM2 for a trial). The same file on every VM
# except raft_advertise_address. The PIN comes from the environment: a drop-in with
# EnvironmentFile=/etc/testudo/hsm-pin.env (mode 0600) holding TESTUDO_HSM_PIN=….
server {
  trust_domain = "example.org"
  data_dir     = "/var/lib/testudo/server"
  bind_address = "0.0.0.0"
  bind_port    = 8081
  socket_path  = "/run/testudo-server/api.sock"
  log_format   = "json"
}

plugins {
  KeyManager "pkcs11" {
    plugin_data {
      module_path   = "/usr/lib/softhsm/libsofthsm2.so"
      token_label   = "testudo"
      user_pin_env  = "TESTUDO_HSM_PIN"
    }
  }
  NodeAttestor "join_token" {}
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
