//! Blocks the server and the agent share, as SPIRE writes them.

use serde::Deserialize;

use crate::values;

/// `health_checks { … }`, as in SPIRE.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HealthChecks {
    #[serde(default)]
    pub listener_enabled: bool,
    #[serde(default = "default_health_address")]
    pub bind_address: String,
    #[serde(default = "default_health_port", deserialize_with = "values::port")]
    pub bind_port: u16,
    #[serde(default = "default_live_path")]
    pub live_path: String,
    #[serde(default = "default_ready_path")]
    pub ready_path: String,
}

impl Default for HealthChecks {
    fn default() -> Self {
        Self {
            listener_enabled: false,
            bind_address: default_health_address(),
            bind_port: default_health_port(),
            live_path: default_live_path(),
            ready_path: default_ready_path(),
        }
    }
}

/// `telemetry { Prometheus { host port } }`; the only sink this build has.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    #[serde(rename = "Prometheus", default)]
    pub prometheus: Option<Prometheus>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Prometheus {
    #[serde(default = "default_health_address")]
    pub host: String,
    #[serde(deserialize_with = "values::port")]
    pub port: u16,
}

fn default_health_address() -> String {
    "localhost".into()
}
fn default_health_port() -> u16 {
    80
}
fn default_live_path() -> String {
    "/live".into()
}
fn default_ready_path() -> String {
    "/ready".into()
}
