//! Why a config file was refused, with the file, line and key it concerns.

use std::fmt;
use std::path::PathBuf;

/// A config file that cannot be used. Every variant but `Read` names the line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Env { path: PathBuf, message: String },
    #[error("{file}:{line}:{column}: HCL syntax error: {message}")]
    Syntax { file: String, line: usize, column: usize, message: String },
    #[error("{0}")]
    Invalid(InvalidKey),
}

/// A key whose value (or absence) is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidKey {
    pub file: String,
    /// The line of the key, or of the block that lacks it; `None` if it could not be found.
    pub line: Option<usize>,
    /// Dotted path of the key, e.g. `server.bind_port`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for InvalidKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}: {}", self.file, line, self.key, self.message),
            None => write!(f, "{}: {}: {}", self.file, self.key, self.message),
        }
    }
}

impl std::error::Error for InvalidKey {}
