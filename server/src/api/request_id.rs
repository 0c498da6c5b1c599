//! Request ids a caller sends with a call (`x-testudo-request-id: <32 hex>-<n>`), so the
//! call can be sent again after its answer was lost without its writes applying twice.
//!
//! The id a write is deduplicated by is derived from the caller (the admin socket, or the
//! SPIFFE ID of its SVID), the header and the write's place in the call: one caller cannot
//! reach another's answers by sending its header, and a call that writes twice writes under
//! two ids. Anonymous callers' headers are ignored. Writes a call makes on spawned tasks
//! get ids of the replica instead (see `raft_store::node::Replica::write_command`).
//!
//! Values the server picks at random for such a call (an entry id, a join token) are drawn
//! from its id instead ([`fresh_bytes`]), so the call sent again proposes the same write
//! and is answered with the first answer. The derived id never leaves the server, and the
//! header it comes from travels only where the call's answer (holding those values) does.

use std::cell::Cell;
use std::future::Future;

use aws_lc_rs::digest;
use raft_store::command::RequestId;
use tonic::Status;

use super::caller::Caller;

/// The metadata key.
pub const HEADER: &str = "x-testudo-request-id";

/// Longer values are refused before any parsing: 32 hex digits, a dash, a u64.
const MAX_LEN: usize = 32 + 1 + 20;

tokio::task_local! {
    static CALL: CallIds;
}

/// The ids of one call's writes: the derived client, the next write's number and how many
/// values were drawn from it.
struct CallIds {
    client: [u8; 16],
    next: Cell<u64>,
    drawn: Cell<u64>,
}

/// Parses a header value: the client's 16 random bytes and the call's number.
pub fn parse(value: &[u8]) -> Result<([u8; 16], u64), Status> {
    let invalid = || Status::invalid_argument(format!("{HEADER} must be 32 hex digits, a dash and a number"));
    if value.len() > MAX_LEN {
        return Err(invalid());
    }
    let text = std::str::from_utf8(value).map_err(|_| invalid())?;
    let (client, seq) = text.split_once('-').ok_or_else(invalid)?;
    let mut bytes = [0; 16];
    hex::decode_to_slice(client, &mut bytes).map_err(|_| invalid())?;
    Ok((bytes, seq.parse().map_err(|_| invalid())?))
}

/// Formats a header value.
pub fn format(client: &[u8; 16], seq: u64) -> String {
    format!("{}-{seq}", hex::encode(client))
}

/// The request ids of one call's writes, or none: built before the call runs.
pub struct CallScope(Option<[u8; 16]>);

impl CallScope {
    /// From the caller and its header (`value`), if it sent one and may have one; `Err` for
    /// a header that does not parse.
    pub fn new(caller: &Caller, value: Option<&[u8]>) -> Result<Self, Status> {
        let (who, value) = match (caller, value) {
            (Caller::Anonymous, _) | (_, None) => return Ok(Self(None)),
            (Caller::Peer { id, .. }, Some(value)) => (id.to_string(), value),
            (Caller::Local, Some(value)) => ("admin socket".to_owned(), value),
        };
        let (client, seq) = parse(value)?;
        let mut context = digest::Context::new(&digest::SHA256);
        for part in [who.as_bytes(), b"\0", &client, &seq.to_be_bytes()] {
            context.update(part);
        }
        let mut derived = [0; 16];
        derived.copy_from_slice(&context.finish().as_ref()[..16]);
        Ok(Self(Some(derived)))
    }

    /// Runs `call`; its writes take this scope's ids.
    pub async fn run<F: Future>(self, call: F) -> F::Output {
        match self.0 {
            Some(client) => CALL.scope(CallIds { client, next: Cell::new(0), drawn: Cell::new(0) }, call).await,
            None => call.await,
        }
    }
}

/// The request id of the current call's next write, if the caller sent one.
pub fn next() -> Option<RequestId> {
    CALL.try_with(|ids| {
        let seq = ids.next.get();
        ids.next.set(seq + 1);
        RequestId { client: ids.client, seq }
    })
    .ok()
}

/// 16 bytes for a value the server chooses: the call's next value drawn from its request id
/// if the caller sent one, random otherwise.
pub fn fresh_bytes() -> Result<[u8; 16], Status> {
    let drawn = CALL.try_with(|ids| {
        let n = ids.drawn.get();
        ids.drawn.set(n + 1);
        let mut context = digest::Context::new(&digest::SHA256);
        for part in [b"testudo drawn value\0".as_slice(), &ids.client, &n.to_be_bytes()] {
            context.update(part);
        }
        context.finish()
    });
    let mut bytes = [0; 16];
    match drawn {
        Ok(digest) => bytes.copy_from_slice(&digest.as_ref()[..16]),
        Err(_) => aws_lc_rs::rand::fill(&mut bytes).map_err(|_| Status::internal("no randomness available"))?,
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_round_trip_and_junk_is_refused() {
        let client = [0xab; 16];
        assert_eq!(parse(format(&client, 7).as_bytes()).unwrap(), (client, 7));
        for junk in ["", "abc-1", "zz".repeat(16).as_str(), &format!("{}-x", "ab".repeat(16)), &"a".repeat(100)] {
            assert!(parse(junk.as_bytes()).is_err(), "{junk}");
        }
    }

    #[tokio::test]
    async fn each_write_of_a_call_gets_its_own_id_and_callers_do_not_share() {
        let header = format(&[1; 16], 9);
        let ids = |caller: Caller| {
            let header = header.clone();
            async move { CallScope::new(&caller, Some(header.as_bytes())).unwrap().run(async { (next(), next()) }).await }
        };
        let (first, second) = ids(Caller::Local).await;
        let (first, second) = (first.unwrap(), second.unwrap());
        assert_eq!(first.client, second.client);
        assert_eq!((first.seq, second.seq), (0, 1));
        assert_eq!(ids(Caller::Local).await.0, Some(first), "the same call sent again");
        let peer =
            Caller::Peer { id: identity::SpiffeId::parse("spiffe://example.org/admin").unwrap(), serial: "1".into() };
        assert_ne!(ids(peer).await.0.unwrap().client, first.client);
        assert_eq!(ids(Caller::Anonymous).await, (None, None));
        assert_eq!(next(), None, "outside a call");
    }

    #[tokio::test]
    async fn values_drawn_for_a_call_are_the_same_when_it_is_sent_again() {
        let draw = |seq: u64| async move {
            let header = format(&[2; 16], seq);
            let scope = CallScope::new(&Caller::Local, Some(header.as_bytes())).unwrap();
            scope.run(async { (fresh_bytes().unwrap(), fresh_bytes().unwrap()) }).await
        };
        let (first, second) = draw(1).await;
        assert_ne!(first, second, "two values of one call");
        assert_eq!(draw(1).await, (first, second), "the call sent again");
        assert_ne!(draw(2).await.0, first, "another call");
        assert_ne!(fresh_bytes().unwrap(), fresh_bytes().unwrap(), "random outside a call");
    }
}
