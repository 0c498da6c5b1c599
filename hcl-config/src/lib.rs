//! HCL config files in SPIRE's shape, shared by the server and the agent. Parsing keeps the
//! source so every refusal names the file, line and key: serde errors carry the key path
//! (serde_path_to_error), and [`locate`] turns a path into a line. [`values`] holds the
//! deserializers for values written as text (durations, trust domains, ports), and
//! [`sections`] and [`plugins`] the blocks both binaries share.
#![forbid(unsafe_code)]

mod error;
pub mod locate;
mod nesting;
pub mod plugins;
pub mod sections;
pub mod values;

use std::path::Path;

pub use error::{ConfigError, InvalidKey};
use serde::de::DeserializeOwned;

/// A parsed file: the value serde built, and what is needed to point at a key later.
pub struct Parsed<T> {
    pub value: T,
    source: String,
    file: String,
    body: hcl_edit::structure::Body,
}

impl<T> Parsed<T> {
    /// A refusal of the key at `path` (dotted segments as serde sees them), with its line.
    pub fn invalid<S: AsRef<str>>(&self, path: &[S], message: impl Into<String>) -> ConfigError {
        let path: Vec<String> = path.iter().map(|s| s.as_ref().to_owned()).collect();
        invalid(&self.source, &self.file, &self.body, path, message.into())
    }
}

fn invalid(
    source: &str,
    file: &str,
    body: &hcl_edit::structure::Body,
    path: Vec<String>,
    message: String,
) -> ConfigError {
    let line = locate::line_of(source, body, &path);
    let key = if path.is_empty() { "(file)".to_string() } else { path.join(".") };
    ConfigError::Invalid(InvalidKey { file: file.to_string(), line, key, message })
}

/// Reads a config file and deserializes it into `T`.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<Parsed<T>, ConfigError> {
    load_with(path, false)
}

/// As [`load`]; with `expand_env`, `$VAR` and `${VAR}` in the text are first replaced by
/// the environment's values, as SPIRE's `-expandEnv` does (one config for every replica of
/// a StatefulSet, say, with its pod name in it). A variable that is not set is refused
/// rather than read as empty.
pub fn load_with<T: DeserializeOwned>(path: &Path, expand_env: bool) -> Result<Parsed<T>, ConfigError> {
    let source =
        std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    let source = if expand_env {
        shellexpand::env(&source)
            .map_err(|e| ConfigError::Env {
                path: path.to_path_buf(),
                message: format!("${} is not set ({})", e.var_name, e.cause),
            })?
            .into_owned()
    } else {
        source
    };
    parse(source, &path.display().to_string())
}

/// Deserializes config text into `T`; `file` names it in errors.
pub fn parse<T: DeserializeOwned>(source: String, file: &str) -> Result<Parsed<T>, ConfigError> {
    if let Some((line, column)) = nesting::too_deep(&source) {
        return Err(ConfigError::Syntax {
            file: file.to_string(),
            line,
            column,
            message: format!(
                "nested more than {} deep (blocks, objects, lists, parentheses and interpolations together)",
                nesting::MAX_NESTING
            ),
        });
    }
    let body = hcl_edit::parser::parse_body(&source).map_err(|e| ConfigError::Syntax {
        file: file.to_string(),
        line: e.location().line(),
        column: e.location().column(),
        message: e.message().to_string(),
    })?;
    let deserializer = hcl::de::Deserializer::from_body(hcl::Body::from(body.clone()));
    let value = serde_path_to_error::deserialize(deserializer).map_err(|e| {
        let path: Vec<String> = e.path().iter().map(|segment| segment.to_string()).collect();
        invalid(&source, file, &body, path, e.inner().to_string())
    })?;
    Ok(Parsed { value, source, file: file.to_string(), body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Named {
        name: String,
    }

    #[test]
    fn the_environment_is_expanded_only_when_asked_and_an_unset_variable_is_refused() {
        let path = std::env::temp_dir().join(format!("hcl-config-env-{}.hcl", std::process::id()));
        std::fs::write(&path, "name = \"${TESTUDO_HCL_TEST_POD}.raft:8082\"\n").unwrap();
        // Set for this process only; no other test reads it.
        std::env::set_var("TESTUDO_HCL_TEST_POD", "testudo-server-2");
        let expanded: Parsed<Named> = load_with(&path, true).unwrap();
        assert_eq!(expanded.value.name, "testudo-server-2.raft:8082");
        let literal: Parsed<Named> = load_with(&path, false).unwrap();
        assert_eq!(literal.value.name, "${TESTUDO_HCL_TEST_POD}.raft:8082", "not asked: the text as written");
        std::env::remove_var("TESTUDO_HCL_TEST_POD");
        match load_with::<Named>(&path, true) {
            Err(ConfigError::Env { message, .. }) => assert!(message.contains("$TESTUDO_HCL_TEST_POD"), "{message}"),
            other => panic!("an unset variable must be refused, got {:?}", other.map(|p| p.value.name)),
        }
        let _ = std::fs::remove_file(&path);
    }
}
