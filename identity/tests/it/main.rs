//! Interop: what identity mints and signs, checked by tools no one here wrote (openssl,
//! the `jsonwebtoken` crate, PyJWT), and their output checked by ours.

mod jwt_jsonwebtoken;
mod jwt_pyjwt;
mod support;
mod x509_openssl;
