//! The connection to a PKCS#11 module: the library loaded and initialised once, the token's
//! slot found by label or id, the user logged in, and a few idle sessions kept for reuse.
//! After an error that says the module or token is gone (a removed device, a closed session,
//! a library that lost its state), the connection is dropped and the next call builds a new
//! one — so a restarted HSM or a re-plugged token recovers without restarting the server.

use std::sync::Mutex;

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

use super::objects::Failure;
use super::{Pkcs11Config, TokenSelector, NAME};
use crate::KeyManagerError;

/// Most sessions kept idle; more are opened while calls run concurrently.
const MAX_IDLE: usize = 4;

struct Connection {
    pkcs11: Pkcs11,
    slot: Slot,
    idle: Vec<Session>,
    /// Which connection this is, so a session of a replaced one is not kept.
    generation: u64,
}

/// Opens sessions on the configured token, reconnecting after module or token errors.
pub(super) struct SessionPool {
    config: Pkcs11Config,
    connection: Mutex<Option<Connection>>,
    generations: std::sync::atomic::AtomicU64,
}

/// The module at `path`, loaded and initialised once per process: PKCS#11 wants one
/// initialisation per application, and modules (SoftHSM among them) are not safe against
/// concurrent C_Initialize calls or being unloaded while another context uses them.
pub(super) fn loaded_module(path: &std::path::Path) -> Result<Pkcs11, KeyManagerError> {
    static MODULES: std::sync::OnceLock<Mutex<std::collections::HashMap<std::path::PathBuf, Pkcs11>>> =
        std::sync::OnceLock::new();
    let mut modules = MODULES.get_or_init(Mutex::default).lock().unwrap_or_else(|p| p.into_inner());
    if let Some(pkcs11) = modules.get(path) {
        return Ok(pkcs11.clone());
    }
    let module = path.display();
    let pkcs11 = Pkcs11::new(path).map_err(|e| unavailable(format!("loading module {module}: {e}")))?;
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(unavailable(format!("initialising module {module}: {e}"))),
    }
    modules.insert(path.to_path_buf(), pkcs11.clone());
    Ok(pkcs11)
}

/// Whether an error means the connection (module, token, session or login) is broken,
/// rather than the request.
fn connection_lost(error: &Error) -> bool {
    matches!(
        error,
        Error::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::DeviceError
                | RvError::DeviceRemoved
                | RvError::DeviceMemory
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::CryptokiNotInitialized
                | RvError::UserNotLoggedIn
                | RvError::GeneralError,
            _
        )
    )
}

pub(super) fn unavailable(reason: impl std::fmt::Display) -> KeyManagerError {
    KeyManagerError::Unavailable { backend: NAME, reason: reason.to_string() }
}

impl SessionPool {
    pub(super) fn new(config: Pkcs11Config) -> Self {
        Self { config, connection: Mutex::new(None), generations: std::sync::atomic::AtomicU64::new(0) }
    }

    fn connect(&self) -> Result<Connection, KeyManagerError> {
        let module = self.config.module_path.display().to_string();
        let pkcs11 = loaded_module(&self.config.module_path)?;
        // After the module lost its state (CKR_CRYPTOKI_NOT_INITIALIZED), initialise it again.
        match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(unavailable(format!("initialising module {module}: {e}"))),
        }
        let slots =
            pkcs11.get_slots_with_token().map_err(|e| unavailable(format!("listing slots of {module}: {e}")))?;
        let slot = match &self.config.token {
            TokenSelector::Slot(id) => slots
                .into_iter()
                .find(|s| s.id() == *id)
                .ok_or_else(|| unavailable(format!("no token in slot {id} of {module}")))?,
            TokenSelector::Label(label) => slots
                .into_iter()
                .find(|s| pkcs11.get_token_info(*s).is_ok_and(|info| info.label().trim_end() == label))
                .ok_or_else(|| unavailable(format!("no token labelled {label:?} in {module}")))?,
        };
        let session = pkcs11.open_rw_session(slot).map_err(|e| unavailable(format!("opening a session: {e}")))?;
        let pin = AuthPin::new(self.config.user_pin.as_str().into());
        match session.login(UserType::User, Some(&pin)) {
            Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(Error::Pkcs11(RvError::PinIncorrect | RvError::PinInvalid | RvError::PinLenRange, _)) => {
                return Err(KeyManagerError::Crypto { backend: NAME, reason: "the token refused the user PIN".into() });
            }
            Err(e) => return Err(unavailable(format!("logging in: {e}"))),
        }
        tracing::info!(module, slot = slot.id(), "PKCS#11 token connected");
        let generation = self.generations.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Connection { pkcs11, slot, idle: vec![session], generation })
    }

    /// A session, from the idle ones or newly opened, and the connection it belongs to.
    fn take(&self) -> Result<(Session, u64), KeyManagerError> {
        let mut guard = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            *guard = Some(self.connect()?);
        }
        let connection = guard.as_mut().ok_or_else(|| unavailable("not connected"))?;
        if let Some(session) = connection.idle.pop() {
            return Ok((session, connection.generation));
        }
        match connection.pkcs11.open_rw_session(connection.slot) {
            Ok(session) => Ok((session, connection.generation)),
            Err(e) => {
                let lost = connection_lost(&e);
                if lost {
                    *guard = None;
                }
                Err(unavailable(format!("opening a session: {e}")))
            }
        }
    }

    fn give_back(&self, session: Session, generation: u64) {
        let mut guard = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        // A session of a connection that has since been replaced is dropped (closed).
        if let Some(connection) = guard.as_mut().filter(|c| c.generation == generation) {
            if connection.idle.len() < MAX_IDLE {
                connection.idle.push(session);
            }
        }
    }

    fn disconnect(&self) {
        *self.connection.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Runs `operation` on a session (blocking: call from a blocking thread). After a
    /// connection error it reconnects and tries once more.
    pub(super) fn run<T>(
        &self,
        describe: &str,
        operation: impl Fn(&Session) -> Result<T, Failure>,
    ) -> Result<T, KeyManagerError> {
        let mut last = None;
        for _ in 0..2 {
            let (session, generation) = self.take()?;
            match operation(&session) {
                Ok(value) => {
                    self.give_back(session, generation);
                    return Ok(value);
                }
                Err(Failure::Module(e)) if connection_lost(&e) => {
                    tracing::warn!(error = %e, "PKCS#11 connection lost; reconnecting");
                    drop(session);
                    self.disconnect();
                    last = Some(e);
                }
                Err(Failure::Module(e)) => {
                    self.give_back(session, generation);
                    return Err(KeyManagerError::Crypto { backend: NAME, reason: format!("{describe}: {e}") });
                }
                Err(Failure::Key(e)) => {
                    self.give_back(session, generation);
                    return Err(e);
                }
            }
        }
        Err(unavailable(format!("{describe}: {}", last.map(|e| e.to_string()).unwrap_or_default())))
    }
}
